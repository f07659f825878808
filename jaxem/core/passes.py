"""Passes: what one sweep over a block of data computes, apart from how the data are read.

A :class:`Pass` is the E-step fused with whatever the M-step needs, for ONE restart, plus the
M-step itself. A runner decides where the data come from: the compiled in-memory loop
(:func:`jaxem.core.runner.run_in_memory`, row blocks inside one program, optionally split over
devices), the chunked host loop (:mod:`jaxem.scale.chunked`) or online minibatches
(:mod:`jaxem.scale.online`). Mixtures' passes are here; an HMM's (forward-backward over
sequences) is :func:`jaxem.hmm.baum_welch.hmm_pass`, and every runner takes either.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import constraints as C
from . import precision, sharding
from .ascent import gradient_m_step
from .blocks import (
    HardStats,
    Rows,
    assignment_fingerprint,
    block_rows,
    carry_zeros,
    host_row_blocks,
    plan_blocks,
    statistics,
    sum_over_blocks,
)
from .estep import (
    fixed_responsibility_sum,
    hard_assignment,
    mask_labels,
    posterior,
    weighted_sum,
)
from .model import Model
from .validation import check_enough_rows, check_labels, check_sample_weight

Array = jax.Array


class Pass(NamedTuple):
    """What one sweep computes for ONE restart, whatever reads the data.

    Attributes:
        sweep: ``sweep(params, data, temperature) -> (objective, aux)``: the data's part of the
            objective (the log-likelihood; hard EM: the classification log-likelihood) and what
            the M-step needs. ``data`` is the runner's unit of blocked data: :class:`Rows` for
            mixtures, ``(X [B, T, ...], mask [B, T])`` for HMMs. ``temperature`` is ``None``
            (T = 1) or the annealing temperature.
        m_step: ``m_step(params, aux) -> params`` (``aux`` summed over the data's parts), or a
            :class:`jaxem.core.loop.Ascent` for a gradient M-step.
        log_prior: ``log_prior(params) -> scalar`` added once per sweep by the runner, or ``None``.
        additive: whether ``aux``, like the objective, is a sum over the data's parts, so chunks
            and devices may each sweep their own and add the results (closed-form statistics).
            A pass whose ``aux`` is per row (kept responsibilities) runs in memory only.
        shard_map: with a device mesh, run ``sweep`` per device under ``shard_map`` and psum
            (row blocks); ``False`` leaves the partitioning to XLA (an HMM's sequences).
    """

    sweep: Callable
    m_step: Callable
    log_prior: Callable | None = None
    additive: bool = True
    shard_map: bool = True


class ChunkParts(NamedTuple):
    """What a chunked runner needs from a model to read a source in chunks.

    Attributes:
        em_pass: the :class:`Pass`; its ``data`` are one chunk's.
        read: ``read()`` a fresh iterator over the source's chunks, each the pass's data placed on
            the devices.
        initialise: ``initialise(keys [R], rng, init_size) -> [R] params`` from a sample of
            ``init_size`` rows of the source drawn with the NumPy generator ``rng``.
        q_sweep: for a gradient M-step, ``q_sweep((u, θ_old), data, temperature) -> (objective,
            (Q, ∇_u Q))`` over one chunk (see :func:`q_gradient_pass`); else ``None``.
        total_weight: the data's total weight (the gradient M-step's loss is per unit weight).
        constraints: the parameters' constraint pytree, in whose unconstrained space accelerated
            EM extrapolates (see :mod:`jaxem.core.accelerate`).
    """

    em_pass: Pass
    read: Callable
    initialise: Callable
    q_sweep: Callable | None = None
    total_weight: float | None = None
    constraints: Any = None


# Chunk readers by model class: :func:`row_chunk_parts` for mixtures; the HMM registers its own
# (sequences) when :mod:`jaxem.hmm` is imported. Runners look them up by the model's type, so they
# need no branch per family.
_CHUNK_PARTS: dict[type, Callable] = {}


def register_chunk_parts(model_type: type, make: Callable) -> None:
    """Declare ``make(model, source, **options) -> ChunkParts`` for models of ``model_type``."""
    _CHUNK_PARTS[model_type] = make


def chunk_parts(model, source, **options) -> ChunkParts:
    """The :class:`ChunkParts` of ``model`` (by the first registered class in its MRO)."""
    for cls in type(model).__mro__:
        if cls in _CHUNK_PARTS:
            return _CHUNK_PARTS[cls](model, source, **options)
    raise ValueError(f"{type(model).__name__} cannot be fitted in chunks")


def mixture_pass(model: Model, *, hard: bool = False, use_gradient: bool = False, optimizer=None,
                 m_step_iters: int = 1, X_blocks: Array | None = None) -> Pass:
    """The :class:`Pass` of a mixture ``model``: closed form (fused statistics), or with
    ``use_gradient`` the kept responsibilities and an optax M-step on ``X_blocks``."""
    if not use_gradient:
        return _closed_form_pass(model, hard)

    def sweep(params, rows, temperature):
        return responsibility_pass(model, params, rows, hard, temperature)

    def m_step(params, resp_blocks):
        return gradient_m_step(model, params, X_blocks, resp_blocks, optimizer, m_step_iters,
                               posterior_rows=not hard)

    return Pass(sweep, m_step, model.log_prior, additive=False)


# One Pass object per (model, rule), so runners that compile per pass reuse their programs.
@functools.cache
def _closed_form_pass(model: Model, hard: bool) -> Pass:
    def sweep(params, rows, temperature):
        return stats_pass(model, params, rows, hard, temperature)

    def maximize(params, aux):
        return model.maximize(statistics(aux), params)

    return Pass(sweep, maximize, model.log_prior)


@functools.cache
def _q_sweep(model: Model, hard: bool) -> Callable:
    return functools.partial(q_gradient_pass, model, hard)


def stats_pass(model: Model, params: Any, rows: Rows, hard: bool = False,
               temperature: Array | None = None, centre: Any = None) -> tuple[Array, Any]:
    """E-step at ``params`` fused with the sufficient statistics the closed-form M-step needs.

    Args:
        model: the model.
        params: its parameters.
        rows: the blocked data (see :func:`block_rows`).
        hard, temperature: the E-step rule (see :func:`posterior`).
        centre: the parameters handed to ``model.suff_stats`` (the point its statistics are taken
            about); ``None`` means ``params``. Online EM keeps one fixed centre so that statistics
            from different steps can be averaged.

    Returns:
        ``(objective, stats)``: the weighted total of the rows' objectives (the log-likelihood,
        or the classification log-likelihood for hard EM) and the summed expected sufficient
        statistics (the model's pytree; for hard EM a :class:`HardStats` holding them).
    """
    stats_params = params if centre is None else centre

    def block_stats(xb, w, labels, hashes):
        if hard and model.hard_block_stats is not None and labels is None and centre is None:
            objective, component, stats = model.hard_block_stats(params, xb, w)
            return objective, HardStats(stats, assignment_fingerprint(
                xb, component, w, model.n_components, hashes))
        lj = mask_labels(model.log_joint_matrix(params, xb), labels)
        if hard:
            best, component = hard_assignment(lj)
            one_hot = jax.nn.one_hot(component, lj.shape[-1], dtype=w.dtype) * w[:, None]
            return weighted_sum(best, w), HardStats(model.suff_stats(stats_params, xb, one_hot),
                                                    assignment_fingerprint(xb, component, w,
                                                                           lj.shape[-1], hashes))
        row_ll, resp = posterior(lj, hard, temperature)
        return weighted_sum(row_ll, w), model.suff_stats(stats_params, xb, resp * w[:, None])

    def fused_block_stats(xb, w, labels, _hashes):
        def respond(log_joint):
            row_ll, resp = posterior(mask_labels(log_joint, labels), False, temperature)
            return row_ll, resp * w[:, None]

        row_ll, stats = model.block_stats(params, xb, respond)
        return weighted_sum(row_ll, w), stats

    fused = model.block_stats is not None and not hard and centre is None
    return sum_over_blocks(fused_block_stats if fused else block_stats, rows)


def _greedy_matching(score: Array) -> Array:
    """A one-to-one map ``match [K]`` from rows to columns of ``score [K, K]``, taking the largest
    remaining entry each time (exact enough to line initial components up with labels)."""
    k = score.shape[0]

    def take(_, state):
        match, score = state
        row, col = jnp.divmod(jnp.argmax(score), k)
        return (match.at[row].set(col.astype(match.dtype)),
                score.at[row, :].set(-jnp.inf).at[:, col].set(-jnp.inf))

    match, _ = jax.lax.fori_loop(0, k, take, (jnp.zeros((k,), jnp.int32), score))
    return match


def align_to_labels(model: Model, params: Any, rows: Rows) -> Any:
    """Renumber initial components so that component ``j`` starts where labelled class ``j`` is.

    An initialiser knows nothing of partial labels, so its component ``j`` may sit on another
    class's rows, and a few labels cannot pull it across the data. This matches each class to the
    initial component that holds most of its labelled rows, then takes one closed-form M-step
    with the responsibilities renumbered accordingly (labelled rows one-hot at their label).

    Args:
        model: a model with a closed-form M-step.
        params: initial parameters.
        rows: blocked data with ``labels``.

    Returns:
        Parameters whose components follow the labels' numbering.
    """

    def block_overlap(xb, w, labels, _hashes):
        _, resp = posterior(model.log_joint_matrix(params, xb))
        onehot = jax.nn.one_hot(labels, resp.shape[-1], dtype=resp.dtype) * w[:, None]
        return onehot.T @ resp

    match = _greedy_matching(sum_over_blocks(block_overlap, rows))

    def block_stats(xb, w, labels, _hashes):
        lj = mask_labels(model.log_joint_matrix(params, xb)[:, match], labels)
        _, resp = posterior(lj)
        return model.suff_stats(params, xb, resp * w[:, None])

    return model.maximize(sum_over_blocks(block_stats, rows), params)


def responsibility_pass(model: Model, params: Any, rows: Rows, hard: bool = False,
                        temperature: Array | None = None) -> tuple[Array, Array]:
    """E-step at ``params`` keeping the weighted responsibilities ``[n_blocks, block, K]``."""

    def body(total, block):
        xb, w, labels, _ = block
        row_ll, resp = posterior(mask_labels(model.log_joint_matrix(params, xb), labels), hard,
                                 temperature)
        return total + weighted_sum(row_ll, w), resp * w[:, None]

    zero = carry_zeros(jax.ShapeDtypeStruct((), rows.weights.dtype), rows.weights)
    return jax.lax.scan(body, zero, rows)


def q_gradient_pass(model: Model, hard: bool, pair, rows: Rows,
                    temperature: Array | None = None) -> tuple[Array, Any]:
    """The E-step at ``θ_old`` and Q with its gradient at ``u``, for ``pair = (u, θ_old)``:
    ``(objective, (Q, ∇_u Q))``, all sums over rows (the chunked gradient M-step's pass).

    ``objective`` is the weighted log-likelihood at ``θ_old``; ``Q`` uses the responsibilities at
    ``θ_old`` and the log-joints at ``constrain(u)``.
    """
    u, theta = pair

    def block(xb, w, labels, _hashes):
        lj = mask_labels(model.log_joint_matrix(theta, xb), labels)
        row_objective, resp = posterior(lj, hard, temperature)
        resp = resp * w[:, None]

        def q(v):
            lj_v = model.log_joint_matrix(C.constrain(model.constraints, v), xb)
            return fixed_responsibility_sum(lj_v, resp)

        return weighted_sum(row_objective, w), jax.value_and_grad(q)(u)

    return sum_over_blocks(block, rows)


def _check_row_arrays(source, sample_weight, labels, n_components: int | None):
    """Validate sample weights and labels against the source's length (when known)."""
    n = source.n_rows
    if (sample_weight is not None or labels is not None) and n is None:
        raise ValueError("sample_weight and labels need a source of known length (an array, a "
                         "memmap or a .npy file)")
    weights = None if sample_weight is None else check_sample_weight(sample_weight, n)
    if labels is not None:
        if n_components is None:
            raise ValueError("labels need a model that declares n_components")
        labels = check_labels(labels, n, n_components)
    if n is not None and n_components is not None:
        check_enough_rows(n if weights is None else int(np.sum(weights > 0)), n_components)
    return weights, labels


@functools.partial(precision.jit, static_argnames=("model", "align"))
def _initialise(keys, X, weights, labels, *, model, align):
    params = jax.vmap(model.init, in_axes=(0, None))(keys, X)
    if align:
        n_blocks, rows_per_block = plan_blocks(X.shape[0], None)
        blocked = block_rows(X, weights, labels, n_blocks, rows_per_block)
        params = jax.vmap(lambda p: align_to_labels(model, p, blocked))(params)
    return params


def row_chunk_parts(model: Model, source, *, lengths, chunk_size, block_size, mesh, dtype, rule,
                    use_gradient, sample_weight, labels, method, default_chunk_rows: int) -> ChunkParts:
    """How a chunked runner reads ``source`` (a :mod:`jaxem.scale.data` source) for a mixture:
    ``chunk_size`` rows at a time, each chunk in row blocks with its weights and labels."""
    del method  # the HMM's forward-backward option
    if lengths is not None:
        raise ValueError("lengths are for HMMs; a mixture's rows are independent")
    weights, labels = _check_row_arrays(source, sample_weight, labels, model.n_components)
    chunk_size = chunk_size or default_chunk_rows
    n_blocks, rows_per_block = plan_blocks(chunk_size, block_size, sharding.local_shards(mesh))
    # Several processes, each reading its own rows, run one compiled call per chunk together:
    # one with fewer chunks adds chunks of weight 0.
    n_chunks = None if source.n_rows is None else -(-source.n_rows // chunk_size)
    all_chunks = int(sharding.over_processes(n_chunks or 0, mesh).max())

    def read():
        host, done = None, 0
        for start, chunk in source.chunks(chunk_size, allow_nan=model.handles_missing,
                                          dtype=dtype):
            stop = start + chunk.shape[0]
            host = host_row_blocks(chunk, None if weights is None else weights[start:stop],
                                   None if labels is None else labels[start:stop], n_blocks, rows_per_block)
            done += 1
            yield Rows(*(None if a is None else sharding.put_blocks(a, mesh) for a in host))
        for _ in range(all_chunks - done):
            empty = host._replace(weights=np.zeros_like(host.weights))
            yield Rows(*(None if a is None else sharding.put_blocks(a, mesh) for a in empty))

    def initialise(keys, rng, init_size):
        index, sample = source.sample(init_size, rng, dtype, model.handles_missing)
        w = np.ones(sample.shape[0], dtype) if weights is None else weights[index]
        return _initialise(keys, jnp.asarray(sample), jnp.asarray(w, dtype),
                           None if labels is None else jnp.asarray(labels[index]), model=model,
                           align=labels is not None and not use_gradient)

    em_pass = mixture_pass(model, hard=rule.hard)
    q_sweep = _q_sweep(model, rule.hard) if use_gradient else None
    total = (None if source.n_rows is None else float(sharding.over_processes(
        source.n_rows if weights is None else np.sum(weights), mesh).sum()))
    return ChunkParts(em_pass, read, initialise, q_sweep, total, model.constraints)


register_chunk_parts(Model, row_chunk_parts)
