"""The command line's input: missing values where the family takes them, the field separator
detected (or named in the message), and the compile note only when a fit compiled."""

import re

import numpy as np
import pytest

import jaxem as jem
from jaxem.app import io as jio
from jaxem.cli import main


def _table(rows, sep=",") -> str:
    return "\n".join(sep.join(str(v) for v in row) for row in rows) + "\n"


@pytest.fixture
def blobs():
    rng = np.random.default_rng(0)
    return np.r_[rng.normal(0, 1, (40, 2)), rng.normal(6, 1, (40, 2))]


@pytest.mark.parametrize("sep", [";", "|", "\t", ","])
def test_the_separator_is_detected(tmp_path, blobs, sep):
    path = tmp_path / "data.csv"  # a .csv name whatever the separator, as files often come
    path.write_text(_table([["a", "b"], *blobs.round(6).tolist()], sep))
    X, names = jio.read_table(path)
    assert names == ["a", "b"]
    np.testing.assert_allclose(X, blobs.round(6))


def test_an_unsplit_cell_names_the_separator_it_may_be(tmp_path):
    path = tmp_path / "mixed.csv"  # semicolons in one line only: no separator splits every line
    path.write_text("a,b\n1,2\n3;4\n")
    with pytest.raises(ValueError, match="line 3 has 1 fields"):
        jio.read_table(path)
    path.write_text("a,b\n1,2\n3;4,5\n")
    with pytest.raises(ValueError, match="holds '3;4'.*is it semicolon-separated"):
        jio.read_table(path)


def test_missing_values_reach_the_gaussian_mixture_and_are_refused_elsewhere(tmp_path, blobs,
                                                                            capsys):
    rows = blobs.round(6).tolist()
    rows[3][0], rows[10][1], rows[50][0] = "", "NA", "nan"
    path = tmp_path / "holes.csv"
    path.write_text(_table([["a", "b"], *rows]))
    X, _ = jio.read_table(path, missing=True)
    assert np.isnan(X).sum() == 3 and np.isnan(X[[3, 10, 50], [0, 1, 0]]).all()

    status = main(["fit", str(path), "-k", "2", "--restarts", "2", "--max-iter", "30", "-q"])
    out = capsys.readouterr().out
    assert status == 0
    # the same fit from Python, NaN entries marginalised out
    gm = jem.GaussianMixture(2, n_restarts=2, max_iter=30, random_state=0).fit(X)
    total = float(re.search(r"log-likelihood\s+(\S+) total", out).group(1))
    assert total == pytest.approx(gm.score(X) * len(X), rel=1e-4)

    status = main(["fit", str(path), "--model", "student-t", "-k", "2", "-q"])
    err = capsys.readouterr().err
    assert status == 2
    assert "line 5 holds '', a missing value (StudentTMixture takes none" in err
    assert "--model gmm" in err


def test_the_compile_note_appears_only_when_the_fit_compiled(tmp_path, blobs, capsys):
    path = tmp_path / "blobs.csv"
    path.write_text(_table(blobs.round(6).tolist()))
    args = ["fit", str(path), "-k", "2", "--restarts", "1", "--max-iter", "5", "-q"]
    outs = []
    for _ in range(2):
        assert main(args) == 0
        outs.append(capsys.readouterr().out)
    for out in outs:  # the note goes with the timing that says what happened
        compiled = "s compiling," in out
        assert ("compiling happens once per model and data shape" in out) == compiled
        assert compiled or "s loading the compiled program," in out
    # the second run reuses the program in memory: nothing compiled, no note
    assert "compiling happens" not in outs[1]
