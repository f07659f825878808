"""Data in row blocks: how many, how large, padded how, and sums over them.

Everything here runs inside ``jit``. The data are laid out as ``[n_blocks, block, ...]`` with a
weight per row; padded rows carry weight 0 and are copies of a real row, so any model evaluates them
to finite numbers and they add nothing. A block is the unit every pass is written over
(:mod:`jaxem.core.passes`); the runners decide where the blocks come from.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

try:
    from jax.extend.core import jaxpr_as_fun
except ImportError:  # jax < 0.4.36
    from jax.core import jaxpr_as_fun

Array = jax.Array


def pad_rows(rows_per_block: np.ndarray, n_rows: int, fill=None) -> np.ndarray:
    """``rows [n, ...]`` padded to ``n_rows`` rows (host side): with ``fill``, or copies of the
    first row when ``fill`` is ``None`` (finite under any model)."""
    pad = n_rows - rows_per_block.shape[0]
    if pad == 0:
        return rows_per_block
    extra = (np.broadcast_to(rows_per_block[:1], (pad,) + rows_per_block.shape[1:]) if fill is None
             else np.full((pad,) + rows_per_block.shape[1:], fill, rows_per_block.dtype))
    return np.concatenate([rows_per_block, extra])


# Rows per block when the caller does not choose. Each block costs XLA:CPU a fixed ~0.1 ms of
# dispatch, so small blocks lose (2048 rows made a k-means pass much slower than 4096), and
# 8192 rows still beat 4096 for k-means and a full GMM despite its [block, K*D] temporaries;
# the diagonal and Bernoulli passes are level.
DEFAULT_BLOCK_ROWS = 8192


# Rows times vmapped restarts per block when several restarts share a pass: their temporaries are
# R times wider, so a block takes R times fewer rows (tuned on a full GMM with 8 restarts).
RESTART_BLOCK_WORK = 4096


# The fewest rows per block the engine picks by itself (for many vmapped restarts): below this the
# per-block overhead of the scan starts to show.
MIN_BLOCK_ROWS = 256


# Platforms whose compiler runs one restart's pass at least as fast per restart as a vmapped
# batch's, so a batch of restarts passes over the data one restart after another (``lax.map``,
# inside the same program; the loop and the M-steps stay vmapped). On XLA:CPU the batched
# products of 8 restarts (128 weighted Gram matrices per block for a full GMM with K=16) ran
# clearly slower per restart than one restart's pass, and the same pass mapped about level; one
# restart's pass there already runs near the cores' peak, so a batch has nothing to gain. In
# sequence, the M-steps map one restart after another too, and a restart that stopped skips both
# (``lax.cond``), so restarts cost the sum of their own iterations. Accelerators need the batch to
# fill the device: there the restarts stay vmapped, and every restart is computed (its results
# discarded) until the last one stops.
SEQUENTIAL_RESTART_PLATFORMS = ("cpu",)


# Row counts that small data are padded to, under weight 0 (exact), so that another row count
# reuses a compiled program: up to one default block a fit's time is mostly its compilation
# (about 2 s; a GMM iteration on 8192 rows takes a few ms), so padding 1025 rows to 8192 costs
# far less than compiling anew. Two buckets: 20 fits of 100 to 5000 rows compile 2 programs.
ROW_BUCKETS = (1024, DEFAULT_BLOCK_ROWS)


def bucket_rows(n_rows: int) -> int:
    """The rows ``n_rows`` rows are padded to: the smallest of :data:`ROW_BUCKETS` that holds
    them, or ``n_rows`` itself beyond the largest (there the padding would cost real time)."""
    return next((bucket for bucket in ROW_BUCKETS if n_rows <= bucket), n_rows)


class RestartPlan(NamedTuple):
    """How a batch of restarts passes over the data: ``in_sequence`` (one restart after another)
    or vmapped, and the rows per block."""

    in_sequence: bool
    block_size: int


def plan_restarts(n_restarts: int, platform: str, block_size: int | None = None) -> RestartPlan:
    """The pass plan for ``n_restarts`` restarts on ``platform`` (``"cpu"``, ``"gpu"``, ...).

    ``block_size`` ``None`` picks one: :data:`DEFAULT_BLOCK_ROWS` for one restart or a sequence;
    for vmapped restarts about ``RESTART_BLOCK_WORK / R`` rows (at least :data:`MIN_BLOCK_ROWS`),
    so the batch's temporaries stay as large as one restart's.
    """
    in_sequence = n_restarts > 1 and platform in SEQUENTIAL_RESTART_PLATFORMS
    if block_size is None:
        block_size = (DEFAULT_BLOCK_ROWS if n_restarts == 1 or in_sequence else
                      max(MIN_BLOCK_ROWS, RESTART_BLOCK_WORK // n_restarts))
    return RestartPlan(in_sequence, block_size)


def plan_blocks(n_rows: int, block_size: int | None, n_shards: int = 1) -> tuple[int, int]:
    """Choose ``(n_blocks, rows_per_block)`` covering ``n_rows`` with little padding; ``n_blocks``
    is a multiple of ``n_shards`` (the devices the blocks are split over)."""
    target = DEFAULT_BLOCK_ROWS if block_size is None else block_size
    n_blocks = max(1, math.ceil(n_rows / target))
    rows_per_block = math.ceil(n_rows / n_blocks)
    if n_blocks > 1:
        rows_per_block = 8 * math.ceil(rows_per_block / 8)
        n_blocks = math.ceil(n_rows / rows_per_block)
    if n_blocks % n_shards:
        n_blocks = n_shards * math.ceil(n_blocks / n_shards)
        rows_per_block = math.ceil(n_rows / n_blocks)
    if n_blocks * rows_per_block != n_rows:
        # Blocks up to a fifth smaller that tile the rows exactly spare the program a padded copy
        # of the whole data set (the reshape into blocks is then free).
        for exact in range(n_blocks, n_blocks + min(n_blocks // 4, 10_000) + 1):
            if n_rows % exact == 0 and (n_rows // exact) % 8 == 0 and exact % n_shards == 0:
                return exact, n_rows // exact
    return n_blocks, rows_per_block


def to_blocks(X: Array, weights: Array, n_blocks: int, rows_per_block: int) -> tuple[Array, Array]:
    """Pad ``X [N, ...]`` and row weights ``[N, ...]`` (per-row weights or weighted
    responsibilities) to ``n_blocks * rows`` rows and reshape both into blocks. Padded rows copy
    the first row of ``X`` and get weight 0."""
    pad = n_blocks * rows_per_block - X.shape[0]
    if pad:
        X = jnp.concatenate([X, jnp.broadcast_to(X[:1], (pad,) + X.shape[1:])])
        weights = jnp.concatenate([weights, jnp.zeros((pad,) + weights.shape[1:], weights.dtype)])
    return (X.reshape((n_blocks, rows_per_block) + X.shape[1:]),
            weights.reshape((n_blocks, rows_per_block) + weights.shape[1:]))


def map_row_blocks(fn: Callable, X: Array, block_size: int | None = None) -> Any:
    """``fn(X)`` for a row-wise ``fn`` (``[n, ...]`` rows to a pytree of ``[n, ...]`` arrays),
    computed one block of rows at a time, so that its temporaries (``[K, block]`` scores, say)
    stay in cache instead of spanning all ``N`` rows of ``X [N, ...]``."""
    n_rows = X.shape[0]
    n_blocks, rows_per_block = plan_blocks(n_rows, block_size)
    if n_blocks == 1:
        return fn(X)
    Xb, _ = to_blocks(X, jnp.zeros((n_rows,), X.dtype), n_blocks, rows_per_block)
    out = jax.lax.map(fn, Xb)
    return jax.tree.map(lambda a: a.reshape((n_blocks * rows_per_block,) + a.shape[2:])[:n_rows], out)


class Rows(NamedTuple):
    """Blocked data: ``X [n_blocks, block, ...]``, row ``weights [n_blocks, block]`` (0 on padding),
    optional partial ``labels [n_blocks, block]`` (-1 unknown, ``None`` when there are none) and
    optional :func:`row_hashes` ``[n_blocks, block]`` (hard EM's fingerprint needs them every
    pass; computed once with the blocks, XLA drops them from programs that do not use them)."""

    X: Array
    weights: Array
    labels: Array | None = None
    hashes: Array | None = None


def host_row_blocks(chunk: np.ndarray, weights, labels, n_blocks: int, rows_per_block: int) -> Rows:
    """A host chunk ``[n, ...]`` with optional ``weights [n]`` and ``labels [n]`` laid out as
    :class:`Rows` of ``[n_blocks, rows, ...]`` NumPy arrays (padded under weight 0, label -1)."""
    size = n_blocks * rows_per_block
    w = np.ones(chunk.shape[0], chunk.dtype) if weights is None else weights.astype(chunk.dtype)
    out = [pad_rows(chunk, size), pad_rows(w, size, 0)]
    if labels is not None:
        out.append(pad_rows(labels, size, -1))
    return Rows(*(a.reshape((n_blocks, rows_per_block) + a.shape[1:]) for a in out))


def block_rows(X: Array, weights: Array, labels: Array | None, n_blocks: int, rows_per_block: int) -> Rows:
    """Lay ``X [N, ...]``, ``weights [N]`` and ``labels [N]`` (or ``None``) out in row blocks."""
    Xb, wb = to_blocks(X, weights, n_blocks, rows_per_block)
    if labels is not None:
        labels = to_blocks(X, labels, n_blocks, rows_per_block)[1]
    # Hashed as one [n_blocks * rows] array: vmapped, row_hashes' cond would run both branches.
    return Rows(Xb, wb, labels, row_hashes(Xb.reshape((-1,) + Xb.shape[2:])).reshape(Xb.shape[:2]))


def carry_zeros(shapes, like: Array) -> Any:
    """Zeros of ``shapes`` (a pytree of shape/dtype structs) to start a sum over the blocks of
    ``like``. Inside ``shard_map`` (see :mod:`jaxem.core.sharding`) each device sums its own blocks,
    so the zeros must vary over the same device axes as the data do."""
    # full_like takes only the type of ``like`` (its device-axis variance), never its values.
    return jax.tree.map(lambda s: jax.lax.full_like(like, 0, s.dtype, s.shape), shapes)


def trace_once(fn: Callable, *example) -> tuple[Callable, Any]:
    """``(replay, shapes)``: ``fn`` traced once at the shapes of ``example``; ``replay(*args)``
    (arguments of those shapes) runs that trace without tracing ``fn`` again, and ``shapes``
    are its outputs' shape/dtype structs. For a function whose output shapes are needed before
    it is placed in control flow: tracing Jacobians and Hessians twice was a third of a small
    custom-model fit's first call."""
    closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*example)
    out_tree = jax.tree.structure(shapes)

    def replay(*args):
        return jax.tree.unflatten(out_tree, jaxpr_as_fun(closed)(*jax.tree.leaves(args)))

    return replay, shapes


