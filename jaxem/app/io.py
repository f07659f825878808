"""Files: estimators saved to and loaded from ``.npz`` files (:mod:`jaxem.app.model_files`, read
safely by :mod:`jaxem.app.model_archive`), and numeric data tables for the command line.

``jaxem.io`` is this module.
"""

from __future__ import annotations

import csv
import numbers
import os

import numpy as np

from .model_files import FORMAT, FORMAT_VERSION, load, save

# What a saved file keeps of an estimator (tests compare a loaded estimator with its original).
from .model_files import _fitted_state as _fitted_state
from .model_files import _try_encode as _try_encode

__all__ = ["FORMAT", "FORMAT_VERSION", "load", "read_table", "save"]


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
