"""The module paths jaxem had before its folders (``jaxem.streaming``, ``jaxem.plot``, ...).

They stay importable, as the modules that now hold their code, so that user code, saved model
files (which name an estimator's module) and old examples keep working. Nothing inside jaxem
imports them. Each is imported only when first asked for (``jaxem.plot`` needs matplotlib only
then).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# Old path (below ``jaxem.``) -> the module that holds its code now.
MOVED = {
    "chunked_estimators": "estimators.chunked",
    "cli": "app.cli",
    "constraints": "core.constraints",
    "data": "scale.data",
    "distributed": "core.sharding",
    "em": "core.inference",
    "estep": "core.estep",
    "hmm.estimators": "estimators.hmm",
    "init": "models.init",
    "io": "app.io",
    "model": "core.model",
    "mstep": "core.ascent",
    "online": "scale.online",
    "plot": "app.plot",
    "progress": "core.progress",
    "selection": "app.selection",
    "streaming": "scale.chunked",
    "teaching": "app.teaching",
    "validation": "core.validation",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``jaxem.<old path>`` and answers with the module now holding that code."""

    def __init__(self, package: str):
        self.package = package
        self.specs = {}

    def find_spec(self, fullname, path=None, target=None):
        old = fullname[len(self.package) + 1:] if fullname.startswith(self.package + ".") else None
        if old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        old = spec.name[len(self.package) + 1:]
        module = importlib.import_module(f"{self.package}.{MOVED[old]}")
        self.specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module):
        # The module is the real one, already executed: nothing to run. The import system has
        # just given it the alias's spec; it keeps its own name and spec.
        module.__spec__ = self.specs[module.__name__]


def attribute(package: str, name: str):
    """``package.<name>`` for an old module path (the package's ``__getattr__``)."""
    if name in MOVED:
        return importlib.import_module(f"{package}.{name}")
    raise AttributeError(f"module {package!r} has no attribute {name!r}")


def install(package: str) -> None:
    """Make the old paths below ``package`` importable (once per process)."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias(package))
