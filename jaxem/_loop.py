"""The compiled EM loop: every restart advances in lock-step inside one ``lax.while_loop``.

The state carries a leading restart axis. Each iteration is an M-step for every restart (vmapped)
followed by one fused pass over the row blocks at the new parameters: the E-step plus whatever the
next M-step needs. A restart that converged, failed or ran out of iterations keeps its parameters
(the batch still computes for it; its results are discarded), exactly as ``vmap`` of a while loop
would, but with the whole batch in view so progress can be reported once per iteration.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _export_cache, _passes, _precision
from .distributed import sharded_pass
from .estep import EStepRule
from .model import Model
from .mstep import gradient_m_step

Array = jax.Array


class LoopOutput(NamedTuple):
    """What the compiled loop returns; every leaf has a leading ``[R]`` restart axis."""

    params: Any
    objective: Array         # [R] final objective
    initial_objective: Array  # [R]
    n_iter: Array            # [R] int32
    converged: Array         # [R] bool
    history: Array           # [R, max_iter], NaN after a restart stopped


# Progress reports leave the compiled program through one module-level function, so passing a
# different callback to each fit does not recompile.
_progress_sink: Any = None


def _report(iteration, objective, converged, running):
    # Trip 0 is the initial E-step, not an iteration.
    if _progress_sink is not None and int(iteration) > 0:
        _progress_sink(int(iteration), np.asarray(objective), np.asarray(converged),
                       np.asarray(running))


def _objective_pass(model: Model, use_gradient: bool, rule: EStepRule, rows, params, iteration,
                    mesh=None):
    """One pass at ``params``: ``(objective, aux)`` where aux feeds the next M-step. With a
    ``mesh`` the row blocks are split over its devices and the sums added across them."""
    temperature = rule.temperature(iteration, rows.weights.dtype)
    pass_fn = _passes.responsibility_pass if use_gradient else _passes.stats_pass
    pass_fn = sharded_pass(pass_fn, mesh, sum_aux=not use_gradient)
    objective, aux = pass_fn(model, params, rows, rule.hard, temperature)
    if model.log_prior is not None:
        objective = objective + model.log_prior(params)
    return objective, aux


def _select(mask: Array, new, old):
    """Leaf by leaf ``where(mask[r], new[r], old[r])`` over the leading restart axis."""
    def pick(a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)
    return jax.tree.map(pick, new, old)


def map_restarts(fn: Callable, *trees, in_sequence: bool = False):
    """``jax.vmap(fn)(*trees)`` over the leading restart axis, or with ``in_sequence`` one restart
    after another (``lax.map``; see :data:`jaxem._passes.SEQUENTIAL_RESTART_PLATFORMS`). With a
    single restart ``fn`` runs unbatched instead (a vmap over an axis of 1 made the diagonal
    Gaussian pass 40% slower on a CPU: XLA does not always fold the size-1 batch back out of the
    products)."""
    leaves = jax.tree.leaves(trees)
    if leaves and all(leaf.shape[:1] == (1,) for leaf in leaves):
        out = fn(*jax.tree.map(lambda a: a[0], trees))
        return jax.tree.map(lambda a: a[None], out)
    if in_sequence:
        return jax.lax.map(lambda args: fn(*args), trees)
    return jax.vmap(fn)(*trees)


def _unchanged(new, old) -> Array:
    """``[R]`` whether every parameter of restart ``r`` is bit-identical in ``new`` and ``old``."""
    same = [jnp.all((a == b).reshape(a.shape[0], -1), axis=1) for a, b in
            zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True)]
    return jnp.all(jnp.stack(same), axis=0)


def _fingerprint(aux) -> Array | None:
    """The assignment fingerprint of a hard-EM pass's output (``None`` for other passes)."""
    return aux.fingerprint if isinstance(aux, _passes.HardStats) else None


