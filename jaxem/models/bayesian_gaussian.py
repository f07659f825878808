"""Variational Bayesian Gaussian mixtures (scikit-learn's ``BayesianGaussianMixture``).

The parameters are those of the variational posterior ``q(π) Π_k q(μ_k, Λ_k)`` (Bishop 2006,
section 10.2; Blei & Jordan 2006 for the stick-breaking weights), and EM runs on it unchanged:

- log-joint: ``ℓ_nk = E_q[log π_k] + E_q[log N(x_n | μ_k, Λ_k^{-1})]``, the expected log-joint;
  the E-step is its softmax, as for every family;
- statistics: the Gaussian family's additive moments (:func:`jaxem.models.gaussian._suff_stats`);
- maximize: the closed-form posterior update (Dirichlet or Beta sticks, Normal-Wishart);
- ``log_prior(q) = -KL(q(θ) ‖ p(θ))``, so the engine's objective ``Σ_n logsumexp_k ℓ_nk +
  log_prior`` is the evidence lower bound at ``q(z) = softmax(ℓ)``, with every constant term.

Parameters (a dict):
    ``concentration``  Dirichlet ``α [K]``, or the sticks' Beta ``(a, b)`` as ``[2, K]``.
    ``mean_precision`` ``β [K]``; ``means`` ``m [K, D]``; ``dof`` ``ν [K]`` (tied: a scalar).
    ``prec_chol``      the Gaussian family's layout of ``A`` with ``A^T A = E_q[Λ] = ν W``: full
                       ``[K, D, D]``, tied ``[D, D]``, diag ``[K, D]``, spherical ``[K]``.

Diag, spherical and tied covariances are scikit-learn's: a Wishart posterior whose scale ``W`` is
held diagonal, a multiple of the identity, or shared by every component (the tied bound counts
its Wishart's KL once per component, and ``ν = ν0 + N / K``). Each update is the exact optimum of
the bound within that family, so the bound never decreases.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betaln, digamma, gammaln

from ..core import blocks
from ..core import constraints as C
from ..core.model import Model, model_factory
from ..core.validation import check_nonnegative_float, check_positive_int
from . import gaussian
from . import init as initialisers
from .common import empty_components
from .gaussian_prior import GaussianPrior

Array = jax.Array

PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")


def variational_prior(X, n_components: int, covariance_type: str = "full", *,
                      weight_concentration: float | None = None,
                      mean_precision: float | None = None, mean=None, covariance=None,
                      degrees_of_freedom: float | None = None) -> GaussianPrior:
    """The prior of a variational Gaussian mixture, with scikit-learn's data-based defaults.

    Args:
        X: data ``[N, D]``.
        n_components: ``K``.
        covariance_type: sets the shape of ``covariance``.
        weight_concentration: ``γ0 > 0`` of the Dirichlet (or of each stick's ``Beta(1, γ0)``);
            default ``1 / K``.
        mean_precision: ``β0 > 0`` (default 1).
        mean: ``m0 [D]`` (default: the data mean).
        covariance: ``W0^{-1}``, the Wishart's inverse scale on the precision: ``[D, D]`` (full,
            tied), ``[D]`` (diag) or a float (spherical); default the data's covariance
            (``ddof=1``), its diagonal, or the mean variance.
        degrees_of_freedom: ``ν0 > D - 1`` (default ``D``).

    Returns:
        A hashable :class:`GaussianPrior` (arrays as tuples of floats).
    """
    X = np.asarray(X, dtype=np.float64)
    d = X.shape[1]
    mean = X.mean(axis=0) if mean is None else np.asarray(mean, dtype=np.float64)
    if covariance is None:
        var = np.var(X, axis=0, ddof=1)
        covariance = {"full": np.atleast_2d(np.cov(X.T)), "tied": np.atleast_2d(np.cov(X.T)),
                      "diag": var, "spherical": var.mean()}[covariance_type]
    covariance = np.asarray(covariance, dtype=np.float64)
    prior = GaussianPrior(
        weight_concentration=float(1.0 / n_components if weight_concentration is None
                                   else weight_concentration),
        mean_precision=float(1.0 if mean_precision is None else mean_precision),
        mean=tuple(float(v) for v in np.atleast_1d(mean)),
        covariance=float(covariance) if covariance.ndim == 0 else
        tuple(tuple(map(float, row)) if covariance.ndim == 2 else float(row) for row in covariance),
        degrees_of_freedom=float(d if degrees_of_freedom is None else degrees_of_freedom))
    check_variational_prior(prior, covariance_type, d)
    return prior


def check_variational_prior(prior: GaussianPrior, covariance_type: str, n_features: int) -> None:
    """Raise a ValueError naming what is wrong with ``prior`` for a variational mixture."""
    if not isinstance(prior, GaussianPrior):
        raise ValueError(f"prior must be a GaussianPrior (see variational_prior), got "
                         f"{type(prior).__name__}")
    for name in ("weight_concentration", "mean_precision"):
        value = getattr(prior, name)
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} prior must be a positive float, got {value!r}")
    if prior.mean is None or len(prior.mean) != n_features:
        raise ValueError(f"mean prior must have shape ({n_features},) to match X")
    if not prior.degrees_of_freedom > n_features - 1:
        raise ValueError(f"degrees_of_freedom prior must be > {n_features - 1} (n_features - 1), "
                         f"got {prior.degrees_of_freedom!r}")
    psi = np.asarray(prior.covariance, dtype=np.float64)
    expected = {"full": (n_features,) * 2, "tied": (n_features,) * 2, "diag": (n_features,),
                "spherical": ()}[covariance_type]
    if psi.shape != expected:
        raise ValueError(f"covariance prior for covariance_type={covariance_type!r} must have "
                         f"shape {expected}, got {psi.shape}")
    positive = (np.allclose(psi, psi.T) and np.linalg.eigvalsh(psi).min() > 0 if psi.ndim == 2
                else np.all(psi > 0))
    if not positive:
        raise ValueError("covariance prior must be symmetric positive definite (positive for "
                         "diag and spherical)")


def expected_log_weights(concentration: Array, prior_type: str) -> Array:
    """``[K]`` ``E_q[log π_k]`` under the Dirichlet ``α [K]`` or the sticks ``(a, b) [2, K]``."""
    if prior_type == "dirichlet_distribution":
        return digamma(concentration) - digamma(jnp.sum(concentration))
    a, b = concentration
    total = digamma(a + b)
    # Stick k: log v_k + Σ_{j<k} log(1 - v_j).
    rest = jnp.cumsum(digamma(b) - total)
    return digamma(a) - total + jnp.concatenate([jnp.zeros_like(rest[:1]), rest[:-1]])


def expected_weights(concentration: Array, prior_type: str) -> Array:
    """``[K]`` ``E_q[π]``, normalised (scikit-learn's ``weights_``)."""
    if prior_type == "dirichlet_distribution":
        return concentration / jnp.sum(concentration)
    a, b = concentration
    left = jnp.concatenate([jnp.ones_like(a[:1]), jnp.cumprod(b / (a + b))[:-1]])
    weights = a / (a + b) * left
    return weights / jnp.sum(weights)


def _log_det_prec(A: Array, covariance_type: str, d: int) -> Array:
    """``log |A^T A|``: ``[K]``, or a scalar for tied."""
    if covariance_type in ("full", "tied"):
        return 2 * jnp.sum(jnp.log(jnp.diagonal(A, axis1=-2, axis2=-1)), axis=-1)
    if covariance_type == "diag":
        return 2 * jnp.sum(jnp.log(A), axis=-1)
    return 2 * d * jnp.log(A)


def _multi_digamma_sum(nu: Array, d: int) -> Array:
    """``Σ_{j<D} ψ((ν - j) / 2)``."""
    return jnp.sum(digamma(0.5 * (nu[..., None] - jnp.arange(d, dtype=nu.dtype))), axis=-1)


def _offsets(params, d: int, covariance_type: str, prior_type: str) -> Array:
    """``[K]`` the terms of ``ℓ_nk`` that do not depend on ``x``."""
    nu, beta = params["dof"], params["mean_precision"]
    # E[log|Λ|] = Σ_j ψ((ν - j)/2) + D log 2 + log|W|, with log|W| = log|A^T A| - D log ν.
    e_log_det = (_multi_digamma_sum(nu, d) + d * math.log(2.0)
                 + _log_det_prec(params["prec_chol"], covariance_type, d) - d * jnp.log(nu))
    return (expected_log_weights(params["concentration"], prior_type)
            + 0.5 * e_log_det - 0.5 * d * math.log(2 * math.pi) - 0.5 * d / beta)


def _batch_log_joint(params, X: Array, covariance_type: str, prior_type: str) -> Array:
    # E[(x - μ)^T Λ (x - μ)] = |A (x - m)|² + D / β; the D / β part is in the offsets.
    distances = gaussian._mahalanobis(params, X, covariance_type)
    return _offsets(params, X.shape[1], covariance_type, prior_type) - 0.5 * distances


def _log_joint(params, x: Array, covariance_type: str, prior_type: str) -> Array:
    return _batch_log_joint(params, x[None], covariance_type, prior_type)[0]


def _maximize(stats, params, covariance_type: str, prior_type: str, reg_covar: float,
              prior: GaussianPrior):
    """The posterior update from the statistics (scikit-learn's, reg_covar included: it is added
    to each component's scatter per unit weight)."""
    nk, first, second = stats["nk"], stats["first"], stats["second"]
    old = params["means"]
    k, d = old.shape
    dtype = old.dtype
    _, safe_nk = empty_components(nk)
    beta0, nu0, gamma0 = prior.mean_precision, prior.degrees_of_freedom, prior.weight_concentration
    m0 = jnp.asarray(prior.mean, dtype)
    psi = jnp.asarray(prior.covariance, dtype)
    beta = beta0 + nk
    means = old + (first + beta0 * (m0 - old)) / beta[:, None]
    offset = first / safe_nk[:, None]                       # x̄_k - m_old
    dev = old + offset - m0                                  # x̄_k - m0
    shrink = nk * beta0 / beta
    if covariance_type in ("full", "tied"):
        eye = jnp.eye(d, dtype=dtype)
        scatter = (second - first[:, :, None] * offset[:, None, :]
                   + nk[:, None, None] * reg_covar * eye
                   + shrink[:, None, None] * dev[:, :, None] * dev[:, None, :])
        if covariance_type == "full":
            nu = nu0 + nk
            cov = (psi + scatter) / nu[:, None, None]
        else:
            nu = nu0 + jnp.sum(nk) / k
            cov = (psi + jnp.sum(scatter, axis=0) / k) / nu
        A = gaussian._precision_cholesky(cov)
    else:
        scatter = second - first * offset + nk[:, None] * reg_covar + shrink[:, None] * dev * dev
        nu = nu0 + nk
        if covariance_type == "diag":
            cov = (psi + scatter) / nu[:, None]
        else:
            cov = (psi + jnp.mean(scatter, axis=1)) / nu
        A = 1.0 / jnp.sqrt(cov)
    if prior_type == "dirichlet_distribution":
        concentration = gamma0 + nk
    else:
        # Stick k takes N_k; the ones after it take the rest, Σ_{j>k} N_j.
        concentration = jnp.stack([1.0 + nk, gamma0 + (jnp.sum(nk) - jnp.cumsum(nk))])
    return {"concentration": concentration, "mean_precision": beta, "means": means, "dof": nu,
            "prec_chol": A}


def _log_multigamma(a: Array, d: int) -> Array:
    return d * (d - 1) / 4 * math.log(math.pi) + jnp.sum(
        gammaln(a[..., None] - 0.5 * jnp.arange(d, dtype=a.dtype)), axis=-1)


def _log_det_covariance_prior(prior: GaussianPrior, covariance_type: str, d: int) -> float:
    psi = np.asarray(prior.covariance, dtype=np.float64)
    if covariance_type in ("full", "tied"):
        return float(np.linalg.slogdet(psi)[1])
    return float(np.sum(np.log(psi)) if covariance_type == "diag" else d * np.log(psi))


def log_prior(params, covariance_type: str, prior_type: str, prior: GaussianPrior) -> Array:
    """``-KL(q(θ) ‖ p(θ))`` (scalar): the bound's part that does not depend on the data."""
    A, m, beta, nu = params["prec_chol"], params["means"], params["mean_precision"], params["dof"]
    k, d = m.shape
    dtype = m.dtype
    beta0, nu0, gamma0 = prior.mean_precision, prior.degrees_of_freedom, prior.weight_concentration
    psi = jnp.asarray(prior.covariance, dtype)
    conc = params["concentration"]
    if prior_type == "dirichlet_distribution":
        total = jnp.sum(conc)
        kl_weights = (gammaln(total) - jnp.sum(gammaln(conc)) - math.lgamma(k * gamma0)
                      + k * math.lgamma(gamma0)
                      + jnp.sum((conc - gamma0) * (digamma(conc) - digamma(total))))
    else:
        a, b = conc
        kl_weights = jnp.sum(math.log(1.0 / gamma0) - betaln(a, b) + (a - 1) * digamma(a)
                             + (b - gamma0) * digamma(b) + (1 + gamma0 - a - b) * digamma(a + b))
    # Wishart KL with log|W| = log|A^T A| - D log ν and ν tr(W0^{-1} W) = tr(A Ψ0 A^T).
    log_det_w = _log_det_prec(A, covariance_type, d) - d * jnp.log(nu)
    if covariance_type in ("full", "tied"):
        trace = jnp.einsum("...ij,jl,...il->...", A, psi, A)
    elif covariance_type == "diag":
        trace = jnp.sum(psi * A * A, axis=-1)
    else:
        trace = d * psi * A * A
    log_det_w0 = -_log_det_covariance_prior(prior, covariance_type, d)
    log_b = -0.5 * nu * log_det_w - 0.5 * nu * d * math.log(2.0) - _log_multigamma(0.5 * nu, d)
    log_b0 = (-0.5 * nu0 * log_det_w0 - 0.5 * nu0 * d * math.log(2.0)
              - _log_multigamma(jnp.asarray(0.5 * nu0, dtype), d))
    e_log_det = _multi_digamma_sum(nu, d) + d * math.log(2.0) + log_det_w
    kl_wishart = log_b - log_b0 + 0.5 * (nu - nu0) * e_log_det - 0.5 * nu * d + 0.5 * trace
    if covariance_type == "tied":
        kl_wishart = k * kl_wishart
    dev = m - jnp.asarray(prior.mean, dtype)
    if covariance_type in ("full", "tied"):
        white = jnp.einsum("ij,kj->ki" if covariance_type == "tied" else "kij,kj->ki", A, dev)
    else:
        white = dev * (A if covariance_type == "diag" else A[:, None])
    kl_means = 0.5 * (d * beta0 / beta - d + d * jnp.log(beta / beta0)
                      + beta0 * jnp.sum(white * white, axis=-1))
    return -(kl_weights + jnp.sum(kl_wishart) + jnp.sum(kl_means))


def _init(key: Array, X: Array, n_components: int, covariance_type: str, prior_type: str,
          reg_covar: float, prior: GaussianPrior, method: str):
    resp = initialisers.initial_responsibilities(key, X, n_components, method)
    # Moments about each starting cluster's mean (the statistics' centre).
    counts = jnp.sum(resp, axis=0)
    centres = (resp.T @ X) / jnp.maximum(counts, 1e-12)[:, None]
    return initial_params(X, resp, centres, covariance_type, prior_type, reg_covar, prior)


def initial_params(X: Array, resp: Array, centres: Array, covariance_type: str, prior_type: str,
                   reg_covar: float, prior: GaussianPrior):
    """The posterior update from responsibilities ``resp [N, K]`` (statistics about ``centres
    [K, D]``): the start scikit-learn's ``_initialize(X, resp)`` makes."""
    stats_fn = functools.partial(gaussian._suff_stats, covariance_type=covariance_type)
    start = {"means": centres}
    stats = blocks.blocked_suff_stats(stats_fn, start, X, resp)
    return _maximize(stats, start, covariance_type, prior_type, reg_covar, prior)


def bayesian_gaussian_mixture(n_components: int, prior: GaussianPrior,
                              covariance_type: str = "full",
                              prior_type: str = "dirichlet_process", reg_covar: float = 1e-6,
                              init: str = "kmeans") -> Model:
    """A variational Bayesian Gaussian mixture as a :class:`jaxem.Model`.

    Args:
        n_components: the largest number of components ``K``; those the data do not support get
            near-zero expected weight.
        prior: from :func:`variational_prior` (scikit-learn's defaults for the data).
        covariance_type: ``"full"``, ``"diag"``, ``"spherical"`` or ``"tied"``.
        prior_type: ``"dirichlet_process"`` (stick-breaking) or ``"dirichlet_distribution"``.
        reg_covar: added to every component's scatter per unit weight (scikit-learn's rule).
        init: as :func:`jaxem.models.init.initial_responsibilities`; the first parameters are
            the posterior update from those responsibilities.

    Returns:
        A memoised :class:`jaxem.Model` for data ``[N, D]``; its history is the evidence lower
        bound (``log_prior`` is ``-KL(q(θ) ‖ p(θ))``).
    """
    n_components = check_positive_int(n_components, "n_components")
    reg_covar = check_nonnegative_float(reg_covar, "reg_covar")
    if covariance_type not in gaussian.COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {gaussian.COVARIANCE_TYPES}, got "
                         f"{covariance_type!r}")
    if prior_type not in PRIOR_TYPES:
        raise ValueError(f"weight_concentration_prior_type must be one of {PRIOR_TYPES}, got "
                         f"{prior_type!r}")
    if init not in initialisers.INIT_METHODS:
        raise ValueError(f"init must be one of {initialisers.INIT_METHODS}, got {init!r}")
    check_variational_prior(prior, covariance_type, len(prior.mean or ()))
    return _bayesian_gaussian_mixture(int(n_components), prior, covariance_type, prior_type,
                                      float(reg_covar), init)


@model_factory
def _bayesian_gaussian_mixture(n_components, prior, ct, prior_type, reg_covar, init) -> Model:
    fixed = dict(covariance_type=ct, prior_type=prior_type)
    return Model(
        init=functools.partial(_init, n_components=n_components, reg_covar=reg_covar,
                               prior=prior, method=init, **fixed),
        log_joint=functools.partial(_log_joint, **fixed),
        batch_log_joint=functools.partial(_batch_log_joint, **fixed),
        suff_stats=functools.partial(gaussian._suff_stats, covariance_type=ct),
        maximize=functools.partial(_maximize, reg_covar=reg_covar, prior=prior, **fixed),
        log_prior=functools.partial(log_prior, prior=prior, **fixed),
        constraints={"concentration": C.positive, "mean_precision": C.positive,
                     "means": C.real, "dof": C.positive,
                     "prec_chol": gaussian.constraints_for(ct)["prec_chol"]},
        n_components=n_components,
        name=f"bayesian_gaussian_mixture({n_components}, {ct!r}, {prior_type!r})",
    )
