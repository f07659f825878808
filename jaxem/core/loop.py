"""The EM loop: one pure function of bookkeeping per iteration, run compiled or on the host.

Every restart advances in lock-step. An iteration is an M-step for every restart (vmapped) and one
pass at the new parameters: the E-step plus whatever the next M-step needs. :func:`advance` does
the rest (history, tolerance, fixed point, who is still running) and is the same function for the
compiled loop (:func:`run_compiled_loop`, a ``lax.while_loop``) and the host loop
(:func:`run_host_loop`, for passes that read data from the host and cannot be traced). A restart
that converged, failed or ran out of iterations keeps its parameters (the batch still computes for
it; its results are discarded), exactly as ``vmap`` of a while loop would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .blocks import HardStats, trace_once
from .stopping import remaining_gain, small_change

Array = jax.Array


class LoopOutput(NamedTuple):
    """What the loop returns; every leaf has a leading ``[R]`` restart axis."""

    params: Any
    objective: Array         # [R] final objective
    initial_objective: Array  # [R]
    n_iter: Array            # [R] int32
    converged: Array         # [R] bool
    history: Array           # [R, max_iter], NaN after a restart stopped
    stalled: Array | None = None  # [R] bool, stopped on round-off (see advance)
    fallbacks: Array | None = None  # [R] rejected extrapolations (accelerated loops only)


class Ascent(NamedTuple):
    """What a gradient M-step returns for one restart: the new ``params`` and the ``gap``, the
    increase of the objective a second-order model predicted from the old ones (see
    :mod:`jaxem.core.ascent`), and optionally ``newton``: a Newton step on the log-likelihood
    itself from the old parameters, in the unconstrained space of the model's constraints (a
    pytree like the unconstrained parameters; ``None`` where the curvature is not known, NaN where
    it is not concave), which an accelerated loop may try instead of extrapolating."""

    params: Any
    gap: Array
    newton: Any = None


def split_m_step(out) -> tuple[Any, Array | None, Any]:
    """``(params, gap or None, newton or None)`` of an M-step's output."""
    return (out.params, out.gap, out.newton) if isinstance(out, Ascent) else (out, None, None)


class Settings(NamedTuple):
    """The loop's fixed settings: ``tol`` (traced scalar; negative: no objective test),
    ``max_iter``, ``may_stop(iteration) -> bool`` (whether convergence may be declared yet) and
    ``accelerate``: ``None`` (plain EM) or a :class:`jaxem.core.accelerate.Squarem`, whose
    ``fields(params)`` and ``trip(state, stepped, e_pass, settings)`` take the place of
    :func:`proposed` and :func:`advance` (it calls :func:`advance` itself)."""

    tol: Array
    max_iter: int
    may_stop: Callable
    accelerate: Any = None


def select(mask: Array, new, old):
    """Leaf by leaf ``where(mask, new, old)``, ``mask`` broadcast over the leaves' trailing axes
    (a ``[R]`` mask picks whole restarts; a scalar picks everything)."""
    def pick(a, b):
        return jnp.where(jnp.reshape(mask, jnp.shape(mask) + (1,) * (jnp.ndim(a) - jnp.ndim(mask))),
                         a, b)
    return jax.tree.map(pick, new, old)


def computed_once(*masks: Array) -> tuple:
    """``masks`` (boolean, one shape), unchanged, but computed in one kernel.

    XLA:CPU fuses a cheap elementwise value into every kernel that reads it, so the stopping
    rule's masks were recomputed in each of the loop state's per-leaf updates; a reduction is
    not fused into its readers, so the masks packed into bits of one integer by a sum are
    computed once and each reader only unpacks its bit (at most 31 masks: one int32)."""
    if len(masks) > 31:
        raise ValueError(f"computed_once packs at most 31 masks into an int32, got {len(masks)}")
    bits = [1 << i for i in range(len(masks))]
    code = jnp.sum(jnp.stack(masks, axis=-1).astype(jnp.int32) * jnp.array(bits, jnp.int32),
                   axis=-1, dtype=jnp.int32)
    return tuple((code & bit) != 0 for bit in bits)


def map_restarts(fn: Callable, *trees, in_sequence: bool = False, active: Array | None = None):
    """``jax.vmap(fn)(*trees)`` over the leading restart axis, or with ``in_sequence`` one restart
    after another (``lax.map``; see :data:`jaxem.core.blocks.SEQUENTIAL_RESTART_PLATFORMS`). With
    a single restart ``fn`` runs unbatched instead: XLA does not always fold a size-1 batch back
    out of the products.

    ``active [R]`` (bool), with ``in_sequence``: restarts where it is False are skipped (their
    outputs are zeros, for the caller to discard), so restarts that stopped cost nothing. Vmapped
    restarts compute every restart whatever ``active`` says: a batch has one cost.
    """
    leaves = jax.tree.leaves(trees)
    if leaves and all(leaf.shape[:1] == (1,) for leaf in leaves):
        out = fn(*jax.tree.map(lambda a: a[0], trees))
        return jax.tree.map(lambda a: a[None], out)
    if in_sequence and active is not None:
        # Traced once, for both its shapes and the branch that runs it (see trace_once).
        run, shapes = trace_once(fn, *jax.tree.map(lambda a: a[0], trees))

        def skipped(*_):
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        return jax.lax.map(lambda x: jax.lax.cond(x[0], run, skipped, *x[1]), (active, trees))
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
    return aux.fingerprint if isinstance(aux, HardStats) else None


