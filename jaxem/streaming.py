"""Chunked (out-of-core) exact EM: the data are read in fixed-size chunks once per EM iteration.

Each pass reads the source chunk by chunk (see :mod:`jaxem.data`); for every chunk one compiled
function runs the E-step of every restart (vmapped) and adds the chunk's log-likelihood and
additive sufficient statistics to running totals kept on the device. After the pass, the
closed-form M-step runs once on the totals. The last, shorter chunk is padded under weight 0, so
one program serves every chunk, and peak memory is set by ``chunk_size``, not by ``N``.

The statistics are the same sums the in-memory fit computes, added in another order, so the
parameters and the whole history equal :func:`jaxem.fit`'s from the same start up to float
round-off. The stopping rule, restarts, E-step rules (soft, hard, annealed), partial labels,
sample weights, the model's log prior and :class:`jaxem.FitResult` are those of :func:`jaxem.fit`.

Initialisation needs data in memory, so a model's ``init`` sees ``init_size`` rows: drawn at
random (without replacement) from arrays, memmaps and ``.npy`` files, the first ``init_size`` rows
of an iterable source. Give ``init_params`` to start elsewhere.

A gradient M-step needs Q and its gradient over all rows at every optimiser step: chunked, each
step is one pass (responsibilities recomputed from the E-step's parameters chunk by chunk), with
an optimiser that needs only gradients (see :mod:`jaxem._chunked_gradient`).

Hidden Markov models (:class:`jaxem.hmm.HMM`) are chunked by sequences: ``chunk_size`` sequences
at a time, each padded to the longest sequence; their chain counts and emission statistics are
also additive (over sequences).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _chunked_gradient, _loop, _passes, _precision, distributed
from ._result import FitResult, result_from_loop
from .data import ChunkSource, as_source, pad_rows
from .em import _restart_keys
from .estep import resolve_e_step
from .hmm.fit import _e_pass as _hmm_e_pass
from .hmm.fit import _Layout as _HMMLayout
from .hmm.fit import _m_step as _hmm_m_step_one
from .hmm.inference import choose_method
from .hmm.model import HMM, _check_lengths
from .model import Model
from .validation import (
    check_enough_rows,
    check_labels,
    check_positive_int,
    check_sample_weight,
    check_tolerance,
    default_float_dtype,
    tolerance_value,
)

DEFAULT_CHUNK_ROWS = 65536
DEFAULT_INIT_ROWS = 65536


def _host_blocks(chunk: np.ndarray, n_valid: int, weights, labels, n_blocks: int, rows: int):
    """A chunk laid out as ``Rows`` of ``[n_blocks, rows, ...]`` NumPy arrays (padded, weight 0)."""
    size = n_blocks * rows
    w = np.ones(n_valid, chunk.dtype) if weights is None else weights.astype(chunk.dtype)
    out = [pad_rows(chunk, size), pad_rows(w, size, 0)]
    if labels is not None:
        out.append(pad_rows(labels, size, -1))
    return _passes.Rows(*(a.reshape((n_blocks, rows) + a.shape[1:]) for a in out))


def _mixture_part(params, rows, temperature, *, model, hard, mesh, in_sequence):
    """``(objective [R], stats)`` of one chunk for every restart (see
    :func:`jaxem._passes.plan_restarts` for ``in_sequence``)."""
    pass_fn = distributed.sharded_pass(_passes.stats_pass, mesh)
    return _loop.map_restarts(lambda p: pass_fn(model, p, rows, hard, temperature), params,
                              in_sequence=in_sequence)


def _hmm_part(params, rows, temperature, *, model, hard, layout, method, in_sequence):
    """``(log-likelihood [R], (chain counts, emission stats))`` of one chunk of sequences.

    With a mesh the chunk's sequences arrive split over the devices and XLA partitions the
    vmapped forward-backward by them (the HMM scans' carries are not yet written for
    ``shard_map``, which the mixtures' passes use).
    """
    del hard, temperature
    X, mask = rows

    def one(p):
        objective, aux = _hmm_e_pass(model, p, layout.observation_blocks(X), mask, layout, method,
                                     False)
        # The pass adds the chain's log prior; chunks must not each add it (it is added once per
        # pass). It is exactly 0 unless a Dirichlet concentration exceeds 1.
        return objective - model.log_prior(p), aux

    return _loop.map_restarts(one, params, in_sequence=in_sequence)


@functools.partial(_precision.jit, static_argnames=("part", "static"), donate_argnums=1)
def _add_chunk(params, total, rows, temperature, *, part, static):
    """``total + part(params, rows, temperature)``: one chunk's sums added on the device."""
    return jax.tree.map(jnp.add, total, part(params, rows, temperature, **dict(static)))


def _run_chunks(part, static: tuple, params, chunks, temperature):
    """Totals of ``part`` over ``chunks`` (device-ready row pytrees), one compiled call each."""
    total = None
    for rows in chunks:
        # The next chunk is read while the device works on the previous one; waiting for that
        # before dispatching keeps one chunk in flight, so asynchronous dispatch cannot queue up
        # the whole data set in memory.
        jax.block_until_ready(total)
        if total is None:
            shapes = jax.eval_shape(functools.partial(part, **dict(static)), params, rows,
                                    temperature)
            total = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        total = _add_chunk(params, total, rows, temperature, part=part, static=static)
    return total


@functools.partial(_precision.jit, static_argnames=("model",))
def _maximize(params, stats, *, model):
    return jax.vmap(model.maximize)(_passes.statistics(stats), params)


@functools.partial(_precision.jit, static_argnames=("model",))
def _log_prior(params, *, model):
    return jax.vmap(model.log_prior)(params)


@functools.partial(_precision.jit, static_argnames=("model",))
def _init(keys, X, *, model):
    return jax.vmap(model.init, in_axes=(0, None))(keys, X)


@functools.partial(_precision.jit, static_argnames=("model",))
def _align(params, rows, *, model):
    return jax.vmap(lambda p: _passes.align_to_labels(model, p, rows))(params)


def _check_row_arrays(source: ChunkSource, sample_weight, labels, n_components: int | None):
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


def fit_chunked(model: Model | HMM, source, *, chunk_size: int | None = None, lengths=None,
                key=None, n_restarts: int | None = None, max_iter: int = 100, tol: float = 1e-6,
                sample_weight=None, labels=None, init_params: Any = None,
                init_size: int = DEFAULT_INIT_ROWS, e_step="soft", m_step: str = "auto",
                optimizer=None, m_step_iters: int = 10, method: str = "auto",
                block_size: int | None = None, devices=None,
                progress: Callable | None = None) -> FitResult:
    """Fit ``model`` by exact EM reading ``source`` in chunks (data larger than memory).

    Args:
        model: a :class:`jaxem.Model`, or a :class:`jaxem.hmm.HMM` with a closed-form emission
            M-step.
        source: the data ``[N, ...]``: an array, a ``np.memmap``, a ``.npy`` path, or a callable
            returning a fresh iterable of arrays per call (see :mod:`jaxem.data`). For an HMM,
            the rows of all sequences one after another (an array, memmap or ``.npy`` path).
        chunk_size: rows per chunk (default 65536); for an HMM, sequences per chunk (default:
            all sequences whose padded size fits 65536 steps). Peak memory grows with it.
        lengths: HMMs only: ``[B]`` sequence lengths summing to ``N`` (default one sequence).
        key, n_restarts, max_iter, tol, sample_weight, labels, init_params, e_step, progress: as in
            :func:`jaxem.fit` (``sample_weight`` and ``labels`` are in-memory ``[N]`` arrays;
            HMMs take none of them and only the soft E-step).
        init_size: rows the model's initialiser sees (a random sample, or the first rows of an
            iterable source); ignored with ``init_params``.
        m_step: ``"auto"`` (closed form when the model has one), ``"closed_form"`` or
            ``"gradient"``: ``m_step_iters`` steps of ``optimizer`` (default ``optax.adam(1e-2)``;
            one that needs only the gradient) per M-step, each step one pass over the data (see
            :mod:`jaxem._chunked_gradient`). Mixtures only.
        method: HMMs only: forward-backward by ``"scan"``, ``"associative"`` or ``"auto"``.
        block_size: rows per block inside a chunk (default as in :func:`jaxem.fit`: about 8192,
            or 4096 / R for R restarts vmapped on an accelerator).
        devices: ``None``, ``"all"``, a list of devices or a mesh: every chunk is split over the
            devices and their statistics summed (see :mod:`jaxem.distributed`).

    Returns:
        A :class:`jaxem.FitResult` (``compile_time`` is 0: chunk programs compile on first use and
        count in ``fit_time``).

    Raises:
        ValueError: bad arguments or data (non-finite values name the global row), an optimiser
            with a line search.
        FitError: every restart's log-likelihood became NaN or infinite.
    """
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_tolerance(tol)
    init_size = check_positive_int(init_size, "init_size")
    if n_restarts is not None:
        n_restarts = check_positive_int(n_restarts, "n_restarts")
    if block_size is not None:
        block_size = check_positive_int(block_size, "block_size")
    if chunk_size is not None:
        chunk_size = check_positive_int(chunk_size, "chunk_size")
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be callable or None, got {type(progress).__name__}")
    m_step_iters = check_positive_int(m_step_iters, "m_step_iters")
    if m_step not in ("auto", "closed_form", "gradient"):
        raise ValueError(f"m_step must be 'auto', 'closed_form' or 'gradient', got {m_step!r}")
    if m_step == "closed_form" and not model.has_closed_form:
        raise ValueError(f"{model.name!r} has no closed-form M-step; use m_step='gradient'")
    gradient = None
    if m_step == "gradient" or not model.has_closed_form:
        if isinstance(model, HMM):
            raise ValueError("chunked HMM fits need a closed-form emission M-step")
        gradient = (_chunked_gradient.check_optimizer(
            optimizer or _chunked_gradient.default_optimizer()), m_step_iters)
    rule = resolve_e_step(e_step)
    mesh = distributed.data_mesh(devices)
    source = as_source(source)
    if key is None and init_params is not None:
        key = jax.random.key(0)  # the initialiser is not called; any key will do
    keys = _restart_keys(key, n_restarts)
    dtype = np.dtype(default_float_dtype())
    if init_params is not None:
        init_params = jax.tree.map(
            lambda p: jnp.broadcast_to(jnp.asarray(p, dtype), (keys.shape[0],) + jnp.shape(p)),
            init_params)
    seed = int(jax.random.randint(keys[0], (), 0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if isinstance(model, HMM):
        if sample_weight is not None or labels is not None or e_step != "soft":
            raise ValueError("chunked HMM fits take no sample_weight or labels and only "
                             "e_step='soft'")
        run_pass, m_step, params = _hmm_plan(model, source, lengths, chunk_size, keys,
                                             init_params, init_size, rng, method, block_size,
                                             mesh, dtype)
    else:
        if lengths is not None:
            raise ValueError("lengths are for HMMs; a mixture's rows are independent")
        run_pass, m_step, params = _mixture_plan(model, source, chunk_size or DEFAULT_CHUNK_ROWS,
                                                 keys, init_params, init_size, rng, rule,
                                                 sample_weight, labels, block_size, mesh, dtype,
                                                 gradient)
    start = time.perf_counter()
    out = _loop.iterate(run_pass, m_step, params, jnp.asarray(tolerance_value(tol), dtype),
                        max_iter=max_iter, may_stop=rule.may_stop,
                        on_host=progress or (lambda *_: None))
    fit_time = time.perf_counter() - start
    out = jax.tree.map(np.asarray, out)
    return result_from_loop(out, keys, max_iter=max_iter, tol=tol, fit_time=fit_time)


def log_likelihood_chunked(model: Model, params: Any, source, *, chunk_size: int | None = None,
                           block_size: int | None = None, devices=None) -> float:
    """Total log-likelihood ``Σ_n log p(x_n | params)`` of ``source`` read in chunks.

    Args:
        model: a :class:`jaxem.Model`; params: its parameters (one pytree).
        source: data as in :func:`fit_chunked`.
        chunk_size, block_size, devices: as in :func:`fit_chunked`.

    Returns:
        The log-likelihood (plus the model's log prior, if it has one), a float.
    """
    dtype = np.dtype(default_float_dtype())
    params = jax.tree.map(lambda p: jnp.asarray(p, dtype)[None], params)
    run_pass, _, _ = _mixture_plan(model, as_source(source), chunk_size or DEFAULT_CHUNK_ROWS,
                                   None, params, 1, None, resolve_e_step("soft"), None, None,
                                   block_size, distributed.data_mesh(devices), dtype)
    return float(run_pass(params, 0)[0][0])


def _mixture_plan(model: Model, source: ChunkSource, chunk_size, keys, init_params, init_size,
                  rng, rule, sample_weight, labels, block_size, mesh, dtype, gradient=None):
    """``(run_pass, m_step, initial params)`` of a chunked mixture fit; ``gradient`` is ``None``
    (closed-form M-step) or ``(optimizer, steps)`` for the gradient M-step."""
    allow_nan = model.handles_missing
    weights, labels = _check_row_arrays(source, sample_weight, labels, model.n_components)
    n_restarts = (jax.tree.leaves(init_params)[0].shape[0] if keys is None
                  else keys.shape[0])
    plan = _passes.plan_restarts(n_restarts, distributed.platform(None, mesh), block_size)
    n_blocks, rows = _passes.plan_blocks(chunk_size, plan.block_size, distributed.n_shards(mesh))
    static = (("model", model), ("hard", rule.hard), ("mesh", mesh),
              ("in_sequence", plan.in_sequence))

    def device_rows():
        for start, chunk in source.chunks(chunk_size, allow_nan=allow_nan, dtype=dtype):
            stop = start + chunk.shape[0]
            host = _host_blocks(chunk, chunk.shape[0],
                                None if weights is None else weights[start:stop],
                                None if labels is None else labels[start:stop], n_blocks, rows)
            yield _passes.Rows(*(None if a is None else distributed.put_blocks(a, mesh)
                                 for a in host))

    part = _mixture_part if gradient is None else _chunked_gradient.q_part

    def run_pass(params, iteration):
        temperature = rule.temperature(jnp.asarray(iteration), dtype)
        # The gradient M-step's first Q evaluation is fused into the E-step pass, at u = θ.
        inputs = params if gradient is None else (
            _chunked_gradient.unconstrain(params, model=model), params)
        objective, aux = _run_chunks(part, static, inputs, device_rows(), temperature)
        if model.log_prior is not None:
            objective = objective + _log_prior(params, model=model)
        return np.asarray(objective), aux if gradient is None else (aux, temperature)

    def gradient_m_step(theta, aux):
        q, temperature = aux
        total = source.n_rows if weights is None else float(np.sum(weights))
        return _chunked_gradient.m_step(
            theta, q, model=model, total_weight=total, optimizer=gradient[0], n_steps=gradient[1],
            q_pass=lambda u, th: _run_chunks(part, static, (u, th), device_rows(), temperature))

    if init_params is None:
        index, sample = source.sample(init_size, rng, dtype, allow_nan)
        init_params = _init(keys, jnp.asarray(sample), model=model)
        if labels is not None and gradient is None:
            n_b, r = _passes.plan_blocks(sample.shape[0], block_size)
            w = np.ones(sample.shape[0], dtype) if weights is None else weights[index]
            blocked = _passes.block_rows(jnp.asarray(sample), jnp.asarray(w, dtype),
                                         jnp.asarray(labels[index]), n_b, r)
            init_params = _align(init_params, blocked, model=model)
    if gradient is not None:
        _chunked_gradient.check_update(init_params, model=model, optimizer=gradient[0])
    m_step = functools.partial(_maximize, model=model) if gradient is None else gradient_m_step
    return run_pass, m_step, init_params


def _hmm_plan(hmm: HMM, source: ChunkSource, lengths, chunk_size, keys, init_params, init_size,
              rng, method, block_size, mesh, dtype):
    """``(run_pass, m_step, initial params)`` of a chunked Baum-Welch fit."""
    if not source.indexable:
        raise ValueError("a chunked HMM fit reads sequences by row range: give an array, a memmap "
                         "or a .npy path")
    n_rows = source.n_rows
    lengths = (np.array([n_rows]) if lengths is None else _check_lengths(lengths, n_rows))
    if n_rows < hmm.n_states:
        raise ValueError(f"n_states={hmm.n_states} but only {n_rows} observations")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    T, B = int(lengths.max()), lengths.shape[0]
    per_chunk = chunk_size or max(1, min(B, DEFAULT_CHUNK_ROWS // T))
    shards = distributed.n_shards(mesh)
    per_chunk = shards * -(-per_chunk // shards)
    method = choose_method(method, T)
    layout = _HMMLayout(per_chunk, T, block_size)
    n_restarts = keys.shape[0]
    in_sequence = _passes.plan_restarts(n_restarts, distributed.platform(None, mesh)).in_sequence
    static = (("model", hmm), ("hard", False), ("layout", layout), ("method", method),
              ("in_sequence", in_sequence))
    steps = np.arange(T)

    def device_rows():
        for b0 in range(0, B, per_chunk):
            b1 = min(b0 + per_chunk, B)
            lo, hi = starts[b0], starts[b1 - 1] + lengths[b1 - 1]
            X = source.rows(int(lo), int(hi), dtype=dtype)
            # Padded steps, and the empty sequences that fill a short last chunk, read their
            # chunk's first rows: finite under any emission, and masked out.
            local = pad_rows(starts[b0:b1] - lo, per_chunk, 0)
            n = pad_rows(lengths[b0:b1], per_chunk, 0)
            mask = steps[None, :] < n[:, None]
            index = np.where(mask, local[:, None] + steps[None, :], local[:, None])
            yield distributed.put_blocks(X[index], mesh), distributed.put_blocks(mask, mesh)

    def run_pass(params, iteration):
        del iteration
        objective, stats = _run_chunks(_hmm_part, static, params, device_rows(), None)
        return np.asarray(objective + _log_prior(params, model=hmm)), stats

    if init_params is None:
        _, sample = source.sample(init_size, rng, dtype)
        chain = hmm.uniform_chain(dtype)
        init_params = {**jax.tree.map(lambda a: jnp.broadcast_to(a, (keys.shape[0],) + a.shape),
                                      chain),
                       "emission": _init(keys, jnp.asarray(sample), model=hmm)}
    return run_pass, functools.partial(_hmm_m_step, hmm=hmm), init_params


@functools.partial(_precision.jit, static_argnames=("hmm",))
def _hmm_m_step(params, stats, *, hmm):
    return jax.vmap(lambda p, aux: _hmm_m_step_one(hmm, p, aux, None, False, None, 0))(params, stats)
