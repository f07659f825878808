"""Checkpoint and resume: a fit killed (SIGKILL) or interrupted (Ctrl-C) and resumed from its
checkpoint ends with the uninterrupted fit's result, for the in-memory, HMM, chunked and online fits, the
estimators and the command line; a checkpoint of other data or settings, or a damaged one, is
refused with a message naming the file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxem as jem
from jaxem.cli import main
from jaxem.core import programs

ROOT = Path(__file__).resolve().parents[1]
X = np.random.default_rng(0).normal(size=(3000, 2)).astype(np.float32)
KW = dict(key=jax.random.key(0), n_restarts=2, tol=None)

KILLED_FIT = """
import sys, warnings
import jax, numpy as np, jaxem as jem
warnings.simplefilter("ignore")
X = np.random.default_rng(0).normal(size=(3000, 2)).astype(np.float32)[:600]
jem.fit(jem.gaussian_mixture(4), X, key=jax.random.key(0), n_restarts=2, tol=None,
        max_iter=int(sys.argv[2]), checkpoint=jem.Checkpoint(sys.argv[1], every_iterations=100))
"""


def _saved_iterations(path) -> int:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("meta.json"))["trips"] - 1


def _same(a: jem.FitResult, b: jem.FitResult) -> None:
    np.testing.assert_array_equal(a.n_iter, b.n_iter)
    np.testing.assert_allclose(a.history, b.history, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(a.all_params), jax.tree.leaves(b.all_params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    assert a.log_likelihood == pytest.approx(b.log_likelihood, rel=1e-6)


def test_killed_fit_resumes_to_the_uninterrupted_result(tmp_path):
    path, max_iter = tmp_path / "fit.ckpt.npz", 3000
    proc = subprocess.Popen([sys.executable, "-c", KILLED_FIT, str(path), str(max_iter)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not path.exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = _saved_iterations(path)
    assert 0 < killed_at < max_iter and killed_at % 100 == 0
    model, rows = jem.gaussian_mixture(4), X[:600]
    resumed = jem.fit(model, rows, max_iter=max_iter, checkpoint=path, resume=True, **KW)
    assert _saved_iterations(path) == max_iter
    _same(resumed, jem.fit(model, rows, max_iter=max_iter, **KW))


@contextlib.contextmanager
def _ctrl_c_after_first_segment(monkeypatch):
    """As if Ctrl-C came during the first segment of the compiled loop."""
    @contextlib.contextmanager
    def pressed():
        yield lambda: True

    monkeypatch.setattr(programs, "_interrupt_flag", pressed)
    yield
    monkeypatch.undo()


def test_interrupted_fit_saves_and_resumes(tmp_path, monkeypatch):
    path = tmp_path / "fit.npz"
    model = jem.gaussian_mixture(3)
    with _ctrl_c_after_first_segment(monkeypatch), pytest.raises(jem.FitInterrupted) as stop:
        jem.fit(model, X, max_iter=40, checkpoint=path, **KW)
    partial = stop.value.result
    assert partial.interrupted and not partial.converged.any()
    assert _saved_iterations(path) == partial.n_iter.max() == programs.FIRST_SEGMENT_TRIPS - 1
    resumed = jem.fit(model, X, max_iter=40, checkpoint=path, resume=True, **KW)
    _same(resumed, jem.fit(model, X, max_iter=40, **KW))
    # Resuming a finished fit returns its result at once.
    _same(jem.fit(model, X, max_iter=40, checkpoint=path, resume=True, **KW), resumed)


def test_hmm_fit_resumes(tmp_path, monkeypatch):
    path = tmp_path / "hmm.npz"
    hmm = jem.hmm.gaussian_hmm(2, covariance_type="diag")
    seq = np.concatenate([np.random.default_rng(1).normal(m, 1, size=(100, 2)) for m in (0, 3, 0, 3)])
    kw = dict(key=jax.random.key(1), n_restarts=2, max_iter=30, tol=None)
    with _ctrl_c_after_first_segment(monkeypatch), pytest.raises(jem.FitInterrupted):
        jem.hmm.fit(hmm, seq, checkpoint=path, **kw)
    _same(jem.hmm.fit(hmm, seq, checkpoint=path, resume=True, **kw), jem.hmm.fit(hmm, seq, **kw))


def test_chunked_fit_resumes(tmp_path):
    path = tmp_path / "chunked.npz"
    model = jem.gaussian_mixture(3)
    kw = dict(chunk_size=1024, max_iter=12, **KW)

    def ctrl_c_at_5(iteration, *_):
        if iteration == 5:
            raise KeyboardInterrupt

    with pytest.raises(jem.FitInterrupted) as stop:
        jem.fit_chunked(model, X, checkpoint=jem.Checkpoint(path, every_seconds=None),
                        progress=ctrl_c_at_5, **kw)
    assert stop.value.result.n_iter.max() == 5 and _saved_iterations(path) == 5
    resumed = jem.fit_chunked(model, X, checkpoint=path, resume=True, **kw)
    _same(resumed, jem.fit_chunked(model, X, **kw))


def test_estimator_keeps_parameters_so_far_and_resumes(tmp_path, monkeypatch):
    path = str(tmp_path / "gm.npz")
    make = lambda **kw: jem.GaussianMixture(3, max_iter=30, tol=None, random_state=0, **kw)  # noqa: E731
    gm = make(checkpoint=path)
    with _ctrl_c_after_first_segment(monkeypatch), pytest.raises(jem.FitInterrupted):
        gm.fit(X)
    assert not gm.converged_ and gm.n_iter_ == programs.FIRST_SEGMENT_TRIPS - 1
    assert np.all(np.isfinite(gm.predict_proba(X)))
    resumed = make(checkpoint=path, resume=True).fit(X)
    np.testing.assert_allclose(resumed.means_, make().fit(X).means_, rtol=1e-5, atol=1e-6)


def test_refused_checkpoints_name_the_file(tmp_path):
    path = tmp_path / "fit.npz"
    model = jem.gaussian_mixture(2)
    jem.fit(model, X, max_iter=5, checkpoint=path, **KW)
    with pytest.raises(ValueError, match=r"fit\.npz.*different data"):
        jem.fit(model, X + 1, max_iter=5, checkpoint=path, resume=True, **KW)
    with pytest.raises(ValueError, match=r"fit\.npz.*different settings"):
        jem.fit(model, X, max_iter=6, checkpoint=path, resume=True, **KW)
    with pytest.raises(ValueError, match=r"fit\.npz.*different model"):
        jem.fit(jem.gaussian_mixture(2, "diag"), X, max_iter=5, checkpoint=path, resume=True, **KW)
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ValueError, match=r"damaged\.npz.*damaged"):
        jem.fit(model, X, max_iter=5, checkpoint=damaged, resume=True, **KW)
    # A member holding a pickled object is refused, never unpickled.
    pickled = tmp_path / "pickled.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(pickled, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
        meta = json.loads(src.read("meta.json"))
    with zipfile.ZipFile(pickled, "a") as dst, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the duplicate member name is the point
        import io
        buffer = io.BytesIO()
        np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
        dst.writestr("leaf_00000.npy", buffer.getvalue())
    assert meta["format"] == "jaxem-checkpoint-v1"
    with pytest.raises(ValueError, match="pickled.npz"):
        jem.fit(model, X, max_iter=5, checkpoint=pickled, resume=True, **KW)
    with pytest.raises(ValueError, match="resume=True needs checkpoint"):
        jem.fit(model, X, resume=True, **KW)
    with pytest.raises(ValueError, match="folder"):
        jem.fit(model, X, checkpoint=tmp_path / "no" / "such.npz", **KW)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_command_line_checkpoint_and_resume(tmp_path, capsys):
    data = tmp_path / "data.csv"
    np.savetxt(data, X[:500], delimiter=",", header="a,b", comments="")
    ckpt = tmp_path / "fit.ckpt"
    args = ["fit", str(data), "-k", "2", "-r", "1", "-q", "--max-iter", "20", "--checkpoint", str(ckpt)]
    assert main(args) == 0 and ckpt.exists()
    first = capsys.readouterr().out
    assert main(args + ["--resume"]) == 0
    def fitted(out):  # the lines that report the fit (not the options or the time)
        return [line for line in out.splitlines()
                if line.strip().startswith(("log-likelihood", "BIC", "converged", "0 ", "1 "))]

    assert fitted(capsys.readouterr().out) == fitted(first) and len(fitted(first)) == 5
    assert main(["fit", str(data), "-k", "2", "--resume"]) == 2
    assert "--resume needs --checkpoint" in capsys.readouterr().err


# 3000 rows in minibatches of 400: 8 per epoch (the last one short), 20 steps over 2.5 epochs.
ONLINE = dict(batch_size=400, n_epochs=2.5, key=jax.random.key(3))


def _online_source(kind, tmp_path):
    if kind == "npy":
        np.save(tmp_path / "X.npy", X)
        return str(tmp_path / "X.npy")
    if kind == "callable":  # pieces of 500 rows: 400 + 100 per piece, 12 minibatches an epoch
        return lambda: (X[i:i + 500] for i in range(0, len(X), 500))
    return X


def _same_online(a, b) -> None:
    # Exact: the resumed fit runs the same compiled step on the bit-identical saved state.
    assert a.n_steps == b.n_steps
    np.testing.assert_array_equal(a.history, b.history)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("kind", ["array", "callable", "npy"])
def test_online_fit_interrupted_or_killed_resumes(tmp_path, kind):
    """Ctrl-C at step 13 (in the second epoch) saves; so does every 5th step, and the file as a
    kill at step 12 leaves it (step 10) resumes too: both end as the uninterrupted fit."""
    path, killed = tmp_path / "online.npz", tmp_path / "killed.npz"
    model, source = jem.gaussian_mixture(3), _online_source(kind, tmp_path)

    def ctrl_c_at_13(step, _):
        if step == 12:
            killed.write_bytes(path.read_bytes())
        if step == 13:
            raise KeyboardInterrupt

    with pytest.raises(jem.FitInterrupted) as stop:
        jem.fit_online(model, source, progress=ctrl_c_at_13, **ONLINE,
                       checkpoint=jem.Checkpoint(path, every_seconds=None, every_iterations=5))
    assert stop.value.result.n_steps == 13 and _saved_iterations(path) == 13
    assert _saved_iterations(killed) == 10
    whole = jem.fit_online(model, source, **ONLINE)
    assert whole.n_steps == 20
    # max_seconds is not part of the fingerprint: a resumed fit may get a new time budget.
    _same_online(jem.fit_online(model, source, checkpoint=path, resume=True, max_seconds=1e6,
                                **ONLINE), whole)
    assert _saved_iterations(path) == 20
    _same_online(jem.fit_online(model, source, checkpoint=killed, resume=True, **ONLINE), whole)
    # Resuming a finished fit returns its result at once.
    _same_online(jem.fit_online(model, source, checkpoint=path, resume=True, **ONLINE), whole)


def test_online_resume_of_other_data_or_settings_is_refused(tmp_path):
    path = tmp_path / "online.npz"
    model = jem.gaussian_mixture(3)
    jem.fit_online(model, X, max_steps=3, checkpoint=path, **ONLINE)
    with pytest.raises(ValueError, match=r"online\.npz.*different data"):
        jem.fit_online(model, X + 1, max_steps=3, checkpoint=path, resume=True, **ONLINE)
    with pytest.raises(ValueError, match=r"online\.npz.*different settings"):
        jem.fit_online(model, X, max_steps=3, kappa=0.7, checkpoint=path, resume=True, **ONLINE)
    with pytest.raises(ValueError, match=r"online\.npz.*different model"):
        jem.fit_online(jem.gaussian_mixture(3, "diag"), X, max_steps=3, checkpoint=path,
                       resume=True, **ONLINE)
    with pytest.raises(ValueError, match="resume=True needs checkpoint"):
        jem.fit_online(model, X, resume=True, **ONLINE)
