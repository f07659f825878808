"""Mixtures of multivariate Student-t distributions (robust clustering), fitted by ECM.

Parameters (a dict):
    ``weights``    ``[K]`` mixing weights.
    ``means``      ``[K, D]`` locations.
    ``prec_chol``  the scale matrix's inverse Cholesky factor, as in
                   :mod:`jaxem.models.gaussian`: full ``[K, D, D]``, diag ``[K, D]``.
    ``dofs``       ``[K]`` degrees of freedom ``ν``.

The t is a Gaussian scale mixture: ``x | u, k ~ N(μ_k, Σ_k / u)``, ``u ~ Gamma(ν/2, ν/2)``. EM on the
data augmented with ``u`` (McLachlan & Peel, 2000, ch. 7) needs, per row and component, the
posterior expectations ``E[u] = (ν + D) / (ν + δ)`` and ``E[log u] = log E[u] + ψ((ν+D)/2) -
log((ν+D)/2)`` at the previous parameters (``δ`` the squared Mahalanobis distance). They enter the
additive statistics through the ``params`` that ``suff_stats`` receives:
``Σ r``, ``Σ r u``, ``Σ r u (x - m)``, ``Σ r u (x - m)(x - m)^T`` (about the previous means ``m``) and
``Σ r (log u - u)``. The M-step is then exact for the means and scales, and for each ``ν_k`` it
solves the concave 1-D problem ``log(ν/2) - ψ(ν/2) = -1 - mean(log u - u) + log(h) - ψ(h)``,
``h = (ν_old + D)/2``, so the observed-data log-likelihood never decreases.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from ..core import blocks
from ..core import constraints as C
from ..core.model import Model, model_factory
from . import gaussian as gaussian_family
from . import init as initialisers
from .common import centred_moments, dirichlet_log_prior, empty_components, mixing_weights
from .distributions import log_minus_digamma, solve_log_minus_digamma

Array = jax.Array

COVARIANCE_TYPES = ("full", "diag")
INIT_METHODS = initialisers.INIT_METHODS
DOF_BOUNDS = (0.1, 1000.0)
"""Estimated degrees of freedom stay in this interval (above it the t is Gaussian to within
float precision); clipping a concave 1-D maximiser keeps the M-step the constrained optimum."""


def _dofs(params, fixed_dof: float | None) -> Array:
    # A fixed ν is a constant, not the parameter leaf, so a gradient M-step cannot move it.
    return params["dofs"] if fixed_dof is None else jnp.full_like(params["dofs"], fixed_dof)


def _batch_log_joint(params, X: Array, covariance_type: str, fixed_dof: float | None) -> Array:
    d = X.shape[1]
    nu = _dofs(params, fixed_dof)
    maha = gaussian_family._mahalanobis(params, X, covariance_type)
    # The Gaussian normaliser (log det A - D/2 log 2π) turned into the t's (log det A - D/2 log νπ).
    norm = (gaussian_family._log_normaliser(params["prec_chol"], covariance_type, d)
            + 0.5 * d * jnp.log(2.0 / nu) + gammaln(0.5 * (nu + d)) - gammaln(0.5 * nu))
    return jnp.log(params["weights"]) + norm - 0.5 * (nu + d) * jnp.log1p(maha / nu)


def _log_joint(params, x: Array, covariance_type: str, fixed_dof: float | None) -> Array:
    return _batch_log_joint(params, x[None], covariance_type, fixed_dof)[0]


def _moments(means: Array, X: Array, resp: Array, u: Array, covariance_type: str):
    """Scale-weighted moments about ``means [K, D]``: ``resp, u [N, K]``."""
    ru = resp * u
    first, second = centred_moments(X, means, ru, full=covariance_type == "full")
    return {"nk": jnp.sum(resp, axis=0), "nu": jnp.sum(ru, axis=0), "first": first,
            "second": second}


def _suff_stats(params, X: Array, resp: Array, covariance_type: str, fixed_dof: float | None):
    d = X.shape[1]
    nu = _dofs(params, fixed_dof)
    maha = gaussian_family._mahalanobis(params, X, covariance_type)
    u = (nu + d) / (nu + maha)                                                # E[u | x, k]
    stats = _moments(params["means"], X, resp, u, covariance_type)
    stats["log_u_minus_u"] = jnp.sum(resp * (jnp.log(u) - u), axis=0)
    return stats


def _maximize(stats, params, covariance_type: str, reg_covar: float, fixed_dof: float | None,
              dirichlet_alpha: float):
    nk = stats["nk"]
    empty, safe_nk = empty_components(nk)
    safe_nu = stats["nu"] + 10 * jnp.finfo(nk.dtype).eps
    offset = stats["first"] / safe_nu[:, None]
    means = jnp.where(empty[:, None], params["means"], params["means"] + offset)
    d = means.shape[1]
    # Σ_k = Σ r u (x - μ_new)(x - μ_new)^T / Σ r: the scale matrix divides by the responsibilities,
    # not by the scale weights.
    if covariance_type == "full":
        outer = offset[:, :, None] * offset[:, None, :]
        cov = (stats["second"] - safe_nu[:, None, None] * outer) / safe_nk[:, None, None]
        A = gaussian_family._precision_cholesky(cov + reg_covar * jnp.eye(d, dtype=cov.dtype))
        A = jnp.where(empty[:, None, None], params["prec_chol"], A)
    else:
        var = (stats["second"] - safe_nu[:, None] * offset * offset) / safe_nk[:, None] + reg_covar
        A = jnp.where(empty[:, None], params["prec_chol"], jax.lax.rsqrt(var))
    if fixed_dof is None:
        h = 0.5 * (params["dofs"] + d)
        target = -1.0 - stats["log_u_minus_u"] / safe_nk + log_minus_digamma(h)[0]
        dofs = jnp.clip(2.0 * solve_log_minus_digamma(target), *DOF_BOUNDS)
        dofs = jnp.where(empty, params["dofs"], dofs)
    else:
        dofs = params["dofs"]
    return {"weights": mixing_weights(nk, dirichlet_alpha), "means": means, "prec_chol": A,
            "dofs": dofs}


def _init(key: Array, X: Array, weights: Array | None = None, *, n_components: int,
          covariance_type: str, reg_covar: float, initial_dof: float, method: str):
    # A Gaussian fit to the starting responsibilities (u = 1) with the initial degrees of freedom;
    # rows weighted by optional ``weights [N]`` (0: padding, counts for nothing).
    k, d = n_components, X.shape[1]
    w = jnp.ones(X.shape[:1], X.dtype) if weights is None else weights.astype(X.dtype)
    # Seeded robustly: k-means++'s D² weighting would otherwise hand gross outliers a centre,
    # and a component on the outliers plus one over every cluster is a fit EM does not leave.
    resp = initialisers.initial_responsibilities(key, X, k, method, weights=weights, robust=True)
    start = {"weights": jnp.full((k,), 1.0 / k, X.dtype),
             "means": jnp.broadcast_to(w @ X / jnp.sum(w), (k, d)),
             "prec_chol": (jnp.broadcast_to(jnp.eye(d, dtype=X.dtype), (k, d, d))
                           if covariance_type == "full" else jnp.ones((k, d), X.dtype)),
             "dofs": jnp.full((k,), initial_dof, X.dtype)}
    # A component that no row was assigned to starts as the whole data's (broad) Gaussian.
    resp = 0.95 * resp + 0.05 / k
    # The first M-step weighs each row as the t E-step would, u = (ν + D) / (ν + δ), with δ its
    # squared distance to its starting centre in units of the median row's: rows far from every
    # cluster (gross outliers) then barely widen the starting scales, which would otherwise leave
    # two broad components that EM settles on (one over the outliers, one over the clusters).
    # The spread uses the unweighted responsibilities (no division by a row weight, which is 0 for
    # padding), and the median row's is floored relative to the mean row's, never at ``tiny``:
    # XLA rewrites ``(a / b) / c`` as ``a / (b * c)``, and two ``tiny`` floors multiply to 0, so
    # 0 / 0 made NaN when every row sits on its centre (one row, or all rows equal).
    weighted = resp * w[:, None]
    nk = jnp.sum(weighted, axis=0)
    centres = (weighted.T @ X) / nk[:, None]
    spread = jnp.sum(resp * initialisers.squared_distances(X, centres), axis=1)
    resp = weighted
    mean_spread = w @ spread / jnp.sum(w)
    typical = jnp.maximum(initialisers.weighted_median(spread, w),
                          jnp.finfo(X.dtype).eps * mean_spread)
    # typical is 0 only when every weighted row is on its centre (spread 0): every ratio is then 0.
    ratio = spread / jnp.where(typical > 0, typical, jnp.ones_like(typical))
    u = (initial_dof + d) / (initial_dof + d * ratio)
    stats = blocks.blocked_suff_stats(
        lambda p, xb, ru: _moments(p["means"], xb, ru[:, :k], ru[:, k:], covariance_type),
        start, X, jnp.concatenate([resp, jnp.broadcast_to(u[:, None], resp.shape)], axis=1))
    stats["log_u_minus_u"] = -stats["nk"]
    return _maximize(stats, start, covariance_type, reg_covar, initial_dof, 1.0)


@model_factory
def student_t_mixture(n_components: int, covariance_type: str = "full", dof: float | None = None,
                      reg_covar: float = 1e-6, init: str = "kmeans",
                      dirichlet_alpha: float = 1.0) -> Model:
    """A mixture of multivariate Student-t distributions with an ECM (closed-form) M-step.

    Args:
        n_components: number of components ``K``.
        covariance_type: ``"full"`` (scale matrices ``[K, D, D]``) or ``"diag"``.
        dof: fixed degrees of freedom for every component, or ``None`` to estimate one per
            component (started at 10, kept in :data:`DOF_BOUNDS`).
        reg_covar: added to the diagonal of every scale matrix in the M-step.
        init: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"`` (starting
            responsibilities, then one Gaussian M-step).
        dirichlet_alpha: symmetric Dirichlet prior ``α >= 1`` on the weights.

    Returns:
        A memoised :class:`jaxem.Model` for data ``[N, D]``.
    """
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got "
                         f"{covariance_type!r}")
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")
    if dof is not None and not (isinstance(dof, (int, float)) and math.isfinite(dof) and dof > 0):
        raise ValueError(f"dof must be a positive number or None (estimated), got {dof!r}")
    if not dirichlet_alpha >= 1.0:
        raise ValueError(f"dirichlet_alpha must be >= 1, got {dirichlet_alpha!r}")
    ct = covariance_type
    fixed = None if dof is None else float(dof)
    chol = C.cholesky if ct == "full" else C.positive
    init_fn = functools.partial(_init, n_components=n_components, covariance_type=ct,
                                reg_covar=reg_covar, initial_dof=10.0 if fixed is None else fixed,
                                method=init)
    return Model(
        init=init_fn, weighted_init=init_fn,
        # With several restarts every second one starts from random responsibilities.
        explore_init=functools.partial(init_fn, method="random") if init == "kmeans" else None,
        log_joint=functools.partial(_log_joint, covariance_type=ct, fixed_dof=fixed),
        batch_log_joint=functools.partial(_batch_log_joint, covariance_type=ct, fixed_dof=fixed),
        suff_stats=functools.partial(_suff_stats, covariance_type=ct, fixed_dof=fixed),
        maximize=functools.partial(_maximize, covariance_type=ct, reg_covar=reg_covar,
                                   fixed_dof=fixed, dirichlet_alpha=float(dirichlet_alpha)),
        constraints={"weights": C.simplex, "means": C.real, "prec_chol": chol,
                     "dofs": C.positive},
        n_components=n_components,
        name=f"student_t_mixture({n_components}, {ct!r}, dof={dof})",
        log_prior=(None if dirichlet_alpha == 1.0 else
                   lambda params: dirichlet_log_prior(params["weights"], dirichlet_alpha)),
    )
