"""One sweep over a source read in chunks: a compiled call per chunk, the sums kept on the device."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from ..core import loop, precision, sharding


def _sweep_restarts(params, data, temperature, *, sweep, mesh, shard_map, in_sequence):
    """``(objective [R], aux)`` of one chunk for every restart."""
    if shard_map:
        sweep = sharding.sharded_pass(sweep, mesh)
    return loop.map_restarts(lambda p: sweep(p, data, temperature), params,
                             in_sequence=in_sequence)


@functools.partial(precision.jit, static_argnames=("static",), donate_argnums=1)
def _add_chunk(params, total, data, temperature, *, static):
    """``total + sweep(params, data, temperature)``: one chunk's sums added on the device."""
    return jax.tree.map(jnp.add, total, _sweep_restarts(params, data, temperature, **dict(static)))


def sweep_chunks(sweep: Callable, params, read: Callable, temperature, *, mesh=None,
                 shard_map: bool = True, in_sequence: bool = False):
    """Totals of ``sweep`` (one restart, one chunk) over every chunk ``read()`` yields, for
    ``[R]``-stacked ``params``: one compiled call per chunk."""
    static = (("sweep", sweep), ("mesh", mesh), ("shard_map", shard_map),
              ("in_sequence", in_sequence))
    total = None
    for data in read():
        # The next chunk is read while the device works on the previous one; waiting for that
        # before dispatching keeps one chunk in flight, so asynchronous dispatch cannot queue up
        # the whole data set in memory.
        jax.block_until_ready(total)
        if total is None:
            shapes = jax.eval_shape(functools.partial(_sweep_restarts, **dict(static)), params,
                                    data, temperature)
            total = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        total = _add_chunk(params, total, data, temperature, static=static)
    return total
