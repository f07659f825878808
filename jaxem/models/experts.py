"""Mixture of experts: a softmax-regression gate on the inputs and linear-Gaussian experts.

``p(y, z=k | x) = softmax_k(V φ(x)) N(y; β_k · φ(x), σ_k²)``. An observation is one row
``[x_1, ..., x_D, y]``, as in :mod:`jaxem.models.regression`, whose expert pieces this reuses.

Parameters (a dict):
    ``gate``   ``[K - 1, P]`` gate coefficients; the last component's logit is fixed at 0, so the
               gate is identifiable (softmax is unchanged by a common shift).
    ``coef``   ``[K, P]`` expert coefficients; ``sigma`` ``[K]`` expert noise scales.

M-step: the experts are exact weighted least squares. The gate has no closed form; its update is
the bound-optimisation (MM) step of Böhning (1992): the multinomial-logit Hessian is bounded by
``B = ½ (I - 11^T/K) ⊗ Σ_n w_n φ_n φ_n^T``, so ``V + B^+ ∇`` never decreases the gate's part of Q.
Its statistics (the gradient ``Σ_n (r_nk - w_n π_nk) φ_n`` at the E-step's gate and
``Σ_n w_n φ_n φ_n^T``) are additive over rows, so the whole M-step runs in the engine's fused
closed-form pass: a generalized EM whose history never decreases. ``m_step="gradient"`` instead
climbs Q in all parameters with optax.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ..core import constraints as C
from ..core.model import Model, model_factory
from . import init as initialisers
from .regression import (
    INIT_METHODS,
    blank_experts,
    design,
    expert_log_density,
    expert_stats,
    expert_update,
    solve_psd,
)

Array = jax.Array


def gate_logits(gate: Array, Phi: Array) -> Array:
    """``[N, K]`` gate logits from ``gate [K - 1, P]`` (the last component's logit is 0)."""
    logits = Phi @ gate.T
    return jnp.concatenate([logits, jnp.zeros_like(logits[:, :1])], axis=1)


def gate_probabilities(params, X: Array, fit_intercept: bool = True) -> Array:
    """``[N, K]`` gate probabilities ``p(z=k | x)`` of joint rows ``X [N, D + 1]`` (or inputs
    ``[N, D]`` followed by any target column)."""
    Phi, _ = design(X, fit_intercept)
    return jax.nn.softmax(gate_logits(params["gate"], Phi), axis=-1)


def _batch_log_joint(params, X: Array, fit_intercept: bool) -> Array:
    Phi, y = design(X, fit_intercept)
    log_gate = jax.nn.log_softmax(gate_logits(params["gate"], Phi), axis=-1)
    return log_gate + expert_log_density(params, Phi, y)


def _log_joint(params, x: Array, fit_intercept: bool) -> Array:
    return _batch_log_joint(params, x[None], fit_intercept)[0]


def _suff_stats(params, X: Array, resp: Array, fit_intercept: bool):
    Phi, y = design(X, fit_intercept)
    row_weight = jnp.sum(resp, axis=1)
    gate = jax.nn.softmax(gate_logits(params["gate"], Phi), axis=-1)
    stats = expert_stats(params, Phi, y, resp)
    stats["gate_grad"] = (resp - row_weight[:, None] * gate).T @ Phi
    stats["gate_gram"] = (row_weight[:, None] * Phi).T @ Phi
    return stats


def _maximize(stats, params, reg_var: float):
    coef, sigma = expert_update(stats, params, reg_var)
    # Böhning's step on the full K x P logits: B^+ ∇ = 2 (I - 11^T/K) G H^-1, and G's rows sum to
    # zero (responsibilities and gate both sum to w_n), so the projection drops out.
    full = jnp.concatenate([params["gate"], jnp.zeros_like(params["gate"][:1])], axis=0)
    step = 2.0 * solve_psd(stats["gate_gram"], stats["gate_grad"])
    full = full + step
    return {"gate": full[:-1] - full[-1], "coef": coef, "sigma": sigma}


def _init(key: Array, X: Array, n_components: int, fit_intercept: bool, reg_var: float,
          method: str):
    # Fit the experts to starting responsibilities (clusters of the joint rows) and take one
    # gate step towards them from the uniform gate.
    resp = initialisers.initial_responsibilities(key, X, n_components, method)
    experts = blank_experts(X, n_components, fit_intercept)
    start = {"gate": jnp.zeros((n_components - 1, experts["coef"].shape[1]), X.dtype), **experts}
    return _maximize(_suff_stats(start, X, resp, fit_intercept), start, reg_var)


def mixture_of_experts(n_components: int, fit_intercept: bool = True, reg_var: float = 1e-6,
                       init: str = "kmeans") -> Model:
    """A mixture of linear-Gaussian experts with a softmax gate, as a :class:`jaxem.Model`.

    Args:
        n_components: number of experts ``K``.
        fit_intercept: append a constant 1 to the inputs of both gate and experts.
        reg_var: added to every expert's noise variance in the M-step.
        init: starting responsibilities, as for
            :func:`jaxem.models.regression.mixture_of_linear_regressions`.

    Returns:
        A memoised :class:`jaxem.Model` for rows ``[N, D + 1]`` = inputs then target, with the
        closed-form (experts) + bound-optimisation (gate) M-step described in the module.
    """
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")
    # One cache key however the arguments were spelt (positional, keyword or default).
    return _mixture_of_experts(int(n_components), bool(fit_intercept), float(reg_var), init)


@model_factory
def _mixture_of_experts(n_components, fit_intercept, reg_var, init) -> Model:
    return Model(
        init=functools.partial(_init, n_components=n_components, fit_intercept=fit_intercept,
                               reg_var=reg_var, method=init),
        log_joint=functools.partial(_log_joint, fit_intercept=fit_intercept),
        batch_log_joint=functools.partial(_batch_log_joint, fit_intercept=fit_intercept),
        suff_stats=functools.partial(_suff_stats, fit_intercept=fit_intercept),
        maximize=functools.partial(_maximize, reg_var=reg_var),
        constraints={"gate": C.real, "coef": C.real, "sigma": C.positive},
        n_components=n_components,
        name=f"mixture_of_experts({n_components})",
    )
