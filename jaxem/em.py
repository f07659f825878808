"""E-step, ELBO and the EM fit: one compiled program, restarts vmapped.

The fit of one restart is a ``lax.while_loop`` whose body is an M-step followed by one fused pass
over the data (the E-step at the new parameters plus the statistics the next M-step needs). The
whole loop is vmapped over restarts, so ``n_restarts`` starts cost one compilation and run as
batched array operations.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _passes
from .model import Model
from .mstep import DEFAULT_M_STEP_ITERS, default_optimizer, gradient_m_step
from .validation import (
    ConvergenceWarning,
    check_data,
    check_enough_rows,
    check_nonnegative_float,
    check_positive_int,
    check_sample_weight,
    default_float_dtype,
)

Array = jax.Array


class FitError(RuntimeError):
    """Raised when every restart of a fit failed (its log-likelihood became NaN or infinite)."""


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        params: the best restart's parameters (pytree).
        log_likelihood: its final total (weighted) log-likelihood, ``log p(X | params)``.
        history: ``[n_restarts, max_iter]``; ``history[r, i]`` is the log-likelihood after ``i + 1``
            EM iterations of restart ``r``, NaN after it stopped.
        initial_log_likelihood: ``[n_restarts]`` log-likelihood at each restart's initial params.
        converged: ``[n_restarts]`` bool, whether the relative change fell below ``tol``.
        n_iter: ``[n_restarts]`` EM iterations (M-steps) each restart ran.
        failed: ``[n_restarts]`` bool, restarts whose log-likelihood became NaN or infinite; they are
            never chosen as best.
        all_params: the parameters of every restart, stacked on a leading ``n_restarts`` axis.
        all_log_likelihoods: ``[n_restarts]`` final log-likelihood of every restart.
        best_restart: index of the chosen restart.
        restart_keys: ``[n_restarts]`` the PRNG keys the restarts were initialised with; fitting with
            ``key=restart_keys[r:r + 1]`` reproduces restart ``r`` alone.
    """

    params: Any
    log_likelihood: float
    history: np.ndarray
    initial_log_likelihood: np.ndarray
    converged: np.ndarray
    n_iter: np.ndarray
    failed: np.ndarray
    all_params: Any
    all_log_likelihoods: np.ndarray
    best_restart: int
    restart_keys: Any


def _as_data(X) -> Array:
    arr = check_data(X)
    return jnp.asarray(arr, dtype=default_float_dtype())


def _as_weights(sample_weight, n_rows: int, dtype) -> Array:
    w = check_sample_weight(sample_weight, n_rows)
    return jnp.ones((n_rows,), dtype) if w is None else jnp.asarray(w, dtype=dtype)


@functools.partial(jax.jit, static_argnums=0)
def posterior_rows(model: Model, params: Any, X: Array) -> tuple[Array, Array]:
    """Exact (unflushed) responsibilities ``[N, K]`` and per-row log-likelihoods ``[N]``."""
    log_joint = model.log_joint_matrix(params, X)
    row_ll = jax.nn.logsumexp(log_joint, axis=-1)
    return jnp.exp(log_joint - row_ll[:, None]), row_ll


def e_step(model: Model, params: Any, X, sample_weight=None) -> tuple[Array, Array]:
    """Posterior responsibilities and the log-likelihood at ``params``.

    Args:
        model: a :class:`jaxem.Model`.
        params: the model's parameter pytree.
        X: data ``[N, ...]``.
        sample_weight: optional ``[N]`` non-negative row weights.

    Returns:
        ``(resp, log_likelihood)``: ``resp [N, K]`` with ``resp[n] = softmax_k log p(x_n, z=k)``,
        and the scalar ``Σ_n w_n logsumexp_k log p(x_n, z=k)``.
    """
    X = _as_data(X)
    resp, row_ll = posterior_rows(model, params, X)
    return resp, _passes.weighted_sum(row_ll, _as_weights(sample_weight, X.shape[0], X.dtype))


def log_likelihood(model: Model, params: Any, X, sample_weight=None) -> Array:
    """Total (weighted) incomplete-data log-likelihood ``Σ_n w_n log p(x_n | params)`` (scalar).

    Differentiable with respect to ``params`` when called with arrays inside a traced function.
    """
    X = jnp.asarray(X)
    row_ll = jax.nn.logsumexp(model.log_joint_matrix(params, X), axis=-1)
    return row_ll.sum() if sample_weight is None else jnp.sum(jnp.asarray(sample_weight) * row_ll)


