"""The gradient M-step: a few optax steps on Q with the responsibilities held fixed.

Generalized EM only needs an M-step that does not decrease ``Q(θ | θ_old)``; this one returns the
best iterate it visited (the starting point included), so it never does, and the log-likelihood
history cannot go down whatever the optimiser does.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from . import constraints as C
from ._passes import expected_log_joint_blocks
from .model import Model

Array = jax.Array

DEFAULT_M_STEP_ITERS = 20


def default_optimizer() -> optax.GradientTransformation:
    """L-BFGS with a zoom line search: Q with fixed responsibilities is smooth and deterministic,
    so a quasi-Newton method gets close to the exact M-step in a few steps."""
    return optax.lbfgs()


def gradient_m_step(model: Model, params: Any, Xb: Array, Rb: Array,
                    optimizer: optax.GradientTransformation, n_steps: int) -> Any:
    """Increase ``Q(θ) = Σ_n Σ_k R_nk log p(x_n, z_n=k | θ)`` (plus the model's ``log_prior(θ)``,
    if any) from ``params`` by gradient ascent.

    Args:
        model: the model (its ``constraints`` give the unconstrained space).
        params: starting parameters (the E-step's parameters).
        Xb: data blocks ``[n_blocks, block, ...]``.
        Rb: weighted responsibilities ``[n_blocks, block, K]`` from the E-step at ``params``.
        optimizer: an optax transformation; ones that need the objective (L-BFGS) get it through
            optax's extra-args interface.
        n_steps: optimiser steps.

    Returns:
        Parameters with ``Q`` no lower than at ``params`` (``params`` itself when no step helped).
    """
    total = jnp.sum(Rb)

    def loss(u):
        params = C.constrain(model.constraints, u)
        objective = expected_log_joint_blocks(model, params, Xb, Rb)
        if model.log_prior is not None:
            objective = objective + model.log_prior(params)
        # Mean over the data so the optimiser's step size does not depend on N.
        return -objective / total

    tx = optax.with_extra_args_support(optimizer)
    u0 = C.unconstrain(model.constraints, params)
    value_and_grad = jax.value_and_grad(loss)

    def step(carry, _):
        u, state, best_u, best_loss = carry
        value, grad = value_and_grad(u)
        # Strictly better only: the first step re-evaluates the start and must not count.
        better = value < best_loss
        best_u = jax.tree.map(lambda a, b: jnp.where(better, a, b), u, best_u)
        best_loss = jnp.where(better, value, best_loss)
        updates, state = tx.update(grad, state, u, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(u, updates), state, best_u, best_loss), None

    start_loss = loss(u0)
    carry = (u0, tx.init(u0), u0, start_loss)
    (u_last, _, best_u, best_loss), _ = jax.lax.scan(step, carry, None, length=n_steps)
    last_loss = loss(u_last)
    last_better = last_loss < best_loss
    best_u = jax.tree.map(lambda a, b: jnp.where(last_better, a, b), u_last, best_u)
    improved = jnp.minimum(best_loss, last_loss) < start_loss
    # Returning the untouched ``params`` when nothing improved avoids the round-off of the
    # unconstrain/constrain round trip.
    return jax.tree.map(lambda new, old: jnp.where(improved, new, old),
                        C.constrain(model.constraints, best_u), params)
