"""Saving and loading estimators: one ``.npz`` file, hyperparameters as JSON inside.

The mechanism is generic: it relies only on ``get_params()`` (the hyperparameters) and on the
instance attributes that end in ``_`` (fitted, public) or start with ``_`` (fitted, private, such as
a centring offset) and hold arrays, numbers, strings, ``None``, or lists, tuples and dicts of
those. Anything else (``fit_result_``, an optax optimiser, a JAX key as ``random_state``, a cache of
Python objects) is left out, so any estimator class defined in ``jaxem`` that follows
scikit-learn's conventions, and rebuilds its caches from the stored state, can be saved without
code of its own.

File layout (``numpy.savez``, read back with ``allow_pickle=False``):

- ``__jaxem__``: a JSON string ``{"format": "jaxem-estimator", "version": 1, "class": ...,
  "jaxem_version": ..., "params": {...}, "attributes": {...}, "dropped": [...]}``;
- ``param/<name>``: hyperparameters that are arrays (e.g. ``means_init``);
- ``attr/<name>``: fitted attributes that are arrays (``attr/<name>/<index or key>/...`` for
  arrays inside lists and dicts).

Scalars travel in the JSON (Python's ``json`` writes floats with ``repr``, which round-trips
exactly), arrays in their own dtype, so a loaded estimator predicts bit-identically.
"""

from __future__ import annotations

import csv
import importlib
import json
import numbers
import os
import tempfile
import warnings
import zipfile

import jax
import numpy as np

__all__ = ["FORMAT", "FORMAT_VERSION", "load", "read_table", "save"]

FORMAT = "jaxem-estimator"
FORMAT_VERSION = 1
_META = "__jaxem__"


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


def _decode(entry: dict, arrays: dict):
    kind = entry["kind"]
    if kind == "json":
        return entry["value"]
    if kind == "range":
        return range(*entry["value"])
    if kind in ("list", "tuple"):
        items = [_decode(e, arrays) for e in entry["items"]]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        return {k: _decode(e, arrays) for k, e in entry["items"].items()}
    if kind not in ("array", "jax"):
        raise KeyError(f"value kind {kind!r}")
    arr = arrays[entry["key"]]
    return jax.numpy.asarray(arr) if kind == "jax" else arr


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


def save(estimator, path) -> str:
    """Write ``estimator`` (fitted or not) to ``path`` as a ``.npz`` file.

    Args:
        estimator: an estimator class defined in ``jaxem`` (any class with ``get_params`` whose
            fitted attributes end in ``_``).
        path: the file to write (written as given; the usual extension is ``.npz``). The file is
            written to a temporary name and renamed, so an interrupted save never leaves a
            half-written model behind.

    Returns:
        ``path`` as a string.

    Warns:
        UserWarning: naming the hyperparameters that cannot be stored (an optax optimiser, a JAX
        key as ``random_state``); they load as ``None``. Predictions do not depend on them.
    """
    cls = type(estimator)
    if not cls.__module__.startswith("jaxem.") or not hasattr(estimator, "get_params"):
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
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".jaxem-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{_META: np.asarray(json.dumps(meta))}, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def _class_from(spec: str, path: str):
    """The estimator class named ``module:qualname``; only modules inside ``jaxem`` are imported."""
    module_name, _, qualname = spec.partition(":")
    if not (module_name == "jaxem" or module_name.startswith("jaxem.")) or not qualname:
        raise ValueError(f"{path}: names class {spec!r}, which is not a jaxem estimator")
    try:
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise ValueError(f"{path}: was saved from {spec.replace(':', '.')}, which this version of "
                         "jaxem does not have") from None
    if not isinstance(obj, type) or not hasattr(obj, "get_params"):
        raise ValueError(f"{path}: {spec!r} is not an estimator class")
    return obj