def sum_over_blocks(block_fn, blocks) -> Any:
    """``Σ_b block_fn(*blocks[b])`` leaf by leaf, as a ``lax.scan`` (one block live at a time)."""
    blocks = tuple(blocks)
    block_fn, shapes = trace_once(block_fn, *jax.tree.map(lambda b: b[0], blocks))
    zero = carry_zeros(shapes, blocks[0])

    def body(total, block):
        return jax.tree.map(jnp.add, total, block_fn(*block)), None

    total, _ = jax.lax.scan(body, zero, blocks)
    return total


def blocked_suff_stats(suff_stats, params: Any, X: Array, resp: Array) -> Any:
    """``suff_stats(params, X, resp)`` (a model's additive statistics) summed over row blocks, so
    its temporaries (``[K, block, D]`` for Gaussians) never span all ``N`` rows. For initialisers,
    which see the whole data set ``X [N, ...]`` and responsibilities ``resp [N, K]`` at once."""
    n_blocks, rows_per_block = plan_blocks(X.shape[0], None)
    return sum_over_blocks(functools.partial(suff_stats, params),
                            to_blocks(X, resp, n_blocks, rows_per_block))


class HardStats(NamedTuple):
    """What a hard-EM pass adds up: the model's statistics and a fingerprint of the assignment.

    ``fingerprint [K]`` (uint32) holds, for each component ``k``, the wrapping sum of ``h_n``
    over its rows of weight > 0, with ``h_n`` an odd hash of the row's values. It adds up over
    blocks, chunks and devices like the statistics (one sum by index, exact and in any order, so
    on any device), does not depend on the parameters, and is unchanged from one pass to the next
    when no row changed component; a change goes unseen only if every component's wrapped sum
    comes out the same (for a row moving alone, never; otherwise about one chance in 2^32). That
    is the fixed point where hard EM, k-means included, stops.
    """

    stats: Any
    fingerprint: Array


