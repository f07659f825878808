"""The ``jaxem`` command line and the bundled Old Faithful data."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

import jaxem as jem
from jaxem.cli import main
from jaxem.datasets import load_old_faithful

NUMBER = r"(-?\d+(?:\.\d+)?)"


def test_load_old_faithful():
    X, names = load_old_faithful()
    assert X.shape == (272, 2)
    assert X.dtype == np.float64
    assert names == ["eruptions", "waiting"]
    assert np.isfinite(X).all()
    # eruption durations are a few minutes; waiting times tens of minutes
    assert 1.5 < X[:, 0].min() and X[:, 0].max() < 5.5
    assert 40 < X[:, 1].min() and X[:, 1].max() < 100


def test_demo_prints_the_fit_summary(capsys):
    assert main(["demo", "--restarts", "2"]) == 0
    out = capsys.readouterr().out

    match = re.search(rf"log-likelihood\s+{NUMBER} total, {NUMBER} per sample", out)
    assert match, out
    total, per_sample = float(match.group(1)), float(match.group(2))
    bic_match = re.search(rf"BIC\s+{NUMBER}", out)
    assert bic_match, out
    bic = float(bic_match.group(1))

    X, _ = load_old_faithful()
    gm = jem.GaussianMixture(2, n_restarts=2, random_state=0).fit(X)
    assert abs(per_sample - gm.score(X)) < 1e-3
    assert abs(total - gm.score(X) * X.shape[0]) < 1e-3 * X.shape[0]
    assert abs(bic - gm.bic(X)) < 1e-2

    assert "272 samples x 2 features" in out
    assert "covariance_type='full'" in out
    assert "includes JIT compilation" in out
    assert re.search(r"converged\s+(yes|no)", out)
    # one table row per component: index, weight, one mean per feature
    rows = re.findall(rf"^\s+(\d)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s*$", out, flags=re.M)
    assert [int(r[0]) for r in rows] == [0, 1]
    assert sum(float(r[1]) for r in rows) == pytest.approx(1.0, abs=1e-3)


def test_bad_option_is_a_one_line_usage_error(capsys):
    assert main(["demo", "--components", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("jaxem: error:") and "--components" in lines[0]


def test_missing_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_failure_is_a_one_line_error_with_status_1(capsys):
    # more components than the 272 rows: rejected by the estimator before any compute
    assert main(["demo", "--components", "300", "--restarts", "1"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("jaxem: error:") and "300" in lines[0]


def test_help_exits_zero(capsys):
    assert main(["demo", "--help"]) == 0
    assert "--components" in capsys.readouterr().out


def test_python_dash_m_reports_usage_errors_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "jaxem", "demo", "--components", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxem: error:")


def test_plot_without_matplotlib_says_how_to_install(capsys, monkeypatch, tmp_path):
    # None in sys.modules makes the import fail, even where an earlier test imported matplotlib
    for name in ["matplotlib", *(m for m in sys.modules if m.startswith("matplotlib."))]:
        monkeypatch.setitem(sys.modules, name, None)
    target = tmp_path / "fit.png"
    assert main(["demo", "--restarts", "2", "--plot", str(target)]) == 0
    captured = capsys.readouterr()
    assert "pip install 'jaxem[plot]'" in captured.err
    assert "per sample" in captured.out
    assert not target.exists()


def test_plot_is_written_when_matplotlib_is_installed(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "fit.png"
    assert main(["demo", "--restarts", "2", "--plot", str(target)]) == 0
    assert target.stat().st_size > 0
    assert "plot written to" in capsys.readouterr().out


def test_plot_into_missing_folder_fails_before_fitting(capsys, tmp_path):
    assert main(["demo", "--plot", str(tmp_path / "nope" / "fit.png")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "does not exist" in captured.err
