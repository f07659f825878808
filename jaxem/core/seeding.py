"""Seeding for initialisers: k-means++, random rows, random or one-hot responsibilities. All are
pure JAX and run inside the compiled fit, vmapped over restarts. The initialisers built on them
(k-means, which is a model) are :mod:`jaxem.models.init`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def squared_distances(X: Array, centers: Array) -> Array:
    """``[N, K]`` squared Euclidean distances between rows of ``X [N, D]`` and ``centers [K, D]``.

    Computed as ``|x|^2 - 2 x.c + |c|^2`` (one matrix product) and clamped at 0 against round-off.
    """
    cross = X @ centers.T
    d2 = jnp.sum(X * X, axis=1)[:, None] - 2.0 * cross + jnp.sum(centers * centers, axis=1)[None]
    return jnp.maximum(d2, 0.0)


def local_trials(n_clusters: int) -> int:
    """Candidates per step of greedy k-means++: ``2 + floor(ln K)``, as scikit-learn draws."""
    return 2 + int(math.log(n_clusters)) if n_clusters > 1 else 1


def kmeans_plusplus(key: Array, X: Array, n_clusters: int, weights: Array | None = None,
                    n_trials: int | None = None, robust: bool = False) -> Array:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii, 2007; the greedy variant scikit-learn uses).

    The first centre is a random row; each next one is the best of ``n_trials`` candidate rows,
    each drawn with probability proportional to its squared distance ``D²`` to the nearest centre
    so far: the candidate that leaves the smallest total ``Σ_n w_n D²_n`` wins. One candidate per
    step is the original k-means++; several keep one unlucky draw from seeding the restarts badly.

    Args:
        key: PRNG key.
        X: data ``[N, D]``.
        n_clusters: number of centres ``K``.
        weights: optional ``[N]`` row weights (0: a row never seeds and counts for nothing, as
            padding must).
        n_trials: candidates per step (default :func:`local_trials`).
        robust: draw with ``D²`` capped at twice its weighted median, so that a few gross
            outliers, whose ``D²`` would otherwise dominate, are drawn no more often than rows of
            a real cluster (for families meant to resist outliers).

    Returns:
        ``[K, D]`` centres, each a row of ``X``.
    """
    X = jnp.asarray(X)
    n = X.shape[0]
    n_trials = local_trials(n_clusters) if n_trials is None else n_trials
    w = jnp.ones((n,), X.dtype) if weights is None else weights.astype(X.dtype)
    # All random numbers are drawn up front: PRNG calls inside the loop body multiply compile time.
    uniforms = jax.random.uniform(key, (n_clusters, n_trials), X.dtype)

    def draw(mass, u):
        # Inverse-CDF draws of rows with probability proportional to ``mass`` (uniform over the
        # weighted rows when all of it is 0: every row coincides with a centre).
        mass = jnp.where(jnp.sum(mass) > 0, mass, w)
        cdf = jnp.cumsum(mass)
        # compare_all: a few comparisons per row, which XLA:CPU compiles in about half the time
        # of the default binary search's loop.
        return jnp.minimum(jnp.searchsorted(cdf, u * cdf[-1], side="right", method="compare_all"),
                           n - 1)

    first = X[draw(w, uniforms[0, :1])[0]]
    centers = jnp.zeros((n_clusters, X.shape[1]), X.dtype).at[0].set(first)
    closest = squared_distances(X, first[None])[:, 0]

    def add_center(i, carry):
        centers, closest = carry
        mass = w * closest
        if robust:
            mass = jnp.minimum(mass, 2.0 * w * weighted_median(closest, w))
        candidates = draw(mass, uniforms[i])
        d2 = jnp.minimum(closest[:, None], squared_distances(X, X[candidates]))   # [N, trials]
        best = jnp.argmin(w @ d2)
        return centers.at[i].set(X[candidates[best]]), d2[:, best]

    centers, _ = jax.lax.fori_loop(1, n_clusters, add_center, (centers, closest))
    return centers


def weighted_median(values: Array, weights: Array) -> Array:
    """The weighted median of ``values [N]`` under non-negative ``weights [N]`` (a scalar)."""
    order = jnp.argsort(values)
    cdf = jnp.cumsum(weights[order])
    return values[order][jnp.minimum(jnp.searchsorted(cdf, 0.5 * cdf[-1]), values.shape[0] - 1)]


def random_rows(key: Array, X: Array, n: int, weights: Array | None = None) -> Array:
    """``n`` distinct rows of ``X`` (all rows, repeated, when ``X`` has fewer than ``n``), drawn
    with probability proportional to optional ``weights [N]`` (rows of weight 0 never)."""
    p = None if weights is None else weights / jnp.sum(weights)
    idx = jax.random.choice(key, X.shape[0], (n,), replace=X.shape[0] < n, p=p)
    return X[idx]


def random_responsibilities(key: Array, n_rows: int, n_components: int, dtype) -> Array:
    """``[N, K]`` rows drawn uniformly from the probability simplex."""
    return jax.random.dirichlet(key, jnp.ones((n_components,), dtype), (n_rows,))


def hard_responsibilities(labels: Array, n_components: int, dtype) -> Array:
    """One-hot ``[N, K]`` responsibilities from integer labels ``[N]``."""
    return jax.nn.one_hot(labels, n_components, dtype=dtype)