def row_hashes(X: Array) -> Array:
    """``[N]`` odd uint32 hashes of the rows of ``X [N, ...]`` (a fingerprint's ``h_n``)."""
    flat = X.reshape(X.shape[0], -1).astype(jnp.float32)
    mix = jnp.cos(1.0 + jnp.arange(flat.shape[1], dtype=jnp.float32))
    signature = flat @ mix
    # Rows with missing (NaN) values hash their observed entries; the cleaned copy of the data
    # is made only when there are any (on XLA:CPU it costs far more than the product).
    signature = jax.lax.cond(jnp.all(jnp.isfinite(signature)), lambda: signature,
                             lambda: jnp.nan_to_num(flat) @ mix)
    return jax.lax.bitcast_convert_type(signature, jnp.uint32) | jnp.uint32(1)


def assignment_fingerprint(X: Array, component: Array, weights: Array, n_components: int,
                           hashes: Array | None = None) -> Array:
    """``[n_components]`` uint32 fingerprint (see :class:`HardStats`) of rows ``X [N, ...]``
    assigned to ``component [N]``, counting only rows of positive ``weights [N]``; ``hashes [N]``
    are the rows' :func:`row_hashes` when already known."""
    row_hash = row_hashes(X) if hashes is None else hashes
    counted = jnp.where(weights > 0, row_hash, jnp.uint32(0))
    return jax.ops.segment_sum(counted, component, n_components)


def statistics(aux: Any) -> Any:
    """The model's statistics from a pass's auxiliary output (hard or soft)."""
    return aux.stats if isinstance(aux, HardStats) else aux