def iterate(e_pass: Callable, m_step: Callable, params, tol, *, max_iter: int,
            may_stop: Callable = lambda iteration: True, report: bool = False,
            on_host: Callable | None = None) -> LoopOutput:
    """The EM loop for a batch of restarts, whatever the model: mixtures and HMMs alike.

    Args:
        e_pass: ``e_pass(params, iteration) -> (objective [R], aux)`` for the whole batch
            (leading axis ``R``): the E-step at ``params`` after ``iteration`` M-steps, plus what
            the next M-step needs.
        m_step: ``m_step(params, aux) -> params`` for ONE restart (vmapped here); with
            ``on_host``, for the whole batch.
        params: starting parameters with a leading ``[R]`` axis.
        tol: relative tolerance on the objective (scalar); negative: no objective test.
        max_iter: the most M-steps.
        may_stop: ``may_stop(iteration) -> bool`` whether convergence may be declared yet.
        report: call the module's progress sink once per iteration (compiled loop).
        on_host: run the iterations as a Python loop, for passes that stream data from the host
            and so cannot be traced (:func:`jaxem.fit_chunked`); the bookkeeping is the same.
            It is called like a progress callback (see :func:`run_compiled`) once per iteration.

    The loop's first trip is the initial E-step (its M-step result is discarded), so the pass,
    by far the largest part of the program, is traced and compiled once rather than twice.
    """
    if on_host is None:
        aux_shapes = jax.eval_shape(e_pass, params, jnp.zeros((), jnp.int32))
        pass_at = e_pass
    else:
        # A streamed pass cannot be traced for its shapes: take them from the initial E-step,
        # which the first trip then reuses rather than reading the data again.
        initial_pass = [e_pass(params, 0)]
        aux_shapes = jax.eval_shape(lambda: initial_pass[0])

        def pass_at(p, iteration):
            return initial_pass.pop() if initial_pass else e_pass(p, int(iteration))

    obj_dtype = aux_shapes[0].dtype
    n_restarts = aux_shapes[0].shape[0]
    # A change within float round-off of the objective is no progress: tol=0 then means "until
    # nothing changes", which otherwise could spin on last-bit noise until max_iter. A negative
    # tol (``tol=None`` to the user) switches the objective test off.
    test_objective = tol >= 0
    rel_tol = jnp.maximum(tol, 4 * jnp.finfo(obj_dtype).eps)
    nan = jnp.full((n_restarts,), jnp.nan, obj_dtype)
    no_aux = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), aux_shapes[1])
    state = dict(params=params, objective=nan, initial=nan, aux=no_aux,
                 consumed=_fingerprint(no_aux),
                 trips=jnp.zeros((), jnp.int32), n_iter=jnp.zeros((n_restarts,), jnp.int32),
                 converged=jnp.zeros((n_restarts,), bool), running=jnp.ones((n_restarts,), bool),
                 history=jnp.full((n_restarts, max_iter), jnp.nan, obj_dtype))

    def keep_going(s):
        return jnp.any(s["running"]) & (s["trips"] <= max_iter)

    def body(s):
        first, iteration = s["trips"] == 0, s["trips"]
        running = s["running"] & ~first
        stepped = (map_restarts(m_step, s["params"], s["aux"]) if on_host is None
                   else m_step(s["params"], s["aux"]))
        new_params = _select(running, stepped, s["params"])
        obj, aux = pass_at(new_params, iteration)
        change_small = jnp.abs(obj - s["objective"]) <= rel_tol * jnp.abs(s["objective"])
        # Parameters an M-step left bit-identical are a fixed point: every later iteration would
        # repeat this one, whatever the tolerance.
        fixed_point = _unchanged(stepped, s["params"])
        consumed = _fingerprint(s["aux"])
        if consumed is not None:
            # Hard EM: this M-step saw the same assignment as the one before it, so it changed
            # nothing (the step counts, as k-means counts the pass that finds no row moved).
            fixed_point |= (iteration >= 2) & _unchanged(consumed, s["consumed"])
        converged = running & ((test_objective & change_small) | fixed_point) & may_stop(iteration)
        row = jnp.maximum(iteration - 1, 0)
        history = s["history"].at[:, row].set(jnp.where(running, obj, s["history"][:, row]))
        still = jnp.where(first, jnp.isfinite(obj),
                          running & ~converged & jnp.isfinite(obj) & (iteration < max_iter))
        out = dict(params=new_params,
                   objective=jnp.where(first | running, obj, s["objective"]),
                   initial=jnp.where(first, obj, s["initial"]),
                   # A stopped restart's stale statistics are never used for a kept update.
                   aux=aux, consumed=consumed, trips=iteration + 1, n_iter=s["n_iter"] + running,
                   converged=s["converged"] | converged, running=still, history=history)
        if report:
            jax.debug.callback(_report, iteration, out["objective"], out["converged"],
                               out["running"])
        return out

    if on_host is None:
        s = jax.lax.while_loop(keep_going, body, state)
    else:
        s = state
        while bool(keep_going(s)):
            s = body(s)
            if int(s["trips"]) > 1:
                on_host(int(s["trips"]) - 1, np.asarray(s["objective"]),
                        np.asarray(s["converged"]), np.asarray(s["running"]))
    return LoopOutput(s["params"], s["objective"], s["initial"], s["n_iter"], s["converged"],
                      s["history"])


def run_restarts(model: Model, params, rows, tol, *, max_iter: int, use_gradient: bool, optimizer,
                 m_step_iters: int, rule: EStepRule, report: bool, mesh=None,
                 in_sequence: bool = False) -> LoopOutput:
    """EM for a batch of restarts of ``model`` (params with a leading axis ``R``) on blocked
    ``rows``; with a ``mesh`` (see :mod:`jaxem.distributed`) each pass is split over its
    devices. ``in_sequence``: the restarts pass over the data one after another (see
    :func:`jaxem._passes.plan_restarts`)."""
    if use_gradient:
        def m_step(p, resp_blocks):
            return gradient_m_step(model, p, rows.X, resp_blocks, optimizer, m_step_iters)
    else:
        def m_step(p, aux):
            return model.maximize(_passes.statistics(aux), p)

    def e_pass(p, iteration):
        return map_restarts(
            lambda q: _objective_pass(model, use_gradient, rule, rows, q, iteration, mesh), p,
            in_sequence=in_sequence)

    return iterate(e_pass, m_step, params, tol, max_iter=max_iter, may_stop=rule.may_stop,
                   report=report)


