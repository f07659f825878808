"""Seeding for initialisers: k-means++, random rows, random or one-hot responsibilities. All are
pure JAX and run inside the compiled fit, vmapped over restarts. The initialisers built on them
(k-means, which is a model) are :mod:`jaxem.models.init`.
"""

from __future__ import annotations

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


def kmeans_plusplus(key: Array, X: Array, n_clusters: int) -> Array:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007).

    The first center is a uniformly random row; each next one is a row drawn with probability
    proportional to its squared distance to the nearest center chosen so far.

    Args:
        key: PRNG key.
        X: data ``[N, D]``.
        n_clusters: number of centers ``K``.

    Returns:
        ``[K, D]`` centers, each a row of ``X``.
    """
    n = X.shape[0]
    # All random numbers are drawn up front: PRNG calls inside the loop body multiply compile time.
    uniforms = jax.random.uniform(key, (n_clusters,), X.dtype)
    first = X[jnp.minimum((uniforms[0] * n).astype(jnp.int32), n - 1)]
    centers = jnp.zeros((n_clusters, X.shape[1]), X.dtype).at[0].set(first)
    closest = squared_distances(X, first[None])[:, 0]

    def add_center(i, carry):
        centers, closest = carry
        # Inverse-CDF draw of a row with probability proportional to its distance; when every
        # row coincides with a center (all distances 0) the draw is uniform instead.
        mass = jnp.where(jnp.sum(closest) > 0, closest, jnp.ones_like(closest))
        cdf = jnp.cumsum(mass)
        idx = jnp.sum(cdf <= uniforms[i] * cdf[-1])
        new = X[jnp.minimum(idx, n - 1)]
        closest = jnp.minimum(closest, squared_distances(X, new[None])[:, 0])
        return centers.at[i].set(new), closest

    centers, _ = jax.lax.fori_loop(1, n_clusters, add_center, (centers, closest))
    return centers


def random_rows(key: Array, X: Array, n: int) -> Array:
    """``n`` distinct rows of ``X`` (all rows, repeated, when ``X`` has fewer than ``n``)."""
    idx = jax.random.choice(key, X.shape[0], (n,), replace=X.shape[0] < n)
    return X[idx]


def random_responsibilities(key: Array, n_rows: int, n_components: int, dtype) -> Array:
    """``[N, K]`` rows drawn uniformly from the probability simplex."""
    return jax.random.dirichlet(key, jnp.ones((n_components,), dtype), (n_rows,))


def hard_responsibilities(labels: Array, n_components: int, dtype) -> Array:
    """One-hot ``[N, K]`` responsibilities from integer labels ``[N]``."""
    return jax.nn.one_hot(labels, n_components, dtype=dtype)
