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

from . import loop, program_cache, sharding

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


# Compile effort on a CPU. XLA spends most of a fit's first second or two optimising (LLVM at -O2,
# the fusion emitters); unoptimised, a program compiles 3-5x faster and runs 3-4x slower. Where
# one trip moves at most this many bytes (XLA's cost estimate of the program, times the restarts
# that pass one after another) a trip takes under ~5 ms at full effort, so the time lost over a
# fit's iterations is less than the compile time saved. Measured (2-core AMD EPYC, 50 iterations,
# full covariance, compile s / warm fit s, full -> cheap): N=1024 D=2 K=3: 1.34/0.003 ->
# 0.36/0.012; R=8: 2.12/0.019 -> 0.49/0.074; N=8192 D=8 K=8: 1.45/0.051 -> 0.35/0.162; R=4:
# 2.25/0.19 -> 0.50/0.65; N=65536 D=16 K=16 (full effort kept): 1.77/1.0 -> 0.59/4.2.
CHEAP_COMPILE_MAX_BYTES = 2**27
# A segmented fit's start (the initialiser) runs once, not once per iteration, so it counts as half
# a trip: GaussianMixture(3, n_restarts=4) on 3000 x 3 rows (8192-row bucket), start estimated at
# 2.2e8 bytes: first fit 2.95 -> 1.79 s, the initialiser's run 20 ms slower.
START_REPEATS = 0.5
CHEAP_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0,
                         "xla_llvm_disable_expensive_passes": True,
                         "xla_cpu_use_fusion_emitters": False}
# XLA:CPU's fusion emitters make the few large fused loops over rows of a closed-form mixture pass
# 15-20% faster, but double the compile time of a program made of many small operations (a
# gradient M-step's autodiff gradients, Hessians and P x P algebra; a forward-backward scan over
# time steps of K-wide operations), which runs as fast or faster without them. Measured (2-core
# AMD EPYC, compile s / warm fit s, with -> without): Laplace mixture by EM-gradient, 7k rows,
# R=8: 2.29/1.69 -> 1.20/1.53, 210k rows: 3.15/12.3 -> 1.41/11.1; Gaussian HMM 20 x 500 x 3,
# K=4, R=4: 4.45/0.50 -> 2.98/0.47; full GMM N=65536 D=16 K=16: 4.59/2.02 -> 3.62/2.44 (kept).
#
# Such programs also compile about 10% faster at LLVM's -O1 than at -O2 and run as fast (the same
# machine, compile s / warm s, -O2 -> -O1, 3 fresh processes each: Laplace 0.99-1.06 / 0.76 ->
# 0.89-0.93 / 0.74, gamma 1.14-1.24 / 0.38-0.41 -> 1.06-1.19 / 0.39-0.41, the HMM of
# benchmarks/custom.py 1.00-1.28 / 1.04-1.06 -> 0.94-1.07 / 0.96-1.06).
SMALL_OPS_COMPILE_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}


def compile_options(lowered, repeats: float = 1, small_ops: bool = False) -> dict:
    """XLA options for compiling ``lowered`` on a CPU: :data:`CHEAP_COMPILE_OPTIONS` when its
    estimated bytes moved times ``repeats`` (restarts that run the program's pass one after
    another) is at most :data:`CHEAP_COMPILE_MAX_BYTES`; else :data:`SMALL_OPS_COMPILE_OPTIONS`
    for a program of many small operations (``small_ops``: a gradient M-step or a
    forward-backward pass), else none (full optimisation)."""
    if jax.default_backend() != "cpu":
        return {}  # accelerators: not measured, so XLA's default
    full = dict(SMALL_OPS_COMPILE_OPTIONS) if small_ops else {}
    try:
        cost = lowered.cost_analysis()
    except Exception:  # noqa: BLE001 - no estimate only means the default effort
        return full
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    moved = (cost or {}).get("bytes accessed")
    if moved is None or moved * repeats > CHEAP_COMPILE_MAX_BYTES:
        return full
    return dict(CHEAP_COMPILE_OPTIONS)


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
    lowered from the start's declared output types while the start compiles. The first segment
    is :data:`FIRST_SEGMENT_TRIPS` trips; each later one is sized from the trips per second
    measured so far.

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
    compile_seconds = run_seconds = 0.0
    loop.set_progress_sink(progress)
    try:
        with _interrupt_flag() as interrupted:
            start_args = dynamic + (None, stop_at)
            device = None if restore is not None or "mesh" in static else _one_device(dynamic)
            start_build = _Build(program, start_args, static, disk_name, counted=False,
                                 repeats=START_REPEATS, small_ops=small_ops,
                                 in_background=device is not None)
            segment_build = spec = None
            if start_build.out_info is not None and device is not None:
                # While the start compiles, the loop program is traced and lowered for the
                # state the start will return, and compiled beside it. Keyed by that state's
                # placement; lowered without one, as from the start's uncommitted outputs.
                def shapes(where):
                    return jax.tree.map(lambda o: jax.ShapeDtypeStruct(o.shape, o.dtype,
                                                                       sharding=where),
                                        start_build.out_info)

                spec, bare = shapes(device), shapes(None)
                segment_build = _Build(program, dynamic + (spec, stop_at), static, disk_name,
                                       repeats=repeats, small_ops=small_ops, in_background=True,
                                       lower_from=dynamic + (bare, stop_at))
            start, compile_seconds = start_build.result()
            began = time.perf_counter()
            state = start(*start_args)
            run_seconds = time.perf_counter() - began
            if restore is not None:
                state = restore(state)
            if segment_build is None or _typed(state) != _typed(spec):
                # (A weak-typed leaf of the state would be lowered otherwise than declared.)
                segment_build = _Build(program, dynamic + (state, stop_at), static, disk_name,
                                       repeats=repeats, small_ops=small_ops)
            segment, seconds = segment_build.result()
            # Over a mesh a segment may return some leaves placed otherwise than the start did;
            # they go back to the placement the executable was compiled for.
            placement = jax.tree.map(lambda a: a.sharding, state)
            compile_seconds += seconds
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
                elapsed = time.perf_counter() - began
                run_seconds += elapsed
                if not (running.any() and done <= max_iter):
                    break
                per_trip = elapsed / max(done - trips, 1)
                stop = done + max(1, int(SEGMENT_SECONDS / per_trip))
                stop, stopping, saving = _agreed(stop, interrupted(),
                                                 saver is not None and saver.due(state))
                if stopping:
                    if saver is not None:
                        saver.save(state)
                    raise loop.Interrupted(loop.output(state))
                if saving:
                    saver.save(state)
                trips = done
                if saver is not None and saver.next_stop(done) is not None:
                    stop = min(stop, saver.next_stop(done))
    finally:
        loop.set_progress_sink(None)
    if saver is not None:
        saver.save(state)
    return loop.output(state), compile_seconds, run_seconds
