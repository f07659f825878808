"""k-means as a latent-variable model: the isotropic, equal-weight Gaussian mixture with one shared
variance, fitted by hard EM.

Parameters (a dict):
    ``means``     ``[K, D]`` cluster centres.
    ``variance``  scalar shared variance ``σ²``.

The log-joint is ``log p(x, z=k) = -log K - D/2 log(2πσ²) - |x - μ_k|² / (2σ²)``. Its most probable
component is the nearest centre whatever ``σ²`` is, so hard EM on this model (``e_step="hard"``)
*is* Lloyd's k-means: assign each row to its nearest centre, move each centre to its rows' mean.
The classification log-likelihood it climbs is ``-inertia / (2σ²) - N D/2 log(2πσ²) - N log K``,
with ``σ² = inertia / (N D)`` at each M-step. Soft EM on the same model is "soft k-means".

This is the one k-means of the library: :func:`jaxem.init.kmeans` (the initialiser every mixture
family offers) and :class:`jaxem.KMeans` both run it through the engine's compiled loop.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from ..core import blocks, estep
from ..core import seeding as initialisers
from ..core.model import Model, model_factory
from .common import empty_components

Array = jax.Array


def _centre(params) -> Array:
    # Distances are expanded as |x|² - 2 x·μ + |μ|² (one matrix product); taking them about the
    # centres' mean keeps float32 from cancelling away the spread of data far from the origin.
    return jnp.mean(params["means"], axis=0)


def squared_distances(params, X: Array) -> Array:
    """``[N, K]`` squared distances between rows of ``X [N, D]`` and the centres."""
    c = _centre(params)
    return initialisers.squared_distances(X - c, params["means"] - c)


def _half_scores(params, X: Array) -> tuple[Array, Array]:
    """``([K, N] scores, [N, D] shifted rows)``: the score of centre ``k`` for row ``x`` is
    ``(x - c)·(μ_k - c) - |μ_k - c|² / 2 = (|x - c|² - |x - μ_k|²) / 2``, with ``c`` the centres'
    mean, so the nearest centre has the largest score. One ``[K, D] x [D, N]`` product: laid out
    ``[K, N]`` so that the running comparison over centres reads contiguous rows."""
    c = _centre(params)
    shifted, offsets = X - c, params["means"] - c
    cross = jax.lax.dot_general(offsets, shifted, (((1,), (1,)), ((), ())))
    return cross - 0.5 * jnp.sum(offsets * offsets, axis=1)[:, None], shifted


def _nearest(params, X: Array) -> tuple[Array, Array, Array]:
    """``(nearest centre [N], squared distance to it [N], shifted rows [N, D])``."""
    scores, shifted = _half_scores(params, X)
    best, labels = estep.best_of_rows(scores)
    # Distances below 0 are round-off of the expansion |x - c|² - 2 score.
    return labels, jnp.maximum(jnp.sum(shifted * shifted, axis=1) - 2.0 * best, 0.0), shifted


def nearest_centres(params, X: Array) -> tuple[Array, Array]:
    """``(index of the nearest centre [N], squared distance to it [N])`` for rows ``X [N, D]``:
    the assignment hard EM makes (the first nearest on ties, as ``argmin`` picks)."""
    return _nearest(params, X)[:2]


def _normaliser(params) -> Array:
    n_clusters, d = params["means"].shape
    return -math.log(n_clusters) - 0.5 * d * jnp.log(2 * jnp.pi * params["variance"])


def _batch_log_joint(params, X: Array) -> Array:
    # -|x - μ_k|² / (2σ²) = -|x - c|² / (2σ²) + score_k / σ²: one product and two broadcasts, and
    # no cancellation beyond that of the centred product. Distances below 0 are round-off.
    scores, shifted = _half_scores(params, X)
    norm = _normaliser(params)
    row = norm - 0.5 * jnp.sum(shifted * shifted, axis=1) / params["variance"]
    return jnp.minimum(row[:, None] + scores.T / params["variance"], norm)


def _log_joint(params, x: Array) -> Array:
    return _batch_log_joint(params, x[None])[0]


def _suff_stats(params, X: Array, resp: Array):
    # Per cluster: weight, sum of the rows about the centre, and scatter about the current centre
    # Σ_n r_nk |x_n - μ_k|² (the objective's term; the M-step moves it to the new means, see
    # _maximize, so no sum of squares about any other point is needed).
    shifted = X - _centre(params)
    return {"nk": jnp.sum(resp, axis=0), "sum_x": resp.T @ shifted,
            "within": jnp.sum(resp * squared_distances(params, X), axis=0)}


def _classification_objective(params, stats) -> Array:
    # Σ_n w_n log p(x_n, z_n) = N_w (log normaliser) - Σ_k within_k / (2σ²) for hard stats.
    return (_normaliser(params) * jnp.sum(stats["nk"])
            - 0.5 * jnp.sum(stats["within"]) / params["variance"])


def _hard_block_stats(params, X: Array, weights: Array):
    # Lloyd's step with nothing per row beyond the product, the running comparison over centres
    # and sums by cluster index (O(N D), where the one-hot product of _suff_stats is O(N K D)).
    # The statistics, the scatter included, are all sums by index: a total over the rows would
    # cost XLA:CPU a reduction of its own, and its dispatches, in every block. The scatter is a
    # sum apart: as a column beside the rows, XLA would redo the running comparison per column.
    assignment, to_nearest, shifted = _nearest(params, X)
    k, d = params["means"].shape
    sums = jax.ops.segment_sum(jnp.concatenate([shifted, jnp.ones_like(X[:, :1])], axis=1)
                               * weights[:, None], assignment, k)
    stats = {"nk": sums[:, d], "sum_x": sums[:, :d],
             "within": jax.ops.segment_sum(weights * to_nearest, assignment, k)}
    return _classification_objective(params, stats), assignment, stats


def _maximize(stats, params):
    empty, safe_nk = empty_components(stats["nk"])
    c = _centre(params)
    local_means = stats["sum_x"] / safe_nk[:, None]
    means = jnp.where(empty[:, None], params["means"], c + local_means)
    # The scatter about the new means: Σ_n r_nk |x_n - μ_k|² = Σ_n r_nk |x_n - m_k|² +
    # n_k |m_k - μ_k|² for each cluster's mean m_k; an empty cluster keeps μ_k and adds 0.
    moved = jnp.where(empty[:, None], 0.0, local_means - (params["means"] - c))
    within = jnp.sum(stats["within"] - stats["nk"] * jnp.sum(moved * moved, axis=1))
    d = means.shape[1]
    # A positive floor: all rows on their centres (inertia 0) must not give σ² = 0 and -inf.
    floor = jnp.finfo(means.dtype).tiny ** 0.5
    variance = jnp.maximum(within / (jnp.sum(stats["nk"]) * d), floor)
    return {"means": means, "variance": variance}


def params_from_centers(X: Array, centers: Array, weights: Array | None = None) -> dict:
    """Parameters with the given centres ``[K, D]`` and the variance of ``X`` about its mean
    (rows weighted by optional ``weights [N]``)."""
    if weights is None:
        var = jnp.mean(jnp.var(X, axis=0))
    else:
        share = weights.astype(X.dtype) / jnp.sum(weights)
        var = jnp.mean(share @ (X - share @ X) ** 2)
    floor = jnp.finfo(X.dtype).tiny ** 0.5
    return {"means": centers.astype(X.dtype), "variance": jnp.maximum(var, floor).astype(X.dtype)}


INIT_METHODS = ("k-means++", "random_from_data")


def _init(key: Array, X: Array, weights: Array | None = None, *, n_clusters: int, method: str):
    if method == "k-means++":
        centers = initialisers.kmeans_plusplus(key, X, n_clusters, weights)
    else:
        centers = initialisers.random_rows(key, X, n_clusters, weights)
    return params_from_centers(X, centers, weights)


@model_factory
def isotropic_mixture(n_clusters: int, init: str = "k-means++") -> Model:
    """The isotropic, equal-weight, shared-variance Gaussian mixture (k-means under hard EM).

    Args:
        n_clusters: number of clusters ``K``.
        init: ``"k-means++"`` seeding or ``"random_from_data"`` (``K`` distinct random rows).

    Returns:
        A :class:`jaxem.Model` with a closed-form M-step; fit it with ``e_step="hard"`` for k-means.
    """
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")
    init_fn = functools.partial(_init, n_clusters=n_clusters, method=init)
    return Model(
        init=init_fn, weighted_init=init_fn,
        log_joint=_log_joint, batch_log_joint=_batch_log_joint,
        suff_stats=_suff_stats, maximize=_maximize, hard_block_stats=_hard_block_stats,
        n_components=n_clusters, name=f"isotropic_mixture(K={n_clusters})")


def lloyd(X: Array, centers: Array, max_iter: int = 20,
          weights: Array | None = None) -> tuple[Array, Array]:
    """k-means from ``centers [K, D]``: Lloyd's iterations (hard EM on :func:`isotropic_mixture`,
    with its own hard E-step and M-step) until the assignments stop changing or ``max_iter``
    iterations, rows weighted by optional ``weights [N]``. Traceable (runs inside other compiled
    programs).

    The loop is a bare ``while_loop`` over row blocks rather than the engine's fit loop: an
    initialiser needs no history, restarts or progress, and the lean loop compiles in a fraction
    of the time (the initialiser was most of a default fit's compilation).

    Returns:
        ``(centers [K, D], labels [N])``.
    """
    w = jnp.ones(X.shape[:1], X.dtype) if weights is None else weights.astype(X.dtype)
    Xb, wb = blocks.to_blocks(X, w, *blocks.plan_blocks(X.shape[0], None))

    def sweep(params):
        def block(x, weight):
            objective, _, stats = _hard_block_stats(params, x, weight)
            return objective, stats
        return blocks.sum_over_blocks(block, (Xb, wb))

    def step(state):
        i, params, last, _ = state
        objective, stats = sweep(params)
        return i + 1, _maximize(stats, params), objective, last

    # The classification objective repeats exactly once an iteration moved no row (the same
    # statistics give the same centres and variance): Lloyd's fixed point.
    inf = jnp.asarray(jnp.inf, X.dtype)
    _, params, _, _ = jax.lax.while_loop(
        lambda s: (s[0] < max_iter) & (s[2] != s[3]), step,
        (jnp.zeros((), jnp.int32), params_from_centers(X, centers, weights), inf, -inf))
    return params["means"], nearest_centres(params, X)[0]