def _initial_params(model: Model, keys, X, blocked, labels, use_gradient: bool):
    """Each restart's initialiser on the rows ``X [N, ...]``, lined up with partial labels."""
    params = jax.vmap(model.init, in_axes=(0, None))(keys, X)
    if labels is not None and not use_gradient:
        params = jax.vmap(lambda p: _passes.align_to_labels(model, p, blocked))(params)
    return params


def _initialise(keys, X, weights, labels, *, model, n_blocks, rows, use_gradient, report):
    del report  # run_compiled's protocol; nothing to report
    blocked = _passes.block_rows(X, weights, labels, n_blocks, rows)
    return _initial_params(model, keys, X, blocked, labels, use_gradient)


# The fit program's initialisation alone (``[R]`` restarts' parameters), run through
# :func:`run_compiled` for its compile and run times: for a sharded fit, whose program sees only
# the padded row blocks, split over the devices.
initialise_program = _precision.jit(
    _initialise, static_argnames=("model", "n_blocks", "rows", "use_gradient", "report"))


def _program(keys, init_params, X, weights, labels, tol, *, n_blocks, rows, max_iter,
             use_gradient, optimizer, m_step_iters, rule, report, model, mesh=None,
             in_sequence=False):
    blocked = _passes.block_rows(X, weights, labels, n_blocks, rows)
    if init_params is None:
        init_params = _initial_params(model, keys, X, blocked, labels, use_gradient)
    return run_restarts(model, init_params, blocked, tol, max_iter=max_iter,
                        use_gradient=use_gradient, optimizer=optimizer,
                        m_step_iters=m_step_iters, rule=rule, report=report, mesh=mesh,
                        in_sequence=in_sequence)


_STATIC = ("model", "n_blocks", "rows", "max_iter", "use_gradient", "optimizer", "m_step_iters",
           "rule", "report", "mesh", "in_sequence")
_jitted_program = _precision.jit(_program, static_argnames=_STATIC)

# Compiled executables by (static arguments, argument shapes/dtypes/shardings). Compiling ahead
# of time, rather than on first call, is what lets a fit report compile time and run time apart.
_EXECUTABLES: OrderedDict = OrderedDict()
_MAX_EXECUTABLES = 64


def _signature(tree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((jnp.shape(x), jnp.result_type(x), getattr(x, "sharding", None))
                          for x in leaves)


def run_compiled(dynamic: tuple, static: dict, progress=None, program=None) -> tuple:
    """Compile (or reuse) a fit program for these arguments and run it.

    Args:
        dynamic: the program's positional (traced) arguments; for the mixture program
            ``(keys, init_params, X, weights, labels, tol)``.
        static: its static keyword arguments except ``report`` (models hash by identity, so the
            cache key keeps the model itself alive).
        progress: optional ``progress(iteration, objective [R], converged [R], running [R])``
            called once per EM iteration from inside the compiled loop.
        program: the jitted program (default: the mixture fit); it must accept ``report``.

    Returns:
        ``(output, compile_seconds, run_seconds)``; ``compile_seconds`` is 0 when an executable
        for these shapes was already in memory. A new process loads the mixture program of a
        built-in model from the program cache (:mod:`jaxem._export_cache`) without tracing it,
        and any other from JAX's persistent cache after tracing and lowering it; either way it
        then reports only that time.
    """
    global _progress_sink
    program = _jitted_program if program is None else program
    static = dict(static, report=progress is not None)
    cache_key = (program, tuple(sorted(static.items(), key=lambda item: item[0])),
                 _signature(dynamic))
    compile_seconds = 0.0
    executable = _EXECUTABLES.get(cache_key)
    if executable is None:
        start = time.perf_counter()
        # Only the mixture program is served from disk: its key names everything it is built from.
        disk_key = (_export_cache.program_key("jaxem._loop._program", static, dynamic)
                    if program is _jitted_program else None)
        executable = _export_cache.load(disk_key, dynamic)
        if executable is None:
            executable = _export_cache.compile_and_store(disk_key, program.lower(*dynamic, **static))
        compile_seconds = time.perf_counter() - start
        _EXECUTABLES[cache_key] = executable
        if len(_EXECUTABLES) > _MAX_EXECUTABLES:
            _EXECUTABLES.popitem(last=False)
    else:
        _EXECUTABLES.move_to_end(cache_key)
    _progress_sink = progress
    try:
        start = time.perf_counter()
        out = jax.block_until_ready(executable(*dynamic))
        run_seconds = time.perf_counter() - start
    finally:
        _progress_sink = None
    return out, compile_seconds, run_seconds
