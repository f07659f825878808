"""Saving and loading estimators: one ``.npz`` file, hyperparameters as JSON inside.

The mechanism is generic: it relies only on ``get_params()`` (the hyperparameters) and on the
instance attributes that end in ``_`` (fitted, public) or start with ``_`` (fitted, private, such as
a centring offset) and hold arrays, numbers, strings, ``None``, or lists, tuples and dicts of
those. Anything else (``fit_result_``, an optax optimiser, a JAX key as ``random_state``, a cache of
Python objects) is left out, so any estimator class defined in ``jaxem`` that follows
scikit-learn's conventions, and rebuilds its caches from the stored state, can be saved without
code of its own.

File layout (``numpy.savez``):

- ``__jaxem__``: a JSON string ``{"format": "jaxem-estimator", "version": 1, "class": ...,
  "jaxem_version": ..., "params": {...}, "attributes": {...}, "dropped": [...]}``;
- ``param/<name>``: hyperparameters that are arrays (e.g. ``means_init``);
- ``attr/<name>``: fitted attributes that are arrays (``attr/<name>/<index or key>/...`` for
  arrays inside lists and dicts).

Scalars travel in the JSON (Python's ``json`` writes floats with ``repr``, which round-trips
exactly), arrays in their own dtype, so a loaded estimator predicts bit-identically.

Loading trusts nothing in the file (:mod:`jaxem.app.model_archive` reads it): the class must be
one of the estimator classes jaxem exports (no module named by a file is ever imported), the
hyperparameters must pass the estimator's own checks, attribute names must be fitted-state names
that are not the class's methods or properties, and fitted floating-point arrays must be finite.
"""

from __future__ import annotations

import importlib
import json
import numbers
import os
import re
import warnings

import jax
import numpy as np

from .model_archive import META, ModelArchive, Refused, corrupted, describe, open_regular

__all__ = ["FORMAT", "FORMAT_VERSION", "load", "save"]

FORMAT = "jaxem-estimator"
FORMAT_VERSION = 1
_ROOT = __name__.split(".")[0]  # "jaxem"
# A loaded estimator's n_components (KMeans: n_clusters) is at most this.
MAX_COMPONENTS = 1 << 20
_MAX_RANGE = 1 << 24  # items of a stored range (a feature group's columns)
# Fitted floating-point arrays must be finite, except these (padded with NaN past the last iteration).
_MAY_HOLD_NAN = frozenset({"history_"})
# Fitted arrays whose leading axis is the components (or states).
_PER_COMPONENT = ("weights_", "startprob_", "transmat_")
_PUBLIC = re.compile(r"[A-Za-z][A-Za-z0-9_]*_")
_PRIVATE = re.compile(r"_[A-Za-z][A-Za-z0-9_]*")


def _is_key(value) -> bool:
    return isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key)


class _Unstorable(Exception):
    """A value (or a part of it) that the file format cannot hold."""


def _encode(value, key: str, arrays: dict):
    """JSON description of ``value``; arrays go into ``arrays`` under ``key`` (+ ``/index``).

    Numbers, strings, ``None``, arrays, ranges, and lists, tuples and string-keyed dicts of those
    (nested) are storable; anything else raises :class:`_Unstorable`.
    """
    if value is None or isinstance(value, (bool, str)):
        return {"kind": "json", "value": value}
    if isinstance(value, numbers.Integral):
        return {"kind": "json", "value": int(value)}
    if isinstance(value, numbers.Real):
        return {"kind": "json", "value": float(value)}
    if isinstance(value, (np.ndarray, np.generic, jax.Array)) and not _is_key(value):
        arr = np.asarray(value)
        if arr.dtype == object:
            raise _Unstorable(key)
        arrays[key] = arr
        return {"kind": "jax" if isinstance(value, jax.Array) else "array", "key": key}
    if isinstance(value, range):
        return {"kind": "range", "value": [value.start, value.stop, value.step]}
    if isinstance(value, (list, tuple)):
        return {"kind": type(value).__name__ if type(value) in (list, tuple) else "list",
                "items": [_encode(v, f"{key}/{i}", arrays) for i, v in enumerate(value)]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"kind": "dict", "items": {k: _encode(v, f"{key}/{k}", arrays)
                                          for k, v in value.items()}}
    raise _Unstorable(key)


