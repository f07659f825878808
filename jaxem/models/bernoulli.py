"""Mixtures of independent Bernoulli (or binomial, with ``n_trials``) features.

Parameters (a dict):
    ``weights``  ``[K]`` mixing weights.
    ``probs``    ``[K, D]`` success probability of each feature in each component.

An observation is ``x [D]`` with entries in ``{0, ..., n_trials}`` (``{0, 1}`` for Bernoulli); its
component log-density is ``Σ_d log C(n, x_d) + x_d log p_kd + (n - x_d) log(1 - p_kd)``. The
sufficient statistics are ``N_k = Σ_n r_nk`` and ``S_k = Σ_n r_nk x_n``, and the M-step is
``p_k = S_k / (n N_k)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from ..core import constraints as C
from ..core.model import Model, model_factory
from ..core.validation import check_positive_int, check_values
from . import init as initialisers
from .distributions import bernoulli_log_prob

Array = jax.Array

INIT_METHODS = ("kmeans", "random")


def _log_binomial_coefficient(x: Array, n_trials: int) -> Array:
    if n_trials == 1:
        return jnp.zeros(x.shape[:-1], x.dtype)
    n = jnp.asarray(n_trials, x.dtype)
    return jnp.sum(gammaln(n + 1) - gammaln(x + 1) - gammaln(n - x + 1), axis=-1)


def _batch_log_joint(params, X: Array, n_trials: int) -> Array:
    return (jnp.log(params["weights"]) + bernoulli_log_prob(params["probs"], X, n_trials)
            + _log_binomial_coefficient(X, n_trials)[:, None])


def _log_joint(params, x: Array, n_trials: int) -> Array:
    # The one-observation contract is the batched form on a batch of one: one formula to trust.
    return _batch_log_joint(params, x[None], n_trials)[0]


def _suff_stats(params, X: Array, resp: Array):
    del params
    return {"nk": jnp.sum(resp, axis=0), "sum_x": resp.T @ X}


def _maximize(stats, params, n_trials: int):
    nk = stats["nk"]
    eps = jnp.finfo(nk.dtype).eps
    empty = nk <= 10 * eps * jnp.sum(nk)
    safe_nk = nk + 10 * eps
    probs = jnp.clip(stats["sum_x"] / (n_trials * safe_nk[:, None]), 0.0, 1.0)
    # A component with (numerically) no data keeps its probabilities; its weight goes to ~0.
    probs = jnp.where(empty[:, None], params["probs"], probs)
    return {"weights": safe_nk / jnp.sum(safe_nk), "probs": probs}


def _init(key: Array, X: Array, n_components: int, n_trials: int, method: str):
    k = n_components
    if method == "random":
        probs = jax.random.uniform(key, (k, X.shape[1]), X.dtype, 0.25, 0.75)
        return {"weights": jnp.full((k,), 1.0 / k, X.dtype), "probs": probs}
    _, labels = initialisers.kmeans(key, X, k)
    resp = initialisers.hard_responsibilities(labels, k, X.dtype)
    stats = _suff_stats(None, X, resp)
    # One pseudo-success and one pseudo-failure per feature keep the starting probabilities
    # inside (0, 1), so no row is ruled out of a component before EM has seen it.
    probs = (stats["sum_x"] + 1.0) / (n_trials * stats["nk"][:, None] + 2.0)
    weights = (stats["nk"] + 1.0) / (X.shape[0] + k)
    return {"weights": weights, "probs": probs}


@model_factory
def bernoulli_mixture(n_components: int, n_trials: int = 1, init: str = "kmeans") -> Model:
    """A mixture of independent Bernoulli (binomial with ``n_trials``) features.

    Args:
        n_components: number of components ``K``.
        n_trials: trials per feature (1: Bernoulli, data in {0, 1}; n: binomial counts in {0..n}).
        init: ``"kmeans"`` (k-means++ and Lloyd on the rows, then smoothed per-cluster
            frequencies) or ``"random"`` (probabilities uniform in [0.25, 0.75], equal weights).

    Returns:
        A memoised :class:`jaxem.Model` for data ``[N, D]`` with a closed-form M-step.
    """
    check_positive_int(n_components, "n_components")
    check_positive_int(n_trials, "n_trials")
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")
    return Model(
        init=functools.partial(_init, n_components=n_components, n_trials=n_trials, method=init),
        log_joint=functools.partial(_log_joint, n_trials=n_trials),
        batch_log_joint=functools.partial(_batch_log_joint, n_trials=n_trials),
        suff_stats=_suff_stats,
        maximize=functools.partial(_maximize, n_trials=n_trials),
        constraints={"weights": C.simplex, "probs": C.unit_interval},
        n_components=n_components,
        name=f"bernoulli_mixture({n_components}, n_trials={n_trials})",
        check_data=functools.partial(check_counts, n_trials=n_trials, who="bernoulli_mixture"),
    )


def check_counts(X, n_trials: int, who: str) -> None:
    """Refuse entries outside ``{0, ..., n_trials}`` (``{0, 1}`` for Bernoulli), naming the first."""
    allowed = "data in 0 or 1" if n_trials == 1 else f"integer counts in [0, {n_trials}] (n_trials)"
    check_values(X, (X < 0) | (X > n_trials) | (X != np.round(X)), allowed, who)