def _read(path: str) -> tuple[dict, dict]:
    """The JSON metadata and every array of a model file, read (and CRC-checked) eagerly."""
    not_ours = f"{path}: not a jaxem model file"
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                raise ValueError(f"{not_ours} (not an .npz archive)")
        with np.load(path, allow_pickle=False) as archive:
            if _META not in archive.files:
                raise ValueError(f"{not_ours} (an .npz archive without jaxem's metadata)")
            meta = json.loads(str(archive[_META][()]))
            arrays = {name: archive[name] for name in archive.files if name != _META}
    except (zipfile.BadZipFile, EOFError, json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{path}: truncated or corrupted jaxem model file ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{not_ours} (metadata format {found!r})")
    if not isinstance(meta.get("version"), int) or meta["version"] > FORMAT_VERSION:
        raise ValueError(f"{path}: model file format version {meta.get('version')!r} is newer than "
                         f"this jaxem reads ({FORMAT_VERSION}); upgrade jaxem")
    return meta, arrays


def load(path):
    """Rebuild an estimator saved with :func:`save` (or ``estimator.save``).

    Args:
        path: a file written by :func:`save`.

    Returns:
        An estimator of the saved class with the saved hyperparameters and fitted attributes; its
        predictions are bit-identical to the saved estimator's (same JAX float width).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a jaxem model file, is truncated or corrupted, was written by
            a newer format version, or names a class this jaxem does not have.
    """
    path = os.fspath(path)
    meta, arrays = _read(path)
    try:
        cls = _class_from(meta["class"], path)
        params = {name: _decode(entry, arrays) for name, entry in meta["params"].items()}
        state = {name: _decode(entry, arrays) for name, entry in meta["attributes"].items()}
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: truncated or corrupted jaxem model file (missing {err})") from None
    try:
        estimator = cls(**params)
    except TypeError as err:
        raise ValueError(f"{path}: its hyperparameters do not fit {cls.__name__} in this version of "
                         f"jaxem ({err})") from None
    for name, value in state.items():
        setattr(estimator, name, value)
    return estimator


# -- reading data tables ---------------------------------------------------------------------------
_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_PARQUET = (".parquet", ".pq")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _read_text(path: str) -> tuple[np.ndarray, list[str]]:
    """A delimited text table; the first row is a header when any of its cells is not a number."""
    ext = os.path.splitext(path)[1].lower()
    with open(path, encoding="utf-8-sig", newline="") as f:
        text = f.read()
    lines = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    if not lines:
        raise ValueError(f"{path}: the file is empty")
    delimiter = _DELIMITERS.get(ext) or ("\t" if "\t" in lines[0][1] else ",")
    rows = [(n, [cell.strip() for cell in row])
            for (n, _), row in zip(lines, csv.reader([line for _, line in lines], delimiter=delimiter),
                                   strict=True)]
    first = rows[0][1]
    has_header = any(_number(cell) is None for cell in first)
    names = first if has_header else [f"x{j}" for j in range(len(first))]
    body = rows[1:] if has_header else rows
    if not body:
        raise ValueError(f"{path}: no data rows after the header")
    X = np.empty((len(body), len(names)), np.float64)
    for i, (line, cells) in enumerate(body):
        if len(cells) != len(names):
            raise ValueError(f"{path}: line {line} has {len(cells)} fields but the "
                             f"{'header' if has_header else 'first line'} has {len(names)}")
        for j, cell in enumerate(cells):
            value = _number(cell)
            if value is None or not np.isfinite(value):
                what = "is empty (missing values are not supported)" if not cell else \
                    f"holds {cell!r}, not a finite number"
                raise ValueError(f"{path}: column {names[j]!r} (column {j + 1}) is not numeric: line "
                                 f"{line} {what}")
            X[i, j] = value
    return X, names


def _read_parquet(path: str) -> tuple[np.ndarray, list[str]]:
    try:
        import pyarrow.parquet as pq
        import pyarrow.types as pat
    except ImportError:
        raise ImportError(f"{path}: reading Parquet needs pyarrow: pip install 'jaxem[parquet]'") from None
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises its own error types for bad files
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
    columns = []
    for j, (name, column) in enumerate(zip(table.column_names, table.columns, strict=True)):
        kind = column.type
        if not (pat.is_integer(kind) or pat.is_floating(kind) or pat.is_boolean(kind)):
            raise ValueError(f"{path}: column {name!r} (column {j + 1}) is not numeric: its type is "
                             f"{kind}")
        if column.null_count:
            row = int(np.argmax(np.asarray(column.is_null())))
            raise ValueError(f"{path}: column {name!r} (column {j + 1}) has a missing value at row "
                             f"{row + 1}")
        columns.append(column.to_numpy().astype(np.float64))
    if not columns or not table.num_rows:
        raise ValueError(f"{path}: the table is empty")
    return np.stack(columns, axis=1), list(table.column_names)


def read_table(path, columns=None) -> tuple[np.ndarray, list[str]]:
    """Read a numeric data table for fitting: CSV, TSV, ``.npy`` or Parquet (with pyarrow).

    The format follows the extension: ``.csv`` (comma), ``.tsv``/``.tab`` (tab), ``.npy``,
    ``.parquet``/``.pq``; other text files are comma- or tab-separated by their first line. A text
    table's first line is a header when any of its cells is not a number.

    Args:
        path: the file.
        columns: optional column names or 0-based indices to keep, in that order.

    Returns:
        ``(X [N, D] float64, names [D])``; a 1-D ``.npy`` becomes one column.

    Raises:
        FileNotFoundError: no such file.
        ImportError: a Parquet file without pyarrow installed.
        ValueError: an empty table, a ragged row, or a cell that is not a finite number (the
            message names the column and line).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file" if not os.path.exists(path)
                                else f"{path}: not a file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        try:
            X = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"{path}: not a numeric .npy array ({err})") from None
        if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
            raise ValueError(f"{path}: the array is not numeric (dtype {X.dtype})")
        X = X.reshape(-1, 1) if X.ndim == 1 else X
        if X.ndim != 2:
            raise ValueError(f"{path}: expected a 1-D or 2-D array, got shape {X.shape}")
        X, names = X.astype(np.float64), [f"x{j}" for j in range(X.shape[1])]
    elif ext in _PARQUET:
        X, names = _read_parquet(path)
    else:
        X, names = _read_text(path)
    if columns is None:
        return X, names
    index = []
    for col in columns:
        if isinstance(col, numbers.Integral) or (isinstance(col, str) and col.isdigit()
                                                  and col not in names):
            j = int(col)
            if not 0 <= j < len(names):
                raise ValueError(f"{path}: column index {j} is out of range (the table has "
                                 f"{len(names)} columns)")
        elif col in names:
            j = names.index(col)
        else:
            raise ValueError(f"{path}: no column {col!r}; the columns are {names}")
        index.append(j)
    return X[:, index], [names[j] for j in index]
