"""Maps between constrained parameters and the unconstrained space a gradient M-step works in.

A :class:`Constraint` is a pair of pure functions. ``unconstrain`` takes a valid parameter (a
probability vector, a positive scale, ...) to an unconstrained real array; ``constrain`` is its
inverse. Models declare a pytree of constraints with the same structure as their parameters (or a
prefix of it); leaves without a constraint are treated as :data:`real`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class Chart(NamedTuple):
    """Minimal coordinates of a constrained parameter: as many free reals as it has degrees of
    freedom (K - 1 for a K-simplex, D(D+1)/2 for a D x D Cholesky factor), which is what an
    information matrix needs to be non-singular (the unconstrained form of :data:`simplex` has K
    coordinates and a flat direction).

    Attributes:
        encode: ``encode(p [shape]) -> [m]`` free coordinates.
        decode: ``decode(u [m], shape) -> p [shape]``, the inverse of ``encode``.
        coordinates: ``coordinates(shape) -> list of m texts`` naming each coordinate by the
            parameter's index (``"[1, 0]"``), for messages.
    """

    encode: Callable[[Array], Array]
    decode: Callable[[Array, tuple], Array]
    coordinates: Callable[[tuple], list]


def _index_text(index) -> str:
    return "[" + ", ".join(str(int(i)) for i in index) + "]"


def elementwise_chart(constrain: Callable, unconstrain: Callable) -> Chart:
    """The chart of a constraint whose unconstrained form is already minimal (one free real per
    entry): its own maps, flattened."""
    return Chart(lambda p: jnp.ravel(unconstrain(p)),
                 lambda u, shape: constrain(jnp.reshape(u, shape)),
                 lambda shape: [_index_text(i) for i in np.ndindex(*shape)])


class Constraint:
    """A bijection between a constrained parameter set and unconstrained arrays.

    Args:
        name: a short name used in error messages and ``repr``.
        constrain: unconstrained array -> constrained parameter (same shape).
        unconstrain: constrained parameter -> unconstrained array (same shape).
        chart: minimal coordinates (see :class:`Chart`) for standard errors; default: the
            unconstrained form itself, which must then have no redundant coordinate.
    """

    def __init__(self, name: str, constrain: Callable[[Array], Array],
                 unconstrain: Callable[[Array], Array], chart: Chart | None = None):
        self.name = name
        self.constrain = constrain
        self.unconstrain = unconstrain
        self.chart = chart or elementwise_chart(constrain, unconstrain)

    def __repr__(self) -> str:
        return f"Constraint({self.name})"


def _tiny(x: Array) -> Array:
    return jnp.finfo(jnp.result_type(x)).tiny


def _log_clipped(x: Array) -> Array:
    # A parameter that is exactly 0 (an emptied component) maps to a large negative number rather
    # than -inf, so the optimiser state stays finite.
    return jnp.log(jnp.maximum(x, _tiny(x)))


real = Constraint("real", lambda u: u, lambda p: p)

positive = Constraint("positive", jnp.exp, _log_clipped)


def _simplex_unconstrain(p: Array) -> Array:
    logp = _log_clipped(p)
    # Softmax is shift-invariant; centring keeps the unconstrained values near zero.
    return logp - jnp.mean(logp, axis=-1, keepdims=True)


def _simplex_decode(u: Array, shape: tuple) -> Array:
    logits = jnp.reshape(u, shape[:-1] + (shape[-1] - 1,))
    return jax.nn.softmax(jnp.concatenate([logits, jnp.zeros(shape[:-1] + (1,), u.dtype)], -1), axis=-1)


def _simplex_encode(p: Array) -> Array:
    # Additive log-ratios against the last entry: K - 1 free coordinates.
    logp = _log_clipped(p)
    return jnp.ravel(logp[..., :-1] - logp[..., -1:])


def _simplex_coordinates(shape: tuple) -> list:
    return [f"{_index_text(i)}/[..., {shape[-1] - 1}]"
            for i in np.ndindex(*shape[:-1], shape[-1] - 1)]


simplex = Constraint("simplex", lambda u: jax.nn.softmax(u, axis=-1), _simplex_unconstrain,
                     Chart(_simplex_encode, _simplex_decode, _simplex_coordinates))
"""Probability vectors along the last axis (softmax of free logits)."""


def _logit(p: Array) -> Array:
    eps = jnp.finfo(jnp.result_type(p)).eps
    p = jnp.clip(p, eps, 1 - eps)
    return jnp.log(p) - jnp.log1p(-p)


unit_interval = Constraint("unit_interval", jax.nn.sigmoid, _logit)
"""Values in (0, 1) (sigmoid of a free real)."""


def _cholesky_constrain(u: Array) -> Array:
    lower = jnp.tril(u, -1)
    diag = jnp.exp(jnp.diagonal(u, axis1=-2, axis2=-1))
    return lower + diag[..., None] * jnp.eye(u.shape[-1], dtype=u.dtype)


def _cholesky_unconstrain(chol: Array) -> Array:
    lower = jnp.tril(chol, -1)
    log_diag = _log_clipped(jnp.diagonal(chol, axis1=-2, axis2=-1))
    return lower + log_diag[..., None] * jnp.eye(chol.shape[-1], dtype=chol.dtype)


def _cholesky_encode(chol: Array) -> Array:
    rows, cols = np.tril_indices(chol.shape[-1])
    return jnp.ravel(_cholesky_unconstrain(chol)[..., rows, cols])


def _cholesky_decode(u: Array, shape: tuple) -> Array:
    rows, cols = np.tril_indices(shape[-1])
    free = jnp.reshape(u, shape[:-2] + (rows.size,))
    return _cholesky_constrain(jnp.zeros(shape, u.dtype).at[..., rows, cols].set(free))


def _cholesky_coordinates(shape: tuple) -> list:
    rows, cols = np.tril_indices(shape[-1])
    return [_index_text(i + (r, c)) for i in np.ndindex(*shape[:-2])
            for r, c in zip(rows, cols, strict=True)]


cholesky = Constraint("cholesky", _cholesky_constrain, _cholesky_unconstrain,
                      Chart(_cholesky_encode, _cholesky_decode, _cholesky_coordinates))
"""Lower-triangular matrices ``[..., D, D]`` with a positive diagonal (log of the diagonal is free)."""


def _is_constraint(node: Any) -> bool:
    return isinstance(node, Constraint) or node is None


_NAMES = "jem.constraints.positive, simplex, unit_interval, cholesky"


def check_covers(constraints: Any, params: Any, where: str = "constraints") -> None:
    """Refuse ``constraints`` that are not a prefix of the parameter pytree ``params``, naming
    the first parameter without an entry (or the entry without a parameter) and the fix."""
    if _is_constraint(constraints):
        return
    if isinstance(constraints, dict) and isinstance(params, dict):
        missing = [k for k in params if k not in constraints]
        if missing:
            raise ValueError(f"{where} has no entry for parameter {missing[0]!r}; give every "
                             f"parameter one ({_NAMES}, or jem.constraints.real / None for an "
                             "unconstrained one)")
        extra = [k for k in constraints if k not in params]
        if extra:
            raise ValueError(f"{where} names {extra[0]!r}, which is not a parameter (the "
                             f"parameters are {sorted(params, key=str)})")
        for k in params:
            check_covers(constraints[k], params[k], f"{where}[{k!r}]")
        return
    _, c_tree = jax.tree.flatten(constraints, is_leaf=_is_constraint)
    try:
        c_tree.flatten_up_to(params)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where} must have the structure of the parameters (or a prefix of "
                         f"it), with {_NAMES} or jem.constraints.real / None at the leaves: "
                         f"{str(err).splitlines()[0]}") from None


def constrain(constraints: Any, unconstrained: Any) -> Any:
    """Map an unconstrained pytree to parameters.

    Args:
        constraints: a pytree of :class:`Constraint` (or ``None`` for real) that is a prefix of the
            parameter pytree, or ``None`` when every parameter is real.
        unconstrained: the unconstrained parameter pytree.

    Returns:
        The constrained parameter pytree (same structure and shapes).
    """
    if constraints is None:
        return unconstrained
    check_covers(constraints, unconstrained)
    return jax.tree.map(lambda c, u: jax.tree.map((c or real).constrain, u),
                        constraints, unconstrained, is_leaf=_is_constraint)


def unconstrain(constraints: Any, params: Any) -> Any:
    """Inverse of :func:`constrain`: map parameters to the unconstrained space."""
    if constraints is None:
        return params
    check_covers(constraints, params)
    return jax.tree.map(lambda c, p: jax.tree.map((c or real).unconstrain, p),
                        constraints, params, is_leaf=_is_constraint)
