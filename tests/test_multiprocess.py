"""Two real processes on 127.0.0.1 (``jax.distributed``, CPU, gloo collectives), each holding half
of the rows: ``jem.fit`` and ``jem.fit_chunked`` with ``devices="all"`` give every process the
parameters of one process fitting all the rows; processes that make different calls fail together
with one message. Every subprocess runs under a timeout, so a stuck collective fails the test
instead of hanging it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import three_blobs

import jaxem as jem

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240

WORKER = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid, port = int(sys.argv[1]), sys.argv[2]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                           initialization_timeout=60)
import numpy as np, jaxem as jem
from conftest import three_blobs
X = three_blobs(601)
mine = X[:250] if pid == 0 else X[250:]          # unequal shares
model = jem.gaussian_mixture(3)
# Jitted: the k-means initialiser run op by op compiles about 120 small programs.
init = jax.tree.map(np.asarray, jax.jit(model.init)(jax.random.key(0), jax.numpy.asarray(X)))
kw = dict(key=jax.random.key(0), max_iter=15, tol=None, devices="all")
out = {}
fitted = jem.fit(model, mine, init_params=init, **kw)
out["fit"] = {"means": np.asarray(fitted.params["means"]).tolist(), "history": fitted.history[0].tolist()}
out["default_init"] = np.asarray(jem.fit(model, mine, **kw).params["means"]).tolist()
chunked = jem.fit_chunked(model, mine, init_params=init, chunk_size=64, **kw)
out["chunked"] = {"means": np.asarray(chunked.params["means"]).tolist(),
                  "history": chunked.history[0].tolist()}
try:
    jem.fit(model, mine, init_params=init, **dict(kw, max_iter=15 + pid))
    out["disagree"] = None
except ValueError as err:
    out["disagree"] = str(err)
# Ctrl-C reaches process 1 only: both stop at the same iteration and save their own checkpoint;
# resumed, both end where a fit never stopped ends.
import contextlib
from jaxem.core import programs
path = sys.argv[3]
unpatched = programs._interrupt_flag
@contextlib.contextmanager
def pressed():
    yield lambda: pid == 1
# The chunked fit's host loop hears Ctrl-C at the end of an iteration.
for prefix, fit, extra in (("", jem.fit, dict(max_iter=40)),
                           ("chunked_", jem.fit_chunked, dict(max_iter=6, chunk_size=64))):
    settings = dict(kw, init_params=init, **extra)
    full = fit(model, mine, **settings)
    file = path.replace("fit.npz", "chunked.npz") if prefix else path
    programs._interrupt_flag = pressed
    try:
        fit(model, mine, checkpoint=file, **settings)
        out[prefix + "stopped_at"] = None
    except jem.FitInterrupted as stop:
        out[prefix + "stopped_at"] = int(stop.result.n_iter.max())
    programs._interrupt_flag = unpatched
    resumed = fit(model, mine, checkpoint=file, resume=True, **settings)
    out[prefix + "resumed"] = {"history": resumed.history[0].tolist(),
                               "full": full.history[0].tolist(),
                               "means": np.asarray(resumed.params["means"]).tolist(),
                               "full_means": np.asarray(full.params["means"]).tolist()}
print("RESULT " + json.dumps(out), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="module")
def two_processes(checkpoint_folder):
    port = _free_port()
    path = str(checkpoint_folder / "fit.npz")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(pid), str(port), path],
                              cwd=ROOT / "tests", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
             for pid in (0, 1)]
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, stderr[-3000:]
            line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))
            outputs.append(json.loads(line[len("RESULT "):]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return outputs


@pytest.fixture(scope="module")
def single():
    X = three_blobs(601)
    model = jem.gaussian_mixture(3)
    init = jax.jit(model.init)(jax.random.key(0), jax.numpy.asarray(X))
    kw = dict(key=jax.random.key(0), max_iter=15, tol=None)
    return jem.fit(model, X, init_params=init, **kw)


def _close(a, b, rel=1e-5):
    a, b = np.asarray(a), np.asarray(b)
    assert np.max(np.abs(a - b)) <= rel * np.max(np.abs(b)), np.max(np.abs(a - b))


@pytest.mark.parametrize("runner", ["fit", "chunked"])
def test_each_process_with_half_the_rows_gets_the_all_rows_fit(two_processes, single, runner):
    for out in two_processes:
        _close(out[runner]["means"], single.params["means"])
        _close(out[runner]["history"], single.history[0])
    assert two_processes[0][runner] == two_processes[1][runner]


def test_processes_start_from_the_same_parameters(two_processes):
    assert two_processes[0]["default_init"] == two_processes[1]["default_init"]


def test_processes_that_disagree_fail_together(two_processes):
    for out in two_processes:
        assert out["disagree"] is not None and "disagree on its settings" in out["disagree"]


@pytest.mark.parametrize("runner, max_iter", [("", 40), ("chunked_", 6)])
def test_ctrl_c_in_one_process_stops_both_and_their_checkpoints_resume(two_processes,
                                                                       checkpoint_folder,
                                                                       runner, max_iter):
    stops = [out[runner + "stopped_at"] for out in two_processes]
    assert stops[0] is not None and stops[0] == stops[1] < max_iter
    stem = "chunked" if runner else "fit"
    assert {f"{stem}.process0of2.npz", f"{stem}.process1of2.npz"} <= {
        p.name for p in checkpoint_folder.iterdir()}
    for out in two_processes:
        resumed = out[runner + "resumed"]
        _close(resumed["history"], resumed["full"], rel=1e-6)
        _close(resumed["means"], resumed["full_means"])
