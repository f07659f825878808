"""The gradient M-step of chunked EM: Q and its gradient summed over chunks, a pass per step.

A gradient M-step climbs ``Q(θ | θ_old) = Σ_n Σ_k r_nk(θ_old) log p(x_n, z_n=k | θ)``. Out of core
the responsibilities are not stored: every pass recomputes them from ``θ_old`` chunk by chunk and
adds each chunk's ``Q`` and ``∇Q`` at the optimiser's current point. So each optimiser step costs
one pass, and the optimiser must need only the gradient (``optax.adam``, ``optax.sgd``, ...):
L-BFGS's line search would need a pass per trial step. The first pass of an M-step is the E-step
pass itself (at ``θ = θ_old`` it also gives the log-likelihood, and ``∇Q = ∇ log p(X | θ)`` by
Fisher's identity). As in
:func:`jaxem.core.ascent.gradient_m_step`, the best point visited is kept,
so Q never decreases and the history stays monotone.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from ..core import constraints as C
from ..core import precision
from ..core.ascent import best_params, best_start, best_update
from .sweeps import sweep_chunks


def default_optimizer() -> optax.GradientTransformation:
    """Adam with step 0.01 on the unconstrained parameters (the loss is Q per unit weight)."""
    return optax.adam(1e-2)


# One object, so repeated fits with the default hit the compilation cache.
DEFAULT_OPTIMIZER = default_optimizer()


def check_optimizer(optimizer) -> None:
    """Refuse anything but an optax transformation, before any compute."""
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(f"optimizer must be an optax transformation, got {optimizer!r}")


def _no_value_fn(*_):
    # Reached while tracing the update of an optimiser with a line search (L-BFGS).
    raise ValueError("this optimizer evaluates the objective inside its update (a line search); "
                     "chunked gradient M-steps need one that uses only the gradient, e.g. "
                     "optax.adam, since each evaluation would be a full pass over the data")


@functools.partial(precision.jit, static_argnames=("model",))
def _unconstrain(theta, *, model):
    return jax.vmap(lambda p: C.unconstrain(model.constraints, p))(theta)


@functools.partial(precision.jit, static_argnames=("model",))
def _constrain(u, *, model):
    return jax.vmap(lambda v: C.constrain(model.constraints, v))(u)


@functools.partial(precision.jit, static_argnames=("model",))
def _loss(u, q_value, q_grad, total, *, model):
    """``-(Q + log prior) / total`` and its gradient, per restart."""
    if model.log_prior is not None:
        prior = jax.vmap(jax.value_and_grad(
            lambda v: model.log_prior(C.constrain(model.constraints, v))))(u)
        q_value = q_value + prior[0]
        q_grad = jax.tree.map(jnp.add, q_grad, prior[1])
    return -q_value / total, jax.tree.map(lambda g: -g / total, q_grad)


@functools.partial(precision.jit, static_argnames=("optimizer",))
def _update(u, state, grad, value, *, optimizer):
    def one(g, s, v, val):
        return optimizer.update(g, s, v, value=val, grad=g, value_fn=_no_value_fn)

    updates, state = jax.vmap(one)(grad, state, u, value)
    return optax.apply_updates(u, updates), state


def _check_update(theta, *, model, optimizer) -> None:
    """Trace one optimiser update on ``[R]``-stacked ``theta`` (no compute), so that an optimiser
    with a line search is refused before the first pass."""
    u = jax.eval_shape(functools.partial(_unconstrain, model=model), theta)
    state = jax.eval_shape(jax.vmap(optimizer.init), u)
    value = jax.ShapeDtypeStruct(jax.tree.leaves(u)[0].shape[:1], jax.tree.leaves(u)[0].dtype)
    jax.eval_shape(functools.partial(_update, optimizer=optimizer), u, state, u, value)


def m_step(theta, aux, *, model, q_pass, total_weight, optimizer, n_steps: int):
    """The chunked gradient M-step for every restart: ``n_steps`` optimiser steps, each one pass
    over the data, keeping the best point (:class:`jaxem.core.ascent.Best`).

    Args:
        theta: ``[R]``-stacked parameters of the E-step.
        aux: ``(Q [R], ∇Q)`` at ``unconstrain(theta)``, from the E-step pass.
        q_pass: ``q_pass(u, theta) -> (Q, ∇Q)`` summed over all chunks.
        total_weight: the data's total weight (the loss is per unit weight).
        optimizer: a gradient-only optax transformation (extra-args form); n_steps: its steps.

    Returns:
        ``[R]`` parameters whose Q is no lower than at ``theta``.
    """
    total = jnp.asarray(total_weight, jax.tree.leaves(theta)[0].dtype)
    u = _unconstrain(theta, model=model)
    state = jax.vmap(optimizer.init)(u)
    loss, grad = _loss(u, *aux, total, model=model)
    best = best_start(u, loss)
    for step in range(n_steps):
        if step:
            loss, grad = _loss(u, *q_pass(u, theta), total, model=model)
            best = best_update(best, u, loss)
        u, state = _update(u, state, grad, loss, optimizer=optimizer)
    best = best_update(best, u, _loss(u, *q_pass(u, theta), total, model=model)[0])
    return best_params(best, theta, functools.partial(_constrain, model=model))


def passes(model, parts, setup, params, options: dict, with_prior, dtype):
    """``(e_pass, m_step)`` of a chunked fit whose M-step is by gradient: the E-step pass also
    gives Q and its gradient at ``u = unconstrain(θ)`` (the M-step's first evaluation).

    Args:
        model: the model (its constraints and log prior).
        parts: the model's :class:`jaxem.core.passes.ChunkParts` (with ``q_sweep``).
        setup: the fit's :class:`jaxem.core.driver.FitSetup`.
        params: ``[R]`` initial parameters (to check the optimiser on).
        options: keyword arguments of :func:`jaxem.scale.chunked.sweep_chunks`.
        with_prior: ``with_prior(objective, params)`` adds the model's log prior.
        dtype: the data's float type.
    """
    optimizer = optax.with_extra_args_support(setup.optimizer)
    _check_update(params, model=model, optimizer=optimizer)
    if parts.total_weight is None:
        raise ValueError("a chunked gradient M-step needs a source of known length")

    def e_pass(theta, iteration):
        temperature = setup.rule.temperature(jnp.asarray(iteration), dtype)
        objective, q = sweep_chunks(parts.q_sweep, (_unconstrain(theta, model=model), theta),
                                    parts.read, temperature, **options)
        # The M-step's later passes use the responsibilities of this E-step's temperature.
        return with_prior(objective, theta), (q, temperature)

    def gradient_step(theta, aux):
        q, temperature = aux

        def q_pass(u, theta):
            return sweep_chunks(parts.q_sweep, (u, theta), parts.read, temperature, **options)[1]

        return m_step(theta, q, model=model, q_pass=q_pass, total_weight=parts.total_weight,
                      optimizer=optimizer, n_steps=setup.m_step_iters)

    return e_pass, gradient_step
