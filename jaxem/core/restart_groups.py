"""Restarts in groups side by side: one compiled loop program run from several host threads.

On a CPU the restarts of a fit pass over the data one after another, and XLA runs one program's
operations in order, spreading each over the cores only as far as it splits: a gradient M-step's
or a forward-backward pass's many small operations barely do. The restarts are independent, so
the loop's state is cut into groups of restarts, one per core, and the one loop executable
(compiled for a group's shapes) runs every group at once from its own thread (XLA releases the
GIL while it runs). Every restart takes the same steps as in one program, so the results are
the same; 8 restarts cost about the largest group's iterations rather than the sum of all.

Measured (2-core AMD EPYC, the models of ``benchmarks/custom.py``, 8 restarts, warm, all at once
-> two groups of 4): Laplace mixture 0.80 -> 0.64 s, gamma mixture 0.40 -> 0.25 s, HMM 1.01 ->
0.93 s (one restart there takes 371 of its 508 iterations).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def count(state_shapes, static: dict, allowed: bool) -> int:
    """How many groups a loop state of these shapes (a pytree of arrays or shape structs) runs
    in: the largest divisor of the restarts ``R`` up to the cores this process may use (equal
    groups share one executable), where ``allowed`` and the restarts run one after another on a
    CPU in one process; else 1. Every leaf of the state but scalars must have the leading
    restart axis, and none may hold PRNG keys."""
    if (not allowed or not static.get("in_sequence") or jax.process_count() != 1
            or jax.default_backend() != "cpu"):
        return 1
    leaves = jax.tree.leaves(state_shapes)
    leading = {leaf.shape[0] for leaf in leaves if len(leaf.shape)}
    # Key arrays (an extended dtype) do not pass through NumPy, where the groups are cut.
    if len(leading) != 1 or any(jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.extended)
                                for leaf in leaves):
        return 1
    (n_restarts,) = leading
    return max(g for g in range(1, min(n_restarts, _cores()) + 1) if n_restarts % g == 0)


def group_shapes(state_shapes, n_groups: int, sharding=None):
    """``jax.ShapeDtypeStruct`` of one group's state: the restart axis divided by ``n_groups``."""
    def one(leaf):
        shape = (leaf.shape[0] // n_groups,) + tuple(leaf.shape[1:]) if len(leaf.shape) else ()
        return jax.ShapeDtypeStruct(shape, leaf.dtype, sharding=sharding)
    return jax.tree.map(one, state_shapes)


def split(state: dict, n_groups: int, device) -> list:
    """The state's restarts in ``n_groups`` consecutive equal groups, each placed on ``device``
    (a sharding); scalars (the trip count) go to every group."""
    host = jax.device_get(state)
    size = host["n_iter"].shape[0] // n_groups

    def part(g):
        return jax.tree.map(lambda a: a if np.ndim(a) == 0 else a[g * size:(g + 1) * size], host)
    return [jax.device_put(part(g), device) for g in range(n_groups)]


def merge(states: list) -> dict:
    """The groups' states as one (NumPy arrays): restarts in order; a scalar (the trip count)
    is the largest of the groups'."""
    host = jax.device_get(states)
    return jax.tree.map(lambda *parts: np.max(parts) if np.ndim(parts[0]) == 0
                        else np.concatenate(parts), *host)


def side_by_side(parts: list, run: Callable[[dict], tuple[dict, bool]]) -> tuple[dict, bool]:
    """``run(part) -> (state, interrupted)`` for every group's state at once, one thread each:
    the merged state (:func:`merge`), and whether any group was interrupted."""
    with ThreadPoolExecutor(len(parts), thread_name_prefix="jaxem-restarts") as pool:
        done = list(pool.map(run, parts))
    return merge([state for state, _ in done]), any(stopped for _, stopped in done)