def expected_log_joint(model: Model, params: Any, X, resp, sample_weight=None) -> Array:
    """``Q(params) = Σ_n w_n Σ_k resp_nk log p(x_n, z_n=k | params)`` (scalar).

    ``resp [N, K]`` is held fixed; entries equal to 0 contribute 0 even where the log-joint is
    ``-inf``. By the Fisher identity, ``grad Q`` at the parameters that produced ``resp`` equals
    ``grad log_likelihood`` there.
    """
    X = jnp.asarray(X)
    resp = jnp.asarray(resp)
    if sample_weight is not None:
        resp = resp * jnp.asarray(sample_weight)[:, None]
    lj = model.log_joint_matrix(params, X)
    return _passes.fixed_responsibility_sum(lj, resp)


def elbo(model: Model, params: Any, X, q, sample_weight=None) -> Array:
    """Evidence lower bound ``L(q, θ) = Σ_n w_n Σ_k q_nk (log p(x_n, z_n=k | θ) - log q_nk)``.

    Args:
        model: a :class:`jaxem.Model`.
        params: parameter pytree θ.
        X: data ``[N, ...]``.
        q: ``[N, K]`` a distribution over latent states for each row (rows sum to 1).
        sample_weight: optional ``[N]`` row weights.

    Returns:
        Scalar ``L(q, θ) <= log p(X | θ)``, with equality when ``q`` is the exact posterior.
    """
    q = jnp.asarray(q)
    w = 1.0 if sample_weight is None else jnp.asarray(sample_weight)[:, None]
    entropy = -jnp.sum(w * jax.scipy.special.xlogy(q, q))
    return expected_log_joint(model, params, X, q, sample_weight) + entropy


def _fit_one(model: Model, params, Xb, wb, tol, max_iter: int, use_gradient: bool,
             optimizer, m_step_iters: int):
    """EM for one restart from ``params``; returns the final state and its history."""
    if use_gradient:
        e_pass = functools.partial(_passes.responsibility_pass, model)

        def m_step(p, resp):
            return gradient_m_step(model, p, Xb, resp, optimizer, m_step_iters)
    else:
        e_pass = functools.partial(_passes.stats_pass, model)

        def m_step(p, stats):
            return model.maximize(stats, p)

    ll0, aux0 = e_pass(params, Xb, wb)
    history0 = jnp.full((max_iter,), jnp.nan, ll0.dtype)

    def keep_going(state):
        _, ll, _, it, converged, _ = state
        return (it < max_iter) & ~converged & jnp.isfinite(ll)

    def body(state):
        p, ll, aux, it, _, history = state
        p_new = m_step(p, aux)
        ll_new, aux_new = e_pass(p_new, Xb, wb)
        converged = jnp.abs(ll_new - ll) <= tol * jnp.abs(ll)
        return p_new, ll_new, aux_new, it + 1, converged, history.at[it].set(ll_new)

    state = (params, ll0, aux0, jnp.zeros((), jnp.int32), jnp.zeros((), bool), history0)
    p, ll, _, n_iter, converged, history = jax.lax.while_loop(keep_going, body, state)
    return p, ll, ll0, n_iter, converged, history


@functools.partial(jax.jit, static_argnames=(
    "model", "n_blocks", "rows", "max_iter", "use_gradient", "optimizer", "m_step_iters"))
def _fit_compiled(model, keys, init_params, X, weights, tol, *, n_blocks, rows, max_iter,
                  use_gradient, optimizer, m_step_iters):
    if init_params is None:
        init_params = jax.vmap(model.init, in_axes=(0, None))(keys, X)
    Xb, wb = _passes.to_blocks(X, weights, n_blocks, rows)
    run = functools.partial(_fit_one, model, Xb=Xb, wb=wb, tol=tol, max_iter=max_iter,
                            use_gradient=use_gradient, optimizer=optimizer,
                            m_step_iters=m_step_iters)
    return jax.vmap(run)(init_params)


def _restart_keys(key, n_restarts: int | None):
    if key is None:
        raise ValueError("fit needs a PRNG key, e.g. key=jax.random.key(0)")
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    is_typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    single = key.ndim == 0 if is_typed else key.shape == (2,)
    if single:
        return jax.random.split(key, 1 if n_restarts is None else n_restarts)
    if n_restarts is not None and key.shape[0] != n_restarts:
        raise ValueError(f"got {key.shape[0]} keys but n_restarts={n_restarts}")
    return key


