"""Chunk sources: data read a fixed number of rows at a time, for EM on data larger than memory.

A source is anything :func:`as_source` accepts:

- a NumPy array or ``np.memmap`` ``[N, ...]`` (sliced; a memmap reads only the rows it is asked for,
  though the pages it touched count in the process's resident memory until the OS reclaims them);
- the path of a ``.npy`` file (read with explicit positioned reads, so the resident memory of a
  pass is one chunk whatever the file's size);
- a callable returning a fresh iterable of arrays ``[n_i, ...]`` each time it is called (one call
  per pass; e.g. a function that reads a large file piece by piece), or a re-iterable collection
  such as a list of arrays. Pieces of any size are cut to the requested chunk size.

Every chunk is checked as it is read (numeric, finite, the same trailing shape as the first), and
errors name the global row. A chunk handed to the compiled passes is always ``chunk_size`` rows:
the last, shorter one is padded with copies of its first row under weight 0, so one compiled
program serves every chunk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from ..core.blocks import pad_rows  # noqa: F401  (used by callers of this module)
from ..core.validation import check_data


def _check_chunk(chunk, start: int, row_shape: tuple | None, allow_nan: bool, dtype) -> np.ndarray:
    """Validate one chunk (global row numbers in messages) and convert it to ``dtype``."""
    arr = np.asarray(chunk)
    if arr.ndim == 0:
        raise ValueError(f"a chunk starting at row {start} is a scalar; chunks must be [rows, ...]")
    if row_shape is not None and arr.shape[1:] != row_shape:
        raise ValueError(f"X rows {start}..{start + arr.shape[0] - 1} have shape {arr.shape[1:]}, "
                         f"but earlier rows have shape {row_shape}")
    if np.issubdtype(arr.dtype, np.number) and arr.size:
        finite = np.isfinite(arr)
        bad = (~finite & ~np.isnan(arr)) if allow_nan else ~finite
        if bad.any():
            where = np.argwhere(bad)[0]
            column = f", column {int(where[1])}" if arr.ndim > 1 else ""
            value = arr[tuple(where)]
            raise ValueError(f"X contains {'NaN' if np.isnan(value) else value} at row "
                             f"{start + int(where[0])}{column}; remove or impute it")
    arr = check_data(arr, allow_nan=allow_nan, min_rows=0)
    return np.asarray(arr, dtype=dtype)


class ChunkSource:
    """Rows of a data set, re-readable pass after pass in chunks.

    Use :func:`as_source` to build one. ``n_rows`` is ``None`` until a first full pass when the
    source is an iterable (its length is not known in advance).
    """

    def __init__(self, read: Callable[[int], Iterator[tuple[int, np.ndarray]]],
                 n_rows: int | None, sample: Callable, read_rows: Callable | None = None):
        self._read = read
        self.n_rows = n_rows
        self._sample = sample
        self._read_rows = read_rows
        self.row_shape: tuple | None = None

    @property
    def indexable(self) -> bool:
        """Whether any row range can be read directly (arrays, memmaps, ``.npy`` files)."""
        return self._read_rows is not None

    def rows(self, start: int, stop: int, *, allow_nan: bool = False,
             dtype=np.float32) -> np.ndarray:
        """Rows ``start..stop-1`` (indexable sources only), checked like a chunk."""
        return _check_chunk(self._read_rows(start, stop), start, self.row_shape, allow_nan, dtype)

    def chunks(self, chunk_size: int, *, allow_nan: bool = False,
               dtype=np.float32) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, chunk [n <= chunk_size, ...])`` over the whole data, in order.

        Raises:
            ValueError: a chunk holds non-finite or non-numeric values, its rows change shape, or
                an iterable yields a different number of rows than on an earlier pass.
        """
        seen = 0
        for start, piece in self._read(chunk_size):
            chunk = _check_chunk(piece, start, self.row_shape, allow_nan, dtype)
            if self.row_shape is None:
                self.row_shape = chunk.shape[1:]
            seen = start + chunk.shape[0]
            yield start, chunk
        if self.n_rows is None:
            self.n_rows = seen
        elif seen != self.n_rows:
            raise ValueError(f"the source gave {seen} rows on this pass but {self.n_rows} before; "
                             "a callable source must give the same data on every call")
        if seen == 0:
            raise ValueError("the source gave no rows")

    def sample(self, n: int, rng: np.random.Generator, dtype=np.float32,
               allow_nan: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` rows for initialisation: drawn at random without replacement (in file
        order) when the source is indexable, else the first ``n`` rows.

        Returns:
            ``(row_indices [m], rows [m, ...])``.
        """
        index, rows = self._sample(n, rng)
        return index, _check_chunk(rows, 0, self.row_shape, allow_nan, dtype)


def _array_source(arr: np.ndarray) -> ChunkSource:
    if arr.ndim == 0:
        raise ValueError("X must have at least one dimension (rows), got a scalar")
    n = arr.shape[0]

    def read(chunk_size):
        for start in range(0, n, chunk_size):
            yield start, arr[start:start + chunk_size]

    def sample(k, rng):
        index = np.arange(n) if k >= n else np.sort(rng.choice(n, size=k, replace=False))
        return index, (arr[:] if k >= n else arr[index])

    return ChunkSource(read, n, sample, lambda start, stop: arr[start:stop])


def _npy_source(path) -> ChunkSource:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if fortran and len(shape) > 1:
        raise ValueError(f"{path} is stored in Fortran order; chunked reading needs C order "
                         "(np.save(path, np.ascontiguousarray(X)))")
    if dtype.hasobject:
        raise ValueError(f"{path} holds Python objects, not numbers")
    if len(shape) == 0:
        raise ValueError(f"{path} holds a scalar; X must have at least one dimension (rows)")
    n, row_shape = shape[0], tuple(shape[1:])
    row_items = int(np.prod(row_shape, dtype=np.int64))
    row_bytes = row_items * dtype.itemsize

    def rows(f, start, count):
        f.seek(offset + start * row_bytes)
        out = np.fromfile(f, dtype=dtype, count=count * row_items)
        if out.size != count * row_items:
            raise ValueError(f"{path} is truncated: rows {start}..{start + count - 1} are missing")
        return out.reshape((count,) + row_shape)

    def read(chunk_size):
        with open(path, "rb") as f:
            for start in range(0, n, chunk_size):
                yield start, rows(f, start, min(chunk_size, n - start))

    def sample(k, rng):
        idx = np.arange(n) if k >= n else np.sort(rng.choice(n, size=k, replace=False))
        out = np.empty((idx.size,) + row_shape, dtype)
        with open(path, "rb") as f:
            for i, row in enumerate(idx):
                out[i] = rows(f, int(row), 1)[0]
        return idx, out

    def read_rows(start, stop):
        with open(path, "rb") as f:
            return rows(f, start, stop - start)

    return ChunkSource(read, n, sample, read_rows)


def _iterable_source(factory: Callable[[], Iterable]) -> ChunkSource:
    def read(chunk_size):
        start = 0
        pieces = factory()
        if isinstance(pieces, np.ndarray) or not isinstance(pieces, Iterable):
            raise ValueError("a callable source must return an iterable of arrays (chunks), got "
                             f"{type(pieces).__name__}")
        for piece in pieces:
            piece = np.asarray(piece)
            if piece.ndim == 0:
                raise ValueError(f"a chunk starting at row {start} is a scalar; chunks must be "
                                 "[rows, ...]")
            for lo in range(0, piece.shape[0], chunk_size):
                part = piece[lo:lo + chunk_size]
                yield start, part
                start += part.shape[0]

    def sample(k, rng):
        taken, total = [], 0
        for _, chunk in read(k):
            taken.append(chunk[:k - total])
            total += taken[-1].shape[0]
            if total >= k:
                break
        rows = np.concatenate(taken)
        return np.arange(rows.shape[0]), rows

    return ChunkSource(read, None, sample)


def as_source(data) -> ChunkSource:
    """A :class:`ChunkSource` over ``data`` (see the module docstring for what is accepted).

    Raises:
        ValueError: ``data`` is a one-shot iterator (a generator), which a multi-pass EM cannot
            reread, or a path that is not a ``.npy`` file.
    """
    if isinstance(data, ChunkSource):
        return data
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not path.endswith(".npy"):
            raise ValueError(f"a path source must be a .npy file, got {path!r}")
        if not os.path.exists(path):
            raise ValueError(f"no such file: {path!r}")
        return _npy_source(path)
    if isinstance(data, np.ndarray) or hasattr(data, "__array__"):
        return _array_source(data if isinstance(data, np.ndarray) else np.asarray(data))
    if callable(data):
        return _iterable_source(data)
    if isinstance(data, Iterator):
        raise ValueError("X is a one-shot iterator (e.g. a generator), but EM reads the data once "
                         "per iteration; pass a function that returns a new iterator instead")
    if isinstance(data, Iterable):
        return _iterable_source(lambda: iter(data))
    raise ValueError(f"cannot read chunks from {type(data).__name__}; give an array, a memmap, a "
                     ".npy path, or a callable returning an iterable of arrays")


def map_source(source: ChunkSource, fn: Callable[[np.ndarray], np.ndarray]) -> ChunkSource:
    """A source whose chunks (and samples, and row ranges) are ``fn(chunk)`` of ``source``'s, e.g.
    an estimator's value checks and change of coordinates applied as the data stream by."""

    def read(chunk_size):
        for start, chunk in source._read(chunk_size):
            yield start, fn(np.asarray(chunk))

    def sample(k, rng):
        index, rows = source._sample(k, rng)
        return index, fn(np.asarray(rows))

    read_rows = None if source._read_rows is None else (
        lambda start, stop: fn(np.asarray(source._read_rows(start, stop))))
    return ChunkSource(read, source.n_rows, sample, read_rows)
