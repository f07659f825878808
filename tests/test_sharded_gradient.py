"""Gradient M-steps with the data axis sharded over 4 CPU devices equal single-device ones.

As in test_sharded.py, XLA fixes the number of host devices when JAX starts, so the fits run in
a subprocess started with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` that prints the
largest relative differences as JSON. Two paths, one subprocess each (so that ``pytest -n``
runs them side by side): the in-memory fit's gradient M-step (the default L-BFGS, its line
search included) with ``devices="all"``, and the chunked gradient M-step (each optimiser step
one pass over the chunks; Adam and SGD) with every chunk split over the devices.
"""

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

COMMON = """
    import faulthandler, json, sys
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)  # a hang reports where it is
    import jax, numpy as np, optax
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, sys.argv[1])
    import jaxem as jem
    from jaxem.core import programs
    from conftest import max_relative_difference as rel, three_blobs

    out = {"devices": len(jax.devices())}
    X = three_blobs(501).astype(np.float64)
    weights = np.random.default_rng(0).uniform(0.5, 2.0, X.shape[0])
    model = jem.gaussian_mixture(3, "diag", init="random_from_data")   # restarts start apart
"""

IN_MEMORY = """
    kw = dict(key=jax.random.key(1), n_restarts=2, max_iter=6, tol=None, sample_weight=weights,
              m_step="gradient", m_step_iters=5)
    one = jem.fit(model, X, **kw)
    four = jem.fit(model, X, devices="all", **kw)
    executable = next(reversed(programs._EXECUTABLES.values()))
    out["all_reduce"] = "all-reduce" in executable.as_text()
    out["diff"] = rel((one.history, one.all_params), (four.history, four.all_params))
    out["climbed"] = bool(np.all(one.history[:, -1] > one.initial_log_likelihood + 1.0))
    out["restarts_apart"] = bool(abs(one.initial_log_likelihood[0] - one.initial_log_likelihood[1]) > 1.0)
    print(json.dumps(out))
"""

# Adam, as users run it, and plain SGD: Adam divides each step by the gradient's size, so a
# gradient wrong by a constant factor shows in its steps only through eps; SGD's step is the
# gradient itself.
CHUNKED = """
    start = jax.jit(model.init)(jax.random.key(7), X)
    for name, optimizer in (("adam", optax.adam(1e-2)), ("sgd", optax.sgd(1e-4))):
        kw = dict(init_params=start, max_iter=6, tol=None, sample_weight=weights,
                  m_step="gradient", optimizer=optimizer, m_step_iters=4)
        one = jem.fit_chunked(model, X, chunk_size=128, **kw)
        four = jem.fit_chunked(model, X, chunk_size=128, devices="all", **kw)
        out[name] = rel((one.history, one.params), (four.history, four.params))
        out[name + "_climbed"] = bool(one.history[0, -1] > one.initial_log_likelihood[0] + 0.05)
        out[name + "_iters"] = int(four.n_iter[0])
    print(json.dumps(out))
"""

HANG_SECONDS = 240


def _run_script(script: Path, tests: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(tests), PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(script), str(tests.parent)], env=env,
                          capture_output=True, text=True, timeout=2 * HANG_SECONDS)


def _four_devices(tmp_path, body: str) -> dict:
    tests = Path(__file__).parent
    script = tmp_path / "sharded_gradient.py"
    script.write_text(textwrap.dedent(COMMON + body).replace("HANG_SECONDS", str(HANG_SECONDS)))
    proc = _run_script(script, tests)
    if proc.returncode != 0 and "Timeout (0:" in proc.stderr:   # see test_sharded.py
        warnings.warn(f"4-device script hung; ran it again. Where it hung:\n{proc.stderr[-3000:]}",
                      stacklevel=2)
        proc = _run_script(script, tests)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    return out


def test_in_memory_gradient_m_step_on_four_devices_equals_one(tmp_path):
    """L-BFGS M-steps (the in-memory default) over rows split on 4 devices."""
    out = _four_devices(tmp_path, IN_MEMORY)
    assert out["all_reduce"], "the sharded fit's program has no all-reduce: it did not shard"
    assert out["climbed"] and out["restarts_apart"], out
    # Same sums in another order: float64 round-off, through a few optimiser steps.
    assert out["diff"] < 1e-8, out


def test_chunked_gradient_m_step_on_four_devices_equals_one(tmp_path):
    """Each optimiser step of the chunked gradient M-step is one pass over chunks split on 4
    devices: it must take the single-device steps (test_chunked.py checks that those equal the
    in-memory fit's)."""
    out = _four_devices(tmp_path, CHUNKED)
    for name in ("adam", "sgd"):
        assert out[name + "_climbed"] and out[name + "_iters"] == 6, out
    for name in ("sgd", "adam"):
        assert out[name] < 1e-8, (name, out)
