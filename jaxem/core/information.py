"""Information matrices of a fitted model by automatic differentiation.

The observed information is minus the Hessian of the marginal log-likelihood (plus the model's
``log_prior``) in *minimal* coordinates: each parameter's :class:`jaxem.constraints.Chart` (K - 1
log-ratios for K weights, D(D+1)/2 entries for a Cholesky factor, logs of positive values), so a
well-identified fit has a non-singular matrix. The log-likelihood is a sum over rows, so the Hessian
is summed over row blocks (``jax.hessian`` of one block at a time): memory does not grow with N.

Two more routes, used to check the first: the empirical information (the sum of each row's score
outer product) and Louis' identity, complete-data information minus missing information
(Louis 1982, "Finding the observed information matrix when using the EM algorithm"):
``I = Σ_n Σ_k r_nk (-∇²ℓ_nk) - Σ_n (Σ_k r_nk s_nk s_nk^T - s̄_n s̄_n^T)`` with ``s_nk = ∇ℓ_nk``,
``s̄_n = Σ_k r_nk s_nk``.

A model other than a mixture (an HMM's sequences) registers how its log-likelihood is summed over
blocks with :func:`register_likelihood`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import constraints as C
from .blocks import plan_blocks, sum_over_blocks, to_blocks
from .model import Model

Array = jax.Array


class Coordinates(NamedTuple):
    """A parameter pytree's minimal coordinates.

    Attributes:
        encode: ``encode(params) -> u [P]``.
        decode: ``decode(u [P]) -> params``.
        names: a tuple of ``P`` texts naming each coordinate (``"means[1, 0]"``, ``"weights[0]/[..., 2]"``).
    """

    encode: Callable
    decode: Callable
    names: list


def _path_text(path) -> str:
    parts = []
    for key in path:
        name = getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))
        parts.append(str(name))
    return ".".join(parts)


def coordinates(constraints: Any, params: Any) -> Coordinates:
    """The minimal chart of ``params`` under ``constraints`` (a prefix pytree of
    :class:`jaxem.constraints.Constraint`, ``None`` for real)."""
    full = (jax.tree.map(lambda _: C.real, params) if constraints is None else
            jax.tree.map(lambda c, p: jax.tree.map(lambda _: c or C.real, p), constraints, params,
                         is_leaf=lambda n: isinstance(n, C.Constraint) or n is None))
    charts = [c.chart for c in jax.tree.leaves(full, is_leaf=lambda n: isinstance(n, C.Constraint))]
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    shapes = [jnp.shape(leaf) for _, leaf in leaves]
    names = tuple(f"{_path_text(path)}{text}" for (path, _), chart, shape in
                  zip(leaves, charts, shapes, strict=True) for text in chart.coordinates(shape))
    sizes = [len(chart.coordinates(shape)) for chart, shape in zip(charts, shapes, strict=True)]
    splits = np.cumsum(sizes)[:-1].tolist()

    def encode(p):
        return jnp.concatenate([chart.encode(leaf) for chart, leaf in
                                zip(charts, jax.tree.leaves(p), strict=True)])

    def decode(u):
        parts = jnp.split(u, splits)
        return jax.tree.unflatten(treedef, [chart.decode(part, shape) for chart, part, shape in
                                            zip(charts, parts, shapes, strict=True)])

    return Coordinates(encode, decode, names)


class Likelihood(NamedTuple):
    """How a model's log-likelihood is summed over blocks of its data.

    Attributes:
        blocks: the data, every leaf with a leading ``[n_blocks]`` axis.
        block_log_likelihood: ``(params, block) -> scalar``, one block's weighted log-likelihood.
        unit_log_likelihoods: ``(params, block) -> ([U] log-likelihoods, [U] weights)`` of the
            block's independent units (rows; an HMM's sequences), for the empirical information.
        constraints: the parameters' constraint pytree.
        log_prior: ``log_prior(params) -> scalar`` or ``None``.
    """

    blocks: Any
    block_log_likelihood: Callable
    unit_log_likelihoods: Callable
    constraints: Any
    log_prior: Callable | None


_LIKELIHOODS: dict[type, tuple[Callable, Callable]] = {}


def register_likelihood(model_type: type, make: Callable, constraints_of: Callable) -> None:
    """Declare ``make(model, X, sample_weight, block_size, **data_options) -> Likelihood`` and
    ``constraints_of(model) -> constraint pytree`` for models of ``model_type`` (mixtures are
    built in)."""
    _LIKELIHOODS[model_type] = (make, constraints_of)


def _registered(model) -> tuple[Callable, Callable]:
    for cls in type(model).__mro__:
        if cls in _LIKELIHOODS:
            return _LIKELIHOODS[cls]
    raise ValueError(f"{type(model).__name__} has no registered log-likelihood for information "
                     "matrices (mixtures and HMMs have one)")


def model_constraints(model) -> Any:
    """The constraint pytree of ``model``'s whole parameters (an HMM's chain included)."""
    return _registered(model)[1](model)


def likelihood(model, X, sample_weight=None, block_size: int | None = None, **options) -> Likelihood:
    """The :class:`Likelihood` of ``model`` on data ``X`` (by the first registered class in the
    model's MRO)."""
    return _registered(model)[0](model, X, sample_weight, block_size, **options)


def hessian_block_rows(n_coordinates: int) -> int:
    """Rows per block for a Hessian over ``n_coordinates`` coordinates: its forward-over-reverse
    pass carries ``P`` tangents of each row's temporaries, so blocks shrink as ``P`` grows."""
    return int(np.clip(2**17 // max(n_coordinates, 1), 32, 8192))


@functools.cache
def _mixture_functions(model: Model) -> tuple[Callable, Callable]:
    # One pair of functions per model, so the compiled information programs are reused.
    def units(params, block):
        ll = jax.nn.logsumexp(model.log_joint_matrix(params, block[0]), axis=-1)
        return ll, block[1]

    def block_ll(params, block):
        ll, weights = units(params, block)
        return jnp.sum(jnp.where(weights > 0, weights * ll, 0.0))

    return units, block_ll


def _mixture_likelihood(model: Model, X, sample_weight, block_size, **options) -> Likelihood:
    if options:
        raise ValueError(f"a mixture's information takes no {', '.join(sorted(options))}")
    X = jnp.asarray(X)
    w = jnp.ones(X.shape[:1], X.dtype) if sample_weight is None else jnp.asarray(sample_weight, X.dtype)
    n_blocks, rows = plan_blocks(X.shape[0], block_size)
    units, block_ll = _mixture_functions(model)
    return Likelihood(to_blocks(X, w, n_blocks, rows), block_ll, units, model.constraints,
                      model.log_prior)


register_likelihood(Model, _mixture_likelihood, lambda model: model.constraints)


def information_from(lik: Likelihood, coords: Coordinates, u: Array) -> Array:
    """``[P, P]`` observed information at minimal coordinates ``u [P]`` (traceable, vmappable
    over data sets)."""
    H = sum_over_blocks(
        lambda blk: jax.hessian(lambda v: lik.block_log_likelihood(coords.decode(v), blk))(u),
        (lik.blocks,))
    if lik.log_prior is not None:
        H = H + jax.hessian(lambda v: lik.log_prior(coords.decode(v)))(u)
    return -H


def empirical_from(lik: Likelihood, coords: Coordinates, u: Array) -> Array:
    """``[P, P]`` empirical information ``Σ_n w_n s_n s_n^T`` (traceable)."""
    def block(blk):
        scores = jax.jacrev(lambda v: lik.unit_log_likelihoods(coords.decode(v), blk)[0])(u)
        weights = lik.unit_log_likelihoods(coords.decode(u), blk)[1]
        scores = jnp.where(weights[:, None] > 0, scores, 0.0)
        return scores.T @ (weights[:, None] * scores)

    return sum_over_blocks(block, (lik.blocks,))


@functools.cache
def _cached_coordinates(model, treedef, shapes: tuple) -> Coordinates:
    structs = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes])
    return coordinates(model_constraints(model), structs)


def model_coordinates(model, params) -> Coordinates:
    """:func:`coordinates` of ``model``'s parameters (one object per model and shapes, so the
    programs built on it compile once)."""
    leaves, treedef = jax.tree.flatten(params)
    return _cached_coordinates(model, treedef, tuple(jnp.shape(leaf) for leaf in leaves))


def prepare(model, params, X, sample_weight=None, block_size: int | None = None,
            **options) -> tuple[Likelihood, Coordinates, Array]:
    """``(likelihood, coordinates, u [P])`` of ``model`` at ``params`` on ``X``."""
    coords = model_coordinates(model, params)
    size = hessian_block_rows(len(coords.names)) if block_size is None else block_size
    lik = likelihood(model, X, sample_weight, size, **options)
    return lik, coords, coords.encode(params)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _compiled(route, block_ll, units, log_prior, coords, u, blocks):
    return route(Likelihood(blocks, block_ll, units, None, log_prior), coords, u)


def evaluate(route: Callable, lik: Likelihood, coords: Coordinates, u: Array) -> Array:
    """``route(lik, coords, u)`` (:func:`information_from`, ...) as a compiled program, reused
    for the same model, shapes and route."""
    return _compiled(route, lik.block_log_likelihood, lik.unit_log_likelihoods, lik.log_prior,
                     coords, u, lik.blocks)


def _evaluate(route, model, params, X, sample_weight, block_size, options) -> Array:
    return evaluate(route, *prepare(model, params, X, sample_weight, block_size, **options))


def observed_information(model, params, X, sample_weight=None, *, block_size: int | None = None,
                         **data_options) -> Array:
    """Minus the Hessian of ``log p(X | θ) + log_prior(θ)`` in the model's minimal coordinates.

    Args:
        model: a :class:`jaxem.Model` (or a :class:`jaxem.hmm.HMM`).
        params: the parameters (one pytree), usually a fit's ``result.params``.
        X: the data ``[N, ...]`` the fit saw (an HMM's rows; give ``lengths=`` as ``data_options``).
        sample_weight: optional ``[N]`` frequency weights.
        block_size: rows per Hessian block (default: shrinks with the number of coordinates).

    Returns:
        ``[P, P]``; coordinate ``i`` is ``coordinates(model.constraints, params).names[i]``
        (see :func:`coordinates`).
    """
    return _evaluate(information_from, model, params, X, sample_weight, block_size, data_options)


def empirical_information(model, params, X, sample_weight=None, *, block_size: int | None = None,
                          **data_options) -> Array:
    """``[P, P]`` sum over independent units (rows; an HMM's sequences) of the score's outer
    product, in the same coordinates as :func:`observed_information`; it estimates the same
    matrix at the maximum likelihood when the model is right."""
    return _evaluate(empirical_from, model, params, X, sample_weight, block_size, data_options)


def louis_information(model: Model, params, X, sample_weight=None, *,
                      block_size: int | None = None) -> Array:
    """``[P, P]`` observed information by Louis' identity (complete-data information minus the
    missing information; see the module), from per-component derivatives of the log-joint, for a
    mixture :class:`jaxem.Model`. An independent route to :func:`observed_information`."""
    return _evaluate(_louis_route(model), model, params, X, sample_weight, block_size, {})


@functools.cache
def _louis_route(model: Model) -> Callable:
    def route(lik, coords, u):
        info = sum_over_blocks(functools.partial(_louis_block, model, coords, u), (lik.blocks,))
        if lik.log_prior is not None:
            info = info - jax.hessian(lambda v: lik.log_prior(coords.decode(v)))(u)
        return info

    return route


def _louis_block(model, coords, u, blk):
    """One block's complete-data minus missing information (Louis' identity)."""
    Xb, w = blk

    def lj(v):
        return model.log_joint_matrix(coords.decode(v), Xb)

    ell = lj(u)
    r = jax.nn.softmax(ell, axis=-1) * jnp.where(w > 0, w, 0.0)[:, None]
    s = jax.jacrev(lj)(u)                 # [rows, K, P]
    h = jax.hessian(lj)(u)                # [rows, K, P, P]
    s_bar = jnp.einsum("nk,nkp->np", jax.nn.softmax(ell, axis=-1), s)
    complete = -jnp.einsum("nk,nkpq->pq", r, h)
    missing = (jnp.einsum("nk,nkp,nkq->pq", r, s, s)
               - jnp.einsum("n,np,nq->pq", jnp.where(w > 0, w, 0.0), s_bar, s_bar))
    return complete - missing
