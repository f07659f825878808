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
from jax.scipy.linalg import solve_triangular

from . import constraints as C
from .blocks import plan_blocks, sum_over_blocks, to_blocks
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


# The curvature's tangents are ``[Pθ, rows, K]``: rows are taken at most this many values at a
# time, so they stay in a core's cache (see benchmarks/README.md, "Session 15").
_CURVATURE_VALUES_PER_PASS = 2**16


def _curvature(model, flat_u: Array, unravel: Callable, Xb: Array, Rb: Array, total: Array):
    """``(loss, ∇loss [P], ∇²loss [P, P], F [P, P], M [P, P])`` at ``flat_u`` (see
    :class:`EMGradient`; ``M = Σ_n m_n m_nᵀ / w_n / total`` with ``m_n = Σ_k R_nk ∇ℓ_nk``, the
    outer products of the rows' expected scores), in one sweep over the blocks; the prior's
    Hessian is added to both curvatures.

    The data's derivatives are taken with respect to the constrained parameters ``θ`` (flat,
    ``[Pθ]``) and carried to ``u`` by the chain rule: ``∇u = Jᵀ ∇θ`` and ``∇²u = Jᵀ ∇²θ J +
    Σ_i (∇θ)_i ∇²θ_i(u)`` with ``J = ∂θ/∂u``, which needs no data. The constraints' transforms
    are then differentiated once, not once per row, and where a parameter meets the data only
    through a sum (an exponential family's statistics) its second derivatives cost nothing per
    row."""
    theta, unravel_theta = ravel_pytree(C.constrain(model.constraints, unravel(flat_u)))

    def constrained(v):
        return ravel_pytree(C.constrain(model.constraints, unravel(v)))[0]

    def rows(xb, rb):
        def log_joints(t):
            return model.log_joint_matrix(unravel_theta(t), xb)

        def q(t):
            return fixed_responsibility_sum(log_joints(t), rb)

        scores = jnp.where((rb > 0)[..., None], jax.jacfwd(log_joints)(theta), 0.0)  # [n, K, Pθ]
        flat_scores = scores.reshape(-1, theta.shape[0])
        weighted = scores * rb[..., None]
        row_scores = jnp.sum(weighted, axis=1)                   # [n, Pθ]: w_n E[score | x_n]
        row_weights = jnp.sum(rb, axis=-1, keepdims=True)
        expected = (row_scores / jnp.where(row_weights > 0, row_weights, 1.0)).T @ row_scores
        weighted = weighted.reshape(flat_scores.shape)
        return (q(theta), jnp.sum(weighted, 0), jax.hessian(q)(theta),
                weighted.T @ flat_scores, expected)

    def block(xb, rb):
        rows_per_pass = max(8, _CURVATURE_VALUES_PER_PASS // (theta.shape[0] * rb.shape[-1]))
        if xb.shape[0] <= rows_per_pass:
            return rows(xb, rb)
        return sum_over_blocks(rows, to_blocks(xb, rb, *plan_blocks(xb.shape[0], rows_per_pass)))

    value, grad_theta, hess_theta, info_theta, expected_theta = sum_over_blocks(block, (Xb, Rb))
    jac = jax.jacfwd(constrained)(flat_u)                                   # [Pθ, P]
    grad = jac.T @ grad_theta
    hess = (jac.T @ hess_theta @ jac
            + jax.hessian(lambda v: jnp.vdot(grad_theta, constrained(v)))(flat_u))
    info, expected = jac.T @ info_theta @ jac, jac.T @ expected_theta @ jac
    if model.log_prior is not None:
        def prior(v):
            return model.log_prior(C.constrain(model.constraints, unravel(v)))

        value, grad = value + prior(flat_u), grad + jax.grad(prior)(flat_u)
        hess = hess + jax.hessian(prior)(flat_u)
    return -value / total, -grad / total, -hess / total, info / total, expected / total


# A parameter along which Q curves by less than this fraction of its information is taken as
# one Q is not smooth in (a Laplace location: Q is piecewise linear in it, its Hessian 0); and
# directions along which the log-likelihood keeps less than this fraction of the complete-data
# information are left out of the gain ahead (no quadratic model holds there).
_SMOOTH_FRACTION_FLOOR = 0.1
_OBSERVED_FRACTION_FLOOR = 1e-6


def _smooth_parameters(hess: Array, info: Array) -> Array:
    """``[P]`` bool: the parameters along which Q curves by at least
    :data:`_SMOOTH_FRACTION_FLOOR` of their information (``|∇²_ii| >= floor * F_ii``)."""
    return jnp.abs(jnp.diagonal(hess)) >= _SMOOTH_FRACTION_FLOOR * jnp.diagonal(info)


def _restricted(matrix: Array, keep: Array, fill: float) -> Array:
    """``matrix [P, P]`` on the rows and columns of ``keep`` and ``fill`` times the identity on
    the rest (static shapes for a principal submatrix)."""
    both = keep[:, None] & keep[None, :]
    return jnp.where(both, matrix, fill * jnp.eye(matrix.shape[0], dtype=matrix.dtype))


def _metric(grad: Array, hess: Array, info: Array) -> tuple[Array, Callable]:
    """``(L, whiten)``: the Cholesky factor ``L`` of ``F`` (``info``) with a small ridge, and
    ``whiten(a) = L⁻¹ a``, for quantities taken in ``F``'s metric."""
    hess, info = (hess + hess.T) / 2, (info + info.T) / 2
    eps = jnp.finfo(grad.dtype).eps
    # A small ridge keeps directions without information (softmax's shift, parameters the
    # log-joint ignores) invertible; the gradient has no part along them but round-off.
    scale = jnp.maximum(jnp.max(jnp.diagonal(info)), jnp.max(jnp.abs(jnp.diagonal(hess))))
    ridge = 100 * eps * jnp.maximum(scale, jnp.finfo(grad.dtype).tiny)
    chol = jnp.linalg.cholesky(info + ridge * jnp.eye(grad.shape[0], dtype=grad.dtype))

    def whiten(a):
        return solve_triangular(chol, a, lower=True)

    return chol, whiten


def _newton_direction(grad: Array, hess: Array, info: Array) -> tuple[Array, Callable]:
    """The step ``[P]`` of :class:`EMGradient`, ``-C⁻¹ grad`` for the curvature ``C`` whose
    eigenvalues in the metric of ``info`` (``F``) are those of ``hess`` in absolute value, raised
    to at least 1; and a function for the same step with the parameters Q is not smooth in held
    (:func:`_smooth_parameters`): where a location sits on a kink of a piecewise-linear Q, no
    length of the whole step gains, but the step of the others does. Taken in ``F``'s metric, the
    rule does not depend on how an eigenbasis of a repeated eigenvalue is chosen (vmapped and
    single restarts take the same step)."""
    chol, whiten = _metric(grad, hess, info)
    whitened = whiten(whiten(hess).T)
    eigenvalues, vectors = jnp.linalg.eigh((whitened + whitened.T) / 2)
    coefficients = (vectors.T @ whiten(grad)) / jnp.maximum(jnp.abs(eigenvalues), 1.0)
    step = -solve_triangular(chol.T, vectors @ coefficients, lower=False)

    def smooth_step():
        factor = chol @ vectors
        curvature = (factor * jnp.maximum(jnp.abs(eigenvalues), 1.0)) @ factor.T
        keep = _smooth_parameters(hess, info)
        return -jnp.linalg.solve(_restricted(curvature, keep, 1.0), jnp.where(keep, grad, 0.0))

    return step, smooth_step


class LikelihoodNewton(NamedTuple):
    """A Newton step on the log-likelihood from the E-step's own point (:func:`likelihood_newton`):
    ``gain`` (loss units, ``½ gᵀ I⁻¹ g``), ``step [P]`` (unconstrained) and ``concave``: no
    direction of the smooth parameters curves the wrong way (where False the step is no
    Newton step on the whole function)."""

    gain: Array
    step: Array
    concave: Array


def likelihood_newton(grad: Array, hess: Array, info: Array, expected: Array) -> LikelihoodNewton:
    """What the log-likelihood still gains by a Newton estimate, ``½ gᵀ I⁻¹ g`` (loss units), and
    that step, for the E-step's own point: ``grad``, ``hess``, ``info``, ``expected`` from
    :func:`_curvature` with the responsibilities of that point, so ``-grad`` is the gradient of
    the log-likelihood (Fisher's identity) and ``I = hess - info + expected`` its negative
    Hessian (Louis' identity: complete-data curvature less the missing information). A slow EM
    direction (little of its information observed) makes the relative change of the objective
    small long before the gain still to come is; this sees it, and its step crosses it at once.

    Over the parameters Q is smooth in (:func:`_smooth_parameters`; at a kink no quadratic model
    holds), in ``F``'s metric, leaving out the directions that keep less than
    :data:`_OBSERVED_FRACTION_FLOOR` of the information (not concave, or no curvature)."""
    keep = _smooth_parameters(hess, info)
    hess, expected = _restricted(hess, keep, 0.0), _restricted(expected, keep, 0.0)
    info, grad = _restricted(info, keep, 1.0), jnp.where(keep, grad, 0.0)
    chol, whiten = _metric(grad, hess, info)

    def whitened(a):
        w = whiten(whiten(a).T)
        return (w + w.T) / 2

    # Directions with no information (softmax's shift: F there is only the metric's ridge) are
    # projected out: there the whitened curvature is round-off divided by the ridge, and its sign
    # would decide ``concave`` at random (vmapped and lone restarts would differ).
    scales, axes = jnp.linalg.eigh(whitened(info))
    informative = (axes * (scales > 0.5)) @ axes.T
    fractions, vectors = jnp.linalg.eigh(informative @ whitened(hess - info + expected) @ informative)
    reliable = fractions > _OBSERVED_FRACTION_FLOOR
    coefficients = vectors.T @ whiten(grad)
    scaled = jnp.where(reliable, coefficients / jnp.where(reliable, fractions, 1.0), 0.0)
    return LikelihoodNewton(0.5 * jnp.sum(coefficients * scaled),
                            -solve_triangular(chol.T, vectors @ scaled, lower=False),
                            jnp.all(fractions > -_OBSERVED_FRACTION_FLOOR))


def em_gradient_step(loss: Callable, flat_u: Array, value: Array, grad: Array, hess: Array,
                     info: Array, n_halvings: int) -> tuple[Array, Array]:
    """The step of :class:`EMGradient` from ``flat_u [P]`` (with its loss ``value``, gradient,
    Hessian and information): ``(u, loss(u))``, ``u`` the best of the tried steps (lengths
    ``1, 1/2, ...`` of the whole step and of its smooth part), or ``flat_u`` when none lowers the
    loss."""
    step, smooth_step = _newton_direction(grad, hess, info)
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
        value, grad, hess, info, expected = _curvature(model, v, unravel, Xb, Rb, total)
        u, new_value = em_gradient_step(lambda w: loss(unravel(w)), v, value, grad, hess,
                                           info, reference.n_halvings)
        best = Best(unravel(u), new_value, value)
        if not posterior_rows:
            return best, jnp.zeros((), v.dtype), None
        newton = likelihood_newton(grad, hess, info, expected)
        point = C.constrain(model.constraints, unravel(v + newton.step))
        usable = newton.concave & (newton.gain > 0)
        point = jax.tree.map(lambda a: jnp.where(usable, a, jnp.nan), point)
        return best, newton.gain * total, point

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
