"""Compiled fit programs: compiled once per static arguments and argument shapes, then reused.

Compiling ahead of time, rather than on first call, is what lets a fit report compile time and run
time apart; a built-in model's program may also come from the on-disk program cache
(:mod:`jaxem.core.program_cache`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from . import loop, program_cache, restart_groups, sharding
from .compile_effort import START_REPEATS, compile_options

# Compiled executables by (static arguments, argument shapes/dtypes/shardings).
_EXECUTABLES: OrderedDict = OrderedDict()
_MAX_EXECUTABLES = 64
# Executables made in this process: compiled (or loaded from JAX's persistent cache after
# tracing), loaded from the program cache, and runs that reused one already in memory.
_COUNTS = {"compiled": 0, "loaded": 0, "reused": 0}


def counts() -> dict:
    """``{"compiled", "loaded", "reused"}``: fit programs compiled (or served by JAX's persistent
    cache after tracing), loaded from jaxem's program cache, and reused from memory, in this
    process so far (a copy)."""
    return dict(_COUNTS)


def free_compiled_programs() -> None:
    """Release every compiled program this process holds in memory (JAX's caches and jaxem's).

    Each compiled XLA CPU program keeps a few memory mappings alive, and a process may hold at most
    ``vm.max_map_count`` (65,530 by default on Linux): one that compiles several thousand distinct
    programs (a service fitting many model shapes, a long test run) aborts inside the next
    compilation. Call this between unrelated batches of fits; the next fit of each shape compiles
    again (or loads from the persistent cache).
    """
    _EXECUTABLES.clear()
    jax.clear_caches()


def _signature(tree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((jnp.shape(x), jnp.result_type(x), getattr(x, "sharding", None))
                          for x in leaves)


_COMPILE_POOL: ThreadPoolExecutor | None = None


def _compile_threads() -> ThreadPoolExecutor:
    """The threads that compile a segmented fit's two programs beside the main thread (XLA
    releases the GIL while it compiles)."""
    global _COMPILE_POOL
    if _COMPILE_POOL is None:
        _COMPILE_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jaxem-compile")
    return _COMPILE_POOL


class _Build:
    """An executable for one program and argument signature in the making: from memory, the
    program cache on disk, or lowered here and compiled, in this thread or (``in_background``)
    in :func:`_compile_threads`. ``out_info``: the outputs' shapes where it was lowered here.
    ``lower_from``: the arguments to lower with, where ``dynamic`` (which the caches are keyed by)
    describe arrays that do not exist yet. Other arguments as in :func:`_executable`."""

    def __init__(self, program, dynamic: tuple, static: dict, disk_name: str | None,
                 counted: bool = True, repeats: float = 1, small_ops: bool = False,
                 in_background: bool = False, lower_from: tuple | None = None):
        began = time.perf_counter()
        self.key = (program, tuple(sorted(static.items(), key=lambda item: item[0])),
                    _signature(dynamic))
        self.out_info, self._future, self.seconds = None, None, 0.0
        self._executable = _EXECUTABLES.get(self.key)
        if self._executable is not None:
            _COUNTS["reused"] += counted
            return
        disk_key = None if disk_name is None else program_cache.program_key(disk_name, static, dynamic)
        self._executable = program_cache.load(disk_key, dynamic)
        _COUNTS["loaded" if self._executable is not None else "compiled"] += counted
        if self._executable is None:
            lowered = program.lower(*(dynamic if lower_from is None else lower_from), **static)
            self.out_info = lowered.out_info
            options = compile_options(lowered, repeats, small_ops)
            if in_background:
                x64 = jax.config.jax_enable_x64  # this thread's setting (a context may set it)

                def compile_there():
                    with jax.enable_x64(x64):
                        return program_cache.compile_and_store(disk_key, lowered, options)

                self._future = _compile_threads().submit(compile_there)
            else:
                self._executable = program_cache.compile_and_store(disk_key, lowered, options)
        self.seconds = time.perf_counter() - began

    def result(self) -> tuple:
        """``(executable, seconds)``: the seconds this thread spent on it (looking up, lowering,
        compiling or waiting for the compile threads); the executable is kept in memory."""
        if self._future is not None:
            waited = time.perf_counter()
            self._executable, self._future = self._future.result(), None
            self.seconds += time.perf_counter() - waited
        _EXECUTABLES[self.key] = self._executable
        _EXECUTABLES.move_to_end(self.key)
        if len(_EXECUTABLES) > _MAX_EXECUTABLES:
            _EXECUTABLES.popitem(last=False)
        return self._executable, self.seconds


def _executable(program, dynamic: tuple, static: dict, disk_name: str | None,
                counted: bool = True, repeats: float = 1, small_ops: bool = False) -> tuple:
    """``(compiled program, compile seconds)`` for these arguments: from memory, the program
    cache on disk, or compiled now (see :func:`run_compiled`). ``counted``: whether it counts in
    :func:`counts` (a segmented fit's start program is part of its fit program); ``repeats``,
    ``small_ops``: as in :func:`compile_options`."""
    return _Build(program, dynamic, static, disk_name, counted, repeats, small_ops).result()


def _one_device(dynamic: tuple):
    """The sharding of ``dynamic``'s JAX arrays when they all sit on one and the same device
    (``None`` otherwise, or with no JAX array)."""
    shardings = {leaf.sharding for leaf in jax.tree.leaves(dynamic) if isinstance(leaf, jax.Array)}
    one = shardings.pop() if len(shardings) == 1 else None
    return one if isinstance(one, jax.sharding.SingleDeviceSharding) else None


def _typed(tree) -> tuple:
    """``tree``'s structure and leaves' shapes, dtypes and weak types."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((x.shape, x.dtype, bool(getattr(x, "weak_type", False))) for x in leaves)


def run_compiled(program, dynamic: tuple, static: dict, progress=None,
                 disk_name: str | None = None, repeats: float = 1,
                 small_ops: bool = False) -> tuple:
    """Compile (or reuse) a fit program for these arguments and run it.

    Args:
        dynamic: the program's positional (traced) arguments.
        static: its static keyword arguments except ``report`` (models hash by identity, so the
            cache key keeps the model itself alive).
        progress: optional ``progress(iteration, objective [R], converged [R], running [R])``
            called once per EM iteration from inside the compiled loop.
        disk_name: the program's name in the on-disk program cache, or ``None`` when it is not
            to be served from there (its key must name everything the program is built from).
        repeats: how many restarts run the program's pass one after another (on a CPU), for
            the compile effort (:func:`compile_options`).
        small_ops: whether the program is made of many small operations (a gradient M-step,
            a forward-backward pass), for the compile effort.

    Returns:
        ``(output, compile_seconds, run_seconds)``; ``compile_seconds`` is 0 when an executable
        for these shapes was already in memory. A new process loads the mixture program of a
        built-in model from the program cache (:mod:`jaxem.core.program_cache`) without tracing it,
        and any other from JAX's persistent cache after tracing and lowering it; either way it
        then reports only that time.
    """
    static = dict(static, report=progress is not None)
    executable, compile_seconds = _executable(program, dynamic, static, disk_name, repeats=repeats,
                                              small_ops=small_ops)
    loop.set_progress_sink(progress)
    try:
        start = time.perf_counter()
        out = jax.block_until_ready(executable(*dynamic))
        run_seconds = time.perf_counter() - start
    finally:
        loop.set_progress_sink(None)
    return out, compile_seconds, run_seconds


# How long one segment of a compiled loop should run: Ctrl-C waits for the running segment, and
# each boundary costs a dispatch and a read of two small arrays (tens of microseconds), so half
# a second keeps both small. The first segment is a few trips, to measure a trip's time.
SEGMENT_SECONDS = 0.5
FIRST_SEGMENT_TRIPS = 3


@contextlib.contextmanager
def _interrupt_flag() -> Iterator[Callable[[], bool]]:
    """Within the block, Ctrl-C (SIGINT) only raises a flag, read by the yielded function; a
    second Ctrl-C raises :class:`KeyboardInterrupt` at once. Where Python's default handler is
    not the one installed (another thread, or the caller's own handler) nothing changes."""
    hits = []
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield lambda: False
        return

    def handler(signum, frame):
        if hits:
            raise KeyboardInterrupt
        hits.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def agreed_interrupt() -> Iterator[Callable[[], bool] | None]:
    """For a host loop: ``None`` with one process (Ctrl-C raises at once, as Python does); with
    several, Ctrl-C only raises a flag, and the yielded function, called by every process at the
    end of each iteration, says whether any process's flag is up, so all stop at one iteration
    (a process that stopped alone would leave the others waiting in a collective)."""
    if jax.process_count() == 1:
        yield None
        return
    with _interrupt_flag() as flag:
        yield lambda: bool(sharding.every_process([flag()])[:, 0].any())


def _agreed(stop: int, interrupted: bool, save_due: bool) -> tuple[int, bool, bool]:
    """``(stop, interrupted, save)`` as every process of a multi-process fit takes them: process
    0's next stop (each times its own segments, but the segments must end together, or a
    checkpoint would hold different iterations), and interrupted or due to save when any
    process is (Ctrl-C may reach one process; the others must not wait for it in a
    collective)."""
    every = sharding.every_process([stop, interrupted, save_due])
    return int(every[0, 0]), bool(every[:, 1].any()), bool(every[:, 2].any())


def _segments(segment, dynamic: tuple, state: dict, interrupted: Callable[[], bool],
              saver) -> tuple[dict, bool]:
    """Run the loop ``segment`` executable from ``state`` in segments (see :func:`run_segmented`)
    until every restart stopped or Ctrl-C (``interrupted``): ``(state, interrupted)``."""
    # Over a mesh a segment may return some leaves placed otherwise than the start did; they go
    # back to the placement the executable was compiled for.
    placement = jax.tree.map(lambda a: a.sharding, state)
    max_iter = state["history"].shape[1]
    trips = int(state["trips"])
    stop = trips + FIRST_SEGMENT_TRIPS
    if saver is not None and saver.next_stop(trips) is not None:
        stop = min(stop, saver.next_stop(trips))
    while True:
        began = time.perf_counter()
        state = segment(*dynamic, state, np.int32(min(stop, max_iter + 1)))
        state = jax.tree.map(lambda a, where: a if a.sharding == where
                             else jax.device_put(a, where), state, placement)
        done, running = jax.device_get((state["trips"], state["running"]))
        done = int(done)
        if not (running.any() and done <= max_iter):
            return state, False
        per_trip = (time.perf_counter() - began) / max(done - trips, 1)
        stop = done + max(1, int(SEGMENT_SECONDS / per_trip))
        stop, stopping, saving = _agreed(stop, interrupted(),
                                         saver is not None and saver.due(state))
        if stopping:
            return state, True
        if saving:
            saver.save(state)
        trips = done
        if saver is not None and saver.next_stop(done) is not None:
            stop = min(stop, saver.next_stop(done))


def run_segmented(program, dynamic: tuple, static: dict, progress=None,
                  disk_name: str | None = None, saver=None, restore: Callable | None = None,
                  repeats: float = 1, small_ops: bool = False) -> tuple:
    """Run a segmented fit program: the compiled EM loop in segments of about
    :data:`SEGMENT_SECONDS`, so Ctrl-C stops it between two segments with what it had.

    ``program(*dynamic, state, stop_at, **static)`` is one jitted function with two uses (see
    :func:`jaxem.core.runner.run_in_memory`): with ``state=None`` it returns the loop's starting
    state (the initialisation; the pass is not compiled), and with a state it runs the loop on
    until ``stop_at`` trips are done (a traced scalar: every segment runs the same executable)
    and returns the new state, which stays on the device (its buffers donated to the next call).
    On one device the two executables compile side by side: the loop program is traced and
    lowered from the start's declared output types while the start compiles; on a multi-core
    CPU the restarts then run in groups side by side (:mod:`jaxem.core.restart_groups`). The
    first segment is :data:`FIRST_SEGMENT_TRIPS` trips; each later one is sized from the trips
    per second measured so far.

    Args:
        program, dynamic, static, progress, disk_name, repeats, small_ops: as in
            :func:`run_compiled` (``repeats`` applies to the loop; the start counts as
            :data:`START_REPEATS`).
        saver: optional :class:`jaxem.core.checkpoint.Saver`, called with the state after
            every segment (segments also pause at its iterations), and made to save when the
            loop ends or is interrupted.
        restore: optional ``restore(start_state) -> state``: the state to continue from (a
            resumed fit), given the program's starting state (its shapes and placement).

    Returns:
        ``(LoopOutput, compile_seconds, run_seconds)``.

    Raises:
        jaxem.core.loop.Interrupted: Ctrl-C arrived; it carries the last segment's output.
    """
    static = dict(static, report=progress is not None)
    # A NumPy scalar: with several processes it is the same value in each, not one device's.
    stop_at = np.int32(0)
    loop.set_progress_sink(progress)
    try:
        with _interrupt_flag() as interrupted:
            start_args = dynamic + (None, stop_at)
            device = None if restore is not None or "mesh" in static else _one_device(dynamic)
            start_build = _Build(program, start_args, static, disk_name, counted=False,
                                 repeats=START_REPEATS, small_ops=small_ops,
                                 in_background=device is not None)

            def groups(state_shapes):
                return restart_groups.count(state_shapes, static, device is not None
                                            and progress is None and saver is None)

            def segment_program(state_spec, n_groups, bare=None):
                return _Build(program, dynamic + (state_spec, stop_at), static, disk_name,
                              repeats=repeats / n_groups, small_ops=small_ops,
                              in_background=bare is not None,
                              lower_from=None if bare is None else dynamic + (bare, stop_at))

            segment_build = spec = None
            if start_build.out_info is not None and device is not None:
                # While the start compiles, the loop program is traced and lowered for (a group
                # of) the state the start will return, and compiled beside it. Keyed by that
                # state's placement; lowered without one, as from the start's uncommitted outputs.
                n_groups = groups(start_build.out_info)
                spec = restart_groups.group_shapes(start_build.out_info, n_groups, device)
                segment_build = segment_program(
                    spec, n_groups, restart_groups.group_shapes(start_build.out_info, n_groups))
            start, compile_seconds = start_build.result()
            began = time.perf_counter()
            state = start(*start_args)
            run_seconds = time.perf_counter() - began
            if restore is not None:
                state = restore(state)
            n_groups = groups(state)
            parts = [state] if n_groups == 1 else restart_groups.split(state, n_groups, device)
            if segment_build is None or _typed(parts[0]) != _typed(spec):
                # (A weak-typed leaf of the state would be lowered otherwise than declared.)
                segment_build = segment_program(parts[0], n_groups)
            segment, seconds = segment_build.result()
            compile_seconds += seconds
            began = time.perf_counter()
            if n_groups == 1:
                state, stopped = _segments(segment, dynamic, state, interrupted, saver)
            else:
                state, stopped = restart_groups.side_by_side(
                    parts, lambda part: _segments(segment, dynamic, part, interrupted, None))
            run_seconds += time.perf_counter() - began
            if stopped:
                if saver is not None:
                    saver.save(state)
                raise loop.Interrupted(loop.output(state))
    finally:
        loop.set_progress_sink(None)
    if saver is not None:
        saver.save(state)
    return loop.output(state), compile_seconds, run_seconds
