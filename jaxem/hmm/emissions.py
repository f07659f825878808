"""Built-in emissions, each a memoised :class:`HMM` factory with a closed-form M-step.

Gaussian emissions are the Gaussian mixture's densities and statistics without the mixing
weights (:mod:`jaxem.models.gaussian`): full, diagonal, spherical or tied covariances, stored as
``{"means": [K, D], "prec_chol": ...}``. Categorical emissions are one symbol per step,
``{"probs": [K, M]}``; Poisson emissions are ``D`` independent counts, ``{"rates": [K, D]}``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from ..core import constraints as C
from ..core.validation import check_nonnegative_float
from ..models import gaussian as G
from ..models import init as initialisers
from ..models.common import empty_components
from .model import HMM
from .passes import chain_probabilities

Array = jax.Array


# -- Gaussian ----------------------------------------------------------------------------------
def _drop_weights(params: dict) -> dict:
    return {"means": params["means"], "prec_chol": params["prec_chol"]}


def _gaussian_batch(params, X: Array, covariance_type: str) -> Array:
    norm = G._log_normaliser(params["prec_chol"], covariance_type, X.shape[1])
    return norm - 0.5 * G._mahalanobis(params, X, covariance_type)


def _gaussian_one(params, x: Array, covariance_type: str) -> Array:
    return _gaussian_batch(params, x[None], covariance_type)[0]


def _gaussian_maximize(stats, params, covariance_type: str, reg_covar: float, regularisation=None):
    constants = None if regularisation is None else _hmmlearn_constants(
        regularisation, covariance_type, *params["means"].shape, params["means"].dtype)
    return _drop_weights(G._maximize(stats, params, covariance_type, reg_covar,
                                     constants=constants))


def _hmmlearn_constants(regularisation: tuple, covariance_type: str, k: int, d: int, dtype):
    """hmmlearn's M-step regularisation ``(means_prior, means_weight, covars_prior,
    covars_weight)`` as the Gaussian M-step's ``(Ψ0, κ0, m0, extra)``.

    hmmlearn's update is ``μ = (w_m m0 + Σ r x) / (w_m + N)`` and ``Σ = (Ψ + Σ r (x - μ)(x - μ)^T
    + w_m (μ - m0)(μ - m0)^T) / (max(w_c - c, 0) + N)`` (``c`` = 1 for diag and spherical, ``D``
    for full and tied; a scalar ``Ψ`` fills every entry of a full matrix), which is the
    Normal-Wishart mode with these constants; spherical is the mean of the diagonal update.
    """
    means_prior, means_weight, covars_prior, covars_weight = (
        jnp.asarray(v, dtype) for v in regularisation)
    m0 = jnp.broadcast_to(means_prior, (k, d))
    kappa = jnp.broadcast_to(means_weight, (k,))
    if covariance_type in ("full", "tied"):
        extra = jnp.maximum(covars_weight - d, 0.0)
        shape = (k, d, d) if covariance_type == "full" else (d, d)
        psi = jnp.broadcast_to(covars_prior, shape)
    elif covariance_type == "diag":
        extra = jnp.broadcast_to(jnp.maximum(covars_weight - 1.0, 0.0), (k,))
        psi = jnp.broadcast_to(covars_prior, (k, d))
    else:
        extra = d * jnp.broadcast_to(jnp.maximum(covars_weight - 1.0, 0.0), (k,))
        psi = d * jnp.broadcast_to(covars_prior, (k,))
    return psi, kappa, m0, extra


def _hmmlearn_log_prior(params, covariance_type: str, regularisation: tuple):
    """The log density (up to a constant) whose mode :func:`_hmmlearn_constants` gives, so the
    history of a regularised fit (log-likelihood + this) never decreases: per state
    ``-extra/2 log|Σ| - ½ tr(Σ⁻¹ (Ψ + w_m (μ - m0)(μ - m0)^T))``."""
    means, A = params["means"], params["prec_chol"]
    k, d = means.shape
    psi, kappa, m0, extra = _hmmlearn_constants(regularisation, covariance_type, k, d,
                                                means.dtype)
    dev = means - m0
    if covariance_type in ("full", "tied"):
        # Σ⁻¹ = A^T A, log|Σ| = -2 Σ log diag(A).
        A = jnp.broadcast_to(A, (k, d, d))
        psi = jnp.broadcast_to(psi, (k, d, d))
        prec = jnp.swapaxes(A, -1, -2) @ A
        quad = (jnp.einsum("kij,kji->k", prec, psi)
                + kappa * jnp.einsum("ki,kij,kj->k", dev, prec, dev))
        log_det = -2.0 * jnp.sum(jnp.log(jnp.diagonal(A, axis1=-2, axis2=-1)), axis=-1)
        if covariance_type == "tied":  # one covariance, one prior on it; the means' terms add
            return -0.5 * (extra * log_det[0] + psi[0].ravel() @ prec[0].ravel()
                           + jnp.sum(kappa * jnp.einsum("ki,ij,kj->k", dev, prec[0], dev)))
        return -0.5 * jnp.sum(extra * log_det + quad)
    prec = A * A                                            # [K, D] or [K]
    if covariance_type == "diag":
        return -0.5 * jnp.sum(-extra[:, None] * jnp.log(prec)
                              + prec * (psi + kappa[:, None] * dev * dev))
    return -0.5 * jnp.sum(-extra * jnp.log(prec) + prec * (psi + kappa * jnp.sum(dev * dev, 1)))


def _gaussian_init(key, X, n_states: int, covariance_type: str, reg_covar: float, method: str):
    return _drop_weights(G._init(key, X, n_components=n_states, covariance_type=covariance_type,
                                 reg_covar=reg_covar, method=method))


def _gaussian_sample(key, params, state, covariance_type: str):
    mean = params["means"][state]
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    A = params["prec_chol"] if covariance_type == "tied" else params["prec_chol"][state]
    if covariance_type in ("full", "tied"):
        # Σ = L L^T with L = A^{-1}: x = μ + L ε.
        return mean + jax.scipy.linalg.solve_triangular(A, eps, lower=True)
    return mean + eps / A


@functools.cache
def gaussian_hmm(n_states: int, covariance_type: str = "full", reg_covar: float = 1e-6,
                 init: str = "kmeans", initial_concentration: float = 1.0,
                 transition_concentration: float = 1.0, init_reg_covar: float | None = None,
                 regularisation: tuple | None = None) -> HMM:
    """An HMM with Gaussian emissions on observations ``x [D]``.

    Args:
        n_states: hidden states ``K``.
        covariance_type: ``"full"``, ``"diag"``, ``"spherical"`` or ``"tied"``.
        reg_covar: added to every covariance's diagonal in the M-step.
        init: how emissions start, as in :func:`jaxem.gaussian_mixture`.
        initial_concentration, transition_concentration: Dirichlet priors on the chain.
        init_reg_covar: added to the starting covariances (default ``reg_covar``; hmmlearn's
            ``min_covar``).
        regularisation: optional hmmlearn M-step regularisation ``(means_prior, means_weight,
            covars_prior, covars_weight)``, each a float or nested tuples in hmmlearn's shapes.

    Returns:
        A memoised :class:`HMM`; emission parameters ``{"means": [K, D], "prec_chol": ...}`` with
        ``prec_chol`` as in :mod:`jaxem.models.gaussian`.
    """
    if covariance_type not in G.COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {G.COVARIANCE_TYPES}, got "
                         f"{covariance_type!r}")
    if init not in G.INIT_METHODS:
        raise ValueError(f"init must be one of {G.INIT_METHODS}, got {init!r}")
    check_nonnegative_float(reg_covar, "reg_covar")
    ct = covariance_type
    constraints = _drop_weights(G.constraints_for(ct))
    return HMM(
        init=functools.partial(_gaussian_init, n_states=n_states, covariance_type=ct,
                               reg_covar=reg_covar if init_reg_covar is None else init_reg_covar,
                               method=init),
        log_emission=functools.partial(_gaussian_one, covariance_type=ct),
        batch_log_emission=functools.partial(_gaussian_batch, covariance_type=ct),
        suff_stats=functools.partial(G._suff_stats, covariance_type=ct),
        maximize=functools.partial(_gaussian_maximize, covariance_type=ct, reg_covar=reg_covar,
                                   regularisation=regularisation),
        log_prior=None if regularisation is None else functools.partial(
            _hmmlearn_log_prior, covariance_type=ct, regularisation=regularisation),
        constraints=constraints, n_states=n_states,
        sample_emission=functools.partial(_gaussian_sample, covariance_type=ct),
        initial_concentration=initial_concentration,
        transition_concentration=transition_concentration,
        name=f"gaussian_hmm({n_states}, {ct!r})")


# -- categorical -------------------------------------------------------------------------------
def _safe_log(p: Array) -> Array:
    # A probability of exactly 0 gives log(tiny), not -inf, so 0 * log p stays 0 in the products.
    return jnp.log(jnp.maximum(p, jnp.finfo(p.dtype).tiny))


def _categorical_batch(params, X: Array) -> Array:
    symbols = X[:, 0].astype(jnp.int32)
    return _safe_log(params["probs"]).T[symbols]


def _categorical_one(params, x: Array) -> Array:
    return _categorical_batch(params, x[None])[0]


def _categorical_stats(params, X: Array, resp: Array, n_symbols: int):
    del params
    return {"counts": resp.T @ jax.nn.one_hot(X[:, 0].astype(jnp.int32), n_symbols,
                                              dtype=resp.dtype)}


def _categorical_maximize(stats, params, concentration=1.0):
    # hmmlearn's update, p ∝ max(counts + α - 1, 0); a state with no data keeps its row.
    return {"probs": chain_probabilities(stats["counts"], params["probs"], concentration)}


def _categorical_init(key, X, n_states: int, n_symbols: int):
    del X
    # Rows drawn uniformly from the simplex (as hmmlearn): distinct enough per state that EM does
    # not start on the symmetric saddle where every state emits alike.
    return {"probs": jax.random.dirichlet(key, jnp.ones((n_symbols,)), (n_states,))}


def _dirichlet_rows(params, concentration):
    probs = params["probs"]
    logs = jnp.where(probs > 0, jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0)
    return jnp.sum((jnp.asarray(concentration, probs.dtype) - 1.0) * logs)


def _categorical_sample(key, params, state):
    return jax.random.categorical(key, _safe_log(params["probs"][state]))[None]


@functools.cache
def categorical_hmm(n_states: int, n_symbols: int, initial_concentration: float = 1.0,
                    transition_concentration: float = 1.0,
                    emission_concentration: float | tuple = 1.0) -> HMM:
    """An HMM emitting one symbol in ``{0, ..., n_symbols - 1}`` per step (observations
    ``x [1]``, hmmlearn's layout). Emission parameters ``{"probs": [K, M]}``, rows on the simplex;
    each restart starts from rows drawn uniformly from the simplex. ``emission_concentration``:
    hmmlearn's ``emissionprob_prior`` (a number or ``[K][M]``), ``p ∝ max(counts + α - 1, 0)``."""
    if emission_concentration != 1.0:
        log_prior = functools.partial(_dirichlet_rows, concentration=emission_concentration)
    else:
        log_prior = None
    return HMM(
        init=functools.partial(_categorical_init, n_states=n_states, n_symbols=n_symbols),
        log_emission=_categorical_one, batch_log_emission=_categorical_batch,
        suff_stats=functools.partial(_categorical_stats, n_symbols=n_symbols),
        maximize=functools.partial(_categorical_maximize, concentration=emission_concentration),
        log_prior=log_prior, constraints={"probs": C.simplex}, n_states=n_states,
        sample_emission=_categorical_sample, initial_concentration=initial_concentration,
        transition_concentration=transition_concentration,
        name=f"categorical_hmm({n_states}, {n_symbols})")


# -- Poisson -----------------------------------------------------------------------------------
def _poisson_batch(params, X: Array) -> Array:
    rates = params["rates"]
    return (X @ _safe_log(rates).T - jnp.sum(rates, axis=1)
            - jnp.sum(gammaln(X + 1.0), axis=1, keepdims=True))


def _poisson_one(params, x: Array) -> Array:
    return _poisson_batch(params, x[None])[0]


def _poisson_stats(params, X: Array, resp: Array):
    del params
    return {"nk": jnp.sum(resp, axis=0), "sum_x": resp.T @ X}


def _poisson_maximize(stats, params, regularisation=None):
    # hmmlearn's lambdas_prior / lambdas_weight: the mode under a Gamma(prior + 1, weight) prior.
    prior, weight = (0.0, 0.0) if regularisation is None else (
        jnp.asarray(v, stats["sum_x"].dtype) for v in regularisation)
    empty, safe_nk = empty_components(stats["nk"])
    rates = (prior + stats["sum_x"]) / (weight + safe_nk[:, None])
    # A state with no data keeps its rates, unless a prior says where it should go.
    keep = empty[:, None] & (jnp.broadcast_to(prior + weight, rates.shape) == 0)
    return {"rates": jnp.where(keep, params["rates"], rates)}


def _poisson_log_prior(params, regularisation):
    prior, weight = (jnp.asarray(v, params["rates"].dtype) for v in regularisation)
    rates = params["rates"]
    return jnp.sum(prior * jnp.log(rates) - weight * rates)


def _poisson_init(key, X, n_states: int):
    _, labels = initialisers.kmeans(key, X, n_states)
    stats = _poisson_stats(None, X, initialisers.hard_responsibilities(labels, n_states, X.dtype))
    # Shrunk toward the overall mean by one pseudo-row: no rate starts at exactly 0.
    rates = (stats["sum_x"] + jnp.mean(X, axis=0) + 1e-3) / (stats["nk"][:, None] + 1.0)
    return {"rates": rates}


def _poisson_sample(key, params, state):
    rates = params["rates"][state]
    return jax.random.poisson(key, rates, rates.shape).astype(rates.dtype)


@functools.cache
def poisson_hmm(n_states: int, initial_concentration: float = 1.0,
                transition_concentration: float = 1.0,
                regularisation: tuple | None = None) -> HMM:
    """An HMM emitting ``D`` independent Poisson counts per step (observations ``x [D]``).
    Emission parameters ``{"rates": [K, D]}`` (hmmlearn's ``lambdas_``); k-means start.
    ``regularisation``: hmmlearn's ``(lambdas_prior, lambdas_weight)``, the update
    ``λ = (prior + Σ r x) / (weight + Σ r)``."""
    return HMM(
        init=functools.partial(_poisson_init, n_states=n_states),
        log_emission=_poisson_one, batch_log_emission=_poisson_batch, suff_stats=_poisson_stats,
        maximize=functools.partial(_poisson_maximize, regularisation=regularisation),
        log_prior=None if regularisation is None else functools.partial(
            _poisson_log_prior, regularisation=regularisation),
        constraints={"rates": C.positive}, n_states=n_states,
        sample_emission=_poisson_sample, initial_concentration=initial_concentration,
        transition_concentration=transition_concentration, name=f"poisson_hmm({n_states})")


# -- multinomial -------------------------------------------------------------------------------
def _multinomial_batch(params, X: Array) -> Array:
    # log n! - Σ_v log x_v! + Σ_v x_v log p_sv, with n = Σ_v x_v the row's own number of trials.
    coefficient = gammaln(jnp.sum(X, axis=1) + 1.0) - jnp.sum(gammaln(X + 1.0), axis=1)
    return coefficient[:, None] + X @ _safe_log(params["probs"]).T


def _multinomial_one(params, x: Array) -> Array:
    return _multinomial_batch(params, x[None])[0]


def _multinomial_stats(params, X: Array, resp: Array):
    del params
    return {"counts": resp.T @ X}


def _multinomial_sample(key, params, state, n_trials: int):
    draws = jax.random.categorical(key, _safe_log(params["probs"][state]), shape=(n_trials,))
    probs = params["probs"]
    return jnp.sum(jax.nn.one_hot(draws, probs.shape[1], dtype=probs.dtype), axis=0)


@functools.cache
def multinomial_hmm(n_states: int, n_symbols: int, n_trials: int | None = None,
                    initial_concentration: float = 1.0,
                    transition_concentration: float = 1.0) -> HMM:
    """An HMM emitting a vector of counts over ``n_symbols`` symbols per step (hmmlearn's
    ``MultinomialHMM``): ``x [V]`` with ``x_v`` the times symbol ``v`` came up in the step's
    ``Σ_v x_v`` trials, ``p(x | z = s) = Multinomial(x; Σ_v x_v, p_s)``.

    Args:
        n_states: hidden states ``S``; n_symbols: vocabulary size ``V``.
        n_trials: trials per step, needed only by :func:`jaxem.hmm.sample` (the likelihood takes
            each row's own total).
        initial_concentration, transition_concentration: Dirichlet priors on the chain.

    Returns:
        A memoised :class:`HMM`; emission parameters ``{"probs": [S, V]}``, rows on the simplex,
        each restart starting from rows drawn uniformly from the simplex. The M-step is
        ``p_sv ∝ Σ_t γ_t(s) x_tv`` (the categorical HMM's, on counts).
    """
    return HMM(
        init=functools.partial(_categorical_init, n_states=n_states, n_symbols=n_symbols),
        log_emission=_multinomial_one, batch_log_emission=_multinomial_batch,
        suff_stats=_multinomial_stats, maximize=_categorical_maximize,
        constraints={"probs": C.simplex}, n_states=n_states,
        sample_emission=(None if n_trials is None
                         else functools.partial(_multinomial_sample, n_trials=int(n_trials))),
        initial_concentration=initial_concentration,
        transition_concentration=transition_concentration,
        name=f"multinomial_hmm({n_states}, {n_symbols})")
