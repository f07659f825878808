"""The layout ARCHITECTURE.md describes, checked on the source: which folder may import which, no
private name taken from another folder, no import cycle, no module over 400 lines, and the old
module paths still importable."""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "jaxem"

# What each folder may import from jaxem (besides itself): imports point down the layers.
ALLOWED = {
    "core": set(),
    "models": {"core"},
    "hmm": {"core", "models"},
    "scale": {"core"},
    # Resampling procedures over fits (bootstrap): the engine only, usable by any front end.
    "uncertainty": {"core"},
    "estimators": {"core", "models", "hmm", "scale"},
    "app": {"core", "models", "hmm", "scale", "estimators", "datasets", "uncertainty"},
    "datasets": set(),
    # jaxem/__init__.py
    "": {"core", "models", "hmm", "scale", "estimators", "app", "datasets", "uncertainty"},
}
# Imports that point up on purpose, with the reason.
EXCEPTIONS = {
    # The public namespace jaxem.hmm re-exports the hmmlearn-style estimators on first use.
    ("jaxem.hmm", "jaxem.estimators.hmm"),
    ("jaxem.hmm", "jaxem.estimators.hmm_families"),
    # An estimator's save() is jaxem.save, whose file format lives with the command line's
    # table reading in jaxem.app.io (imported when called; io finds estimator classes by name).
    ("jaxem.estimators.params", "jaxem.app.io"),
}
# Modules allowed to be longer: none today.
LONG_MODULES: set[str] = set()


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _package(name: str) -> str:
    path = MODULES[name]
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imports(name: str, top_level_only: bool):
    """``(imported module, imported names)`` of every ``from`` import in module ``name``."""
    tree = ast.parse(MODULES[name].read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package(name).split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "jaxem":
                target = node.module
            else:
                continue
            yield target, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "jaxem":
                    yield alias.name, []


def _folder(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] not in {"core", "models", "hmm", "scale", "estimators", "app",
                                           "datasets", "uncertainty"}:
        return ""
    return parts[1]


def _resolve(target: str, names: list[str]) -> list[str]:
    """The modules an import reads: ``target`` itself, or its submodules named in ``names``."""
    found = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
    return found + ([target] if target in MODULES and len(found) < len(names) or not names
                    else [])


def test_no_private_name_is_imported_from_another_folder():
    offences = []
    for name, path in MODULES.items():
        for target, names in _imports(name, top_level_only=False):
            for module in _resolve(target, names):
                if MODULES[module].parent == path.parent:
                    continue
                private = [part for part in module.split(".") if part.startswith("_")]
                if module == target:
                    private += [n for n in names if n.startswith("_") and n != "__version__"]
                if private:
                    offences.append(f"{name} imports {private} from {module}")
    assert not offences, "\n".join(offences)


def test_no_public_name_from_another_folder_is_renamed_private():
    """``from ..core.x import name as _name`` hides a seam as a private import does; only a
    package's ``__init__`` (a public surface keeping its namespace clean) may do it."""
    offences = []
    for name, path in MODULES.items():
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2 or (
                    isinstance(node, ast.ImportFrom) and node.level == 0
                    and (node.module or "").startswith("jaxem.")):
                offences += [f"{name} imports {a.name} as {a.asname}" for a in node.names
                             if (a.asname or "").startswith("_") and not a.name.startswith("_")]
    assert not offences, "\n".join(offences)


def test_folders_import_only_the_layers_below_them():
    offences = []
    for name in MODULES:
        own = _folder(name)
        for target, names in _imports(name, top_level_only=False):
            for module in _resolve(target, names):
                other = _folder(module)
                if other != own and other not in ALLOWED[own] and module != "jaxem" \
                        and (name, module) not in EXCEPTIONS:
                    offences.append(f"{name} ({own or 'top'}) imports {module} ({other or 'top'})")
    assert not offences, "\n".join(offences)


def test_no_import_cycles():
    graph = {name: {m for target, names in _imports(name, top_level_only=False)
                    for m in _resolve(target, names) if m != name}
             for name in MODULES}
    # Package __init__ modules re-export their folder; an edge into one stands for its folder.
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt == "jaxem" or (MODULES[nxt].name == "__init__.py" and node.startswith(nxt)):
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in MODULES:
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text().splitlines())) > 400 and name not in LONG_MODULES}
    assert not long, long


@pytest.mark.parametrize("old, new", [
    ("jaxem.streaming", "jaxem.scale.chunked"), ("jaxem.em", "jaxem.core.inference"),
    ("jaxem.plot", "jaxem.app.plot"), ("jaxem.hmm.estimators", "jaxem.estimators.hmm"),
    ("jaxem.model", "jaxem.core.model"), ("jaxem.init", "jaxem.models.init"),
])
def test_old_module_paths_are_the_new_modules(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_public_surface_is_sorted_and_complete():
    import jaxem

    assert jaxem.__all__ == sorted(jaxem.__all__, key=lambda n: (n.lower(), n))
    missing = [n for n in jaxem.__all__ if not hasattr(jaxem, n)]
    assert not missing
