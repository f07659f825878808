"""The gradient M-step: optax steps on Q with the responsibilities held fixed, keeping the best.

Generalized EM only needs an M-step that does not decrease ``Q(θ | θ_old)``. The ascent here
returns the best iterate it visited (the starting point included), so it never does, and the
log-likelihood history cannot go down whatever the optimiser does. The keep-the-best rule
(:class:`Best` and its three functions) is written once: the in-memory M-step runs it inside a
``lax.scan`` (:func:`gradient_m_step`), the chunked one in a host loop where each step is a pass
over the data (:mod:`jaxem.scale.chunked_gradient`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from . import constraints as C
from .blocks import sum_over_blocks
from .estep import fixed_responsibility_sum
from .loop import select

Array = jax.Array

DEFAULT_M_STEP_ITERS = 20


def default_optimizer() -> optax.GradientTransformation:
    """L-BFGS with a zoom line search: Q with fixed responsibilities is smooth and deterministic,
    so a quasi-Newton method gets close to the exact M-step in a few steps."""
    return optax.lbfgs()


# One object, so repeated fits with the default hit the compilation cache.
DEFAULT_OPTIMIZER = default_optimizer()


class Best(NamedTuple):
    """The best point an ascent visited: unconstrained ``u``, its ``loss`` and the start's loss
    (scalars for one restart, ``[R]`` for a batch)."""

    u: Any
    loss: Array
    start_loss: Array


def best_start(u, loss) -> Best:
    """The record before any step: the start is the best so far."""
    return Best(u, loss, loss)


def best_update(best: Best, u, loss) -> Best:
    """Take ``u`` when its ``loss`` is strictly lower (re-evaluating the start must not count)."""
    better = loss < best.loss
    return Best(select(better, u, best.u), jnp.where(better, loss, best.loss), best.start_loss)


def best_params(best: Best, start_params, constrain: Callable) -> Any:
    """The parameters to return: ``constrain(best.u)`` where a step improved on the start, else
    ``start_params`` untouched (no round-off from the unconstrain/constrain round trip)."""
    return select(best.loss < best.start_loss, constrain(best.u), start_params)


def ascend(loss: Callable, u0, optimizer: optax.GradientTransformation, n_steps: int) -> Best:
    """``n_steps`` of ``optimizer`` minimising ``loss(u)`` from ``u0``, inside a ``lax.scan``;
    optimisers that need the objective (L-BFGS) get it through optax's extra-args interface."""
    tx = optax.with_extra_args_support(optimizer)
    value_and_grad = jax.value_and_grad(loss)

    def step(carry, _):
        u, state, best = carry
        value, grad = value_and_grad(u)
        best = best_update(best, u, value)
        updates, state = tx.update(grad, state, u, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(u, updates), state, best), None

    carry = (u0, tx.init(u0), best_start(u0, loss(u0)))
    (u_last, _, best), _ = jax.lax.scan(step, carry, None, length=n_steps)
    return best_update(best, u_last, loss(u_last))


def expected_log_joint_blocks(model, params: Any, Xb: Array, Rb: Array) -> Array:
    """``Q(params) = Σ_n Σ_k R_nk log p(x_n, z_n=k | params)`` over blocked data ``Xb
    [n_blocks, block, ...]`` with weighted responsibilities ``Rb [n_blocks, block, K]`` held fixed
    (entries equal to 0 add 0 even where a log-joint is ``-inf``)."""
    return sum_over_blocks(
        lambda xb, rb: fixed_responsibility_sum(model.log_joint_matrix(params, xb), rb), (Xb, Rb))


def gradient_m_step(model, params: Any, Xb: Array, Rb: Array,
                    optimizer: optax.GradientTransformation, n_steps: int) -> Any:
    """Increase ``Q(θ) = Σ_n Σ_k R_nk log p(x_n, z_n=k | θ)`` (plus the model's ``log_prior(θ)``,
    if any) from ``params`` by gradient ascent in the space ``model.constraints`` makes
    unconstrained.

    Args:
        model: the model.
        params: starting parameters (the E-step's parameters).
        Xb: data blocks ``[n_blocks, block, ...]``.
        Rb: weighted responsibilities ``[n_blocks, block, K]`` from the E-step at ``params``.
        optimizer: an optax transformation.
        n_steps: optimiser steps.

    Returns:
        Parameters with ``Q`` no lower than at ``params`` (``params`` itself when no step helped).
    """
    total = jnp.sum(Rb)

    def loss(u):
        theta = C.constrain(model.constraints, u)
        objective = expected_log_joint_blocks(model, theta, Xb, Rb)
        if model.log_prior is not None:
            objective = objective + model.log_prior(theta)
        # Mean over the data so the optimiser's step size does not depend on N.
        return -objective / total

    best = ascend(loss, C.unconstrain(model.constraints, params), optimizer, n_steps)
    return best_params(best, params, lambda u: C.constrain(model.constraints, u))
