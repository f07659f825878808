"""Matching a refit's components to a reference fit's labels (the label-switching problem).

Mixture components are exchangeable, so a bootstrap replicate may find the same components in
another order. Each replicate is renumbered by the assignment that minimises a standardised
squared distance between its component parameters and the reference's (the Hungarian method,
Kuhn 1955, in its shortest-augmenting-path form; O(K^3) on the host).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np


def assignment(cost: np.ndarray) -> np.ndarray:
    """The assignment of rows to columns of a square ``cost [K, K]`` with the least total cost.

    Returns:
        ``[K]`` ints: ``columns[i]`` is the column given to row ``i``.
    """
    cost = np.asarray(cost, np.float64)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1] or not np.isfinite(cost).all():
        raise ValueError(f"cost must be a finite square matrix, got shape {cost.shape}")
    n = cost.shape[0]
    # Potentials u (rows), v (columns); owner[j] is the row holding column j (1-based, 0: none).
    u, v = np.zeros(n + 1), np.zeros(n + 1)
    owner, previous = np.zeros(n + 1, int), np.zeros(n + 1, int)
    for row in range(1, n + 1):
        owner[0], col = row, 0
        slack, used = np.full(n + 1, np.inf), np.zeros(n + 1, bool)
        while owner[col] != 0:
            used[col] = True
            i = owner[col]
            reduced = cost[i - 1] - u[i] - v[1:]
            better = ~used[1:] & (reduced < slack[1:])
            slack[1:] = np.where(better, reduced, slack[1:])
            previous[1:] = np.where(better, col, previous[1:])
            free = np.where(used[1:], np.inf, slack[1:])
            nxt = int(np.argmin(free)) + 1
            delta = free[nxt - 1]
            u[owner[used]] += delta
            v[used] -= delta
            slack[~used] -= delta
            col = nxt
        while col:
            prior = previous[col]
            owner[col] = owner[prior]
            col = prior
    columns = np.empty(n, int)
    columns[owner[1:] - 1] = np.arange(n)
    return columns


def component_leaves(params: Any, n_components: int) -> list[bool]:
    """Which leaves of ``params`` hold one entry per component (leading axis ``K``)."""
    return [np.ndim(leaf) > 0 and np.shape(leaf)[0] == n_components for leaf in jax.tree.leaves(params)]


@functools.partial(jax.jit, static_argnums=0)
def _log_joints(model, params, moved, rows):
    # One small program: evaluated eagerly, the two log-joints compiled some 40 operations one by
    # one (0.9 s of a 1.7 s Old Faithful bootstrap).
    return model.log_joint_matrix(params, rows), model.log_joint_matrix(moved, rows)


def check_component_leaves(model, params: Any, X, n_components: int) -> None:
    """Refuse to match when the leading-axis rule misjudges ``params``: permuting the leaves it
    calls per component must permute the columns of the log-joint on a few rows of ``X``."""
    per_component = component_leaves(params, n_components)
    shift = np.roll(np.arange(n_components), 1)
    leaves, treedef = jax.tree.flatten(params)
    moved = jax.tree.unflatten(treedef, [leaf[shift] if keep else leaf
                                         for leaf, keep in zip(leaves, per_component, strict=True)])
    before, after = (np.asarray(x) for x in _log_joints(model, params, moved, X[: min(8, X.shape[0])]))
    if not np.allclose(after, before[:, shift], rtol=1e-4, atol=1e-4 * np.abs(before).max()):
        raise ValueError("cannot tell which parameters belong to each component (a shared leaf "
                         "has K entries along its first axis, e.g. a tied covariance with D = K); "
                         "pass match=False and match the replicates yourself")


def match_components(replicates: Any, reference: Any, n_components: int) -> tuple[Any, np.ndarray]:
    """Renumber each replicate's components to follow ``reference``'s.

    Args:
        replicates: parameters with a leading ``[B]`` axis.
        reference: one set of parameters (the original fit's).
        n_components: ``K``; leaves whose leading axis has length ``K`` are per component.

    Returns:
        ``(matched replicates, order [B, K])``: component ``j`` of matched replicate ``b`` is
        component ``order[b, j]`` of the unmatched one.
    """
    ref_leaves, treedef = jax.tree.flatten(jax.tree.map(np.asarray, reference))
    rep_leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(replicates)]
    per_component = component_leaves(reference, n_components)
    n_boot = rep_leaves[0].shape[0]
    cost = np.zeros((n_boot, n_components, n_components))
    for leaf, ref, keep in zip(rep_leaves, ref_leaves, per_component, strict=True):
        if not keep:
            continue
        ref = ref.reshape(n_components, -1).astype(np.float64)
        rep = leaf.reshape(n_boot, n_components, -1).astype(np.float64)
        # Standardised by the spread of the reference's components, so no leaf's units dominate.
        scale = np.var(ref, axis=0).mean() + np.finfo(np.float64).tiny
        cost += np.mean((rep[:, :, None, :] - ref[None, None, :, :]) ** 2, axis=-1) / scale
    order = np.zeros((n_boot, n_components), int)
    for b in range(n_boot):
        columns = assignment(np.nan_to_num(cost[b], nan=1e300, posinf=1e300))
        order[b, columns] = np.arange(n_components)
    rows = np.arange(n_boot)[:, None]
    matched = [leaf[rows, order] if keep else leaf
               for leaf, keep in zip(rep_leaves, per_component, strict=True)]
    return jax.tree.unflatten(treedef, matched), order
