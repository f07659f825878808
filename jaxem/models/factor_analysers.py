"""Mixtures of factor analysers and of probabilistic PCA.

Component ``k`` is ``x = μ_k + W_k z + ε`` with factors ``z ~ N(0, I_q)`` and noise ``ε ~ N(0,
Ψ_k)``: a Gaussian with covariance ``C_k = W_k W_k^T + Ψ_k`` of rank ``q`` plus a diagonal
(Ghahramani & Hinton 1996); with ``Ψ_k = σ_k² I`` it is a mixture of probabilistic PCA (Tipping
& Bishop 1999).

Parameters (a dict):
    ``weights``  ``[K]``;  ``means``  ``[K, D]``;  ``loadings``  ``W [K, D, q]``;
    ``noise``    ``Ψ``: ``[K, D]`` variances, or ``[K]`` for the isotropic model.

Nothing ``D x D`` is ever formed. With ``M_k = I + W_k^T Ψ_k^{-1} W_k = L_k L_k^T`` (``q x q``),
Woodbury and the matrix determinant lemma give ``log|C_k| = log|Ψ_k| + log|M_k|`` and
``(x - μ)^T C^{-1} (x - μ) = Σ_d (x - μ)_d² / ψ_d - |L^{-1} W^T Ψ^{-1} (x - μ)|²``, so one block's
E-step is two products with ``X``, ``[D, K (q + 1)]`` and ``[D, K]``: ``O(N K D q)``.

The closed-form M-step is Ghahramani & Hinton's: EM over both latents (the component and the
factors), from the additive statistics ``N_k``, ``Σ r x``, ``Σ r x²`` (diagonal only), ``Σ r x
E[z]^T``, ``Σ r E[z]`` and ``Σ r E[z z^T]`` with ``E[z | x, k] = M_k^{-1} W_k^T Ψ_k^{-1} (x - μ_k)``
and ``Cov[z | x, k] = M_k^{-1}``. The augmented loadings ``[W_k, μ_k]`` are a weighted regression
of ``x`` on ``[E[z]; 1]`` and ``Ψ_k`` its residual variance (averaged over features for PPCA).
It maximises the complete-data Q over factors and components exactly, so for the mixture's own
Q (factors summed out) it is a generalised M-step: Q, and the log-likelihood, never decrease,
but one step does not maximise Q over the parameters as a gradient M-step run to convergence
does. Statistics are second moments about the origin, so centre the data first (the estimator
does).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from ..core import blocks, linalg
from ..core import constraints as C
from ..core.model import Model, model_factory
from ..core.validation import check_nonnegative_float, check_positive_int
from . import init as initialisers
from .common import empty_components, mixing_weights

Array = jax.Array


class Loadings(C.Constraint):
    """Unconstrained ``[..., D, q]`` factor loadings, identified only up to a rotation of the
    ``q`` factors (``W R`` with ``R`` orthogonal gives the same covariance): each ``D x q`` block
    has ``D q - q (q - 1) / 2`` free parameters (what BIC counts, see :meth:`n_free`)."""

    def __init__(self):
        super().__init__("loadings", lambda u: u, lambda p: p)

    @staticmethod
    def n_free(shape: tuple) -> int:
        """Free parameters of loadings of ``shape [..., D, q]``."""
        d, q = shape[-2:]
        return math.prod(shape[:-2]) * (d * q - q * (q - 1) // 2)


LOADINGS = Loadings()


def _noise(params) -> Array:
    """``[K, D]`` noise variances (the isotropic ``[K]`` broadcast over features)."""
    noise, means = params["noise"], params["means"]
    return noise if noise.ndim == 2 else jnp.broadcast_to(noise[:, None], means.shape)


def _woodbury(params):
    """Per component: ``1/ψ [K, D]``, ``B^T = L^{-1} W^T Ψ^{-1} [K, q, D]``, ``L^{-1} [K, q, q]``
    and ``log|C| [K]``."""
    W = params["loadings"]
    inv_psi = 1.0 / _noise(params)
    scaled = W * inv_psi[:, :, None]                                    # Ψ^{-1} W
    q = W.shape[-1]
    eye = jnp.eye(q, dtype=W.dtype)
    L = linalg.cholesky(eye + jnp.einsum("kdq,kdr->kqr", W, scaled))
    # Inverted once (q x q), then a product: XLA:CPU's triangular solve with D right-hand sides
    # took longer than the whole E-step's product with X.
    L_inv = linalg.solve_triangular(L, jnp.broadcast_to(eye, L.shape), lower=True)
    Bt = jnp.einsum("kqr,kdr->kqd", L_inv, scaled)
    log_det = (-jnp.sum(jnp.log(inv_psi), axis=1)
               + 2 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=1, axis2=2)), axis=1))
    return inv_psi, Bt, L_inv, log_det


def _project(params, X: Array):
    """``(log_joint [N, K], y [N, K, q], L^{-1})`` with ``y = L^{-1} W^T Ψ^{-1} (x - μ)``."""
    means = params["means"]
    k, d = means.shape
    inv_psi, Bt, L_inv, log_det = _woodbury(params)
    q = Bt.shape[1]
    # One product for the projections and the cross term of Σ (x - μ)² / ψ.
    right = jnp.concatenate([jnp.transpose(Bt, (2, 0, 1)).reshape(d, k * q),
                             (means * inv_psi).T], axis=1)               # [D, K q + K]
    product = X @ right
    y = product[:, :k * q].reshape(-1, k, q) - jnp.einsum("kqd,kd->kq", Bt, means)
    diagonal = ((X * X) @ inv_psi.T - 2 * product[:, k * q:]
                + jnp.sum(means * means * inv_psi, axis=1))
    mahalanobis = diagonal - jnp.sum(y * y, axis=-1)
    log_joint = (jnp.log(params["weights"])
                 - 0.5 * (d * math.log(2 * math.pi) + log_det + mahalanobis))
    return log_joint, y, L_inv


def _batch_log_joint(params, X: Array) -> Array:
    return _project(params, X)[0]


def _log_joint(params, x: Array) -> Array:
    return _batch_log_joint(params, x[None])[0]


def _factor_means(y: Array, L_inv: Array) -> Array:
    """``E[z | x, k] = L^{-T} y [N, K, q]``."""
    return jnp.einsum("kqp,nkq->nkp", L_inv, y)


def _stats_from(X: Array, resp: Array, y: Array, L_inv: Array):
    n, k = resp.shape
    q = y.shape[-1]
    # E[z z^T] = M^{-1} + E[z] E[z]^T with M^{-1} = L^{-T} L^{-1}.
    Ez = _factor_means(y, L_inv)
    rz = resp[:, :, None] * Ez
    # Σ r x E[z]^T and Σ r x in one product over rows.
    cross = X.T @ jnp.concatenate([rz.reshape(n, k * q), resp], axis=1)   # [D, K q + K]
    nk = jnp.sum(resp, axis=0)
    return {"nk": nk, "sx": cross[:, k * q:].T, "sxx": ((X * X).T @ resp).T,
            "sxz": jnp.transpose(cross[:, :k * q].reshape(-1, k, q), (1, 0, 2)),
            "sz": jnp.sum(rz, axis=0),
            "szz": (jnp.einsum("nkp,nkq->kpq", rz, Ez)
                    + nk[:, None, None] * jnp.einsum("kqp,kqr->kpr", L_inv, L_inv))}


def _suff_stats(params, X: Array, resp: Array):
    _, y, L_inv = _project(params, X)
    return _stats_from(X, resp, y, L_inv)


def _block_stats(params, X: Array, posterior):
    # The E-step's projections serve the statistics too: one product with X, not two.
    log_joint, y, L_inv = _project(params, X)
    row_objectives, resp = posterior(log_joint)
    return row_objectives, _stats_from(X, resp, y, L_inv)


def _maximize(stats, params, isotropic: bool, reg_covar: float):
    nk = stats["nk"]
    empty, safe_nk = empty_components(nk)
    q = stats["sz"].shape[-1]
    # [W, μ] = Σ r x [E z; 1]^T (Σ r [E z; 1][E z; 1]^T)^{-1}.
    szz = jnp.concatenate([
        jnp.concatenate([stats["szz"], stats["sz"][:, :, None]], axis=2),
        jnp.concatenate([stats["sz"], safe_nk[:, None]], axis=1)[:, None, :]], axis=1)
    # An empty component's system is singular; it keeps its parameters below.
    szz = szz + empty[:, None, None] * jnp.eye(q + 1, dtype=szz.dtype)
    sxz = jnp.concatenate([stats["sxz"], stats["sx"][:, :, None]], axis=2)   # [K, D, q+1]
    # Inverted (q + 1 square) and then multiplied: a solve with D right-hand sides is slow on
    # XLA:CPU.
    augmented = jnp.einsum("kdi,kij->kdj", sxz, linalg.inv(szz))
    noise = (stats["sxx"] - jnp.sum(augmented * sxz, axis=2)) / safe_nk[:, None]
    if isotropic:
        noise = jnp.mean(noise, axis=1)
    noise = jnp.maximum(noise, 0.0) + reg_covar
    keep = empty if noise.ndim == 1 else empty[:, None]
    return {"weights": mixing_weights(nk),
            "means": jnp.where(empty[:, None], params["means"], augmented[..., q]),
            "loadings": jnp.where(empty[:, None, None], params["loadings"], augmented[..., :q]),
            "noise": jnp.where(keep, params["noise"], noise)}


def _init(key: Array, X: Array, n_components: int, n_factors: int, isotropic: bool,
          reg_covar: float, method: str):
    """Responsibilities from ``method``; then, from random loadings and each cluster's
    variances, one M-step: its regression on the factors' expectations is a step of subspace
    iteration, so the loadings start towards each cluster's principal directions."""
    k_resp, k_load = jax.random.split(key)
    resp = initialisers.initial_responsibilities(k_resp, X, n_components, method)
    nk = jnp.maximum(jnp.sum(resp, axis=0), 1e-12)
    means = (resp.T @ X) / nk[:, None]
    var = jnp.maximum((resp.T @ (X * X)) / nk[:, None] - means * means, 0.0) + jnp.var(X, 0) * 1e-3
    noise = jnp.mean(var, axis=1) if isotropic else var
    loadings = (jax.random.normal(k_load, (n_components, X.shape[1], n_factors), X.dtype)
                * jnp.sqrt(var)[:, :, None] / math.sqrt(X.shape[1]))
    start = {"weights": nk / jnp.sum(nk), "means": means, "loadings": loadings, "noise": noise}
    stats = blocks.blocked_suff_stats(_suff_stats, start, X, resp)
    return _maximize(stats, start, isotropic, reg_covar)


