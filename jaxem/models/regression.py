"""Mixtures of linear regressions: ``y | x, z=k ~ N(β_k · φ(x), σ_k²)``.

An observation is one row ``[x_1, ..., x_D, y]``: the inputs then the target. The design vector is
``φ(x) = [x_1, ..., x_D, 1]`` (the trailing 1 only with an intercept), ``P`` long.

Parameters (a dict):
    ``weights``  ``[K]`` mixing weights.
    ``coef``     ``[K, P]`` regression coefficients (the intercept last when fitted).
    ``sigma``    ``[K]`` noise standard deviation of each component.

The M-step is weighted least squares per component. Its statistics are taken about the previous
coefficients (residuals ``e_nk = y_n - β_k^old · φ_n``): ``Σ r φφ^T``, ``Σ r e φ`` and ``Σ r e²``
are additive over rows, and the new residual sum of squares ``Σ r e² - δ · Σ r e φ`` (with
``δ = β_new - β_old``) does not cancel in float32 the way ``Σ r y² - 2 β·Σ r y φ + ...`` would.
These expert pieces are shared with :mod:`jaxem.models.experts`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.scipy.stats import norm

from ..core import constraints as C
from ..core import linalg
from ..core.model import Model, model_factory
from . import init as initialisers
from .common import centred_moments, empty_components, mixing_weights

Array = jax.Array

INIT_METHODS = initialisers.INIT_METHODS


def design(X: Array, fit_intercept: bool) -> tuple[Array, Array]:
    """Split joint rows ``X [N, D + 1]`` into the design ``Φ [N, P]`` and the target ``y [N]``."""
    inputs, y = X[:, :-1], X[:, -1]
    if fit_intercept:
        inputs = jnp.concatenate([inputs, jnp.ones_like(y)[:, None]], axis=1)
    return inputs, y


def expert_log_density(params, Phi: Array, y: Array) -> Array:
    """``[N, K]`` ``log N(y_n; β_k · φ_n, σ_k²)``."""
    return norm.logpdf(y[:, None], Phi @ params["coef"].T, params["sigma"])


def expert_stats(params, Phi: Array, y: Array, resp: Array):
    """Additive weighted least-squares statistics about the previous coefficients.

    Args:
        params: the E-step's parameters (``coef [K, P]``).
        Phi: ``[N, P]`` design; y: ``[N]`` targets; resp: ``[N, K]`` weighted responsibilities.

    Returns:
        ``{"nk" [K], "gram" [K, P, P], "xe" [K, P], "ee" [K]}``.
    """
    resid = y[:, None] - Phi @ params["coef"].T
    weighted = resp * resid
    return {"nk": jnp.sum(resp, axis=0),
            "gram": centred_moments(Phi, None, resp)[1],
            "xe": weighted.T @ Phi,
            "ee": jnp.sum(weighted * resid, axis=0)}


def solve_psd(gram: Array, rhs: Array) -> Array:
    """``gram^-1 rhs`` for symmetric positive semi-definite ``gram [..., P, P]``, ``rhs [..., P]``.

    A jitter of a few ulps of the mean diagonal keeps a singular system (a component with fewer
    than ``P`` rows, a constant input) finite; since ``rhs`` lies in the range of ``gram`` the
    answer then tends to the minimum-norm solution.
    """
    p = gram.shape[-1]
    scale = jnp.trace(gram, axis1=-2, axis2=-1)[..., None, None] / p
    jitter = 10 * jnp.finfo(gram.dtype).eps * scale + jnp.finfo(gram.dtype).tiny
    chol = linalg.cholesky(gram + jitter * jnp.eye(p, dtype=gram.dtype))
    half = linalg.solve_triangular(chol, rhs[..., None], lower=True)
    return linalg.solve_triangular(jnp.swapaxes(chol, -1, -2), half, lower=False)[..., 0]


def expert_update(stats, params, reg_var: float):
    """Weighted least squares for every expert: new ``coef [K, P]`` and ``sigma [K]``.

    A component with (numerically) no data keeps its expert.
    """
    empty, safe_nk = empty_components(stats["nk"])
    delta = solve_psd(stats["gram"], stats["xe"])
    rss = jnp.maximum(stats["ee"] - jnp.sum(delta * stats["xe"], axis=1), 0.0)
    sigma = jnp.sqrt(rss / safe_nk + reg_var)
    coef = jnp.where(empty[:, None], params["coef"], params["coef"] + delta)
    return coef, jnp.where(empty, params["sigma"], sigma)


def _batch_log_joint(params, X: Array, fit_intercept: bool) -> Array:
    Phi, y = design(X, fit_intercept)
    return jnp.log(params["weights"]) + expert_log_density(params, Phi, y)


def _log_joint(params, x: Array, fit_intercept: bool) -> Array:
    return _batch_log_joint(params, x[None], fit_intercept)[0]


def _suff_stats(params, X: Array, resp: Array, fit_intercept: bool):
    Phi, y = design(X, fit_intercept)
    return expert_stats(params, Phi, y, resp)


def _maximize(stats, params, reg_var: float):
    coef, sigma = expert_update(stats, params, reg_var)
    return {"weights": mixing_weights(stats["nk"]), "coef": coef, "sigma": sigma}


def blank_experts(X: Array, n_components: int, fit_intercept: bool):
    """Zero coefficients and the target's standard deviation: the point an initial M-step starts
    from (its statistics about zero coefficients make the update plain least squares)."""
    n_coef = X.shape[1] - 1 + int(fit_intercept)
    return {"coef": jnp.zeros((n_components, n_coef), X.dtype),
            "sigma": jnp.full((n_components,), jnp.std(X[:, -1]) + 1e-6, X.dtype)}


def _init(key: Array, X: Array, n_components: int, fit_intercept: bool, reg_var: float,
          method: str):
    # Starting responsibilities cluster the joint rows [x, y], then one M-step fits the experts.
    resp = initialisers.initial_responsibilities(key, X, n_components, method)
    start = {"weights": jnp.full((n_components,), 1.0 / n_components, X.dtype),
             **blank_experts(X, n_components, fit_intercept)}
    return _maximize(_suff_stats(start, X, resp, fit_intercept), start, reg_var)


def mixture_of_linear_regressions(n_components: int, fit_intercept: bool = True,
                                  reg_var: float = 1e-6, init: str = "kmeans") -> Model:
    """A mixture of linear regressions as a :class:`jaxem.Model` (closed-form M-step).

    Args:
        n_components: number of components ``K``.
        fit_intercept: append a constant 1 to the inputs (the intercept is the last coefficient).
        reg_var: added to every noise variance in the M-step, so a component that fits its rows
            exactly keeps a finite likelihood.
        init: starting responsibilities (:func:`jaxem.init.initial_responsibilities` on the
            joint rows ``[x, y]``): ``"kmeans"``, ``"k-means++"``, ``"random_from_data"`` or
            ``"random"``; the experts are then fitted to them.

    Returns:
        A memoised :class:`jaxem.Model` for rows ``[N, D + 1]`` = inputs then target.
    """
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")
    # One cache key however the arguments were spelt (positional, keyword or default).
    return _mixture_of_linear_regressions(int(n_components), bool(fit_intercept), float(reg_var), init)


@model_factory
def _mixture_of_linear_regressions(n_components, fit_intercept, reg_var, init) -> Model:
    return Model(
        init=functools.partial(_init, n_components=n_components, fit_intercept=fit_intercept,
                               reg_var=reg_var, method=init),
        log_joint=functools.partial(_log_joint, fit_intercept=fit_intercept),
        batch_log_joint=functools.partial(_batch_log_joint, fit_intercept=fit_intercept),
        suff_stats=functools.partial(_suff_stats, fit_intercept=fit_intercept),
        maximize=functools.partial(_maximize, reg_var=reg_var),
        constraints={"weights": C.simplex, "coef": C.real, "sigma": C.positive},
        n_components=n_components,
        name=f"mixture_of_linear_regressions({n_components})",
    )