def initial_state(params, aux_shapes, max_iter: int) -> dict:
    """The loop state before its first trip (the initial E-step) for ``[R]``-stacked ``params``
    and the pass's output shapes ``(objective [R], aux)``."""
    obj_shape = aux_shapes[0]
    n_restarts = obj_shape.shape[0]
    nan = jnp.full((n_restarts,), jnp.nan, obj_shape.dtype)
    no_aux = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), aux_shapes[1])
    return dict(params=params, objective=nan, initial=nan, aux=no_aux,
                consumed=_fingerprint(no_aux), trips=jnp.zeros((), jnp.int32),
                n_iter=jnp.zeros((n_restarts,), jnp.int32),
                converged=jnp.zeros((n_restarts,), bool), stalled=jnp.zeros((n_restarts,), bool),
                running=jnp.ones((n_restarts,), bool),
                history=jnp.full((n_restarts, max_iter), jnp.nan, obj_shape.dtype))


def keep_going(s: dict, max_iter: int) -> Array:
    """Whether the loop takes another trip."""
    return jnp.any(s["running"]) & (s["trips"] <= max_iter)


def proposed(s: dict, stepped) -> Any:
    """The parameters the next pass runs at: the M-step's for running restarts, else the old
    (trip 0 is the initial E-step, whose M-step result is discarded)."""
    return select(s["running"] & (s["trips"] > 0), stepped, s["params"])


def advance(s: dict, stepped, new_params, objective: Array, aux, settings: Settings,
            gap: Array | None = None, can_converge: Array | None = None) -> dict:
    """One iteration's bookkeeping, given the M-step's parameters ``stepped``, the parameters the
    pass ran at (:func:`proposed`), the pass's ``(objective [R], aux)`` and, for a gradient
    M-step, its ``gap [R]`` (:class:`Ascent`). Pure: the compiled and the host loop both call it.

    ``can_converge`` (``[R]`` bool, accelerated loops; default all) marks the restarts whose trip
    may declare convergence (or a stall): an extrapolation's change of the objective says nothing
    about how far EM is from its fixed point, so only EM steps are tested, as in plain EM. A
    restart whose extrapolation was rejected is passed with its old parameters, objective and
    aux: its history repeats the old objective and the trip counts in ``n_iter`` (a pass was
    spent)."""
    first, iteration = s["trips"] == 0, s["trips"]
    running = s["running"] & ~first
    # A change within float round-off of the objective is no progress: tol=0 then means "until
    # nothing changes", which otherwise could spin on last-bit noise until max_iter. A negative
    # tol (``tol=None`` to the user) switches the objective test off.
    floor = 4 * jnp.finfo(objective.dtype).eps
    change, scale = objective - s["objective"], jnp.abs(s["objective"])
    change_small = small_change(objective, s["objective"], settings.tol)
    # Parameters an M-step left bit-identical are a fixed point: every later iteration would
    # repeat this one, whatever the tolerance.
    fixed_point = _unchanged(stepped, s["params"])
    consumed = _fingerprint(s["aux"])
    if consumed is not None:
        # Hard EM: this M-step saw the same assignment as the one before it, so it changed
        # nothing (the step counts, as k-means counts the pass that finds no row moved).
        fixed_point |= (iteration >= 2) & _unchanged(consumed, s["consumed"])
    # Round-off, not convergence: a change within the floor but above a tol > 0 (this float
    # type cannot resolve tol); any change within the floor when tol itself is below it (even
    # none at all: the objective's own round-off can hide a gain larger than tol), short of a
    # fixed point; or a decrease larger than tol and the floor (EM never decreases the
    # objective in exact arithmetic; ill-conditioned float32 M-steps make it wander). Such a
    # restart stops "stalled", not converged, keeping its better parameters.
    decreased = (change < 0) & ~change_small
    unresolved = (change_small & (settings.tol > 0)
                  & ((jnp.abs(change) > settings.tol * scale)
                     | ((settings.tol < floor) & ~fixed_point)))
    stall = (running & (settings.tol >= 0) & settings.may_stop(iteration)
             & (unresolved | decreased))
    if can_converge is not None:
        stall &= can_converge
    converged = (running & (((settings.tol >= 0) & change_small) | fixed_point)
                 & settings.may_stop(iteration)) & ~stall
    stuck = jnp.zeros_like(converged)
    if gap is not None:
        # A gradient M-step that fell short of an EM-gradient step by more than the tolerance
        # has stalled, not converged (one that moved nothing at all stops, unconverged). And
        # as EM converges linearly, a small change is not a small distance when the rate is
        # slow: the gain still to come (:func:`jaxem.core.stopping.remaining_gain`, from the
        # rate of the last changes and of the last blocks of trips) must be within it as well.
        bound = jnp.maximum(settings.tol, floor) * scale
        far = (gap > bound) | (remaining_gain(s, objective, iteration) > bound)
        stuck = running & fixed_point & (gap > bound)
        converged &= ~far | (fixed_point & ~stuck)
    if can_converge is not None:
        converged &= can_converge
    kept = running & ~(stall & decreased)
    kept, converged, stall, stuck = computed_once(kept, converged, stall, stuck)
    row = jnp.maximum(iteration - 1, 0)
    history = s["history"].at[:, row].set(jnp.where(kept, objective, s["history"][:, row]))
    finite = jnp.isfinite(objective)
    still = jnp.where(first, finite,
                      running & ~converged & ~stall & ~stuck & finite
                      & (iteration < settings.max_iter))
    return dict(params=select(running & ~kept, s["params"], new_params),
                objective=jnp.where(first | kept, objective, s["objective"]),
                initial=jnp.where(first, objective, s["initial"]),
                # A stopped restart's stale statistics are never used for a kept update.
                aux=aux, consumed=consumed, trips=iteration + 1, n_iter=s["n_iter"] + kept,
                converged=s["converged"] | converged, stalled=s["stalled"] | stall,
                running=still, history=history)