def mixture_of_factor_analysers(n_components: int, n_factors: int, isotropic: bool = False,
                                reg_covar: float = 1e-6, init: str = "kmeans") -> Model:
    """A mixture of factor analysers (or, ``isotropic=True``, of probabilistic PCA).

    Args:
        n_components: ``K``.
        n_factors: ``q``, the rank of each component's low-rank covariance part.
        isotropic: noise ``σ_k² I`` (probabilistic PCA) instead of a diagonal ``Ψ_k``.
        reg_covar: added to every noise variance in the M-step (keeps them positive).
        init: as :func:`jaxem.models.init.initial_responsibilities`.

    Returns:
        A memoised :class:`jaxem.Model` for data ``[N, D]`` with ``D > q``.
    """
    n_components = check_positive_int(n_components, "n_components")
    n_factors = check_positive_int(n_factors, "n_factors")
    reg_covar = check_nonnegative_float(reg_covar, "reg_covar")
    if init not in initialisers.INIT_METHODS:
        raise ValueError(f"init must be one of {initialisers.INIT_METHODS}, got {init!r}")
    return _mixture_of_factor_analysers(int(n_components), int(n_factors), bool(isotropic),
                                        float(reg_covar), init)


def _check_features(n_factors: int):
    def check(X):
        if X.ndim != 2 or X.shape[1] <= n_factors:
            raise ValueError(f"a mixture of factor analysers with n_factors={n_factors} needs "
                             f"rows of more than {n_factors} features, got data of shape "
                             f"{X.shape}; lower n_factors")
    return check


