"""Ctrl-C stops a long fit within a few seconds and keeps what it had: a Python fit raises
``jem.FitInterrupted`` carrying the best parameters so far, ``jaxem fit`` prints and saves them and
exits 130. Driven as a user would: SIGINT to a subprocess in the middle of the compiled loop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import jaxem as jem

ROOT = Path(__file__).resolve().parents[1]
# A fit that would run for minutes: overlapping components never reach a fixed point in 20,000
# iterations (about 1 ms each here), and tol=None switches the objective test off.
DATA = "np.random.default_rng(0).normal(size=(5000, 2)).astype(np.float32)"
MAX_ITER = 1_000_000
# Ctrl-C waits for the running segment (about 0.5 s), then the result is assembled and the
# process exits; the issue asks for 3 s on a shared 2-core machine.
STOP_SECONDS = 3.0

PYTHON_FIT = f"""
import json, warnings
import jax, numpy as np, jaxem as jem
warnings.simplefilter("ignore")
X = {DATA}
model = jem.gaussian_mixture(8)
kw = dict(key=jax.random.key(0), n_restarts=2, max_iter={MAX_ITER})
jem.fit(model, X, tol=0.5, **kw)  # compiles the same program: tol is traced
print("running", flush=True)
try:
    jem.fit(model, X, tol=None, **kw)
    print(json.dumps({{"finished": True}}))
except jem.FitInterrupted as stop:
    print("stopped", flush=True)
    r = stop.result
    best = r.best_restart
    print(json.dumps({{"n_iter": r.n_iter.tolist(), "ll": r.log_likelihood,
                      "interrupted": r.interrupted, "converged": r.converged.tolist(),
                      "recomputed": float(jem.log_likelihood(model, r.params, X)),
                      "history_last": float(r.history[best, r.n_iter[best] - 1]),
                      "history_next": float(r.history[best, r.n_iter[best]]),
                      "is_keyboard_interrupt": isinstance(stop, KeyboardInterrupt)}}))
"""


class _Collector:
    """Reads a pipe on a thread, so a progress bar's unterminated lines can be waited for."""

    def __init__(self, stream):
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for chunk in iter(lambda: stream.read(1), ""):
            self.text += chunk

    def wait_for(self, fragment: str, proc, timeout: float) -> float:
        """Wait until ``fragment`` was written; returns when it was seen (``time.monotonic``)."""
        deadline = time.monotonic() + timeout
        while fragment not in self.text:
            assert time.monotonic() < deadline, f"no {fragment!r} after {timeout} s: {self.text[-2000:]}"
            assert proc.poll() is None or fragment in self.text, \
                f"the process ended without {fragment!r}: {self.text[-2000:]}"
            time.sleep(0.02)
        return time.monotonic()

    def finish(self) -> str:
        self._thread.join(timeout=10)
        return self.text


def _interrupt(proc, out: _Collector, err: _Collector, stopped: _Collector, fragment: str):
    """SIGINT to ``proc``; the seconds until ``stopped`` showed ``fragment`` (the fit stopped;
    the process may then compile and print its report), its stdout and stderr."""
    time.sleep(1.0)  # well inside the loop, past the short first segment
    assert proc.poll() is None, err.text[-2000:]
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        seen = stopped.wait_for(fragment, proc, timeout=60)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return seen - sent, out.finish(), err.finish()


def _start(args) -> tuple[subprocess.Popen, _Collector, _Collector]:
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    return proc, _Collector(proc.stdout), _Collector(proc.stderr)


def test_ctrl_c_stops_a_python_fit_with_the_parameters_so_far():
    proc, out, err = _start([sys.executable, "-c", PYTHON_FIT])
    try:
        out.wait_for("running", proc, timeout=240)
        seconds, stdout, stderr = _interrupt(proc, out, err, out, "stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    report = json.loads(stdout.strip().splitlines()[-1])
    assert seconds < STOP_SECONDS, seconds
    assert report["interrupted"] and report["is_keyboard_interrupt"]
    n_iter = np.array(report["n_iter"])
    assert np.all((n_iter > 0) & (n_iter < MAX_ITER)), n_iter
    assert not any(report["converged"])
    # The parameters returned are those the reported log-likelihood was computed at, which is
    # the last entry of the history; the history stops there.
    assert report["recomputed"] == pytest.approx(report["ll"], rel=1e-5)
    assert report["history_last"] == report["ll"]
    assert np.isnan(report["history_next"])


def test_ctrl_c_stops_jaxem_fit_prints_and_saves_what_it_had(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data.csv"
    np.savetxt(data, rng.normal(size=(5000, 2)), delimiter=",", header="a,b", comments="")
    model_file = tmp_path / "model.npz"
    proc, out, err = _start([sys.executable, "-m", "jaxem", "fit", data, "-k", "8", "-r", "2",
                             "--max-iter", str(MAX_ITER), "--set", "tol=None", "--set",
                             "verbose=2", "--out", model_file])
    try:
        # The progress bar shows once the loop has run for a second.
        err.wait_for(f"/{MAX_ITER}", proc, timeout=240)
        seconds, stdout, stderr = _interrupt(proc, out, err, err, "jaxem: interrupted")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert seconds < STOP_SECONDS, seconds
    assert "INTERRUPTED after" in stdout and "jaxem: interrupted" in stderr
    assert "Traceback" not in stderr
    est = jem.load(model_file)
    assert not est.converged_
    assert 0 < est.n_iter_ < MAX_ITER
    assert np.all(np.isfinite(est.means_)) and np.isclose(est.weights_.sum(), 1.0, rtol=1e-5)


def test_ctrl_c_during_online_and_chunked_fits_keeps_the_steps_done():
    X = np.random.default_rng(0).normal(size=(2000, 2)).astype(np.float32)

    def ctrl_c_at(n):
        def progress(step, *_):
            if step == n:
                raise KeyboardInterrupt
        return progress

    import jax

    with pytest.raises(jem.FitInterrupted) as stop:
        jem.fit_online(jem.gaussian_mixture(2), X, batch_size=100, n_epochs=5,
                       key=jax.random.key(0), progress=ctrl_c_at(7))
    assert stop.value.result.interrupted and stop.value.result.n_steps == 7
    assert np.all(np.isfinite(stop.value.result.params["means"]))
    with pytest.raises(jem.FitInterrupted) as stop:
        jem.fit_chunked(jem.gaussian_mixture(2), X, chunk_size=500, max_iter=50, tol=None,
                        key=jax.random.key(0), progress=ctrl_c_at(4))
    result = stop.value.result
    assert result.interrupted and result.n_iter[0] == 4 and not result.converged[0]
    assert result.log_likelihood == pytest.approx(
        float(jem.log_likelihood(jem.gaussian_mixture(2), result.params, X)), rel=1e-5)
