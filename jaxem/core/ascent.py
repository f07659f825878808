"""The gradient M-step: an increase of Q with the responsibilities held fixed, keeping the best.

Generalized EM only needs an M-step that does not decrease ``Q(θ | θ_old)``. Two ways are here:

* :class:`EMGradient` (the default for models of up to ``max_params`` unconstrained parameters):
  one Newton-type step on Q from ``θ_old`` (Lange's EM-gradient algorithm, 1995), safeguarded by
  a backtracking of fixed length. It costs a fixed number of passes over the data, has no
  data-dependent loop (so vmapped restarts do not wait for each other's line searches), and EM
  with it converges at the rate of EM with an exact M-step (Lange 1995, Theorem 2).
* any optax transformation: ``n_steps`` steps inside a ``lax.scan`` (L-BFGS for larger models).

Either returns the best point it visited (the start included), so Q never decreases and the
log-likelihood history cannot go down whatever the optimiser does. The keep-the-best rule
(:class:`Best` and its three functions) is written once: the in-memory M-step runs it inside a
``lax.scan`` (:func:`gradient_m_step`), the chunked one in a host loop where each step is a pass
over the data (:mod:`jaxem.scale.chunked_gradient`).

Both also return the **gap** (:class:`Ascent`): how much less Q rose than under an EM-gradient
step from the same ``θ_old`` (0 for that step itself). An optax optimiser whose steps are too
small gains little per EM iteration, so the relative change of the log-likelihood falls below
``tol`` far from the maximum; while the gap is above the tolerance the loop does not call such a
restart converged (it stalled), and the warning names the setting to change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from . import constraints as C
from .blocks import sum_over_blocks
from .curvature import curvature, likelihood_newton, newton_direction
from .estep import fixed_responsibility_sum
from .loop import Ascent, select

Array = jax.Array

DEFAULT_M_STEP_ITERS = 20


def default_optimizer() -> optax.GradientTransformation:
    """L-BFGS with a zoom line search: Q with fixed responsibilities is smooth and deterministic,
    so a quasi-Newton method gets close to the exact M-step in a few steps."""
    return optax.lbfgs()


class EMGradient(NamedTuple):
    """The EM-gradient M-step (Lange 1995): one Newton-type step on Q from the E-step's point.

    The step is ``-C⁻¹ ∇loss`` in the unconstrained space, ``loss = -Q / (total weight)``, with
    ``C`` the Hessian of the loss from autodiff made positive definite against the empirical
    complete-data information ``F = Σ_n Σ_k r_nk ∇ℓ_nk ∇ℓ_nkᵀ / total``: in ``F``'s metric its
    eigenvalues are taken in absolute value and raised to at least 1, so along every direction
    the curvature is at least the information's. The information stands in where Q has no
    curvature (a Laplace location: Q is piecewise linear in it and its Hessian is 0) or the wrong
    one (Q not concave far from its maximum); near the maximum of a smooth Q the two agree.
    Step lengths ``1, 1/2, ..., 2^-(n_halvings-1)`` are tried (the first alone, the rest at once
    when it fails) and the best is kept, so Q never decreases.

    Its cost grows as ``P²`` per row and ``P³`` per step for ``P`` unconstrained parameters, so
    models with more than ``max_params`` of them use ``fallback`` (``m_step_iters`` steps of an
    optax transformation; ``None``: L-BFGS) instead. ``m_step_iters`` does not apply to this step.
    """

    n_halvings: int = 16
    max_params: int = 64
    fallback: optax.GradientTransformation | None = None


# One object, so repeated fits with the default hit the compilation cache.
DEFAULT_OPTIMIZER = EMGradient()
_LBFGS = default_optimizer()


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


def em_gradient_step(loss: Callable, flat_u: Array, value: Array, grad: Array, hess: Array,
                     info: Array, n_halvings: int) -> tuple[Array, Array]:
    """The step of :class:`EMGradient` from ``flat_u [P]`` (with its loss ``value``, gradient,
    Hessian and information): ``(u, loss(u))``, ``u`` the best of the tried steps (lengths
    ``1, 1/2, ...`` of the whole step and of its smooth part), or ``flat_u`` when none lowers the
    loss."""
    step, smooth_step = newton_direction(grad, hess, info)
    full = loss(flat_u + step)

    def shorter():
        lengths = 0.5 ** jnp.arange(n_halvings, dtype=flat_u.dtype)
        moves = jnp.concatenate([lengths[1:, None] * step, lengths[:, None] * smooth_step()])
        values = jax.vmap(lambda move: loss(flat_u + move))(moves)
        values = jnp.where(jnp.isnan(values), jnp.inf, values)
        i = jnp.argmin(values)
        return moves[i], values[i]

    # The full step almost always succeeds near convergence; the others are evaluated only
    # when it does not (on a CPU, where restarts run one after another, the branch is skipped;
    # vmapped, both run).
    move, best = jax.lax.cond(full < value, lambda: (step, full), shorter)
    improved = best < value
    return jnp.where(improved, flat_u + move, flat_u), jnp.where(improved, best, value)


def gradient_m_step(model, params: Any, Xb: Array, Rb: Array, optimizer, n_steps: int, *,
                    posterior_rows: bool = False) -> Ascent:
    """Increase ``Q(θ) = Σ_n Σ_k R_nk log p(x_n, z_n=k | θ)`` (plus the model's ``log_prior(θ)``,
    if any) from ``params`` in the space ``model.constraints`` makes unconstrained.

    Args:
        model: the model.
        params: starting parameters (the E-step's parameters).
        Xb: data blocks ``[n_blocks, block, ...]``.
        Rb: weighted responsibilities ``[n_blocks, block, K]`` from the E-step at ``params``.
        optimizer: an :class:`EMGradient` (one step, see there) or an optax transformation.
        n_steps: optax steps (not used by :class:`EMGradient`).
        posterior_rows: ``Rb`` are the posteriors of independent rows at ``params`` (a
            mixture's soft E-step), so the log-likelihood's curvature is known (see
            :func:`likelihood_newton`); not an HMM's per-step posteriors, nor hard EM's.

    Returns:
        An :class:`Ascent`: parameters with ``Q`` no lower than at ``params`` (``params`` itself
        when no step helped) and the gap: how much less ``Q`` (in the log-likelihood's units)
        increased than under an :class:`EMGradient` step from ``params`` (0 for that step), or
        with ``posterior_rows`` the log-likelihood's gain still ahead of ``params`` if larger.
    """
    total = jnp.sum(Rb)

    def loss(u):
        theta = C.constrain(model.constraints, u)
        objective = expected_log_joint_blocks(model, theta, Xb, Rb)
        if model.log_prior is not None:
            objective = objective + model.log_prior(theta)
        # Mean over the data so the optimiser's step size does not depend on N.
        return -objective / total

    u0 = C.unconstrain(model.constraints, params)
    flat_u, unravel = ravel_pytree(u0)
    reference = optimizer if isinstance(optimizer, EMGradient) else DEFAULT_OPTIMIZER
    small = flat_u.shape[0] <= reference.max_params

    def em_gradient(v):
        value, grad, hess, info, expected = curvature(model, v, unravel, Xb, Rb, total)
        u, new_value = em_gradient_step(lambda w: loss(unravel(w)), v, value, grad, hess,
                                           info, reference.n_halvings)
        best = Best(unravel(u), new_value, value)
        if not posterior_rows:
            return best, jnp.zeros((), v.dtype), None
        newton = likelihood_newton(grad, hess, info, expected)
        usable = newton.concave & (newton.gain > 0)
        return best, newton.gain * total, unravel(jnp.where(usable, newton.step, jnp.nan))

    newton = None
    if isinstance(optimizer, EMGradient) and small:
        # The step is its own reference: nothing is left short.
        best, gap, newton = em_gradient(flat_u)
    else:
        if isinstance(optimizer, EMGradient):
            optimizer = optimizer.fallback or _LBFGS
        best = ascend(loss, u0, optimizer, n_steps)
        # What the optimiser left short of an EM-gradient step from the same point (for large
        # models, of a second-order step along the gradient): an optimiser whose steps are too
        # small gains little per EM iteration, which alone would look like convergence.
        ahead = jnp.zeros((), flat_u.dtype)
        if small:
            # The Newton point is the EM-gradient method's: an optax M-step stays the same
            # method in memory and in chunks (where no pass computes the curvature).
            ref, ahead, _ = em_gradient(flat_u)
            possible = ref.start_loss - ref.loss
        else:
            possible = _cauchy_gain(loss, u0)
        gap = jnp.maximum(jnp.maximum(possible - (best.start_loss - best.loss), 0.0) * total, ahead)
    return Ascent(best_params(best, params, lambda u: C.constrain(model.constraints, u)), gap,
                  newton)


def _cauchy_gain(loss: Callable, u0) -> Array:
    """The decrease of ``loss`` a quadratic model predicts along the gradient from ``u0``,
    ``(gᵀg)² / (2 gᵀHg)`` (one Hessian-vector product; a lower bound of the Newton decrement
    where ``H`` is positive definite, and ``gᵀg`` times a unit step where it is not)."""
    grad = jax.grad(loss)(u0)
    curvature = jnp.vdot(*map(lambda t: ravel_pytree(t)[0], (
        grad, jax.jvp(jax.grad(loss), (u0,), (grad,))[1])))
    norm2 = sum(jnp.vdot(g, g) for g in jax.tree.leaves(grad))
    return jnp.where(curvature > 0, norm2 ** 2 / (2 * jnp.where(curvature > 0, curvature, 1.0)),
                     norm2)