class Interrupted(KeyboardInterrupt):
    """A loop stopped by Ctrl-C between two iterations (the host loop) or two segments (the
    compiled loop); ``output`` is the :class:`LoopOutput` of the last completed iteration. The
    fit front ends turn it into :class:`jaxem.FitInterrupted`, which carries a result."""

    def __init__(self, output: LoopOutput):
        super().__init__("the fit was interrupted")
        self.output = output


def output(s: dict) -> LoopOutput:
    """The finished state as a :class:`LoopOutput`."""
    return LoopOutput(s["params"], s["objective"], s["initial"], s["n_iter"], s["converged"],
                      s["history"], s["stalled"], s.get("sq_fallbacks"))


def take_trip(s: dict, stepped, e_pass: Callable, settings: Settings, gap: Array | None = None,
              newton=None) -> dict:
    """The parameters of the next pass, the pass ``e_pass(params) -> (objective [R], aux)`` and
    the bookkeeping: plain EM (:func:`proposed`, :func:`advance`) or ``settings.accelerate``'s.
    ``gap``, ``newton``: a gradient M-step's (see :class:`Ascent`)."""
    if settings.accelerate is not None:
        return settings.accelerate.trip(s, stepped, e_pass, settings, gap, newton)
    new_params = proposed(s, stepped)
    return advance(s, stepped, new_params, *e_pass(new_params), settings, gap)


# Progress reports leave the compiled program through one module-level function, so passing a
# different callback to each fit does not recompile.
_progress_sink: Any = None


def _report(iteration, objective, converged, running):
    # Trip 0 is the initial E-step, not an iteration.
    if _progress_sink is not None and int(iteration) > 0:
        _progress_sink(int(iteration), np.asarray(objective), np.asarray(converged),
                       np.asarray(running))


def set_progress_sink(progress: Callable | None) -> None:
    """Where the compiled loop's reports go until the next call (``None``: nowhere)."""
    global _progress_sink
    _progress_sink = progress


def start_state(e_pass: Callable, params, settings: Settings) -> dict:
    """The loop state before its first trip, for :func:`run_compiled_loop` (traced: only the
    shapes of ``e_pass``'s output are needed, so nothing of the pass is compiled). Strongly
    typed (``jnp.full(K, 1 / K)`` is weakly), as the start's declared output types that
    :func:`jaxem.core.programs.run_segmented` lowers the loop program from."""
    restarts = jnp.ones((jax.tree.leaves(params)[0].shape[0],), bool)
    state = initial_state(params, jax.eval_shape(e_pass, params, jnp.zeros((), jnp.int32), restarts),
                          settings.max_iter)
    if settings.accelerate is not None:
        state.update(settings.accelerate.fields(params))
    strong = jax.lax.convert_element_type
    return jax.tree.map(lambda a: strong(a, a.dtype) if jax.typeof(a).weak_type else a, state)


