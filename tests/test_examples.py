"""Every script in examples/ runs and reaches its stated result (each asserts its own outcome)."""

import pathlib
import runpy
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
EXPECTED = {
    "custom_laplace.py": "loc: [-2.",
    "semi_supervised.py": "accuracy on all rows",
    "model_selection.py": "best K by BIC: 4",
}


def test_every_example_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name, monkeypatch, capsys):
    # As `python examples/NAME --quick` from the repository root, in this process (a fresh
    # interpreter would spend seconds importing jax and jaxem; no example changes global settings).
    path = EXAMPLES / name
    monkeypatch.chdir(EXAMPLES.parent)
    monkeypatch.setattr(sys, "argv", [str(path), "--quick"])
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as done:
        assert done.code in (None, 0), done.code
    assert EXPECTED[name] in capsys.readouterr().out
