"""Gaussian mixtures with full, diagonal, spherical and tied covariances.

Parameters (a dict):
    ``weights``    ``[K]`` mixing weights.
    ``means``      ``[K, D]``.
    ``prec_chol``  the Cholesky factor of the precision, as the lower-triangular ``A = L^{-1}`` where
                   ``Σ = L L^T``, so ``(x - μ)^T Σ^{-1} (x - μ) = |A (x - μ)|^2``:
                   full ``[K, D, D]``; tied ``[D, D]``; diag ``[K, D]`` (``1/σ``); spherical ``[K]``.

Sufficient statistics are moments about each component's previous mean ``m_k``
(``Σ_n r_nk (x_n - m_k)``, ``Σ_n r_nk (x_n - m_k)(x_n - m_k)^T``): additive over rows, computed as
batched matrix products, and without the float32 cancellation of moments about a common point.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from .. import _passes
from .. import constraints as C
from .. import init as initialisers
from ..model import Model

Array = jax.Array

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")


def _log_normaliser(prec_chol: Array, covariance_type: str, n_features: int) -> Array:
    """``[K]`` (or scalar for tied) ``log det A - D/2 log 2π``."""
    if covariance_type in ("full", "tied"):
        log_det = jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)
    elif covariance_type == "diag":
        log_det = jnp.sum(jnp.log(prec_chol), axis=-1)
    else:
        log_det = n_features * jnp.log(prec_chol)
    return log_det - 0.5 * n_features * math.log(2 * math.pi)


def _mahalanobis(params, X: Array, covariance_type: str) -> Array:
    """``[N, K]`` squared Mahalanobis distances.

    Every form whitens first and squares last: ``|A x - A μ|^2``. Expanding the square
    (``x'Λx - 2x'Λμ + μ'Λμ``) would be a few flops cheaper but loses ``eps * (|x|/σ)^2`` to
    cancellation, which in float32 ruins the likelihood of clusters far from the origin.
    """
    means, A = params["means"], params["prec_chol"]
    n, d = X.shape
    k = means.shape[0]
    if covariance_type == "full":
        # One [D, K*D] product for every component: y_nk = A_k x_n - A_k μ_k.
        W = A.transpose(2, 0, 1).reshape(d, k * d)
        y = (X @ W).reshape(n, k, d) - jnp.einsum("kd,ked->ke", means, A)[None]
    elif covariance_type == "tied":
        y = (X @ A.T)[:, None, :] - (means @ A.T)[None]
    elif covariance_type == "diag":
        y = X[:, None, :] * A[None] - (means * A)[None]
    else:
        y = (X[:, None, :] - means[None]) * A[None, :, None]
    return jnp.sum(y * y, axis=-1)


def _batch_log_joint(params, X: Array, covariance_type: str) -> Array:
    norm = _log_normaliser(params["prec_chol"], covariance_type, X.shape[1])
    return jnp.log(params["weights"]) + norm - 0.5 * _mahalanobis(params, X, covariance_type)


def _log_joint(params, x: Array, covariance_type: str) -> Array:
    # The one-observation contract is the batched form on a batch of one: one formula to trust.
    return _batch_log_joint(params, x[None], covariance_type)[0]


def _suff_stats(params, X: Array, resp: Array, covariance_type: str):
    # Moments about each component's previous mean: additive over rows (the means are fixed
    # during a pass) and accurate in float32 even for clusters many standard deviations from the
    # origin, where moments about one common point lose the variance to cancellation. The
    # component-major [K, B, D] layout turns the sums into K batched matrix products.
    centred = X[None, :, :] - params["means"][:, None, :]
    resp_k = resp.T
    first = jnp.einsum("kb,kbd->kd", resp_k, centred)
    if covariance_type in ("full", "tied"):
        second = jnp.einsum("kbd,kbe->kde", resp_k[:, :, None] * centred, centred)
    else:
        second = jnp.einsum("kb,kbd->kd", resp_k, centred * centred)
    return {"nk": jnp.sum(resp, axis=0), "first": first, "second": second}


def _precision_cholesky(cov: Array) -> Array:
    """``A = L^{-1}`` for ``cov = L L^T`` (batched over leading axes)."""
    L = jnp.linalg.cholesky(cov)
    eye = jnp.broadcast_to(jnp.eye(cov.shape[-1], dtype=cov.dtype), cov.shape)
    return jax.scipy.linalg.solve_triangular(L, eye, lower=True)


def _maximize(stats, params, covariance_type: str, reg_covar: float):
    nk = stats["nk"]
    eps = jnp.finfo(nk.dtype).eps
    total = jnp.sum(nk)
    # A component with (numerically) no data keeps its mean and covariance; its weight goes to ~0.
    empty = nk <= 10 * eps * total
    safe_nk = nk + 10 * eps
    offset = stats["first"] / safe_nk[:, None]
    means = jnp.where(empty[:, None], params["means"], params["means"] + offset)
    d = means.shape[1]
    if covariance_type == "full":
        cov = stats["second"] / safe_nk[:, None, None] - offset[:, :, None] * offset[:, None, :]
        A = _precision_cholesky(cov + reg_covar * jnp.eye(d, dtype=cov.dtype))
        A = jnp.where(empty[:, None, None], params["prec_chol"], A)
    elif covariance_type == "tied":
        scatter = stats["second"] - nk[:, None, None] * offset[:, :, None] * offset[:, None, :]
        cov = jnp.sum(scatter, axis=0) / total
        A = _precision_cholesky(cov + reg_covar * jnp.eye(d, dtype=cov.dtype))
    else:
        var = stats["second"] / safe_nk[:, None] - offset * offset + reg_covar
        if covariance_type == "spherical":
            var = jnp.mean(var, axis=1)
        A = jnp.where(empty if var.ndim == 1 else empty[:, None], params["prec_chol"],
                      1.0 / jnp.sqrt(var))
    weights = safe_nk / jnp.sum(safe_nk)
    return {"weights": weights, "means": means, "prec_chol": A}


def _broad_params(X: Array, n_components: int, covariance_type: str, means: Array):
    """Parameters with the given means, equal weights and the data's overall (co)variance; used
    as the fallback for components that an initial assignment leaves empty."""
    d = X.shape[1]
    var = jnp.var(X, axis=0) + 1e-6
    if covariance_type == "full":
        A = jnp.broadcast_to(jnp.diag(1.0 / jnp.sqrt(var)), (n_components, d, d))
    elif covariance_type == "tied":
        A = jnp.diag(1.0 / jnp.sqrt(var))
    elif covariance_type == "diag":
        A = jnp.broadcast_to(1.0 / jnp.sqrt(var), (n_components, d))
    else:
        A = jnp.full((n_components,), 1.0 / jnp.sqrt(jnp.mean(var)), X.dtype)
    weights = jnp.full((n_components,), 1.0 / n_components, X.dtype)
    return {"weights": weights, "means": means, "prec_chol": A.astype(X.dtype)}


def _init(key: Array, X: Array, n_components: int, covariance_type: str, reg_covar: float,
          method: str):
    stats_fn = functools.partial(_suff_stats, covariance_type=covariance_type)
    if method == "random":
        resp = initialisers.random_responsibilities(key, X.shape[0], n_components, X.dtype)
        centre = jnp.broadcast_to(jnp.mean(X, axis=0), (n_components, X.shape[1]))
        start = _broad_params(X, n_components, covariance_type, centre)
    elif method == "random_from_data":
        means = initialisers.random_rows(key, X, n_components)
        return _broad_params(X, n_components, covariance_type, means)
    else:
        if method == "kmeans":
            centers, labels = initialisers.kmeans(key, X, n_components)
        else:
            centers = initialisers.kmeans_plusplus(key, X, n_components)
            labels = jnp.argmin(initialisers.squared_distances(X, centers), axis=1)
        resp = initialisers.hard_responsibilities(labels, n_components, X.dtype)
        start = _broad_params(X, n_components, covariance_type, centers)
    stats = _passes.blocked_suff_stats(stats_fn, start, X, resp)
    return _maximize(stats, start, covariance_type, reg_covar)


def constraints_for(covariance_type: str):
    """The constraint pytree of Gaussian-mixture parameters (for the gradient M-step)."""
    chol = C.cholesky if covariance_type in ("full", "tied") else C.positive
    return {"weights": C.simplex, "means": C.real, "prec_chol": chol}


@functools.cache
def gaussian_mixture(n_components: int, covariance_type: str = "full", reg_covar: float = 1e-6,
                     init: str = "kmeans") -> Model:
    """A Gaussian mixture as a :class:`jaxem.Model` with a closed-form M-step.

    Args:
        n_components: number of components ``K``.
        covariance_type: ``"full"``, ``"diag"``, ``"spherical"`` or ``"tied"``.
        reg_covar: added to the diagonal of every covariance in the M-step (keeps them positive
            definite when a component sits on few or duplicate points).
        init: ``"kmeans"`` (k-means++ seeding then Lloyd's iterations, then one M-step on the hard
            assignment), ``"k-means++"`` (the seeding only), ``"random"`` (random responsibilities)
            or ``"random_from_data"`` (random rows as means, the data's variance for every
            component).

    Returns:
        A memoised :class:`jaxem.Model` for data ``[N, D]``; equal arguments give the same object,
        so repeated fits reuse compiled code.
    """
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got "
                         f"{covariance_type!r}")
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")
    ct = covariance_type
    return Model(
        init=functools.partial(_init, n_components=n_components, covariance_type=ct,
                               reg_covar=reg_covar, method=init),
        log_joint=functools.partial(_log_joint, covariance_type=ct),
        batch_log_joint=functools.partial(_batch_log_joint, covariance_type=ct),
        suff_stats=functools.partial(_suff_stats, covariance_type=ct),
        maximize=functools.partial(_maximize, covariance_type=ct, reg_covar=reg_covar),
        constraints=constraints_for(ct),
        n_components=n_components,
        name=f"gaussian_mixture({n_components}, {ct!r})",
    )


def covariances_from_prec_chol(prec_chol: Array, covariance_type: str) -> Array:
    """Covariances in scikit-learn's shapes: full ``[K, D, D]``, tied ``[D, D]``, diag ``[K, D]``,
    spherical ``[K]``."""
    if covariance_type in ("full", "tied"):
        # Σ = L L^T with L = A^{-1}.
        eye = jnp.broadcast_to(jnp.eye(prec_chol.shape[-1], dtype=prec_chol.dtype), prec_chol.shape)
        L = jax.scipy.linalg.solve_triangular(prec_chol, eye, lower=True)
        return L @ jnp.swapaxes(L, -1, -2)
    return 1.0 / (prec_chol * prec_chol)
