"""The on-disk program cache (jaxem._export_cache): a new process served from it gets bit-identical
results; anything that changes the program, and any damaged entry, is a miss; custom models and
``JAXEM_COMPILATION_CACHE=0`` never touch it. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import laplace_mixture

import jaxem as jem
from jaxem.core import compile_effort
from jaxem.core import program_cache as _export_cache
from jaxem.model import model_factory, stable_repr
from jaxem.models.gaussian_prior import GaussianPrior

# One small fit in a fresh process; prints whether the program came from the program cache.
_WORKER = r"""
import json, sys
import jax, numpy as np
import jaxem as jem
from jaxem.core import program_cache as _export_cache
loads = []
original = _export_cache.load
def load(key, dynamic):
    out = original(key, dynamic)
    loads.append(out is not None)
    return out
_export_cache.load = load
X = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)
model = jem.gaussian_mixture(3, "full") if sys.argv[1] == "builtin" else jem.Model(
    init=jem.gaussian_mixture(3, "full").init, log_joint=jem.gaussian_mixture(3, "full").log_joint,
    suff_stats=jem.gaussian_mixture(3, "full").suff_stats,
    maximize=jem.gaussian_mixture(3, "full").maximize)
res = jem.fit(model, X, key=jax.random.key(0), n_restarts=2, max_iter=5, tol=None)
print(json.dumps({"served": any(loads), "history": res.history.tolist(),
                  "means": np.asarray(res.params["means"]).tolist()}))
"""


def _run(cache: Path, kind: str = "builtin", **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "JAXEM_COMPILATION_CACHE"}
    environ.update(JAXEM_CACHE_DIR=str(cache), **env)
    proc = subprocess.run([sys.executable, "-c", _WORKER, kind], env=environ, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "programs").glob("*" + _export_cache._SUFFIX))


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A cache directory filled by one process, and that process's results."""
    cache = tmp_path_factory.mktemp("jaxem-cache")
    first = _run(cache)
    return cache, first


def test_new_process_is_served_bit_identical(warm):
    cache, first = warm
    # A fit is two programs: its start (the initialisation) and its loop's segments.
    assert not first["served"] and len(_entries(cache)) == 2
    second = _run(cache)
    assert second["served"]
    assert second["history"] == first["history"] and second["means"] == first["means"]


def test_corrupt_or_foreign_entry_is_a_miss(warm, tmp_path):
    cache, first = warm
    copy = tmp_path / "cache"
    (copy / "programs").mkdir(parents=True)
    entries = _entries(cache)

    def write_all(damage):
        for entry in entries:
            (copy / "programs" / entry.name).write_bytes(damage(entry.read_bytes()))

    def flip(blob):
        blob = bytearray(blob)
        blob[-100] ^= 0xFF                          # a flipped byte in the executable
        return bytes(blob)

    write_all(flip)
    out = _run(copy)
    assert not out["served"] and out["history"] == first["history"]
    write_all(lambda blob: b"not a program")
    assert not _run(copy)["served"]
    write_all(lambda blob: blob[:1000])             # truncated
    assert not _run(copy)["served"]


def test_custom_model_never_uses_it(tmp_path):
    out = _run(tmp_path, kind="custom")
    assert not out["served"] and not _entries(tmp_path)


def test_switched_off_writes_nothing(tmp_path):
    out = _run(tmp_path, JAXEM_COMPILATION_CACHE="0")
    assert not out["served"] and not any(tmp_path.rglob("*"))


def _program_args(n: int = 200):
    model = jem.gaussian_mixture(2, "diag")
    X = jax.numpy.asarray(np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32))
    keys = jax.random.split(jax.random.key(0), 2)
    # The program's start (no loop state yet; see jaxem.core.programs.run_segmented).
    dynamic = (keys, None, X, jax.numpy.ones((n,), X.dtype), None, jax.numpy.asarray(0.0, X.dtype),
               None, jax.numpy.zeros((), jax.numpy.int32))
    static = dict(model=model, n_blocks=1, rows_per_block=n, max_iter=3, use_gradient=False, optimizer=None,
                  m_step_iters=20, rule=jem.estep.resolve_e_step("soft"), report=False)
    return static, dynamic


def test_key_covers_source_versions_shapes_and_statics(monkeypatch):
    static, dynamic = _program_args()
    key = _export_cache.program_key("p", static, dynamic)
    assert key is not None and static["model"].cache_key in key
    assert _export_cache.program_key("p", static, dynamic) == key
    assert _export_cache.program_key("p", static, _program_args(201)[1]) != key
    assert _export_cache.program_key("p", dict(static, max_iter=4), dynamic) != key
    assert _export_cache.program_key("p", dict(static, report=True), dynamic) is None
    assert _export_cache.program_key("p", dict(static, optimizer=object()), dynamic) is None
    with jax.default_matmul_precision("highest"):
        assert _export_cache.program_key("p", static, dynamic) != key
    monkeypatch.setattr(_export_cache, "SOURCE_HASH", "0" * 64)
    assert _export_cache.program_key("p", static, dynamic) != key
    monkeypatch.undo()
    monkeypatch.setattr(jax, "__version__", jax.__version__ + ".dev")
    assert _export_cache.program_key("p", static, dynamic) != key


