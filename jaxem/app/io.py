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
_CANDIDATES = (",", "\t", ";", "|")
_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "vertical bar"}
_PARQUET = (".parquet", ".pq")
# Cells read as a missing value (NaN) where the model takes missing values; case-insensitive.
_MISSING = {"", "nan", "na", "n/a", "null", "none", "?"}


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _delimiter(lines: list[str], ext: str) -> str:
    """The field separator: the extension's when it splits the first lines, else the candidate
    that splits every one of them into the same number (> 1) of fields, the most fields first."""
    sample = lines[:50]

    def fields(sep: str) -> set[int]:
        return {len(row) for row in csv.reader(sample, delimiter=sep)}

    default = _DELIMITERS.get(ext, ",")
    if fields(default) != {1}:
        return default
    consistent = [(next(iter(fields(sep))), sep) for sep in _CANDIDATES
                  if len(fields(sep)) == 1 and fields(sep) != {1}]
    return max(consistent)[1] if consistent else default


def _read_text(path: str, missing: bool, who: str | None) -> tuple[np.ndarray, list[str]]:
    """A delimited text table; the first row is a header when any of its cells is not a number."""
    ext = os.path.splitext(path)[1].lower()
    with open(path, encoding="utf-8-sig", newline="") as f:
        text = f.read()
    lines = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    if not lines:
        raise ValueError(f"{path}: the file is empty")
    delimiter = _delimiter([line for _, line in lines], ext)
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
            absent = cell.lower() in _MISSING
            if missing and absent:
                value = np.nan
            elif value is None or not np.isfinite(value):
                raise ValueError(f"{path}: column {names[j]!r} (column {j + 1}) is not numeric: line "
                                 f"{line} {_what(cell, absent, delimiter, who)}")
            X[i, j] = value
    return X, names


def _what(cell: str, absent: bool, delimiter: str, who: str | None) -> str:
    """Why a cell was refused, with the way out."""
    if absent:
        takes = "this model takes none" if who is None else f"{who} takes none"
        return (f"holds {cell!r}, a missing value ({takes}; the Gaussian mixture, --model gmm, "
                "takes them; or drop or impute the row)")
    seps = [_NAMES[s] for s in _CANDIDATES if s != delimiter and s in cell]
    seps += ["whitespace"] * (" " in cell)
    hint = (f" (the file was read as {_NAMES[delimiter]}-separated; is it {seps[0]}-separated? "
            "give it a .csv/.tsv name to match, or convert it)") if seps else ""
    return f"holds {cell!r}, not a finite number{hint}"


def _read_parquet(path: str, missing: bool) -> tuple[np.ndarray, list[str]]:
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
        if column.null_count and missing:
            column = column.cast("float64").fill_null(float("nan"))
        elif column.null_count:
            row = int(np.argmax(np.asarray(column.is_null())))
            raise ValueError(f"{path}: column {name!r} (column {j + 1}) has a missing value at row "
                             f"{row + 1}")
        columns.append(column.to_numpy().astype(np.float64))
    if not columns or not table.num_rows:
        raise ValueError(f"{path}: the table is empty")
    return np.stack(columns, axis=1), list(table.column_names)


def read_table(path, columns=None, *, missing: bool = False,
               who: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Read a numeric data table for fitting: CSV, TSV, ``.npy`` or Parquet (with pyarrow).

    The format follows the extension: ``.csv`` (comma), ``.tsv``/``.tab`` (tab), ``.npy``,
    ``.parquet``/``.pq``. A text file whose first lines the extension's separator does not split
    (or any other text file) is separated by whichever of comma, tab, semicolon and vertical bar
    splits every one of its first lines into the same number of fields. A text table's first
    line is a header when any of its cells is not a number.

    Args:
        path: the file.
        columns: optional column names or 0-based indices to keep, in that order.
        missing: read empty cells and ``nan``, ``NA``, ``N/A``, ``null``, ``none``, ``?`` (and
            Parquet nulls) as NaN, for a model that takes missing values; otherwise they are
            errors.
        who: the model the data are for, named in the message about a missing value.

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
        X, names = _read_parquet(path, missing)
    else:
        X, names = _read_text(path, missing, who)
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
