"""Documentation: every public name has a docstring, and the README's examples run as shown."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import jaxem

README = Path(__file__).resolve().parents[1] / "README.md"

# Public modules and the names they expose (``__all__`` where they declare one).
MODULES = ["jaxem", "jaxem.constraints", "jaxem.init", "jaxem.models", "jaxem.estimators",
           "jaxem.hmm", "jaxem.io", "jaxem.plot", "jaxem.progress", "jaxem.datasets", "jaxem.cli",
           "jaxem.selection"]


def _public_names(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, obj in vars(module).items() if not n.startswith("_")
                 and (inspect.isfunction(obj) or inspect.isclass(obj))
                 and getattr(obj, "__module__", None) == module.__name__]
    return names


def _members(cls):
    """Public methods and properties of ``cls``, inherited ones included."""
    for name in dir(cls):
        if name.startswith("_"):
            continue
        static = inspect.getattr_static(cls, name)
        if isinstance(static, (property, staticmethod, classmethod)) or inspect.isfunction(static):
            yield name, getattr(cls, name)


def _undocumented():
    missing = []
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if not inspect.getdoc(module):
            missing.append(module_name)
        for name in _public_names(module):
            obj = getattr(module, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismodule(obj)):
                continue  # constants and constraint instances document themselves in the module
            where = f"{module_name}.{name}"
            if not inspect.getdoc(obj):
                missing.append(where)
            if inspect.isclass(obj) and not issubclass(obj, BaseException):
                missing += [f"{where}.{m}" for m, member in _members(obj)
                            if not inspect.getdoc(member)]
    return sorted(set(missing))


def test_every_public_name_has_a_docstring():
    assert _undocumented() == []


def _python_blocks(section: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    body = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert body, f"README has no section '## {section}'"
    return re.findall(r"```python\n(.*?)```", body.group(1), re.S)


def _code_lines(code: str) -> int:
    return sum(1 for line in code.splitlines() if line.strip())


def test_readme_quickstart_runs_in_ten_lines(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")  # the quickstart draws; matplotlib is in the test extra
    (code,) = _python_blocks("Quickstart")
    assert _code_lines(code) <= 10
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md:Quickstart", "exec"), namespace)
    gm, X = namespace["gm"], namespace["X"]
    # the two Old Faithful clusters: short eruptions after short waits, long after long
    order = np.argsort(gm.means_[:, 0])
    assert gm.means_[order] == pytest.approx(np.array([[2.04, 54.5], [4.29, 80.0]]), abs=0.1)
    assert np.array_equal(jaxem.load("faithful.npz").predict_proba(X), gm.predict_proba(X))
    assert (tmp_path / "faithful.png").read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out.strip()


def test_readme_custom_model_runs_in_fifteen_lines(capsys):
    (code,) = _python_blocks("A custom model in 15 lines")
    assert _code_lines(code) <= 15
    namespace: dict = {}
    exec(compile(code, "README.md:custom model", "exec"), namespace)
    params = namespace["result"].params
    order = np.argsort(np.asarray(params["rates"]))
    assert np.asarray(params["rates"])[order] == pytest.approx([2.0, 10.0, 30.0], rel=0.05)
    assert np.asarray(params["weights"])[order] == pytest.approx([0.5, 0.3, 0.2], abs=0.03)


# Sections whose blocks the tests above run with their own assertions.
_RUN_ABOVE = {"Quickstart", "A custom model in 15 lines"}


def _readme_blocks() -> list[tuple[str, str]]:
    """Every ```python block of the README as ``(section, code)``."""
    text = README.read_text(encoding="utf-8")
    sections = re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    return [(title, code) for title, body in sections
            for code in re.findall(r"```python\n(.*?)```", body, re.S)]


@pytest.mark.parametrize("section, code", [b for b in _readme_blocks() if b[0] not in _RUN_ABOVE],
                         ids=lambda v: v if len(v) < 60 else None)
def test_every_readme_block_runs_as_written(section, code, tmp_path, monkeypatch, capsys):
    """Each block runs on its own, in an empty directory, as a reader would paste it."""
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md:{section}", "exec"), {})
    assert capsys.readouterr().out.strip()  # every block shows its result


def test_readme_links_and_commands_exist():
    text = README.read_text(encoding="utf-8")
    assert "(benchmarks/README.md)" in text and (README.parent / "benchmarks/README.md").exists()
    from jaxem.cli import MODELS, build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for command in re.findall(r"^jaxem (\w+)", text, re.M):
        assert command in commands, command
    for name in MODELS:  # every command-line family is listed in the README
        assert f"`{name}`" in text, name


def test_readme_uncertainty_example_runs(capsys):
    (code,) = _python_blocks("How sure is the fit: standard errors, many data sets, the bootstrap")
    namespace: dict = {}
    exec(compile(code, "README.md:uncertainty", "exec"), namespace)
    se, boot, result = namespace["se"], namespace["boot"], namespace["result"]
    # Wald and bootstrap standard errors of the Old Faithful means agree within 40%
    ratio = np.asarray(boot.standard_errors["means"]) / np.asarray(se["means"])
    assert np.all((0.6 < ratio) & (ratio < 1.4)), ratio
    lower, upper = namespace["lower"], namespace["upper"]
    assert np.all((np.asarray(lower["means"]) < np.asarray(result.params["means"]))
                  & (np.asarray(result.params["means"]) < np.asarray(upper["means"])))
    assert "Wald" in capsys.readouterr().out
