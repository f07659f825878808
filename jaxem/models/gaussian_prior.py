"""Conjugate priors for MAP-EM on Gaussian mixtures.

A symmetric Dirichlet on the mixing weights and a Normal-Wishart on each component's mean and
covariance (a Normal-inverse-gamma per variance for diag and spherical covariances), as in Fraley &
Raftery (2007), "Bayesian regularization for normal mixture estimation and model-based clustering".
The densities are written over the covariance (not the precision), and the M-step of
:mod:`jaxem.models.gaussian` is exactly the mode of likelihood x prior, so the penalised
log-likelihood ``log p(X | θ) + log p(θ)`` never decreases along a MAP-EM fit.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .common import dirichlet_log_prior

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GaussianPrior:
    """Conjugate prior for MAP-EM on a Gaussian mixture (hashable: a static part of the model).

    Attributes:
        weight_concentration: ``α >= 1`` of the symmetric Dirichlet on the weights (1: flat).
        mean_precision: ``κ0 >= 0``; each mean is ``N(m0, Σ_k / κ0)`` (0: flat).
        mean: ``m0``, a tuple of ``D`` floats (``None`` only without a covariance prior).
        covariance: ``Ψ0``, the scale of the inverse-Wishart on each covariance: nested tuples
            ``[D][D]`` (full, tied), a tuple ``[D]`` of inverse-gamma scales (diag), or one float
            (spherical); ``None`` for no prior on means and covariances.
        degrees_of_freedom: ``ν0`` (``> D - 1`` for full and tied, ``> 0`` otherwise).

    A component's covariance is then at least ``Ψ0 / (N_k + ν0 + D + 2)`` (full): a MAP fit
    cannot collapse onto a point.
    """

    weight_concentration: float = 1.0
    mean_precision: float = 0.0
    mean: tuple | None = None
    covariance: float | tuple | None = None
    degrees_of_freedom: float = 0.0


def check_prior(prior: GaussianPrior, covariance_type: str) -> None:
    """Raise a ValueError naming what is wrong with ``prior`` for ``covariance_type``."""
    if not isinstance(prior, GaussianPrior):
        raise ValueError(f"prior must be a GaussianPrior, got {type(prior).__name__}")
    if not prior.weight_concentration >= 1:
        raise ValueError(f"weight_concentration must be >= 1 (the Dirichlet mode), got "
                         f"{prior.weight_concentration!r}")
    if prior.covariance is None:
        if prior.mean_precision:
            raise ValueError("a prior on the means (mean_precision > 0) needs a covariance prior")
        return
    if not prior.mean_precision >= 0:
        raise ValueError(f"mean_precision must be >= 0, got {prior.mean_precision!r}")
    if prior.mean is None:
        raise ValueError("a covariance prior needs the mean prior m0 (prior.mean)")
    d = len(prior.mean)
    psi = np.asarray(prior.covariance, dtype=np.float64)
    expected = {"full": (d, d), "tied": (d, d), "diag": (d,), "spherical": ()}[covariance_type]
    if psi.shape != expected:
        raise ValueError(f"covariance prior for covariance_type={covariance_type!r} must have "
                         f"shape {expected}, got {psi.shape}")
    if psi.ndim == 2:
        if not np.allclose(psi, psi.T) or np.linalg.eigvalsh(psi).min() <= 0:
            raise ValueError("covariance prior must be symmetric positive definite")
    elif not np.all(psi > 0):
        raise ValueError(f"covariance prior must be positive, got {prior.covariance!r}")
    lowest = d - 1 if covariance_type in ("full", "tied") else 0
    if not prior.degrees_of_freedom > lowest:
        raise ValueError(f"degrees_of_freedom must be > {lowest} for covariance_type="
                         f"{covariance_type!r}, got {prior.degrees_of_freedom!r}")


def gaussian_prior(X, n_components: int, covariance_type: str = "full", *,
                   weight_concentration: float = 1.0, mean_precision: float = 0.01, mean=None,
                   covariance=None, degrees_of_freedom: float | None = None) -> GaussianPrior:
    """A :class:`GaussianPrior` with data-based defaults (Fraley & Raftery 2007).

    Args:
        X: data ``[N, D]`` (NaN entries are ignored).
        n_components: ``K``.
        covariance_type: the mixture's covariance type (sets the shape of ``covariance``).
        weight_concentration: Dirichlet ``α >= 1``.
        mean_precision: ``κ0`` (default 0.01: means barely shrunk towards ``m0``).
        mean: ``m0 [D]`` (default: the data mean).
        covariance: ``Ψ0`` in the shape of :class:`GaussianPrior` (default: the data's
            covariance, diagonal variances or mean variance, divided by ``K^(2/D)``, about one
            component's share of the spread).
        degrees_of_freedom: ``ν0`` (default ``D + 2``).

    Returns:
        A hashable :class:`GaussianPrior` (arrays stored as tuples of floats).
    """
    X = np.asarray(X, dtype=np.float64)
    d = X.shape[1]
    mean = np.nanmean(X, axis=0) if mean is None else np.asarray(mean, dtype=np.float64)
    if mean.shape != (d,):
        raise ValueError(f"mean prior must have shape ({d},) to match X, got {mean.shape}")
    if covariance is None:
        var = np.nanvar(X, axis=0)
        # With missing entries only the per-column variances are well defined.
        full = np.diag(var) if np.isnan(X).any() else np.atleast_2d(np.cov(X.T, bias=True))
        covariance = {"full": full, "tied": full, "diag": var,
                      "spherical": var.mean()}[covariance_type] / n_components ** (2 / d)
    covariance = np.asarray(covariance, dtype=np.float64)
    return GaussianPrior(
        weight_concentration=float(weight_concentration), mean_precision=float(mean_precision),
        mean=tuple(float(v) for v in mean),
        covariance=float(covariance) if covariance.ndim == 0 else
        tuple(tuple(map(float, row)) if covariance.ndim == 2 else float(row) for row in covariance),
        degrees_of_freedom=float(d + 2 if degrees_of_freedom is None else degrees_of_freedom))


def prior_constants(prior, covariance_type: str, n_features: int, n_components: int):
    """``(Ψ0, κ0, m0, extra)`` of the covariance M-step ``(Ψ0 + S_k + κ-term) / (N_k + extra)``;
    all zero without a Normal-Wishart prior, which gives the maximum-likelihood M-step."""
    if prior is None or prior.covariance is None:
        return 0.0, 0.0, 0.0, 0.0
    d = n_features
    # The exponent of the variance in prior x likelihood: inverse-Wishart (or inverse-gamma) on
    # the covariance plus one Normal on each mean (Fraley & Raftery 2007, MAP for mclust).
    extra = {"full": prior.degrees_of_freedom + d + 2,
             "tied": prior.degrees_of_freedom + d + 1 + n_components,
             "diag": prior.degrees_of_freedom + 3,
             "spherical": prior.degrees_of_freedom + d + 2}[covariance_type]
    return (jnp.asarray(prior.covariance), prior.mean_precision, jnp.asarray(prior.mean), extra)


def log_prior(params, covariance_type: str, prior) -> Array:
    """Log density (up to a constant) of ``prior`` at ``params`` (scalar).

    The symmetric Dirichlet on the weights plus, when ``prior.covariance`` is set, the
    Normal-Wishart on means and covariances, written as a density over the covariance
    (inverse-Wishart; inverse-gamma per variance for diag and spherical), so that
    the Gaussian M-step is exactly the mode of likelihood x prior.
    """
    total = dirichlet_log_prior(params["weights"], prior.weight_concentration)
    if prior.covariance is None:
        return total
    A, means = params["prec_chol"], params["means"]
    k, d = means.shape
    _, kappa, m0, extra = prior_constants(prior, covariance_type, d, k)
    psi = jnp.asarray(prior.covariance, A.dtype)
    dev = means - m0
    if covariance_type in ("full", "tied"):
        # Λ = A^T A: log|Λ| = 2 Σ log diag A, tr(Ψ0 Λ) = tr(A Ψ0 A^T), dev^T Λ dev = |A dev|^2.
        log_det_prec = 2 * jnp.sum(jnp.log(jnp.diagonal(A, axis1=-2, axis2=-1)), axis=-1)
        trace = jnp.einsum("...ij,jl,...il->...", A, psi, A)
        white = jnp.einsum("ij,kj->ki" if covariance_type == "tied" else "kij,kj->ki", A, dev)
    elif covariance_type == "diag":
        log_det_prec = jnp.sum(2 * jnp.log(A), axis=-1)
        trace = jnp.sum(psi * A * A, axis=-1)
        white = dev * A
    else:
        # One variance per component: its own log-precision, not the D-fold log-determinant.
        log_det_prec = 2 * jnp.log(A)
        trace = psi * A * A
        white = dev * A[:, None]
    # extra/2 is the power of |Λ| (of λ for spherical) in the prior density.
    return (total + jnp.sum(0.5 * extra * log_det_prec - 0.5 * trace)
            - 0.5 * kappa * jnp.sum(white * white))