def test_mismatched_entry_is_a_miss(tmp_path, monkeypatch):
    """A stored entry is found only under its own key (another source hash or jax version)."""
    monkeypatch.setenv("JAXEM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("JAXEM_COMPILATION_CACHE", raising=False)
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", previous or str(tmp_path))
    try:
        static, dynamic = _program_args(203)
        key = _export_cache.program_key("p", static, dynamic)
        lowered = jem.core.runner.program.lower(*dynamic, **static)
        compiled = lowered.compile()
        _export_cache._store(key, compiled, lowered.as_text())
        assert _export_cache.load(key, dynamic) is not None
        monkeypatch.setattr(_export_cache, "SOURCE_HASH", "1" * 64)
        other = _export_cache.program_key("p", static, dynamic)
        assert other != key and _export_cache.load(other, dynamic) is None
        # Another key's entry copied under this key's file name: the stored key text differs.
        _export_cache._path(other).write_bytes(_export_cache._path(key).read_bytes())
        assert _export_cache.load(other, dynamic) is None
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)


def test_factory_keys():
    assert jem.gaussian_mixture(3).cache_key == (
        "jaxem.models.gaussian._gaussian_mixture(n_components=3, ct='full', reg_covar=1e-06, "
        "init='kmeans', prior=None, missing=False)")
    assert jem.bernoulli_mixture(4) is jem.bernoulli_mixture(4)
    assert jem.bernoulli_mixture(4).cache_key.startswith("jaxem.models.bernoulli.bernoulli_mixture(")
    prior = GaussianPrior(weight_concentration=2.0)
    assert "GaussianPrior(weight_concentration=2.0" in jem.gaussian_mixture(3, prior=prior).cache_key
    assert stable_repr(np.float32(1.0)) is None and stable_repr(lambda: 0) is None
    assert stable_repr((1, 2.5, "a", None)) == "(1, 2.5, 'a', None, )"

    @model_factory
    def user_factory(k):   # not jaxem's own source: never keyed
        return jem.Model(init=jem.gaussian_mixture(k).init, log_joint=jem.gaussian_mixture(k).log_joint)

    assert user_factory(2).cache_key is None


def test_a_modified_copy_of_a_builtin_model_is_never_keyed():
    """``dataclasses.replace`` keeps the ``cache_key`` text but makes another model (here one
    without its fused statistics): serving it the original's program would be wrong."""
    import dataclasses

    static, dynamic = _program_args()
    copy = dataclasses.replace(static["model"], block_stats=None)
    assert copy.cache_key == static["model"].cache_key
    assert _export_cache.program_key("p", dict(static, model=copy), dynamic) is None
    assert _export_cache.program_key("p", static, dynamic) is not None


def test_compile_effort_follows_the_work_of_one_trip(monkeypatch):
    """Small programs compile unoptimised (cheap to compile, a few ms slower to run), large ones
    fully; a fit's answer is the same either way (the options change rounding at most)."""
    from jaxem.core import programs

    def one_pass(x):
        return (x @ x.T).sum()

    small = jax.jit(one_pass).lower(np.ones((64, 4), np.float32))
    large = jax.jit(one_pass).lower(np.ones((8192, 512), np.float32))
    if jax.default_backend() == "cpu":
        assert compile_effort.compile_options(small) == compile_effort.CHEAP_COMPILE_OPTIONS
        assert compile_effort.compile_options(small, repeats=10**9) == {}
        # Many small operations (a gradient M-step, a forward-backward pass): no fusion emitters.
        assert (compile_effort.compile_options(large, small_ops=True)
                == compile_effort.SMALL_OPS_COMPILE_OPTIONS)
        assert compile_effort.compile_options(small, small_ops=True) == compile_effort.CHEAP_COMPILE_OPTIONS
    assert compile_effort.compile_options(large) == {}
    X = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
    X[:150] += 4
    model = jem.gaussian_mixture(2)
    fits = []
    for limit in (compile_effort.CHEAP_COMPILE_MAX_BYTES, 0):
        # Each fit compiles afresh: jaxem's table of compiled programs starts empty (the worker's
        # own comes back after the test).
        monkeypatch.setattr(programs, "_EXECUTABLES", type(programs._EXECUTABLES)())
        monkeypatch.setattr(compile_effort, "CHEAP_COMPILE_MAX_BYTES", limit)
        fits.append(jem.fit(model, X, key=jax.random.key(1), max_iter=40, tol=None))
    np.testing.assert_allclose(fits[0].history, fits[1].history, rtol=1e-5)
    np.testing.assert_allclose(fits[0].params["means"], fits[1].params["means"], rtol=1e-5, atol=1e-5)