@model_factory
def _mixture_of_factor_analysers(n_components, n_factors, isotropic, reg_covar, init) -> Model:
    return Model(
        init=functools.partial(_init, n_components=n_components, n_factors=n_factors,
                               isotropic=isotropic, reg_covar=reg_covar, method=init),
        log_joint=_log_joint,
        batch_log_joint=_batch_log_joint,
        suff_stats=_suff_stats,
        block_stats=_block_stats,
        maximize=functools.partial(_maximize, isotropic=isotropic, reg_covar=reg_covar),
        constraints={"weights": C.simplex, "means": C.real, "loadings": LOADINGS,
                     "noise": C.positive},
        n_components=n_components,
        check_data=_check_features(n_factors),
        name=(f"mixture_of_{'ppca' if isotropic else 'factor_analysers'}"
              f"({n_components}, n_factors={n_factors})"),
    )


def covariances(params) -> Array:
    """``[K, D, D]`` dense covariances ``W W^T + Ψ`` (for checks and small ``D`` only)."""
    W = params["loadings"]
    return jnp.einsum("kdq,keq->kde", W, W) + jax.vmap(jnp.diag)(_noise(params))


def expected_factors(params, X: Array) -> tuple[Array, Array]:
    """``(E[z | x, k] [N, K, q], log_joint [N, K])`` for rows ``X [N, D]``."""
    log_joint, y, L_inv = _project(params, X)
    return _factor_means(y, L_inv), log_joint
