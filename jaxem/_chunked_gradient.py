"""The gradient M-step of chunked EM: Q and its gradient summed over chunks, a pass per step.

A gradient M-step climbs ``Q(θ | θ_old) = Σ_n Σ_k r_nk(θ_old) log p(x_n, z_n=k | θ)``. Out of core
the responsibilities are not stored: every pass recomputes them from ``θ_old`` chunk by chunk and
adds each chunk's ``Q`` and ``∇Q`` at the optimiser's current point. So each optimiser step costs
one pass, and the optimiser must need only the gradient (``optax.adam``, ``optax.sgd``, ...):
L-BFGS's line search would need a pass per trial step. The first pass of an M-step is the E-step
pass itself (at ``θ = θ_old`` it also gives the log-likelihood, and ``∇Q = ∇ log p(X | θ)`` by
Fisher's identity). As in :func:`jaxem.mstep.gradient_m_step`, the best point visited is kept,
so Q never decreases and the history stays monotone.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _loop, _passes, _precision, distributed
from . import constraints as C


def default_optimizer() -> optax.GradientTransformation:
    """Adam with step 0.01 on the unconstrained parameters (the loss is Q per unit weight)."""
    return optax.adam(1e-2)


def check_optimizer(optimizer) -> optax.GradientTransformationExtraArgs:
    """An optax transformation, wrapped to accept the objective's value and gradient."""
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(f"optimizer must be an optax transformation, got {optimizer!r}")
    return optax.with_extra_args_support(optimizer)


def _no_value_fn(*_):
    # Reached while tracing the update of an optimiser with a line search (L-BFGS).
    raise ValueError("this optimizer evaluates the objective inside its update (a line search); "
                     "chunked gradient M-steps need one that uses only the gradient, e.g. "
                     "optax.adam, since each evaluation would be a full pass over the data")


def check_update(theta, *, model, optimizer) -> None:
    """Trace one optimiser update on ``[R]``-stacked ``theta`` (no compute), so that an optimiser
    with a line search is refused before the first pass."""
    u = jax.eval_shape(functools.partial(unconstrain, model=model), theta)
    state = jax.eval_shape(jax.vmap(optimizer.init), u)
    value = jax.ShapeDtypeStruct(jax.tree.leaves(u)[0].shape[:1], jax.tree.leaves(u)[0].dtype)
    jax.eval_shape(functools.partial(_update, optimizer=optimizer), u, state, u, value)


def q_part(params, rows, temperature, *, model, hard, mesh, in_sequence):
    """One chunk's ``(objective [R], (Q [R], ∇_u Q))`` for pairs ``params = (u, θ_old)``.

    ``objective`` is the E-step's weighted log-likelihood at ``θ_old``; ``Q`` uses the
    responsibilities at ``θ_old`` and the log-joints at ``constrain(u)``.
    """

    def pass_fn(model, pair, rows, hard, temperature):
        u, theta = pair

        def block(xb, w, labels, _hashes):
            lj = _passes.mask_labels(model.log_joint_matrix(theta, xb), labels)
            row_objective, resp = _passes.posterior(lj, hard, temperature)
            resp = resp * w[:, None]

            def q(v):
                lj_v = model.log_joint_matrix(C.constrain(model.constraints, v), xb)
                return _passes.fixed_responsibility_sum(lj_v, resp)

            return _passes.weighted_sum(row_objective, w), jax.value_and_grad(q)(u)

        return _passes._sum_over_blocks(block, rows)

    sharded = distributed.sharded_pass(pass_fn, mesh)
    return _loop.map_restarts(lambda pair: sharded(model, pair, rows, hard, temperature), params,
                              in_sequence=in_sequence)


@functools.partial(_precision.jit, static_argnames=("model",))
def unconstrain(theta, *, model):
    return jax.vmap(lambda p: C.unconstrain(model.constraints, p))(theta)


@functools.partial(_precision.jit, static_argnames=("model",))
def _loss(u, q_value, q_grad, total, *, model):
    """``-(Q + log prior) / total`` and its gradient, per restart."""
    if model.log_prior is not None:
        prior = jax.vmap(jax.value_and_grad(
            lambda v: model.log_prior(C.constrain(model.constraints, v))))(u)
        q_value = q_value + prior[0]
        q_grad = jax.tree.map(jnp.add, q_grad, prior[1])
    return -q_value / total, jax.tree.map(lambda g: -g / total, q_grad)


@functools.partial(_precision.jit, static_argnames=("optimizer",))
def _update(u, state, grad, value, *, optimizer):
    def one(g, s, v, val):
        return optimizer.update(g, s, v, value=val, grad=g, value_fn=_no_value_fn)

    updates, state = jax.vmap(one)(grad, state, u, value)
    return optax.apply_updates(u, updates), state


@functools.partial(_precision.jit, static_argnames=("model",))
def _finish(theta, best_u, improved, *, model):
    new = jax.vmap(lambda v: C.constrain(model.constraints, v))(best_u)
    return jax.tree.map(
        lambda a, b: jnp.where(improved.reshape(improved.shape + (1,) * (a.ndim - 1)), a, b),
        new, theta)


def _pick(better, new, old):
    mask = jnp.asarray(better)
    return jax.tree.map(lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)),
                                               a, b), new, old)


def m_step(theta, aux, *, model, q_pass, total_weight, optimizer, n_steps: int):
    """Chunked :func:`jaxem.mstep.gradient_m_step` for every restart.

    Args:
        theta: ``[R]``-stacked parameters of the E-step.
        aux: ``(Q [R], ∇Q)`` at ``unconstrain(theta)``, from the E-step pass.
        q_pass: ``q_pass(u, theta) -> (objective, (Q, ∇Q))`` summed over all chunks.
        total_weight: the data's total weight (the loss is per unit weight).
        optimizer: a gradient-only optax transformation; n_steps: its steps (one pass each).

    Returns:
        ``[R]`` parameters whose Q is no lower than at ``theta``.
    """
    total = jnp.asarray(total_weight, jax.tree.leaves(theta)[0].dtype)
    u = unconstrain(theta, model=model)
    state = jax.vmap(optimizer.init)(u)
    loss, grad = _loss(u, *aux, total, model=model)
    start_loss = best_loss = np.asarray(loss)
    best_u = u
    for step in range(n_steps):
        if step:
            loss, grad = _loss(u, *q_pass(u, theta)[1], total, model=model)
            better = np.asarray(loss) < best_loss
            best_u, best_loss = _pick(better, u, best_u), np.where(better, loss, best_loss)
        u, state = _update(u, state, grad, loss, optimizer=optimizer)
    last_loss = np.asarray(_loss(u, *q_pass(u, theta)[1], total, model=model)[0])
    better = last_loss < best_loss
    best_u = _pick(better, u, best_u)
    improved = np.minimum(best_loss, last_loss) < start_loss
    return _finish(theta, best_u, jnp.asarray(improved), model=model)
