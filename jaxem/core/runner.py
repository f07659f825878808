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
from .estep import Annealing, EStepRule
from .model import Model
from .passes import Pass, align_to_labels, mixture_pass
from .result import FitResult
from .validation import check_enough_rows, check_labels, check_sample_weight, to_device

Array = jax.Array


def run_in_memory(em_pass: Pass, params, data, settings: loop.Settings, rule: EStepRule, dtype, *,
                  mesh=None, in_sequence: bool = False, report: bool = False,
                  state: dict | None = None, stop_at: Array | None = None):
    """EM for ``[R]``-stacked ``params`` on blocked ``data`` held in memory (inside ``jit``).

    Without ``stop_at`` the whole loop runs and its :class:`jaxem.core.loop.LoopOutput` is
    returned. With ``stop_at`` (a traced int32 scalar) it runs one segment of the loop, as
    :func:`jaxem.core.programs.run_segmented` drives it: from ``state`` until ``stop_at`` trips
    are done, returning the loop state; with ``state`` ``None`` it only returns the state
    before the first trip (nothing of the pass is compiled).

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
        state, stop_at: the segment to run (see above).
    """
    sweep = (sharding.sharded_pass(em_pass.sweep, mesh, sum_aux=em_pass.additive)
             if em_pass.shard_map else em_pass.sweep)

    def objective_and_aux(p, temperature):
        objective, aux = sweep(p, data, temperature)
        if em_pass.log_prior is not None:
            objective = objective + em_pass.log_prior(p)
        return objective, aux

    def e_pass(p, iteration, active):
        temperature = rule.temperature(iteration, dtype)
        return loop.map_restarts(lambda q: objective_and_aux(q, temperature), p,
                                 in_sequence=in_sequence, active=active)

    if stop_at is not None and state is None:
        return loop.start_state(e_pass, params, settings)
    return loop.run_compiled_loop(e_pass, em_pass.m_step, params, settings, report=report,
                                  in_sequence=in_sequence, state=state, stop_at=stop_at)


def _each_restart(init, keys, *args):
    """``init(key, *args)`` for each of the keys ``[R]``, stacked: vmapped, or for one restart
    called as it is (tracing an initialiser's loops under vmap takes a small first fit's
    compile about 0.05 s longer)."""
    if keys.shape[0] == 1:
        return jax.tree.map(lambda leaf: leaf[None], init(keys[0], *args))
    return jax.vmap(init, in_axes=(0,) + (None,) * len(args))(keys, *args)


def _initial_params(model: Model, keys, X, blocked, labels, use_gradient: bool):
    """Each restart's initialiser on the rows ``X [N, ...]``, lined up with partial labels: the
    model's ``weighted_init`` (row weights ``blocked.weights``) when it has one, else its
    ``init``; every second restart its ``explore_init`` when it has one."""
    kernels = model.kernels
    weights = blocked.weights.reshape(-1)[:X.shape[0]]
    if kernels.weighted_init is None:
        params = _each_restart(model.init, keys, X)
    else:
        params = _each_restart(kernels.weighted_init, keys, X, weights)
    if kernels.explore_init is not None and keys.shape[0] > 1:
        other = jax.vmap(kernels.explore_init, in_axes=(0, None, None))(keys[1::2], X, weights)
        params = jax.tree.map(lambda p, q: p.at[1::2].set(q), params, other)
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


def _program(keys, init_params, X, weights, labels, tol, state, stop_at, *, n_blocks, rows_per_block,
             max_iter, use_gradient, optimizer, m_step_iters, rule, report, model, mesh=None,
             in_sequence=False, accelerate=False):
    # A segmented program (see programs.run_segmented): state None builds the starting state,
    # a state runs the loop on from it until stop_at trips.
    blocked = blocks.block_rows(X, weights, labels, n_blocks, rows_per_block)
    if init_params is None and state is None:
        init_params = _initial_params(model, keys, X, blocked, labels, use_gradient)
    em_pass = mixture_pass(model, hard=rule.hard, use_gradient=use_gradient, optimizer=optimizer,
                           m_step_iters=m_step_iters, X_blocks=blocked.X)
    settings = loop.Settings(tol, max_iter, rule.may_stop, squarem(accelerate, model.constraints))
    return run_in_memory(em_pass, init_params, blocked, settings, rule, X.dtype, mesh=mesh,
                         in_sequence=in_sequence, report=report, state=state, stop_at=stop_at)


_STATIC = ("model", "n_blocks", "rows_per_block", "max_iter", "use_gradient", "optimizer", "m_step_iters",
           "rule", "report", "mesh", "in_sequence", "accelerate")
