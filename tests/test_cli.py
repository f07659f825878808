"""The ``jaxem`` command line, driven in a subprocess as a user would, and in-process for details."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest

import jaxem as jem
from jaxem import io as jio
from jaxem.cli import _save_plot, available_models, main
from jaxem.datasets import load_old_faithful

NUMBER = r"(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def jaxem_cli(*args, cwd=None):
    """Run ``python -m jaxem ARGS`` (what the ``jaxem`` console script runs)."""
    return subprocess.run([sys.executable, "-m", "jaxem", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def in_process(capsys, *args):
    """``jaxem.cli.main(ARGS)`` in this process, as a ``CompletedProcess`` (what ``jaxem_cli``
    returns): the same code as the console script without a fresh interpreter to start."""
    status = main(list(map(str, args)))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, captured.out, captured.err)


def assert_one_line_error(proc, *fragments, status=2):
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("jaxem: error:")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_png(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    height, width = matplotlib.image.imread(path).shape[:2]
    assert height > 100 and width > 100


def read_number(label, out):
    match = re.search(rf"{label}\s+{NUMBER}", out)
    assert match, out
    return float(match.group(1))


@pytest.fixture(scope="module")
def blobs_csv(tmp_path_factory):
    """Two well separated 2-D clusters of 60 rows each, as a CSV with a header."""
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(0.0, 1.0, (60, 2)), rng.normal(6.0, 1.0, (60, 2))]
    path = tmp_path_factory.mktemp("cli") / "blobs.csv"
    np.savetxt(path, X, delimiter=",", header="height,width", comments="", fmt="%.6f")
    return path, jio.read_table(path)[0]


def test_load_old_faithful():
    X, names = load_old_faithful()
    assert X.shape == (272, 2) and X.dtype == np.float64
    assert names == ["eruptions", "waiting"]
    # eruption durations are a few minutes; waiting times tens of minutes
    assert 1.5 < X[:, 0].min() and X[:, 0].max() < 5.5
    assert 40 < X[:, 1].min() and X[:, 1].max() < 100


def test_console_script_is_installed():
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts.get("jaxem") == "jaxem.cli:main"


def test_demo_prints_the_fit_summary_and_draws_it(tmp_path):
    proc = jaxem_cli("demo", "--restarts", "2", "--plot", tmp_path / "demo.png")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    match = re.search(rf"log-likelihood\s+{NUMBER} total, {NUMBER} per sample", out)
    assert match, out
    total, per_sample = float(match.group(1)), float(match.group(2))

    # scikit-learn as the oracle (no compile here): the same maximum of the likelihood
    from sklearn.mixture import GaussianMixture

    X, _ = load_old_faithful()
    sk = GaussianMixture(2, covariance_type="full", n_init=4, tol=1e-8, random_state=0).fit(X)
    assert per_sample == pytest.approx(sk.score(X), abs=1e-4)
    assert total == pytest.approx(per_sample * X.shape[0], abs=2e-3)
    assert read_number("BIC", out) == pytest.approx(sk.bic(X), abs=2e-2)
    assert read_number("AIC", out) == pytest.approx(sk.aic(X), abs=2e-2)
    assert "272 samples x 2 features (eruptions, waiting)" in out
    assert "covariance_type='full'" in out and re.search(r"s (compiling|loading the compiled)", out)
    assert re.search(r"converged\s+(yes|no)", out)
    # one table row per component: index, weight, one mean per feature, matching the oracle
    rows = re.findall(rf"^\s+(\d)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s*$", out, flags=re.M)
    assert [int(r[0]) for r in rows] == [0, 1]
    got = np.array([[float(v) for v in r[1:]] for r in rows])
    order = np.argsort(sk.means_[:, 0])
    got = got[np.argsort(got[:, 1])]
    assert got[:, 0] == pytest.approx(sk.weights_[order], abs=1e-3)
    assert got[:, 1:] == pytest.approx(sk.means_[order], abs=1e-2)
    assert_png(tmp_path / "demo.png")


def test_fit_then_predict_a_csv(blobs_csv, tmp_path, capsys):
    data, X = blobs_csv
    model = tmp_path / "model.npz"
    proc = jaxem_cli("fit", data, "--model", "gmm", "--components", "2", "--restarts", "2",
                     "--covariance", "diag", "--out", model, "--plot", tmp_path / "fit.png")
    assert proc.returncode == 0, proc.stderr
    assert "120 samples x 2 features (height, width)" in proc.stdout
    assert f"model saved to {model}" in proc.stdout
    assert_png(tmp_path / "fit.png")

    gm = jem.load(model)
    assert isinstance(gm, jem.GaussianMixture) and gm.covariance_type == "diag"
    assert read_number("BIC", proc.stdout) == pytest.approx(gm.bic(X), abs=1e-2)
    # the two clusters are found: one mean near (0, 0), one near (6, 6)
    assert np.sort(gm.means_[:, 0]) == pytest.approx([0.0, 6.0], abs=0.5)

    # In this process: a saved model in a new process is tests/test_io.py's.
    pred = in_process(capsys, "predict", model, data)
    assert pred.returncode == 0, pred.stderr
    lines = pred.stdout.strip().splitlines()
    assert lines[0] == "label,p0,p1" and len(lines) == 1 + X.shape[0]
    table = np.loadtxt(lines[1:], delimiter=",")
    proba = gm.predict_proba(X)
    assert np.array_equal(table[:, 1:].astype(proba.dtype), proba)  # 9 digits read back exactly
    assert np.array_equal(table[:, 0], gm.predict(X))


def test_select_prints_the_bic_table(blobs_csv, capsys):
    data, X = blobs_csv
    proc = in_process(capsys, "select", data, "--ks", "1-2", "--restarts", "1")
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(rf"^\s*(\d+)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+(yes|no)", proc.stdout, re.M)
    assert [int(r[0]) for r in rows] == [1, 2]
    ll, bic, aic = (np.array([float(r[i]) for r in rows]) for i in (1, 2, 3))
    n_params = np.array([5, 11])  # full covariance, D=2: K*(2 + 3) + K - 1
    assert bic == pytest.approx(-2 * ll + n_params * np.log(X.shape[0]), abs=1e-2)
    assert aic == pytest.approx(-2 * ll + 2 * n_params, abs=1e-2)
    assert "best K by BIC: 2" in proc.stdout


def test_missing_file_is_a_one_line_error(tmp_path):
    # In a subprocess, as the other errors would be: no traceback reaches the user.
    assert_one_line_error(jaxem_cli("fit", tmp_path / "nope.csv", "-k", "2"), "nope.csv",
                          "no such file")


def test_non_numeric_column_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "iris.csv"
    path.write_text("length,width,species\n5.1,3.5,setosa\n4.9,3.0,setosa\n")
    assert_one_line_error(in_process(capsys, "fit", path, "-k", "2"), "column 'species'", "line 2",
                          "'setosa'")


def test_more_components_than_rows_is_a_one_line_error(blobs_csv, capsys):
    assert_one_line_error(in_process(capsys, "fit", blobs_csv[0], "-k", "500"), "500 components",
                          "120 rows")


def test_usage_errors_are_one_line_with_status_2(blobs_csv, tmp_path, capsys):
    data = str(blobs_csv[0])
    regression = str(tmp_path / "regression.npz")
    jem.MixtureOfLinearRegressions(2).save(regression)  # its posterior needs y as well as X
    cases = [
        (["demo", "--components", "0"], "--components"),
        ([], "required"),
        (["fit", data, "-k", "2", "--model", "nosuch"], "invalid choice"),
        (["fit", data, "-k", "2", "--model", "bernoulli", "--covariance", "full"],
         "BernoulliMixture does not take --covariance"),
        (["fit", data, "-k", "2", "--set", "nosuch=1"], "does not take nosuch"),
        (["fit", data, "-k", "2", "--lengths", "60,60"], "--lengths applies to HMMs"),
        (["fit", data, "-k", "2", "--columns", "depth"], "no column 'depth'"),
        (["fit", data, "-k", "2", "--plot", str(tmp_path / "no" / "f.png")], "does not exist"),
        (["select", data, "--ks", "3-1"], "--ks"),
        (["select", data, "--ks", "1,200"], "200 components"),
        (["predict", data, data], "not a jaxem model file"),
        (["predict", regression, data], "needs 'y' besides X"),
    ]
    for argv, fragment in cases:
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == "", argv
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("jaxem: error:") and fragment in lines[0], \
            (argv, captured.err)


def test_values_a_family_cannot_take_are_named_by_row_and_column(tmp_path, capsys):
    path = tmp_path / "counts.tsv"
    path.write_text("a\tb\n0\t1\n1\t3\n")
    assert main(["fit", str(path), "-k", "1", "--model", "bernoulli"]) == 2
    err = capsys.readouterr().err
    assert "0 or 1" in err and "row 1, column 1" in err


def test_help_and_version_exit_zero(capsys):
    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    for name in available_models():
        assert name in out
    assert main(["--version"]) == 0
    assert jem.__version__ in capsys.readouterr().out


def test_plot_without_matplotlib_says_how_to_install(capsys, monkeypatch, tmp_path):
    # None in sys.modules makes the import fail, even where an earlier test imported matplotlib
    for name in ["matplotlib", *(m for m in sys.modules if m.startswith("matplotlib."))]:
        monkeypatch.setitem(sys.modules, name, None)
    target = tmp_path / "fit.png"
    # the figure is the first thing made, so no fitted estimator is needed to reach the note
    _save_plot(object(), np.zeros((3, 2)), ["a", "b"], str(target), {})
    captured = capsys.readouterr()
    assert captured.err.strip() == ("note: --plot skipped, matplotlib is not installed; "
                                    "pip install 'jaxem[plot]'")
    assert not target.exists()


@pytest.mark.parametrize("family", [f for f in ("poisson", "categorical") if f in available_models()])
def test_count_families_fit_and_save(family, tmp_path, capsys):
    rng = np.random.default_rng(1)
    z = rng.choice(2, size=80)
    X = (rng.poisson(np.where(z, 8.0, 1.0)[:, None], size=(80, 2)) if family == "poisson"
         else np.where(z[:, None], rng.integers(0, 2, (80, 2)), rng.integers(2, 4, (80, 2))))
    data = tmp_path / "counts.npy"
    np.save(data, X.astype(np.int64))
    assert main(["fit", str(data), "--model", family, "-k", "2", "-r", "2", "-q",
                 "--out", str(tmp_path / "m.npz")]) == 0
    out = capsys.readouterr().out
    est = jem.load(tmp_path / "m.npz")
    assert type(est) is available_models()[family]
    assert read_number("BIC", out) == pytest.approx(est.bic(X.astype(float)), abs=1e-2)


def test_hmm_fit_predict_with_sequence_lengths(tmp_path, capsys):
    rng = np.random.default_rng(2)
    states = np.tile(np.repeat([0, 1], 15), 4)  # two sequences of 60 steps, regimes of 15
    data = tmp_path / "seq.csv"
    np.savetxt(data, rng.normal(np.where(states, 3.0, -3.0), 1.0)[:, None], header="level",
               comments="", fmt="%.6f")
    X = jio.read_table(data)[0]
    model, plot_file = tmp_path / "hmm.npz", tmp_path / "hmm.png"
    assert main(["fit", str(data), "--model", "hmm", "-k", "2", "-r", "2", "-q", "--lengths",
                 "60,60", "--out", str(model), "--plot", str(plot_file)]) == 0
    out = capsys.readouterr().out
    hmm = jem.load(model)
    assert type(hmm) is available_models()["hmm"]
    lengths = np.array([60, 60])
    # HMM scores are totals over the sequences; the summary prints them as such
    assert read_number("log-likelihood", out) == pytest.approx(hmm.score(X, lengths), abs=1e-2)
    assert read_number("BIC", out) == pytest.approx(hmm.bic(X, lengths), abs=1e-2)
    assert_png(plot_file)

    assert main(["predict", str(model), str(data), "--lengths", "60,60"]) == 0
    table = np.loadtxt(capsys.readouterr().out.splitlines()[1:], delimiter=",")
    assert np.array_equal(table[:, 0], hmm.predict(X, lengths))  # the Viterbi path
    agreement = np.mean(table[:, 0] == states)
    assert max(agreement, 1 - agreement) > 0.95


def test_new_hmm_families_on_the_command_line(tmp_path, capsys):
    models = available_models()
    assert models["gmm-hmm"] is jem.GMMHMM and models["ar-hmm"] is jem.LinearAutoregressiveHMM
    assert models["multinomial-hmm"] is jem.MultinomialHMM
    rng = np.random.default_rng(3)
    states = np.tile(np.repeat([0, 1], 20), 3)
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]])
    counts = np.array([rng.multinomial(5, probs[s]) for s in states])
    data, model = tmp_path / "counts.csv", tmp_path / "m.npz"
    np.savetxt(data, counts, header="a,b,c", comments="", fmt="%d", delimiter=",")
    assert main(["fit", str(data), "--model", "multinomial-hmm", "-k", "2", "-r", "2", "-q",
                 "--lengths", "60,60", "--set", "n_trials=5", "--out", str(model)]) == 0
    out = capsys.readouterr().out
    est = jem.load(model)
    assert type(est) is jem.MultinomialHMM and est.n_trials == 5
    X, lengths = jio.read_table(data)[0], np.array([60, 60])
    assert read_number("BIC", out) == pytest.approx(est.bic(X, lengths), abs=1e-2)
    agreement = np.mean(est.predict(X, lengths) == states)
    assert max(agreement, 1 - agreement) > 0.9
    # The autoregressive HMM has no covariance type to choose: a usage error before any fit.
    assert main(["fit", str(data), "--model", "ar-hmm", "-k", "2", "--covariance", "diag"]) == 2
    assert "does not take --covariance" in capsys.readouterr().err
