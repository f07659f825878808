"""Compiled fit programs: compiled once per static arguments and argument shapes, then reused.

Compiling ahead of time, rather than on first call, is what lets a fit report compile time and run
time apart; a built-in model's program may also come from the on-disk program cache
(:mod:`jaxem.core.program_cache`).
"""

from __future__ import annotations

import time
from collections import OrderedDict

import jax
import jax.numpy as jnp

from . import loop, program_cache

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


def _signature(tree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((jnp.shape(x), jnp.result_type(x), getattr(x, "sharding", None))
                          for x in leaves)


def run_compiled(program, dynamic: tuple, static: dict, progress=None,
                 disk_name: str | None = None) -> tuple:
    """Compile (or reuse) a fit program for these arguments and run it.

    Args:
        dynamic: the program's positional (traced) arguments; for the mixture program
            ``(keys, init_params, X, weights, labels, tol)``.
        static: its static keyword arguments except ``report`` (models hash by identity, so the
            cache key keeps the model itself alive).
        progress: optional ``progress(iteration, objective [R], converged [R], running [R])``
            called once per EM iteration from inside the compiled loop.
        disk_name: the program's name in the on-disk program cache, or ``None`` when it is not
            to be served from there (its key must name everything the program is built from).

    Returns:
        ``(output, compile_seconds, run_seconds)``; ``compile_seconds`` is 0 when an executable
        for these shapes was already in memory. A new process loads the mixture program of a
        built-in model from the program cache (:mod:`jaxem.core.program_cache`) without tracing it,
        and any other from JAX's persistent cache after tracing and lowering it; either way it
        then reports only that time.
    """
    static = dict(static, report=progress is not None)
    cache_key = (program, tuple(sorted(static.items(), key=lambda item: item[0])),
                 _signature(dynamic))
    compile_seconds = 0.0
    executable = _EXECUTABLES.get(cache_key)
    if executable is None:
        start = time.perf_counter()
        disk_key = (None if disk_name is None
                    else program_cache.program_key(disk_name, static, dynamic))
        executable = program_cache.load(disk_key, dynamic)
        _COUNTS["loaded" if executable is not None else "compiled"] += 1
        if executable is None:
            executable = program_cache.compile_and_store(disk_key,
                                                         program.lower(*dynamic, **static))
        compile_seconds = time.perf_counter() - start
        _EXECUTABLES[cache_key] = executable
        if len(_EXECUTABLES) > _MAX_EXECUTABLES:
            _EXECUTABLES.popitem(last=False)
    else:
        _COUNTS["reused"] += 1
        _EXECUTABLES.move_to_end(cache_key)
    loop.set_progress_sink(progress)
    try:
        start = time.perf_counter()
        out = jax.block_until_ready(executable(*dynamic))
        run_seconds = time.perf_counter() - start
    finally:
        loop.set_progress_sink(None)
    return out, compile_seconds, run_seconds
