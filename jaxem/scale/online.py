"""Stochastic (online) EM for very large N (Cappé & Moulines, 2009), closed-form families.

Instead of a full pass per M-step, each minibatch updates a running average of the expected
sufficient statistics, scaled to the whole data set, and the M-step follows at once::

    ŝ_t = (N / |B_t|) · Σ_{n ∈ B_t} stats(x_n, r_n(θ_{t-1}))
    s_t = (1 - ρ_t) s_{t-1} + ρ_t ŝ_t,        θ_t = maximize(s_t)

with step sizes ``ρ_t = ((t0 + 1) / (t0 + t))^κ``, ``κ ∈ (0.5, 1]``: ``ρ_1 = 1`` (the first
minibatch's statistics start the average), then ``ρ_t ∝ t^-κ``, which satisfies ``Σ ρ_t = ∞``,
``Σ ρ_t² < ∞`` (the Robbins-Monro conditions of the convergence proof).

Averaging statistics from different steps needs them in one fixed coordinate system: the models'
statistics may be taken about a point (Gaussian moments are about each component's mean), so
every step takes them about the *initial* parameters (``centre``), and the M-step reads them from
there. This is exact for families whose ``suff_stats`` use ``params`` only as such a centring
point (Gaussian, Bernoulli, Poisson, categorical and the other exponential families); families
whose statistics depend on the parameters in other ways (Student-t's latent scales) are outside
the method: their averaged statistics would be biased, and nothing can detect that here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core import blocks, driver, passes, precision
from ..core.blocks import host_row_blocks
from ..core.model import Model
from ..core.result import FitInterrupted, FitResult
from ..core.validation import (
    check_enough_rows,
    check_nonnegative_float,
    check_positive_int,
    default_float_dtype,
)
from .chunked import DEFAULT_INIT_ROWS
from .data import as_source


@dataclasses.dataclass(frozen=True)
class OnlineResult(FitResult):
    """What :func:`fit_online` returns: a :class:`jaxem.FitResult` of its one restart, plus what is
    online-specific.

    Differences from a batch fit's result: ``history`` is ``[n_steps]``, each minibatch's mean
    log-likelihood per row under the parameters before its step (a noisy running view; score the
    full data for a final figure), and ``log_likelihood`` is the last of them times ``N`` (an
    estimate); ``converged`` is ``[False]`` (online EM has no convergence test) and ``n_iter`` is
    ``[n_steps]``.

    Attributes:
        n_steps: minibatch steps taken.
        n_epochs: passes over the data that makes (``n_steps * batch_size / N``).
        step_sizes: ``[n_steps]`` the ``ρ_t`` used.
    """

    n_steps: int = 0
    n_epochs: float = 0.0
    step_sizes: np.ndarray | None = None


def step_sizes(n_steps: int, kappa: float = 0.6, t0: float = 2.0) -> np.ndarray:
    """``[n_steps]`` Cappé-Moulines step sizes ``ρ_t = ((t0 + 1) / (t0 + t))^κ``, ``t = 1..``."""
    t = np.arange(1, n_steps + 1, dtype=np.float64)
    return ((t0 + 1.0) / (t0 + t)) ** kappa


@functools.partial(precision.jit, static_argnames=("model",), donate_argnums=2)
def _step(params, centre, average, rows, rho, scale, *, model):
    """One online-EM step: minibatch statistics about ``centre``, averaged in, then maximized."""
    objective, stats = passes.stats_pass(model, params, rows, centre=centre)
    average = jax.tree.map(lambda a, s: (1.0 - rho) * a + (rho * scale) * s, average, stats)
    return model.maximize(average, centre), average, objective


def fit_online(model: Model, source, *, batch_size: int = 8192, n_epochs: float = 1.0,
               max_steps: int | None = None, max_seconds: float | None = None,
               kappa: float = 0.6, t0: float = 2.0, key=None, init_params: Any = None,
               init_size: int = DEFAULT_INIT_ROWS, shuffle: bool = True,
               block_size: int | None = None, progress: Callable | None = None,
               checkpoint=None, resume: bool = False) -> OnlineResult:
    """Fit ``model`` by stochastic (online) EM over minibatches of ``source``.

    Args:
        model: a :class:`jaxem.Model` with a closed-form M-step (see the module docstring for
            which families average exactly).
        source: data ``[N, ...]``: an array, memmap, ``.npy`` path or callable returning an
            iterable of arrays (see :mod:`jaxem.scale.data`); rows should be in random order when
            ``shuffle`` cannot apply (iterables are read in order).
        batch_size: rows per minibatch (the last one of an epoch is padded under weight 0).
        n_epochs: passes over the data (may be fractional).
        max_steps: stop after this many minibatches (overrides ``n_epochs``).
        max_seconds: stop after this much wall-clock time (checked after each step; a resumed
            fit's clock starts at the resume).
        kappa: step-size exponent in ``(0.5, 1]``; smaller forgets old statistics faster.
        t0: step-size offset ``>= 0``; larger keeps early steps larger.
        key: PRNG key for initialisation and the minibatch order.
        init_params: optional starting parameters (else ``model.init`` on ``init_size`` rows).
        init_size: rows the initialiser sees.
        shuffle: visit minibatches in a new random order each epoch (indexable sources).
        block_size: rows per block inside a minibatch.
        progress: optional ``progress(step, minibatch mean log-likelihood)``.
        checkpoint: ``"path.npz"`` or a :class:`jaxem.Checkpoint`: save the fit's state there
            every ``every_seconds`` seconds or ``every_iterations`` steps, when it ends and when Ctrl-C
            stops it. The state is the parameters, the running average of the statistics (a
            pytree of the model's statistics' shapes), the centre (the initial parameters),
            ``history [n_steps]`` (NaN for steps not yet run) and the steps done.
        resume: continue from ``checkpoint`` (a fresh start when the file does not exist yet):
            the minibatches are visited in the same order (the skipped ones are not read from
            an indexable source; an iterable one is read through) and the fit ends with the
            parameters and history of an uninterrupted one. The file must come from the same
            model, data and settings (``batch_size``, ``n_epochs``, ``max_steps``, ``kappa``,
            ``t0``, ``key``, ``init_params``, ``init_size``, ``shuffle``, ``block_size``), else
            it is refused with a ValueError naming the file. ``max_seconds`` may differ (a
            resumed fit may get a new time budget). The data's fingerprint hashes an in-memory
            array whole; a memmap, file or iterable is known by its row count and the
            initialisation sample drawn from it (hashing it all would cost a pass).

    Returns:
        :class:`OnlineResult` (a :class:`jaxem.FitResult`).

    Raises:
        FitInterrupted: Ctrl-C stopped the fit between two steps; it carries the result of the
            steps done.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    init_size = check_positive_int(init_size, "init_size")
    if not (isinstance(kappa, (int, float)) and 0.5 < kappa <= 1.0):
        raise ValueError(f"kappa must be in (0.5, 1], got {kappa!r}")
    t0 = check_nonnegative_float(t0, "t0")
    if max_steps is not None:
        max_steps = check_positive_int(max_steps, "max_steps")
    if max_seconds is not None:
        max_seconds = check_nonnegative_float(max_seconds, "max_seconds")
    if not (check_nonnegative_float(n_epochs, "n_epochs") > 0):
        raise ValueError(f"n_epochs must be > 0, got {n_epochs!r}")
    if not model.has_closed_form:
        raise ValueError(f"{model.name!r} has no closed-form M-step; online EM averages "
                         "sufficient statistics and needs one")
    dtype = np.dtype(default_float_dtype())
    # The front end every fit shares: the key, the block size, the callback, init_params and
    # the checkpoint (checked, and the fingerprints a resume must match).
    setup = driver.setup_fit(model, key=key, n_restarts=1, m_step="closed_form",
                             block_size=block_size, progress=progress, init_params=init_params,
                             dtype=dtype, checkpoint=checkpoint, resume=resume,
                             caller="fit_online")
    keys, key = setup.keys, setup.keys[0]
    init_params = (None if setup.init_params is None
                   else jax.tree.map(lambda p: p[0], setup.init_params))
    data = source
    source = as_source(source)
    if source.n_rows is not None:  # arrays and files: their size is known before any compute
        if source.n_rows == 0:
            raise ValueError("X has 0 rows but at least 1 are needed")
        if model.n_components is not None:
            check_enough_rows(source.n_rows, model.n_components)
    # The minibatch order is drawn from this stream after the initialisation sample; a resumed
    # fit draws both again, so its stream is the uninterrupted fit's.
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    sample = None
    if init_params is None:
        _, sample = source.sample(init_size, rng, dtype)
        init_params = precision.jit_once(model.init)(key, jnp.asarray(sample))
    centre = jax.tree.map(lambda p: jnp.asarray(p, dtype), init_params)
    chunks_per_epoch = None
    if source.n_rows is None:                         # an iterable: count its rows once
        chunks_per_epoch = sum(1 for _ in source.chunks(batch_size, dtype=dtype))
    n_rows = source.n_rows
    batch_size = min(batch_size, n_rows)
    batches_per_epoch = math.ceil(n_rows / batch_size)
    total = max_steps or max(1, math.ceil(n_epochs * batches_per_epoch))
    n_blocks, rows_per_block = blocks.plan_blocks(batch_size, setup.block_size)
    rhos = step_sizes(total, kappa, t0)
    saver, restore = setup.checkpointing(
        model, (data if _in_memory(data) else None, n_rows, sample),
        (batch_size, n_epochs, max_steps, kappa, t0, bool(shuffle), init_size))

    def batches(skip: int):
        """The minibatches from step ``skip`` on; the ones before are drawn, never read."""
        if not source.indexable:                      # the same chunks, in order, every epoch
            skip %= chunks_per_epoch
        while True:
            if source.indexable:
                order = rng.permutation(batches_per_epoch) if shuffle else range(batches_per_epoch)
                for b in order:
                    if skip:
                        skip -= 1
                        continue
                    start = int(b) * batch_size
                    yield source.rows(start, min(start + batch_size, n_rows), dtype=dtype)
            else:
                for _, chunk in source.chunks(batch_size, dtype=dtype):
                    if skip:
                        skip -= 1
                        continue
                    yield chunk

    # The averaged statistics start as zeros (ρ_1 = 1 replaces them), so the saved state has
    # one structure from the first step on.
    row_shape = (source.row_shape if source.row_shape is not None
                 else source.rows(0, 1, dtype=dtype).shape[1:])
    like = host_row_blocks(np.zeros((batch_size,) + tuple(row_shape), dtype), None, None,
                           n_blocks, rows_per_block)
    shapes = jax.eval_shape(functools.partial(passes.stats_pass, model), centre, like)[1]
    average = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    params, history, done = centre, [], 0
    if restore is not None:
        state = restore(_state(params, average, centre, history, 0, total))
        params, average, centre = state["params"], state["average"], state["centre"]
        done = int(state["trips"]) - 1
        history = [float(h) for h in state["history"][:done]]
    begin = time.perf_counter()
    try:
        generator = batches(done)
        for step in range(done, total):
            if (max_seconds is not None and step > done
                    and time.perf_counter() - begin >= max_seconds):
                break
            chunk = next(generator)
            rows = jax.tree.map(jnp.asarray, host_row_blocks(chunk, None, None, n_blocks,
                                                             rows_per_block))
            scale = jnp.asarray(n_rows / chunk.shape[0], dtype)
            # One step in flight: the next minibatch is read while this one computes, and
            # neither host memory nor the max_seconds clock runs ahead of the device.
            jax.block_until_ready(params)
            new_params, new_average, objective = _step(
                params, centre, average, rows, jnp.asarray(rhos[step], dtype), scale, model=model)
            history.append(objective / chunk.shape[0])  # left on the device: no sync per step
            # One statement, with no call or loop jump (where CPython raises KeyboardInterrupt):
            # the state saved on an interrupt is always that of ``done`` whole steps.
            params, average, done = new_params, new_average, step + 1
            if saver is not None and saver.due({"trips": done + 1}):
                saver.save(_state(params, average, centre, history, done, total))
            if progress is not None:
                progress(done, float(history[done - 1]))
    except KeyboardInterrupt:
        # A Ctrl-C inside ``_step`` may have consumed the donated average: the last checkpoint
        # then stands.
        if saver is not None and not any(a.is_deleted() for a in jax.tree.leaves(average)):
            saver.save(_state(params, average, centre, history, done, total))
        raise FitInterrupted(_result(params, history[:done], n_rows, batch_size, keys, rhos,
                                     time.perf_counter() - begin, interrupted=True)) from None
    if saver is not None:
        saver.save(_state(params, average, centre, history, done, total))
    return _result(params, history[:done], n_rows, batch_size, keys, rhos,
                   time.perf_counter() - begin)


def _in_memory(data) -> bool:
    """Whether ``data`` is an array in memory (cheap to hash whole), not a file or a stream."""
    return (isinstance(data, (np.ndarray, jax.Array)) and not isinstance(data, np.memmap))


def _state(params, average, centre, history: list, done: int, total: int) -> dict:
    """The fit's state after ``done`` steps, as a checkpoint holds it (``trips`` counts as the
    batch loop's do: steps + 1). Turns ``history``'s first ``done`` entries into host floats
    in place, so each is transferred once."""
    history[:done] = [float(h) for h in history[:done]]
    buffer = np.full(total, np.nan)
    buffer[:done] = history[:done]
    return {"params": params, "average": average, "centre": centre, "history": buffer,
            "trips": np.asarray(done + 1, np.int64)}


def _result(params, history, n_rows, batch_size, keys, rhos, fit_time,
            interrupted: bool = False) -> OnlineResult:
    """The :class:`OnlineResult` after the steps whose objectives are in ``history``."""
    n_steps = len(history)
    # One small transfer per step: stacking thousands of device scalars would compile a concat.
    history = np.array([float(h) for h in history])
    last = float(history[-1]) * n_rows if n_steps else float("nan")
    return OnlineResult(
        params=params, log_likelihood=last, history=history,
        initial_log_likelihood=np.array([history[0] * n_rows if n_steps else np.nan]),
        converged=np.zeros(1, bool), n_iter=np.array([n_steps]),
        failed=np.array([not np.isfinite(last)]),
        all_params=jax.tree.map(lambda p: p[None], params), all_log_likelihoods=np.array([last]),
        best_restart=0, restart_keys=keys, fit_time=fit_time, interrupted=interrupted,
        n_steps=n_steps, n_epochs=n_steps * batch_size / n_rows, step_sizes=rhos[:n_steps])
