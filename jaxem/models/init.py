"""Initialisers shared by the model families: k-means++ seeding, Lloyd's k-means, random rows,
random responsibilities. All are pure JAX and run inside the compiled fit, vmapped over restarts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..core.seeding import (  # noqa: F401  (the initialisers' public names)
    hard_responsibilities,
    kmeans_plusplus,
    random_responsibilities,
    random_rows,
    squared_distances,
    weighted_median,
)
from .kmeans import lloyd

Array = jax.Array


def kmeans(key: Array, X: Array, n_clusters: int, max_iter: int = 20, weights: Array | None = None,
           robust: bool = False) -> tuple[Array, Array]:
    """Greedy k-means++ seeding followed by Lloyd's iterations; returns ``(centers [K, D],
    labels [N])``. ``weights [N]`` (optional) weigh the rows; ``robust`` seeds as
    :func:`jaxem.core.seeding.kmeans_plusplus` says.

    Lloyd's iterations are hard EM on :func:`jaxem.models.kmeans.isotropic_mixture`, the library's
    one k-means.
    """
    seeds = kmeans_plusplus(key, X, n_clusters, weights, robust=robust)
    return lloyd(X, seeds, max_iter, weights)


INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")
"""Starting-point strategies every family built on :func:`initial_responsibilities` offers."""


def initial_responsibilities(key: Array, X: Array, n_components: int, method: str,
                             weights: Array | None = None, robust: bool = False) -> Array:
    """Starting responsibilities ``[N, K]`` from which any family's M-step gives initial parameters.

    Args:
        key: PRNG key.
        X: ``[N, D]`` a numeric embedding of the data (finite; e.g. standardised, imputed).
        n_components: ``K``.
        method: ``"kmeans"`` (k-means++ seeding then Lloyd's iterations), ``"k-means++"`` (seeding
            only), ``"random_from_data"`` (``K`` random rows as centres) -- each then assigns every
            row to its nearest centre -- or ``"random"`` (rows drawn uniformly from the simplex).
        weights: optional ``[N]`` row weights the seeding honours (0: padding, never a centre).
        robust: seed k-means++ with capped distances, so gross outliers cannot take a centre.

    Returns:
        ``[N, K]`` rows on the probability simplex (one-hot except for ``"random"``).
    """
    if method not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {method!r}")
    if method == "random":
        return random_responsibilities(key, X.shape[0], n_components, X.dtype)
    if method == "kmeans":
        _, labels = kmeans(key, X, n_components, weights=weights, robust=robust)
    else:
        centers = (kmeans_plusplus(key, X, n_components, weights, robust=robust)
                   if method == "k-means++" else random_rows(key, X, n_components, weights))
        labels = jnp.argmin(squared_distances(X, centers), axis=1)
    return hard_responsibilities(labels, n_components, X.dtype)
