"""The E-step, the log-likelihood, Q and the ELBO of a model at given parameters (the math of
DESIGN.md, as functions a user can call and differentiate).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import blocks, driver, precision
from .estep import fixed_responsibility_sum, posterior, weighted_sum
from .model import Model
from .result import FitError, FitResult  # noqa: F401  (likewise)
from .runner import fit  # noqa: F401  (jaxem.em.fit, the old path, lives on here)
from .validation import check_sample_weight, default_float_dtype, to_device  # noqa: F401

Array = jax.Array


def _is_concrete(*arrays) -> bool:
    """Whether every array holds values (not a tracer inside ``jit`` or ``grad``), so it can be
    checked on the host."""
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def _checked(model: Model, params: Any, X, sample_weight, q=None):
    """``(X, sample_weight, q)`` checked before compute when they hold values; tracers (inside a
    user's ``jit`` or ``grad``) pass through unchecked."""
    if not _is_concrete(X, sample_weight, q):
        return X, sample_weight, q
    X = _as_device_data(X, model)
    driver.check_rows_fit(model, params, X)
    if sample_weight is not None:
        sample_weight = jnp.asarray(check_sample_weight(sample_weight, X.shape[0]), X.dtype)
    if q is not None:
        q_arr = np.asarray(q)
        if q_arr.ndim != 2 or q_arr.shape[0] != X.shape[0]:
            raise ValueError(f"q must have shape ({X.shape[0]}, K) to match X, got {q_arr.shape}")
        bad = ~np.isfinite(q_arr) | (q_arr < 0)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"q must hold finite probabilities >= 0; got {q_arr[row, col]} at row "
                             f"{row}, column {col}")
    return X, sample_weight, q


def _as_weights(sample_weight, n_rows: int, dtype) -> Array:
    w = check_sample_weight(sample_weight, n_rows)
    return jnp.ones((n_rows,), dtype) if w is None else jnp.asarray(w, dtype=dtype)


def _as_device_data(X, model: Model) -> Array:
    return to_device(driver.as_data(X, model))


# A block of rows at a time: on all N rows at once, a full-covariance model's [N, K*D]
# temporaries make predict_proba slower and its peak memory grow with N.
_posterior_program = precision.jit(
    lambda model, params, X: blocks.map_row_blocks(
        lambda xb: posterior(model.log_joint_matrix(params, xb), exact=True), X),
    static_argnums=0)


def posterior_rows(model: Model, params: Any, X: Array) -> tuple[Array, Array]:
    """Exact (unflushed) responsibilities ``[N, K]`` and per-row log-likelihoods ``[N]`` for
    rows ``X [N, ...]``."""
    row_ll, resp = _posterior_program(model, params, X)
    return resp, row_ll


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
    X = _as_device_data(X, model)
    driver.check_rows_fit(model, params, X)
    resp, row_ll = posterior_rows(model, params, X)
    return resp, weighted_sum(row_ll, _as_weights(sample_weight, X.shape[0], X.dtype))


def log_likelihood(model: Model, params: Any, X, sample_weight=None) -> Array:
    """Total (weighted) incomplete-data log-likelihood ``Σ_n w_n log p(x_n | params)`` (scalar).

    Differentiable with respect to ``params`` when called with arrays inside a traced function.
    Concrete inputs are checked first, as in :func:`e_step`.
    """
    X, sample_weight, _ = _checked(model, params, X, sample_weight)
    X = jnp.asarray(X)
    row_ll = jax.nn.logsumexp(model.log_joint_matrix(params, X), axis=-1)
    return row_ll.sum() if sample_weight is None else jnp.sum(jnp.asarray(sample_weight) * row_ll)


def expected_log_joint(model: Model, params: Any, X, resp, sample_weight=None) -> Array:
    """``Q(params) = Σ_n w_n Σ_k resp_nk log p(x_n, z_n=k | params)`` (scalar).

    ``resp [N, K]`` is held fixed; entries equal to 0 contribute 0 even where the log-joint is
    ``-inf``. By the Fisher identity, ``grad Q`` at the parameters that produced ``resp`` equals
    ``grad log_likelihood`` there.
    """
    X, sample_weight, resp = _checked(model, params, X, sample_weight, resp)
    X = jnp.asarray(X)
    resp = jnp.asarray(resp)
    if sample_weight is not None:
        resp = resp * jnp.asarray(sample_weight)[:, None]
    lj = model.log_joint_matrix(params, X)
    return fixed_responsibility_sum(lj, resp)


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
    expected = expected_log_joint(model, params, X, q, sample_weight)  # checks the inputs first
    q = jnp.asarray(q)
    w = 1.0 if sample_weight is None else jnp.asarray(sample_weight)[:, None]
    return expected - jnp.sum(w * jax.scipy.special.xlogy(q, q))
