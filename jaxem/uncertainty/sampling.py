"""Samplers for the parametric bootstrap: draws from a fitted mixture, traceable and vmappable.

The model contract has no sampler (a researcher's log-joint need not be easy to sample), so the
parametric bootstrap takes ``sampler(key, params, n_rows) -> X [n_rows, ...]``. The built-in
Gaussian (every covariance type), Poisson and Bernoulli mixtures are recognised by their
parameters, constraints and name (:func:`mixture_sampler`; Bernoulli with one trial);
any other model needs ``sampler=``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ..core import constraints as C


def _components(key, params, n_rows: int):
    k_z, k_x = jax.random.split(key)
    return jax.random.categorical(k_z, jnp.log(params["weights"]), shape=(n_rows,)), k_x


def _gaussian_cholesky(key, params, n_rows: int):
    """Full ``prec_chol [K, D, D]`` or tied ``[D, D]``: ``x = μ + A^{-1} ε`` (``Σ = A^{-1} A^{-T}``)."""
    z, k_x = _components(key, params, n_rows)
    means, A = params["means"], params["prec_chol"]
    eps = jax.random.normal(k_x, (n_rows, means.shape[-1]), means.dtype)
    chol = A[z] if A.ndim == 3 else jnp.broadcast_to(A, (n_rows,) + A.shape)
    return means[z] + jax.scipy.linalg.solve_triangular(chol, eps[..., None], lower=True)[..., 0]


def _gaussian_scale(key, params, n_rows: int):
    """Diagonal ``prec_chol [K, D]`` (``1/σ``) or spherical ``[K]``."""
    z, k_x = _components(key, params, n_rows)
    means, A = params["means"], params["prec_chol"]
    eps = jax.random.normal(k_x, (n_rows, means.shape[-1]), means.dtype)
    return means[z] + eps / (A[z] if A.ndim == 2 else A[z][:, None])


def _poisson(key, params, n_rows: int):
    z, k_x = _components(key, params, n_rows)
    rates = params["rates"][z]
    return jax.random.poisson(k_x, rates, rates.shape).astype(rates.dtype)


def _bernoulli(key, params, n_rows: int):
    z, k_x = _components(key, params, n_rows)
    probs = params["probs"][z]
    return jax.random.bernoulli(k_x, probs).astype(probs.dtype)


def mixture_sampler(model) -> Callable:
    """``sampler(key, params, n_rows) -> X [n_rows, D]`` for a built-in Gaussian, Poisson or
    Bernoulli mixture.

    Raises:
        ValueError: the model is none of these (pass your own ``sampler``).
    """
    cons = model.constraints if isinstance(model.constraints, dict) else {}
    keys = set(cons)
    if keys == {"weights", "means", "prec_chol"} and cons["means"] is C.real:
        return _gaussian_cholesky if cons["prec_chol"] is C.cholesky else _gaussian_scale
    # Poisson and exponential mixtures share their parameters' form; the name tells them apart.
    if keys == {"weights", "rates"} and model.name.startswith("poisson_mixture("):
        return _poisson
    if keys == {"weights", "probs"} and model.name.startswith("bernoulli_mixture(") \
            and model.name.endswith("n_trials=1)"):
        return _bernoulli
    raise ValueError(f"no built-in sampler for model {model.name!r} (built in: Gaussian, Poisson "
                     "and Bernoulli mixtures); pass sampler=lambda key, params, n_rows: X")
