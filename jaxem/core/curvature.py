"""The curvature the EM-gradient step needs, and the log-likelihood's own (Louis' identity).

For a model's log-joints ``ℓ_nk(u)`` with responsibilities ``R`` held fixed, one sweep over the
data gives Q's gradient and Hessian, the complete-data information ``F = Σ R ∇ℓ ∇ℓᵀ`` and the
rows' expected-score products ``M`` (:func:`curvature`). From them: the EM-gradient step's
direction (:func:`newton_direction`) and, where ``R`` are the posteriors at the same point, a
Newton step on the log-likelihood itself with the gain it predicts (:func:`likelihood_newton`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import cho_solve, solve_triangular

from . import constraints as C
from .blocks import plan_blocks, sum_over_blocks, to_blocks
from .estep import fixed_responsibility_sum

Array = jax.Array


# The curvature's tangents are ``[Pθ, rows, K]``: rows are taken at most this many values at a
# time, so they stay in a core's cache (see benchmarks/README.md, "Session 15").
_CURVATURE_VALUES_PER_PASS = 2**16


def curvature(model, flat_u: Array, unravel: Callable, Xb: Array, Rb: Array, total: Array):
    """``(loss, ∇loss [P], ∇²loss [P, P], F [P, P], M [P, P])`` at ``flat_u`` (see
    :class:`jaxem.core.ascent.EMGradient`; ``M = Σ_n m_n m_nᵀ / w_n / total`` with
    ``m_n = Σ_k R_nk ∇ℓ_nk``, the outer products of the rows' expected scores), in one sweep over
    the blocks; the prior's Hessian is added to both curvatures.

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

        # Tangents first and rows last, ``[Pθ, K, n]``: the products below contract contiguous
        # rows and XLA vectorises over them (jacfwd's ``[n, K, Pθ]`` cost a transposed copy of
        # the scores per use).
        tangents = jnp.eye(theta.shape[0], dtype=theta.dtype)
        scores = jax.vmap(lambda t: jax.jvp(lambda u: log_joints(u).T, (theta,), (t,))[1])(tangents)
        resp = rb.T                                               # [K, n]
        scores = jnp.where(resp > 0, scores, 0.0)
        weighted = scores * resp
        row_scores = jnp.sum(weighted, axis=1)                   # [Pθ, n]: w_n E[score | x_n]
        row_weights = jnp.sum(resp, axis=0)
        expected = (row_scores / jnp.where(row_weights > 0, row_weights, 1.0)) @ row_scores.T
        flat = (theta.shape[0], -1)
        return (q(theta), jnp.sum(row_scores, -1), jax.hessian(q)(theta),
                weighted.reshape(flat) @ scores.reshape(flat).T, expected)

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


def newton_direction(grad: Array, hess: Array, info: Array) -> tuple[Array, Callable]:
    """The step ``[P]`` of :class:`jaxem.core.ascent.EMGradient`, ``-C⁻¹ grad`` for the
    curvature ``C`` whose eigenvalues in the metric of ``info`` (``F``) are those of ``hess`` in
    absolute value, raised to at least 1; and a function for the same step with the parameters Q
    is not smooth in held (:func:`_smooth_parameters`): where a location sits on a kink of a
    piecewise-linear Q, no length of the whole step gains, but the step of the others does. Taken
    in ``F``'s metric, the rule does not depend on how an eigenbasis of a repeated eigenvalue is
    chosen (vmapped and single restarts take the same step)."""
    chol, whiten = _metric(grad, hess, info)
    whitened = whiten(whiten(hess).T)
    eigenvalues, vectors = jnp.linalg.eigh((whitened + whitened.T) / 2)
    coefficients = (vectors.T @ whiten(grad)) / jnp.maximum(jnp.abs(eigenvalues), 1.0)
    step = -solve_triangular(chol.T, vectors @ coefficients, lower=False)

    def smooth_step():
        factor = chol @ vectors
        curvature = (factor * jnp.maximum(jnp.abs(eigenvalues), 1.0)) @ factor.T
        keep = _smooth_parameters(hess, info)
        # Positive definite (a principal block of one, the identity elsewhere): Cholesky, not
        # LU, whose pivoting is a loop of its own in the compiled program.
        lower = jnp.linalg.cholesky(_restricted(curvature, keep, 1.0))
        return -cho_solve((lower, True), jnp.where(keep, grad, 0.0))

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
    :func:`curvature` with the responsibilities of that point, so ``-grad`` is the gradient of
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