def test_a_program_far_above_the_limit_is_not_costed_by_xla():
    """XLA's estimate of a program's bytes converts it to HLO anew (0.1-0.2 s of a custom model's
    first call). The module's ops counted in place come within 2x of that estimate, and where
    the count is far above the cheap-compile limit XLA is not asked; near or below it, it is."""
    def descent(x):
        def step(_, w):
            return w - 0.1 * jax.grad(lambda w: jnp.sum(jnp.log1p(jnp.exp(x @ w))))(w)
        return jax.lax.fori_loop(0, 5, step, jnp.zeros(x.shape[1], x.dtype))

    class Watched:
        def __init__(self, lowered):
            self.lowered, self.asked = lowered, 0

        def compiler_ir(self, dialect):
            return self.lowered.compiler_ir(dialect)

        def cost_analysis(self):
            self.asked += 1
            return self.lowered.cost_analysis()

    programs = {rows: Watched(jax.jit(descent).lower(np.ones((rows, 64), np.float32)))
                for rows in (64, 65536)}
    for watched in programs.values():
        cost = watched.lowered.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        assert 0.5 <= compile_effort._counted_bytes(watched.lowered) / cost["bytes accessed"] <= 2
    if jax.default_backend() != "cpu":
        return
    small, large = programs[64], programs[65536]
    # 37 MB a trip, 16 restarts one after another: 4.4x the limit.
    assert compile_effort.compile_options(large, repeats=16, small_ops=True) == (
        compile_effort.SMALL_OPS_COMPILE_OPTIONS)
    assert large.asked == 0
    assert compile_effort.compile_options(large, small_ops=True) == (
        compile_effort.CHEAP_COMPILE_OPTIONS)
    assert large.asked == 1
    assert compile_effort.compile_options(small) == compile_effort.CHEAP_COMPILE_OPTIONS
    assert small.asked == 1


def test_an_option_this_xla_does_not_know_is_left_out():
    """Compile options tune the effort (some are experimental flags a later jaxlib may drop): an
    unknown one is left out and the program compiles as the default would; a known option with a
    bad value still fails."""
    lowered = jax.jit(lambda x: x.sum() * 2).lower(np.ones(4, np.float32))
    options = dict(compile_effort.SMALL_OPS_COMPILE_OPTIONS, xla_cpu_no_such_option_here=True)
    compiled = _export_cache.compile_and_store(None, lowered, options)
    assert float(compiled(np.ones(4, np.float32))) == 8.0
    with pytest.raises(Exception, match="xla_backend_optimization_level"):
        _export_cache.compile_and_store(None, lowered, {"xla_backend_optimization_level": "high"})


def test_start_and_loop_programs_compile_side_by_side(monkeypatch):
    """A segmented fit lowers its loop program from the start program's declared output types
    while the start compiles, and compiles both in the compile threads: two compilations, not
    three (a weakly typed initial value, ``jnp.full``, would make the real state differ from the
    declared one), and the same answer bit for bit as compiling one after the other."""
    import threading

    from jaxem.core import programs

    model = laplace_mixture()
    X = np.random.default_rng(0).laplace(size=(400, 1)) + np.repeat([[-3.0], [3.0]], 200, 0)
    threads = []
    original = _export_cache.compile_and_store

    def compile_and_store(key, lowered, options=None):
        threads.append(threading.current_thread().name)
        return original(key, lowered, options)

    monkeypatch.setattr(_export_cache, "compile_and_store", compile_and_store)
    fits = []
    for side_by_side in (True, False):
        monkeypatch.setattr(programs, "_EXECUTABLES", type(programs._EXECUTABLES)())
        if not side_by_side:
            monkeypatch.setattr(programs, "_one_device", lambda dynamic: None)
        threads.clear()
        before = programs.counts()["compiled"]
        fits.append(jem.fit(model, X, key=jax.random.key(0), n_restarts=3, max_iter=30))
        assert programs.counts()["compiled"] == before + 1
        assert len(threads) == 2
        assert all(name.startswith("jaxem-compile") == side_by_side for name in threads), threads
    np.testing.assert_array_equal(fits[0].history, fits[1].history)
    for name in ("weights", "loc", "scale"):
        np.testing.assert_array_equal(fits[0].params[name], fits[1].params[name])