# The name the on-disk program cache knows this program by (its key also names the static
# arguments and the source of jaxem).
PROGRAM_NAME = "jaxem.core.runner._program"
program = precision.jit(_program, static_argnames=_STATIC, donate_argnames=("state",))


def fit(model: Model, X, *, key=None, n_restarts: int | None = None, max_iter: int = 100,
        tol: float = 1e-6, sample_weight=None, labels=None, init_params: Any = None,
        e_step: str | Annealing = "soft", m_step: str = "auto",
        optimizer: optax.GradientTransformation | None = None,
        m_step_iters: int = DEFAULT_M_STEP_ITERS, block_size: int | None = None,
        progress: Callable | None = None, devices=None, dtype="auto", checkpoint=None,
        resume: bool = False, accelerate="auto") -> FitResult:
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
        optimizer: the gradient M-step: ``None`` (default) is :class:`jaxem.EMGradient`, one
            Newton-type step on Q per EM iteration with a fixed-length backtracking (models of up
            to 64 unconstrained parameters; larger ones use L-BFGS); or any optax
            transformation, ``m_step_iters`` steps of it. A gradient fit is reported converged
            only when an EM-gradient step would gain no more than ``tol`` either and the changes
            shrink fast enough to be near the maximum (see :func:`jaxem.core.loop.advance`).
        m_step_iters: optax steps per gradient M-step (not used by :class:`jaxem.EMGradient`).
        block_size: rows per block of the data pass (default: about 8192 for one restart; for R
            restarts on an accelerator about 4096 / R, at least 256, so the vmapped restarts'
            temporaries stay in cache). On a CPU several restarts pass over the data one after
            another inside the same program (XLA:CPU's batched products are slower per restart
            than one restart's), each with the one-restart blocks, and a restart that stopped is
            skipped (8 restarts cost about the sum of their own iterations); vmapped on an
            accelerator, every restart is computed until the last one stops.
        progress: optional ``progress(iteration, log_likelihood [R], converged [R], running [R])``
            called once per EM iteration from inside the compiled loop (see
            :mod:`jaxem.progress` for a progress bar); it does not trigger a recompilation.
        devices: ``None`` (one device), ``"all"`` (every device of every process), a list of
            devices or a :class:`jax.sharding.Mesh` with one ``"data"`` axis: each pass splits the
            row blocks over the devices and adds their statistics (see :mod:`jaxem.core.sharding`).
            Each device holds only its share of the rows during the fit; the initialiser first
            sees all rows on one device (pass ``init_params`` to skip it). For data larger than
            the devices' memory use :func:`jaxem.fit_chunked`, which accepts ``devices`` too.
        dtype: the float type to compute in: ``"auto"`` (the default: float64 where float32
            cannot meet ``tol`` or costs little, see :func:`jaxem.core.precision.resolve`),
            ``"float32"``, ``"float64"`` or ``None`` (JAX's default float type). It needs no
            global flag: the fit runs in JAX's x64 mode only when it computes in float64, and
            then returns NumPy float64 arrays.
        checkpoint: optional file name (or :class:`jaxem.Checkpoint`, which sets how often) where
            the loop state is saved while the fit runs (every 60 s by default), when it ends and
            when Ctrl-C stops it; see :mod:`jaxem.core.checkpoint`.
        resume: continue from ``checkpoint`` when the file exists (a killed fit then ends with
            the result it would have had); it must come from a fit with the same model, data and
            settings, else ValueError. Without the file the fit starts afresh.
        accelerate: ``"auto"`` (the default: SQUAREM with the soft E-step when the model
            declares ``constraints``, else plain EM), ``None`` or ``False`` (plain EM), ``"squarem"`` or
            ``True`` (SQUAREM; a ValueError with a hard or annealed E-step). SQUAREM
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
        FitInterrupted: Ctrl-C stopped the fit (within about a second); it carries the
            :class:`FitResult` of the iterations done (``interrupted`` True).
    """
    width = precision.resolve(dtype, n_values=precision.data_values(X), tol=tol)
    if precision.differs(width):
        return precision.run_in(width, fit, model, X, key=key, n_restarts=n_restarts,
                                max_iter=max_iter, tol=tol, sample_weight=sample_weight,
                                labels=labels, init_params=init_params, e_step=e_step,
                                m_step=m_step, optimizer=optimizer, m_step_iters=m_step_iters,
                                block_size=block_size, progress=progress, devices=devices,
                                checkpoint=checkpoint, resume=resume, accelerate=accelerate,
                                dtype=width.name)
    setup = driver.setup_fit(model, key=key, n_restarts=n_restarts, max_iter=max_iter, tol=tol,
                             e_step=e_step, m_step=m_step, optimizer=optimizer,
                             m_step_iters=m_step_iters, block_size=block_size, progress=progress,
                             init_params=init_params, dtype=width, checkpoint=checkpoint,
                             resume=resume, accelerate=accelerate)
    data = driver.as_data(X, model)
    n_real = data.shape[0]
    host_weights = check_sample_weight(sample_weight, n_real)
    if model.n_components is not None:
        check_enough_rows(n_real if host_weights is None else int(np.sum(host_weights > 0)),
                          model.n_components)
    keys, init_params = setup.keys, setup.init_params
    # Small data are padded under weight 0 to a bucket's rows (exact: such rows add nothing,
    # initialiser included), so another row count reuses the compiled program.
    n_rows = (blocks.bucket_rows(n_real) if devices is None and (
        init_params is not None or model.kernels.weighted_init is not None) else n_real)
    X = to_device(blocks.pad_rows(data, n_rows))
    weights = jnp.asarray(blocks.pad_rows(np.ones(n_real) if host_weights is None
                                          else host_weights, n_rows, 0), X.dtype)
    if labels is not None:
        labels = jnp.asarray(blocks.pad_rows(
            check_labels(labels, n_real, driver.n_components(model, keys[0], X)), n_rows, -1))
    mesh = sharding.data_mesh(devices)
    plan = blocks.plan_restarts(keys.shape[0], sharding.platform(X, mesh), setup.block_size)
    n_blocks, rows_per_block = blocks.plan_blocks(X.shape[0], plan.block_size,
                                                  sharding.local_shards(mesh))
    rows_X, init_compile, init_run = X, 0.0, 0.0
    if mesh is not None:
        if init_params is None:
            init_params, init_compile, init_run = programs.run_compiled(
                _initialise_program, (keys, X, weights, labels),
                dict(model=model, n_blocks=n_blocks, rows_per_block=rows_per_block,
                     use_gradient=setup.use_gradient))
        # Several processes: each holds its own rows, padded to the largest share; all start
        # from process 0's parameters.
        init_params, largest, _ = sharding.pool_processes(mesh, setup.fingerprints(model),
                                                          init_params, X.shape[0])
        n_blocks, rows_per_block = blocks.plan_blocks(largest, plan.block_size,
                                                      sharding.local_shards(mesh))
        init_params = sharding.replicate(init_params, mesh)
        # Padded on the host to the blocks' length (weight 0, label unknown), then split.
        n_padded = n_blocks * rows_per_block
        padded = (blocks.pad_rows(np.asarray(X), n_padded),
                  blocks.pad_rows(np.asarray(weights), n_padded, 0),
                  None if labels is None else blocks.pad_rows(np.asarray(labels), n_padded, -1))
        rows_X, weights, labels = sharding.split_rows(padded, mesh)
        keys = sharding.replicate(keys, mesh)
        n_blocks *= jax.process_count()
    static = dict(model=model, n_blocks=n_blocks, rows_per_block=rows_per_block, max_iter=setup.max_iter,
                  use_gradient=setup.use_gradient, optimizer=setup.optimizer,
                  m_step_iters=setup.m_step_iters, rule=setup.rule, in_sequence=plan.in_sequence,
                  accelerate=setup.accelerate, **({} if mesh is None else {"mesh": mesh}))
    tol_value = setup.loop_settings(X.dtype).tol
    if mesh is not None:
        tol_value = sharding.replicate(tol_value, mesh)
    saver, restore = setup.checkpointing(model, (data, host_weights, labels),
                                         (n_blocks, rows_per_block))
    try:
        out, compile_time, fit_time = programs.run_segmented(
            program, (keys, init_params, rows_X, weights, labels, tol_value), static,
            setup.progress, disk_name=PROGRAM_NAME, saver=saver, restore=restore,
            repeats=keys.shape[0] if plan.in_sequence else 1, small_ops=setup.use_gradient)
    except loop.Interrupted as stop:
        raise driver.interrupted(stop, setup) from None
    except (TypeError, ValueError, IndexError) as err:
        # Tracing failed before any compute; when the model cannot even score these rows (wrong
        # rank or feature count), say that instead of JAX's shape error deep in the model.
        driver.diagnose_rows(model, keys[0], data, init_params, err)  # unpadded
        raise
    return driver.finish(out, setup, compile_time=compile_time + init_compile,
                         fit_time=fit_time + init_run,
                         hint="check the data scale and the model (for Gaussian mixtures, "
                         "increase reg_covar)")