def _decode(entry, archive: ModelArchive):
    """The value an :func:`_encode` entry describes, its arrays read from ``archive``."""
    kind = entry.get("kind") if isinstance(entry, dict) else None
    if kind == "json":
        value = entry["value"]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
    elif kind == "range":
        value = entry["value"]
        if isinstance(value, list) and len(value) == 3 and all(type(v) is int for v in value) \
                and value[2] != 0:
            stored = range(*value)
            if len(stored) <= _MAX_RANGE:
                return stored
    elif kind in ("list", "tuple") and isinstance(entry.get("items"), list):
        items = [_decode(e, archive) for e in entry["items"]]
        return items if kind == "list" else tuple(items)
    elif kind == "dict" and isinstance(entry.get("items"), dict):
        return {k: _decode(e, archive) for k, e in entry["items"].items()}
    elif kind in ("array", "jax"):
        arr = archive.array(entry["key"])
        return jax.numpy.asarray(arr) if kind == "jax" else arr
    raise archive.corrupted(f"a stored value is {_short(entry)}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def _try_encode(value, key: str, arrays: dict):
    """``_encode``, or ``None`` (and ``arrays`` untouched) when the value is not storable."""
    staged: dict = {}
    try:
        entry = _encode(value, key, staged)
    except _Unstorable:
        return None
    arrays.update(staged)
    return entry


def _fitted_state(estimator) -> dict:
    """Instance attributes that are fitted state: ``name_`` (public) and ``_name`` (private)."""
    hyper = set(estimator.get_params())
    return {name: value for name, value in vars(estimator).items()
            if name not in hyper and not name.startswith("__")
            and (name.endswith("_") or name.startswith("_"))}


def _create(folder: str):
    """A new file in ``folder`` with a random name, created with the user's umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".jaxem-{os.urandom(8).hex()}.npz")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: could not create a temporary file")


def save(estimator, path) -> str:
    """Write ``estimator`` (fitted or not) to ``path`` as a ``.npz`` file.

    Args:
        estimator: an estimator class defined in ``jaxem`` (any class with ``get_params`` whose
            fitted attributes end in ``_``).
        path: the file to write (written as given; the usual extension is ``.npz``). The file is
            written to a temporary name and renamed, so an interrupted save never leaves a
            half-written model behind. Its permissions follow the umask, as ``open`` would give.

    Returns:
        ``path`` as a string.

    Warns:
        UserWarning: naming the hyperparameters that cannot be stored (an optax optimiser, a JAX
        key as ``random_state``); they load as ``None``. Predictions do not depend on them.
    """
    cls = type(estimator)
    if not cls.__module__.startswith(f"{_ROOT}.") or not hasattr(estimator, "get_params"):
        raise TypeError(f"save expects a jaxem estimator, got {cls.__module__}.{cls.__qualname__}")
    arrays: dict[str, np.ndarray] = {}
    params, dropped = {}, []
    for name, value in estimator.get_params().items():
        entry = _try_encode(value, f"param/{name}", arrays)
        if entry is None:
            dropped.append(name)
            entry = {"kind": "json", "value": None}
        params[name] = entry
    attributes = {}
    for name, value in _fitted_state(estimator).items():
        entry = _try_encode(value, f"attr/{name}", arrays)
        if entry is not None:  # e.g. fit_result_: a summary of the fit, not needed to predict
            attributes[name] = entry
    if dropped:
        warnings.warn(f"{cls.__name__}.save: hyperparameters {dropped} cannot be stored in a file "
                      "and load as None (predictions do not depend on them)", UserWarning,
                      stacklevel=2)
    from .. import __version__

    meta = {"format": FORMAT, "version": FORMAT_VERSION, "class": f"{cls.__module__}:{cls.__qualname__}",
            "jaxem_version": __version__, "params": params, "attributes": attributes,
            "dropped": dropped}
    path = os.fspath(path)
    fd, tmp = _create(os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{META: np.asarray(json.dumps(meta))}, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


# Modules that estimator classes were saved from before jaxem's folders and that are not their
# modules now (the other estimators kept theirs).
_OLD_MODULES = {f"{_ROOT}.hmm.estimators": f"{_ROOT}.estimators.hmm"}


def _estimator_classes() -> dict[str, tuple[type, frozenset]]:
    """Class name -> (class, the module names a file may give for it), for every estimator class
    ``jaxem.estimators`` exports (abstract bases, which jaxem itself does not export, left out).

    A class may be named by its module, by the public packages that export it, or by the module
    it had in files saved before jaxem's folders (:data:`_OLD_MODULES`). Only these packages,
    which ``import jaxem`` has already imported, are looked at; nothing a file names is imported.
    """
    packages = {name: importlib.import_module(name)
                for name in (_ROOT, f"{_ROOT}.estimators", f"{_ROOT}.hmm")}
    found = {}
    for name in packages[f"{_ROOT}.estimators"].__all__:
        cls = getattr(packages[f"{_ROOT}.estimators"], name)
        if not (isinstance(cls, type) and hasattr(cls, "get_params")) \
                or name not in packages[_ROOT].__all__:
            continue
        modules = {cls.__module__} | {old for old, new in _OLD_MODULES.items()
                                      if new == cls.__module__}
        modules |= {pkg for pkg, module in packages.items()
                    if name in getattr(module, "__all__", ())}
        found[name] = (cls, frozenset(modules))
    return found


def _class_from(spec, path: str):
    """The estimator class a file names as ``module:qualname``, from the allowlist only."""
    module, _, qualname = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not (module == _ROOT or module.startswith(f"{_ROOT}.")) or not qualname:
        raise Refused(f"{path}: names class {_short(spec)}, which is not a jaxem estimator")
    cls, modules = _estimator_classes().get(qualname, (None, ()))
    if cls is None or module not in modules:
        raise Refused(f"{path}: was saved from {_short(f'{module}.{qualname}')}, which this version "
                      "of jaxem does not have (as an estimator class)")
    return cls


def _check_name(cls, name: str, hyper, path: str) -> None:
    """Refuse an attribute name that is not fitted state, or that would shadow the class."""
    if not (_PUBLIC.fullmatch(name) or _PRIVATE.fullmatch(name)):
        why = "not a fitted attribute's name (name_ or _name)"
    elif name in hyper or any(name in vars(klass) for klass in cls.__mro__):
        why = f"a hyperparameter, method or property of {cls.__name__}"
    else:
        return
    raise Refused(f"{path}: corrupted jaxem model file (attribute {_short(name)} is {why})")


def _not_finite(value) -> bool:
    if isinstance(value, (np.ndarray, jax.Array)):
        return value.dtype.kind in "fc" and not bool(np.isfinite(np.asarray(value)).all())
    if isinstance(value, (list, tuple)):
        return any(_not_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_not_finite(v) for v in value.values())
    return False


def _build(cls, params: dict, state: dict, path: str):
    """An estimator of ``cls`` with ``params`` (checked) and fitted ``state`` (checked)."""
    estimator = cls()
    hyper = estimator.get_params()
    unknown = [name for name in params if name not in hyper]
    if unknown:
        raise Refused(f"{path}: its hyperparameters do not fit {cls.__name__} in this version of "
                      f"jaxem (no hyperparameters {unknown})")
    estimator.set_params(**params)
    try:
        estimator._check_hyperparameters()
        count = getattr(estimator, "n_components", None)
        if count is not None and count > MAX_COMPONENTS:
            raise ValueError(f"{count} components; a model file may have at most {MAX_COMPONENTS}")
    except Exception as err:  # a check meeting a value of a type it does not expect, too
        why = str(err) if type(err) is ValueError else describe(err)
        raise Refused(f"{path}: corrupted jaxem model file (hyperparameters: {why})") from None
    for name, value in state.items():
        if name not in _MAY_HOLD_NAN and _not_finite(value):
            raise Refused(f"{path}: corrupted jaxem model file (attribute {name!r} is not finite)")
    for name in {*_PER_COMPONENT, getattr(cls, "_fitted_attribute", None)}:
        value = state.get(name)
        if isinstance(value, np.ndarray) and (value.ndim == 0 or value.shape[0] != count):
            raise Refused(f"{path}: corrupted jaxem model file (attribute {name!r} has shape "
                          f"{value.shape} for {count} components)")
    for name, value in state.items():
        setattr(estimator, name, value)
    return estimator


def _read(path: str, file):
    """The class, hyperparameters and fitted state a model file holds, every one checked."""
    archive = ModelArchive(path, file)
    try:
        meta = archive.metadata()
        if meta.get("format") != FORMAT:
            raise Refused(f"{path}: not a jaxem model file (metadata format "
                          f"{_short(meta.get('format'))})")
        version = meta.get("version")
        if type(version) is not int or version < 1:
            raise archive.corrupted(f"format version {_short(version)}")
        if version > FORMAT_VERSION:
            raise Refused(f"{path}: model file format version {version} is newer than this jaxem "
                          f"reads ({FORMAT_VERSION}); upgrade jaxem")
        cls = _class_from(meta.get("class"), path)
        entries = {part: meta.get(part) for part in ("params", "attributes")}
        for part, value in entries.items():
            if not isinstance(value, dict):
                raise archive.corrupted(f"missing {part!r}")
        hyper = cls().get_params()
        for name in entries["attributes"]:
            _check_name(cls, name, hyper, path)
        params = {name: _decode(e, archive) for name, e in entries["params"].items()}
        state = {name: _decode(e, archive) for name, e in entries["attributes"].items()}
    finally:
        archive.close()
    return cls, params, state


def load(path):
    """Rebuild an estimator saved with :func:`save` (or ``estimator.save``).

    The file is not trusted: nothing named in it is imported or run, only the arrays its metadata
    names are read, each after its declared size is checked against the file's, and the result is
    checked as described in this module.

    Args:
        path: a file written by :func:`save`.

    Returns:
        An estimator of the saved class with the saved hyperparameters and fitted attributes; its
        predictions are bit-identical to the saved estimator's (same JAX float width).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming the file, for anything wrong with it: not a regular file, not a jaxem
            model file, truncated or corrupted, written by a newer format version, naming a class
            this jaxem does not have, or holding hyperparameters or fitted attributes that do not
            pass the checks.
    """
    path = os.fspath(path)
    with open_regular(path) as file:
        try:
            cls, params, state = _read(path, file)
        except Refused:
            raise
        except Exception as err:  # whatever the zip and .npy readers make of a damaged file
            raise corrupted(path, describe(err)) from None
    return _build(cls, params, state, path)
