"""The in-memory fit: the whole EM loop, every restart, one compiled program.

:func:`run_in_memory` is the compiled runner: it takes any :class:`jaxem.core.passes.Pass` (a
mixture's here, an HMM's in :mod:`jaxem.hmm.baum_welch`) over data already laid out in blocks,
optionally split over devices, and runs :func:`jaxem.core.loop.run_compiled_loop`. :func:`fit` is
the mixture front end: it checks the data, lays the rows out, and assembles the result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import blocks, driver, loop, precision, programs, sharding
from .accelerate import squarem
from .ascent import DEFAULT_M_STEP_ITERS
from .estep import Annealing, EStepRule, resolve_e_step
from .model import Model
from .passes import Pass, align_to_labels, mixture_pass
from .result import FitResult
from .validation import check_enough_rows, check_labels, check_sample_weight, to_device

Array = jax.Array


def run_in_memory(em_pass: Pass, params, data, settings: loop.Settings, rule: EStepRule, dtype, *,
                  mesh=None, in_sequence: bool = False, report: bool = False) -> loop.LoopOutput:
    """EM for ``[R]``-stacked ``params`` on blocked ``data`` held in memory (inside ``jit``).

    Args:
        em_pass: what a sweep computes (see :class:`jaxem.core.passes.Pass`).
        params: starting parameters, leading axis ``R``.
        data: the pass's blocked data.
        settings: the loop's settings.
        rule: the E-step rule (its temperature schedule).
        dtype: the float type of the temperature.
        mesh: split every sweep over the devices of this mesh (see :mod:`jaxem.core.sharding`).
        in_sequence: the restarts sweep the data one after another (see
            :func:`jaxem.core.blocks.plan_restarts`).
        report: send each iteration to the progress sink.
    """
    sweep = (sharding.sharded_pass(em_pass.sweep, mesh, sum_aux=em_pass.additive)
             if em_pass.shard_map else em_pass.sweep)

    def objective_and_aux(p, temperature):
        objective, aux = sweep(p, data, temperature)
        if em_pass.log_prior is not None:
            objective = objective + em_pass.log_prior(p)
        return objective, aux

    def e_pass(p, iteration):
        temperature = rule.temperature(iteration, dtype)
        return loop.map_restarts(lambda q: objective_and_aux(q, temperature), p,
                                 in_sequence=in_sequence)

    return loop.run_compiled_loop(e_pass, em_pass.m_step, params, settings, report=report)


def run_em(model: Model, params, X: Array, *, max_iter: int, e_step: str = "soft") -> Any:
    """Closed-form EM from ``params`` (one restart) on rows ``X [N, ...]`` until a fixed point or
    ``max_iter`` iterations; traceable, for initialisers that run EM inside another program (the
    k-means initialiser's Lloyd iterations). Returns the final parameters."""
    rule = resolve_e_step(e_step)
    n_blocks, rows_per_block = blocks.plan_blocks(X.shape[0], None)
    blocked = blocks.block_rows(X, jnp.ones(X.shape[:1], X.dtype), None, n_blocks, rows_per_block)
    settings = loop.Settings(jnp.zeros((), X.dtype), max_iter, rule.may_stop)
    out = run_in_memory(mixture_pass(model, hard=rule.hard), jax.tree.map(lambda p: p[None], params),
                        blocked, settings, rule, X.dtype)
    return jax.tree.map(lambda p: p[0], out.params)


def _initial_params(model: Model, keys, X, blocked, labels, use_gradient: bool):
    """Each restart's initialiser on the rows ``X [N, ...]``, lined up with partial labels."""
    params = jax.vmap(model.init, in_axes=(0, None))(keys, X)
    if labels is not None and not use_gradient:
        params = jax.vmap(lambda p: align_to_labels(model, p, blocked))(params)
    return params


def _initialise(keys, X, weights, labels, *, model, n_blocks, rows_per_block, use_gradient, report):
    del report  # run_compiled's protocol; nothing to report
    blocked = blocks.block_rows(X, weights, labels, n_blocks, rows_per_block)
    return _initial_params(model, keys, X, blocked, labels, use_gradient)


# The initialisation alone, for a sharded fit: it sees all rows on one device, while the fit
# program sees only the padded row blocks, split over the devices.
_initialise_program = precision.jit(
    _initialise, static_argnames=("model", "n_blocks", "rows_per_block", "use_gradient", "report"))


def _program(keys, init_params, X, weights, labels, tol, *, n_blocks, rows_per_block, max_iter,
             use_gradient, optimizer, m_step_iters, rule, report, model, mesh=None,
             in_sequence=False, accelerate=False):
    blocked = blocks.block_rows(X, weights, labels, n_blocks, rows_per_block)
    if init_params is None:
        init_params = _initial_params(model, keys, X, blocked, labels, use_gradient)
    em_pass = mixture_pass(model, hard=rule.hard, use_gradient=use_gradient, optimizer=optimizer,
                           m_step_iters=m_step_iters, X_blocks=blocked.X)
    settings = loop.Settings(tol, max_iter, rule.may_stop, squarem(accelerate, model.constraints))
    return run_in_memory(em_pass, init_params, blocked, settings, rule, X.dtype, mesh=mesh,
                         in_sequence=in_sequence, report=report)


_STATIC = ("model", "n_blocks", "rows_per_block", "max_iter", "use_gradient", "optimizer", "m_step_iters",
           "rule", "report", "mesh", "in_sequence", "accelerate")
# The name the on-disk program cache knows this program by (its key also names the static
# arguments and the source of jaxem).
PROGRAM_NAME = "jaxem.core.runner._program"
program = precision.jit(_program, static_argnames=_STATIC)


def fit(model: Model, X, *, key=None, n_restarts: int | None = None, max_iter: int = 100,
        tol: float = 1e-6, sample_weight=None, labels=None, init_params: Any = None,
        e_step: str | Annealing = "soft", m_step: str = "auto",
        optimizer: optax.GradientTransformation | None = None,
        m_step_iters: int = DEFAULT_M_STEP_ITERS, block_size: int | None = None,
        progress: Callable | None = None, devices=None, accelerate="auto") -> FitResult:
    """Fit ``model`` to ``X`` by EM from several random starts at once.

    Args:
        model: a :class:`jaxem.Model`.
        X: data ``[N, ...]`` (rows are observations). NaN entries (missing values) are accepted
            only when the model declares ``handles_missing``.
        key: a PRNG key (split into one key per restart), or ``[R]`` keys used as given (restart
            ``r`` then uses ``key[r]``, so ``key=keys[r:r+1]`` reproduces one restart). Optional
            when ``init_params`` is given.
        n_restarts: number of random starts, all run as one vmapped program (default 1, or the
            number of keys given).
        max_iter: maximum EM iterations per restart.
        tol: stop a restart when ``|ℓ_t - ℓ_{t-1}| <= tol * |ℓ_{t-1}|`` (relative change of the total
            log-likelihood); a change within a few float epsilons always counts as converged.
            ``None``: no test on the objective, so every restart runs ``max_iter`` iterations
            (what benchmarks want) unless an M-step leaves its parameters bit-identical, a fixed
            point where it stops (k-means whose assignments no longer change). An M-step that
            returns identical parameters stops a restart under any ``tol``.
        sample_weight: optional ``[N]`` non-negative frequency weights (weight 2 = row twice).
        labels: optional ``[N]`` integer partial labels for semi-supervised EM: a row with label
            ``k >= 0`` belongs to component ``k`` (its responsibility is fixed one-hot and its
            likelihood term is ``log p(x, z=k)``); ``-1`` marks an unknown component. With a
            closed-form M-step, the initialiser's components are first renumbered to follow the
            labels (see :func:`jaxem.core.passes.align_to_labels`); ``init_params`` are used as given.
        init_params: optional starting parameters (one pytree) instead of ``model.init``; every
            restart then starts from them, so use it with ``n_restarts=1``.
        e_step: ``"soft"`` (the posterior; default), ``"hard"`` (classification EM: one-hot at the
            most probable component, climbing the classification log-likelihood), ``"anneal"``
            (deterministic annealing with the default :class:`jaxem.Annealing` schedule) or an
            :class:`jaxem.Annealing` schedule.
        m_step: ``"auto"`` (closed form when the model has one, else gradient), ``"closed_form"``
            or ``"gradient"``.
        optimizer: optax transformation for the gradient M-step (default: L-BFGS).
        m_step_iters: optimiser steps per gradient M-step.
        block_size: rows per block of the data pass (default: about 8192 for one restart; for R
            restarts on an accelerator about 4096 / R, at least 256, so the vmapped restarts'
            temporaries stay in cache). On a CPU several restarts pass over the data one after
            another inside the same program (XLA:CPU's batched products are slower per restart
            than one restart's), each with the one-restart blocks.
        progress: optional ``progress(iteration, log_likelihood [R], converged [R], running [R])``
            called once per EM iteration from inside the compiled loop (see
            :mod:`jaxem.progress` for a progress bar); it does not trigger a recompilation.
        devices: ``None`` (one device), ``"all"`` (every device of every process), a list of
            devices or a :class:`jax.sharding.Mesh` with one ``"data"`` axis: each pass splits the
            row blocks over the devices and adds their statistics (see :mod:`jaxem.core.sharding`).
            Each device holds only its share of the rows during the fit; the initialiser first
            sees all rows on one device (pass ``init_params`` to skip it). For data larger than
            the devices' memory use :func:`jaxem.fit_chunked`, which accepts ``devices`` too.
        accelerate: ``"auto"`` (default: SQUAREM with the soft E-step when the model declares
            ``constraints``, else plain EM), ``"squarem"`` or ``True`` (SQUAREM; a ValueError
            with a hard or annealed E-step), ``None`` or ``False`` (plain EM). SQUAREM
            (:mod:`jaxem.core.accelerate`) extrapolates along two EM steps in the unconstrained
            space of ``model.constraints`` and keeps a point only when its log-likelihood is no
            lower, so the history still never decreases; ``n_iter`` then counts passes over the
            data (one M-step each), as for plain EM, and ``FitResult.n_fallbacks`` the rejected
            extrapolations.

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: bad input or arguments, before any compute.
        FitError: every restart's log-likelihood became NaN or infinite.
    """
    setup = driver.setup_fit(model, key=key, n_restarts=n_restarts, max_iter=max_iter, tol=tol,
                             e_step=e_step, m_step=m_step, optimizer=optimizer,
                             m_step_iters=m_step_iters, block_size=block_size, progress=progress,
                             init_params=init_params, accelerate=accelerate)
    X = to_device(driver.as_data(X, model))
    host_weights = check_sample_weight(sample_weight, X.shape[0])
    weights = (jnp.ones((X.shape[0],), X.dtype) if host_weights is None
               else jnp.asarray(host_weights, X.dtype))
    if model.n_components is not None:
        # Counted on the host: a device reduction here would wait for X's transfer.
        check_enough_rows(X.shape[0] if host_weights is None else int(np.sum(host_weights > 0)),
                          model.n_components)
    keys, init_params = setup.keys, setup.init_params
    if labels is not None:
        labels = jnp.asarray(check_labels(labels, X.shape[0],
                                          driver.n_components(model, keys[0], X)))
    mesh = sharding.data_mesh(devices)
    plan = blocks.plan_restarts(keys.shape[0], sharding.platform(X, mesh), setup.block_size)
    n_blocks, rows_per_block = blocks.plan_blocks(X.shape[0], plan.block_size, sharding.n_shards(mesh))
    static = dict(model=model, n_blocks=n_blocks, rows_per_block=rows_per_block, max_iter=setup.max_iter,
                  use_gradient=setup.use_gradient, optimizer=setup.optimizer,
                  m_step_iters=setup.m_step_iters, rule=setup.rule, in_sequence=plan.in_sequence,
                  accelerate=setup.accelerate)
    rows_X, init_compile, init_run = X, 0.0, 0.0
    if mesh is not None:
        static["mesh"] = mesh
        if init_params is None:
            init_params, init_compile, init_run = programs.run_compiled(
                _initialise_program, (keys, X, weights, labels),
                dict(model=model, n_blocks=n_blocks, rows_per_block=rows_per_block,
                     use_gradient=setup.use_gradient))
        init_params = sharding.replicate(init_params, mesh)
        # Padded on the host to the blocks' length (weight 0, label unknown), then split.
        n_padded = n_blocks * rows_per_block
        padded = (blocks.pad_rows(np.asarray(X), n_padded),
                  blocks.pad_rows(np.asarray(weights), n_padded, 0),
                  None if labels is None else blocks.pad_rows(np.asarray(labels), n_padded, -1))
        rows_X, weights, labels = sharding.split_rows(padded, mesh)
        keys = sharding.replicate(keys, mesh)
    tol_value = setup.loop_settings(X.dtype).tol
    try:
        out, compile_time, fit_time = programs.run_compiled(
            program, (keys, init_params, rows_X, weights, labels, tol_value), static,
            setup.progress, disk_name=PROGRAM_NAME)
    except (TypeError, ValueError, IndexError) as err:
        # Tracing failed before any compute; when the model cannot even score these rows (wrong
        # rank or feature count), say that instead of JAX's shape error deep in the model.
        driver.diagnose_rows(model, keys[0], X, init_params, err)
        raise
    return driver.finish(out, setup, compile_time=compile_time + init_compile,
                         fit_time=fit_time + init_run,
                         hint="check the data scale and the model (for Gaussian mixtures, "
                         "increase reg_covar)")
