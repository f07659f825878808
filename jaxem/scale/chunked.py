"""Chunked (out-of-core) exact EM: the data are read in fixed-size chunks once per EM iteration.

Each pass reads the source chunk by chunk (see :mod:`jaxem.scale.data`); for every chunk one compiled
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
an optimiser that needs only gradients (see :mod:`jaxem.scale.chunked_gradient`).

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

from ..core import driver, loop, precision, programs, sharding
from ..core.blocks import plan_restarts
from ..core.estep import resolve_e_step
from ..core.passes import Pass, chunk_parts
from ..core.result import FitResult
from ..core.validation import check_positive_int, default_float_dtype
from . import chunked_gradient
from .data import as_source
from .sweeps import sweep_chunks

DEFAULT_CHUNK_ROWS = 65536
DEFAULT_INIT_ROWS = 65536


@functools.partial(precision.jit, static_argnames=("em_pass",))
def _maximize(params, stats, *, em_pass: Pass):
    return jax.vmap(em_pass.m_step)(params, stats)


@functools.partial(precision.jit, static_argnames=("log_prior",))
def _log_prior(params, *, log_prior):
    return jax.vmap(log_prior)(params)


def fit_chunked(model, source, *, chunk_size: int | None = None, lengths=None,
                key=None, n_restarts: int | None = None, max_iter: int = 100, tol: float = 1e-6,
                sample_weight=None, labels=None, init_params: Any = None,
                init_size: int = DEFAULT_INIT_ROWS, e_step="soft", m_step: str = "auto",
                optimizer=None, m_step_iters: int = 10, method: str = "auto",
                block_size: int | None = None, devices=None,
                progress: Callable | None = None, dtype="auto", checkpoint=None,
                resume: bool = False, accelerate="auto") -> FitResult:
    """Fit ``model`` by exact EM reading ``source`` in chunks (data larger than memory).

    Args:
        model: a :class:`jaxem.Model`, or a :class:`jaxem.hmm.HMM` with a closed-form emission
            M-step.
        source: the data ``[N, ...]``: an array, a ``np.memmap``, a ``.npy`` path, or a callable
            returning a fresh iterable of arrays per call (see :mod:`jaxem.scale.data`). For an HMM,
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
            :mod:`jaxem.scale.chunked_gradient`). Mixtures only.
        method: HMMs only: forward-backward by ``"scan"``, ``"associative"`` or ``"auto"``.
        block_size: rows per block inside a chunk (default as in :func:`jaxem.fit`: about 8192,
            or 4096 / R for R restarts vmapped on an accelerator).
        devices: ``None``, ``"all"``, a list of devices or a mesh: every chunk is split over the
            devices and their statistics summed (see :mod:`jaxem.core.sharding`).
        checkpoint, resume: save the loop state after iterations and continue from it, as in
            :func:`jaxem.fit`; a resume first repeats the initial pass over the data. The data
            are fingerprinted by their row count and the initial parameters drawn from them.
        dtype: the float type to compute in, ``"auto"`` (the default), ``"float32"``,
            ``"float64"`` or ``None`` (JAX's default), as in :func:`jaxem.fit`; ``"auto"``
            counts an array source's size (a file or an iterable counts as large).
        accelerate: SQUAREM or plain EM, as in :func:`jaxem.fit` (default ``"auto"``); each
            pass over the data counts as one iteration either way.

    Returns:
        A :class:`jaxem.FitResult` (``compile_time`` is 0: chunk programs compile on first use and
        count in ``fit_time``).

    Raises:
        ValueError: bad arguments or data (non-finite values name the global row), an optimiser
            with a line search.
        FitError: every restart's log-likelihood became NaN or infinite.
    """
    width = precision.resolve(dtype, n_values=precision.data_values(source), tol=tol)
    if precision.differs(width):
        return precision.run_in(width, fit_chunked, model, source, chunk_size=chunk_size,
                                lengths=lengths, key=key, n_restarts=n_restarts,
                                max_iter=max_iter, tol=tol, sample_weight=sample_weight,
                                labels=labels, init_params=init_params, init_size=init_size,
                                e_step=e_step, m_step=m_step, optimizer=optimizer,
                                m_step_iters=m_step_iters, method=method, block_size=block_size,
                                devices=devices, progress=progress, checkpoint=checkpoint,
                                resume=resume, accelerate=accelerate, dtype=width.name)
    init_size = check_positive_int(init_size, "init_size")
    if chunk_size is not None:
        chunk_size = check_positive_int(chunk_size, "chunk_size")
    dtype = np.dtype(default_float_dtype())
    setup = driver.setup_fit(model, key=key, n_restarts=n_restarts, max_iter=max_iter, tol=tol,
                             e_step=e_step, m_step=m_step, optimizer=optimizer,
                             m_step_iters=m_step_iters, block_size=block_size, progress=progress,
                             init_params=init_params, dtype=dtype,
                             default_optimizer=chunked_gradient.DEFAULT_OPTIMIZER,
                             checkpoint=checkpoint, resume=resume, accelerate=accelerate,
                             caller="fit_chunked")
    if setup.use_gradient:
        chunked_gradient.check_optimizer(setup.optimizer)
    mesh = sharding.data_mesh(devices)
    source = as_source(source)
    plan = plan_restarts(setup.n_restarts, sharding.platform(None, mesh), setup.block_size)
    parts = chunk_parts(model, source, lengths=lengths, chunk_size=chunk_size,
                        block_size=plan.block_size, mesh=mesh, dtype=dtype, rule=setup.rule,
                        use_gradient=setup.use_gradient, sample_weight=sample_weight,
                        labels=labels, method=method, default_chunk_rows=DEFAULT_CHUNK_ROWS)
    params = setup.init_params
    if params is None:
        seed = int(jax.random.randint(setup.keys[0], (), 0, 2**31 - 1))
        params = parts.initialise(setup.keys, np.random.default_rng(seed), init_size)
    # Several processes, each with its own rows: they check they make the same fit, and all
    # start from process 0's parameters.
    params, _, _ = sharding.pool_processes(mesh, setup.fingerprints(model), params,
                                           source.n_rows or 0)
    em_pass = parts.em_pass
    options = dict(mesh=mesh, shard_map=em_pass.shard_map, in_sequence=plan.in_sequence)

    def with_prior(objective, p):
        if em_pass.log_prior is not None:
            objective = objective + _log_prior(p, log_prior=em_pass.log_prior)
        return np.asarray(objective)

    if setup.use_gradient:
        e_pass, m_step = chunked_gradient.passes(model, parts, setup, params, options,
                                                 with_prior, dtype)
    else:
        def e_pass(p, iteration):
            temperature = setup.rule.temperature(jnp.asarray(iteration), dtype)
            objective, stats = sweep_chunks(em_pass.sweep, p, parts.read, temperature, **options)
            return with_prior(objective, p), stats

        m_step = functools.partial(_maximize, em_pass=em_pass)
    start = time.perf_counter()
    # Reading every row to fingerprint the data would cost a pass: its row count and the
    # initial parameters (drawn from a sample of it) stand for it.
    saver, restore = setup.checkpointing(
        model, (source.n_rows, jax.tree.leaves(params), sample_weight, labels),
        (chunk_size, plan.block_size, method, None if lengths is None else np.asarray(lengths)))
    try:
        with programs.agreed_interrupt() as stop_requested:
            out = loop.run_host_loop(e_pass, m_step, params,
                                     setup.loop_settings(dtype, parts.constraints),
                                     on_iteration=setup.progress, saver=saver, restore=restore,
                                     stop_requested=stop_requested)
    except loop.Interrupted as stop:
        raise driver.interrupted(stop, setup) from None
    return driver.finish(out, setup, fit_time=time.perf_counter() - start)


def log_likelihood_chunked(model, params: Any, source, *, chunk_size: int | None = None,
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
    mesh = sharding.data_mesh(devices)
    parts = chunk_parts(model, as_source(source), lengths=None, chunk_size=chunk_size,
                        block_size=block_size, mesh=mesh, dtype=dtype,
                        rule=resolve_e_step("soft"), use_gradient=False, sample_weight=None,
                        labels=None, method="auto", default_chunk_rows=DEFAULT_CHUNK_ROWS)
    objective, _ = sweep_chunks(parts.em_pass.sweep, params, parts.read, None, mesh=mesh,
                                shard_map=parts.em_pass.shard_map)
    if parts.em_pass.log_prior is not None:
        objective = objective + _log_prior(params, log_prior=parts.em_pass.log_prior)
    return float(objective[0])