def fit(model: Model, X, *, key=None, n_restarts: int | None = None, max_iter: int = 100,
        tol: float = 1e-6, sample_weight=None, init_params: Any = None, m_step: str = "auto",
        optimizer: optax.GradientTransformation | None = None,
        m_step_iters: int = DEFAULT_M_STEP_ITERS, block_size: int | None = None) -> FitResult:
    """Fit ``model`` to ``X`` by EM from several random starts at once.

    Args:
        model: a :class:`jaxem.Model`.
        X: data ``[N, ...]`` (rows are observations).
        key: a PRNG key (split into one key per restart), or ``[R]`` keys used as given (restart
            ``r`` then uses ``key[r]``, so ``key=keys[r:r+1]`` reproduces one restart).
        n_restarts: number of random starts, all run as one vmapped program (default 1, or the
            number of keys given).
        max_iter: maximum EM iterations per restart.
        tol: stop a restart when ``|ℓ_t - ℓ_{t-1}| <= tol * |ℓ_{t-1}|`` (relative change of the total
            log-likelihood).
        sample_weight: optional ``[N]`` non-negative frequency weights (weight 2 = row twice).
        init_params: optional starting parameters (one pytree) instead of ``model.init``; every
            restart then starts from them, so use it with ``n_restarts=1``.
        m_step: ``"auto"`` (closed form when the model has one, else gradient), ``"closed_form"``
            or ``"gradient"``.
        optimizer: optax transformation for the gradient M-step (default: L-BFGS).
        m_step_iters: optimiser steps per gradient M-step.
        block_size: rows per block of the data pass (default: about 4096).

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: bad input or arguments, before any compute.
        FitError: every restart's log-likelihood became NaN or infinite.
    """
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_nonnegative_float(tol, "tol")
    m_step_iters = check_positive_int(m_step_iters, "m_step_iters")
    if n_restarts is not None:
        n_restarts = check_positive_int(n_restarts, "n_restarts")
    if block_size is not None:
        block_size = check_positive_int(block_size, "block_size")
    if m_step not in ("auto", "closed_form", "gradient"):
        raise ValueError(f"m_step must be 'auto', 'closed_form' or 'gradient', got {m_step!r}")
    if m_step == "closed_form" and not model.has_closed_form:
        raise ValueError(f"model {model.name!r} has no closed-form M-step; use m_step='gradient'")
    use_gradient = m_step == "gradient" or not model.has_closed_form

    X = _as_data(X)
    weights = _as_weights(sample_weight, X.shape[0], X.dtype)
    if model.n_components is not None:
        check_enough_rows(int(jnp.sum(weights > 0)), model.n_components)
    keys = _restart_keys(key, n_restarts)
    n_blocks, rows = _passes.plan_blocks(X.shape[0], block_size)
    if init_params is not None:
        init_params = jax.tree.map(
            lambda p: jnp.broadcast_to(jnp.asarray(p), (keys.shape[0],) + jnp.shape(p)),
            init_params)

    params, ll, ll0, n_iter, converged, history = _fit_compiled(
        model, keys, init_params, X, weights, jnp.asarray(tol, X.dtype), n_blocks=n_blocks,
        rows=rows, max_iter=max_iter, use_gradient=use_gradient,
        optimizer=(optimizer or _DEFAULT_OPTIMIZER) if use_gradient else None,
        m_step_iters=m_step_iters)

    ll = np.asarray(ll)
    failed = ~np.isfinite(ll)
    if failed.all():
        raise FitError(
            f"all {ll.shape[0]} restarts failed: the log-likelihood became "
            f"{'NaN' if np.isnan(ll).any() else 'infinite'}; check the data scale and the model "
            "(for Gaussian mixtures, increase reg_covar)")
    best = int(np.argmax(np.where(failed, -np.inf, ll)))
    converged = np.asarray(converged)
    if not converged[~failed].any():
        warnings.warn(
            f"no restart converged within max_iter={max_iter} iterations (relative change of the "
            f"log-likelihood still above tol={tol:g}); increase max_iter or tol",
            ConvergenceWarning, stacklevel=2)
    return FitResult(
        params=jax.tree.map(lambda p: p[best], params),
        log_likelihood=float(ll[best]),
        history=np.asarray(history),
        initial_log_likelihood=np.asarray(ll0),
        converged=converged,
        n_iter=np.asarray(n_iter),
        failed=failed,
        all_params=params,
        all_log_likelihoods=ll,
        best_restart=best,
        restart_keys=keys,
    )


# One object, so repeated fits with the default hit the compilation cache.
_DEFAULT_OPTIMIZER = default_optimizer()
