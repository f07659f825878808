"""The missing-value variant of the Gaussian mixtures (``gaussian_mixture(..., missing=True)``).

NaN entries are marginalised exactly: the E-step uses each row's observed coordinates, and the
statistics are the expected complete-data ones (conditional means of the missing coordinates,
conditional covariances added to the second moment) in the layout of the complete-data
statistics, so :mod:`jaxem.models.gaussian`'s M-step serves both.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def impute_column_means(X: Array) -> Array:
    """NaN entries replaced by their column's observed mean (for initialisation only)."""
    return jnp.where(jnp.isnan(X), jnp.nanmean(X, axis=0), X)


# The missing-value variant factors one small matrix per (row, component). jaxlib's batched CPU
# LAPACK kernels (potrf, trsm) split a large batch over the intra-op thread pool and wait on it;
# two such calls running at once (the E-step's and the statistics') can take every worker of a
# small pool and deadlock (seen with jaxlib 0.10.2 on 2 cores). These plain-JAX loops over D
# avoid the custom calls; D is small whenever per-row factorisations are affordable at all.
def _cholesky(M: Array) -> Array:
    """Lower Cholesky factor of symmetric positive definite ``M [..., D, D]``, column by column."""
    d = M.shape[-1]
    cols = []
    for j in range(d):
        v = M[..., :, j]
        if j:
            done = jnp.stack(cols, axis=-1)                          # [..., D, j]
            v = v - jnp.einsum("...ik,...k->...i", done, done[..., j, :])
        col = v / jnp.sqrt(v[..., j])[..., None]
        cols.append(jnp.where(jnp.arange(d) >= j, col, 0.0))
    return jnp.stack(cols, axis=-1)


def _solve_lower(L: Array, B: Array) -> Array:
    """``X`` with ``L X = B`` for lower-triangular ``L [..., D, D]`` and ``B [..., D, m]``."""
    rows = []
    for i in range(L.shape[-1]):
        r = B[..., i, :]
        if i:
            r = r - jnp.einsum("...k,...km->...m", L[..., i, :i], jnp.stack(rows, axis=-2))
        rows.append(r / L[..., i, i][..., None])
    return jnp.stack(rows, axis=-2)


def _dense_covariances(params, covariance_type: str) -> Array:
    """``[K, D, D]`` covariances ``Σ = A^-1 A^-T`` (full or tied), without LAPACK calls."""
    A = params["prec_chol"]
    inv = _solve_lower(A, jnp.broadcast_to(jnp.eye(A.shape[-1], dtype=A.dtype), A.shape))
    cov = inv @ jnp.swapaxes(inv, -1, -2)
    return jnp.broadcast_to(cov, (params["means"].shape[0],) + cov.shape[-2:])


def _observed_terms(params, X: Array, covariance_type: str):
    """The Gaussian marginal of every row's observed coordinates under every component.

    Missing coordinates are marginalised exactly. For full and tied covariances, each (row,
    component) pair gets ``M = Σ_oo`` padded with the identity on the missing coordinates, whose
    Cholesky factor gives ``log|Σ_oo|`` and ``Σ_oo^-1 (x_o - μ_o)`` without gathering.

    Returns:
        ``(log_pdf [B, K], observed [B, D] bool, diff [B, K, D], chol)``: ``diff`` is ``x - μ_k``
        on observed coordinates and 0 elsewhere; ``chol [B, K, D, D]`` is the Cholesky factor of
        ``M`` (``None`` for diag and spherical).
    """
    observed = ~jnp.isnan(X)
    obs = observed.astype(X.dtype)
    x0 = jnp.where(observed, X, 0.0)
    diff = obs[:, None, :] * (x0[:, None, :] - params["means"][None])
    A = params["prec_chol"]
    chol = None
    if covariance_type in ("full", "tied"):
        cov = _dense_covariances(params, covariance_type)
        eye = jnp.eye(X.shape[1], dtype=X.dtype)
        M = (obs[:, None, :, None] * obs[:, None, None, :] * cov[None]
             + (1.0 - obs)[:, None, :, None] * eye)
        chol = _cholesky(M)
        z = _solve_lower(chol, diff[..., None])[..., 0]
        log_det = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    else:
        A = A if covariance_type == "diag" else A[:, None] * jnp.ones_like(params["means"])
        z = diff * A[None]
        log_det = -2 * obs @ jnp.log(A).T
    log_pdf = -0.5 * (jnp.sum(z * z, axis=-1) + log_det
                      + jnp.sum(obs, axis=1)[:, None] * math.log(2 * math.pi))
    return log_pdf, observed, diff, chol


def batch_log_joint(params, X: Array, covariance_type: str) -> Array:
    return jnp.log(params["weights"]) + _observed_terms(params, X, covariance_type)[0]


def log_joint(params, x: Array, covariance_type: str) -> Array:
    return batch_log_joint(params, x[None], covariance_type)[0]


def suff_stats(params, X: Array, resp: Array, covariance_type: str):
    """Expected complete-data statistics (exact EM with missing coordinates): each missing
    coordinate is replaced by its conditional mean given the row's observed ones, and the
    conditional covariance is added to the second moment. Same layout as the complete-data statistics of
    :mod:`jaxem.models.gaussian`, so the M-step is shared."""
    _, observed, diff, chol = _observed_terms(params, X, covariance_type)
    A = params["prec_chol"]
    missing = (~observed).astype(X.dtype)
    if covariance_type in ("full", "tied"):
        d = params["means"].shape[1]
        cov = _dense_covariances(params, covariance_type)
        # M^-1 = W^T W with W = chol^-1: on the observed block Σ_oo^-1, zero across, the
        # identity on the missing block.
        eye = jnp.eye(d, dtype=X.dtype)
        white = _solve_lower(chol, jnp.broadcast_to(eye, chol.shape))
        m_inv_diff = jnp.einsum("bkji,bkj->bki", white, jnp.einsum("bkjl,bkl->bkj", white, diff))
        centred = jnp.where(observed[:, None, :], diff, jnp.einsum("kde,bke->bkd", cov, m_inv_diff))
        # Σ_n r_nk C_nk = R_k Σ_k - Σ_k (Σ_n r_nk P_nk) Σ_k with P the zero-padded Σ_oo^-1;
        # complete rows (C = 0 exactly) are left out so they add no round-off.
        r_miss = resp * (jnp.sum(missing, axis=1) > 0)[:, None].astype(X.dtype)
        m_inv = jnp.swapaxes(white, -1, -2) @ white
        padded_inv = m_inv - missing[:, None, :, None] * eye
        G = jnp.einsum("bk,bkde->kde", r_miss, padded_inv)
        cond_cov = jnp.sum(r_miss, axis=0)[:, None, None] * cov - cov @ G @ cov
        second = jnp.einsum("bk,bkd,bke->kde", resp, centred, centred)
        second = second + cond_cov
    else:
        var = 1.0 / (A * A)
        var = var if covariance_type == "diag" else var[:, None] * jnp.ones_like(params["means"])
        centred = diff
        second = jnp.einsum("bk,bkd->kd", resp, diff * diff) + (resp.T @ missing) * var
    first = jnp.einsum("bk,bkd->kd", resp, centred)
    return {"nk": jnp.sum(resp, axis=0), "first": first, "second": second}
