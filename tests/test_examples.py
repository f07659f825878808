"""Every script in examples/ runs and reaches its stated result (each asserts its own outcome)."""

import pathlib
import subprocess
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
def test_example_runs(name):
    done = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick"], capture_output=True,
                          text=True, timeout=300, cwd=EXAMPLES.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert EXPECTED[name] in done.stdout