def run_compiled_loop(e_pass: Callable, m_step: Callable, params, settings: Settings, *,
                      report: bool = False, in_sequence: bool = False, state: dict | None = None,
                      stop_at: Array | None = None):
    """The EM loop as a ``lax.while_loop`` (call it inside ``jit``).

    Args:
        e_pass: ``e_pass(params, iteration, active [R]) -> (objective [R], aux)`` for the whole
            batch: the E-step at ``params`` after ``iteration`` M-steps, plus what the next M-step
            needs; restarts that are not ``active`` have stopped, so their outputs are discarded.
        m_step: ``m_step(params, aux) -> params`` (or an :class:`Ascent`) for ONE restart.
        params: starting parameters with a leading ``[R]`` axis (unused with ``state``).
        settings: tolerance, iterations, ``may_stop``.
        report: send each iteration to the progress sink (:func:`set_progress_sink`).
        in_sequence: map the M-steps over restarts one after another, skipping those that
            stopped (a converged restart then costs nothing; vmapped, every restart is computed
            until the last one stops).
        state: continue from this loop state (:func:`start_state`, or what an earlier call
            returned) instead of starting from ``params``.
        stop_at: also stop once this many trips are done (a traced int32 scalar, so one compiled
            program runs any segment) and return the loop state, not a :class:`LoopOutput`: the
            host then calls again with it (:func:`jaxem.core.programs.run_segmented`).

    The first trip is the initial E-step (its M-step result is discarded), so the pass, by far
    the largest part of the program, is traced and compiled once rather than twice.
    """
    if state is None:
        state = start_state(e_pass, params, settings)

    def body(s):
        stepped, gap, newton = split_m_step(map_restarts(m_step, s["params"], s["aux"],
                                                         in_sequence=in_sequence,
                                                         active=s["running"] & (s["trips"] > 0)))
        out = take_trip(s, stepped, lambda p: e_pass(p, s["trips"], s["running"]), settings, gap,
                        newton)
        if report:
            jax.debug.callback(_report, s["trips"], out["objective"], out["converged"],
                               out["running"])
        return out

    def cond(s):
        go = keep_going(s, settings.max_iter)
        return go if stop_at is None else go & (s["trips"] < stop_at)

    final = jax.lax.while_loop(cond, body, state)
    return final if stop_at is not None else output(final)


def run_host_loop(e_pass: Callable, m_step: Callable, params, settings: Settings,
                  on_iteration: Callable | None = None, *, saver=None,
                  restore: Callable | None = None,
                  stop_requested: Callable | None = None) -> LoopOutput:
    """The EM loop as a Python loop, for passes that read their data from the host.

    ``e_pass`` and ``m_step`` take and return the whole ``[R]`` batch; ``on_iteration``, if any,
    is called like a progress callback once per iteration. The bookkeeping is :func:`advance`,
    as in the compiled loop. ``saver`` (a :class:`jaxem.core.checkpoint.Saver`) is called with
    the state after every iteration and saves at the end and on Ctrl-C; ``restore(state)``
    replaces the state after the initial E-step (a resumed fit). ``stop_requested()``, if given,
    is asked after every iteration and stops the loop as Ctrl-C does (a multi-process fit's
    agreed Ctrl-C, :func:`jaxem.core.programs.agreed_interrupt`).
    """
    objective, aux = e_pass(params, 0)
    state = initial_state(params, jax.eval_shape(lambda: (objective, aux)), settings.max_iter)
    state = advance(state, params, params, jnp.asarray(objective), aux, settings)
    if settings.accelerate is not None:
        state.update(settings.accelerate.fields(params))
    if restore is not None:
        state = restore(state)
    try:
        while bool(keep_going(state, settings.max_iter)):
            # An M-step costs passes when it is by gradient; SQUAREM's replayed steps need none.
            needed = settings.accelerate is None or settings.accelerate.needs_m_step(state)
            stepped, gap, newton = (split_m_step(m_step(state["params"], state["aux"])) if needed
                                    else (state["params"], None, None))
            trips = int(state["trips"])
            state = take_trip(state, stepped,
                              lambda p, trips=trips: _host_pass(e_pass, p, trips), settings, gap,
                              newton)
            if on_iteration is not None:
                on_iteration(int(state["trips"]) - 1, np.asarray(state["objective"]),
                             np.asarray(state["converged"]), np.asarray(state["running"]))
            if saver is not None:
                saver(state)
            if stop_requested is not None and stop_requested():
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        # ``state`` is the last completed iteration's (an assignment is never half done).
        if saver is not None:
            saver.save(state)
        raise Interrupted(output(jax.tree.map(np.asarray, state))) from None
    if saver is not None:
        saver.save(state)
    return output(jax.tree.map(np.asarray, state))


def _host_pass(e_pass: Callable, params, iteration: int):
    objective, aux = e_pass(params, iteration)
    return jnp.asarray(objective), aux
