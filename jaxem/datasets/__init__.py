"""Small data sets shipped with jaxem, for examples, the ``jaxem demo`` command and tests."""

from __future__ import annotations

import csv
import io
from importlib import resources

import numpy as np

__all__ = ["load_old_faithful"]


def _read_csv(filename: str) -> tuple[np.ndarray, list[str]]:
    """Read a numeric CSV with one header row from ``jaxem/datasets/data``."""
    text = resources.files(__package__).joinpath("data", filename).read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text))
    header = [name.strip() for name in next(reader)]
    rows = [[float(value) for value in row] for row in reader if row]
    X = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(header))
    return X, header


def load_old_faithful() -> tuple[np.ndarray, list[str]]:
    """The Old Faithful geyser data: 272 eruptions of the geyser in Yellowstone National Park.

    Each row is one eruption: its duration in minutes (``eruptions``) and the waiting time in
    minutes until the next eruption (``waiting``). The two clusters of short and long eruptions
    make it the classic first example for a two-component Gaussian mixture.

    Source: Härdle, W. (1991) *Smoothing Techniques with Implementation in S*, Springer; see also
    Azzalini, A. and Bowman, A. W. (1990) "A look at some data on the Old Faithful geyser",
    *Applied Statistics* 39, 357-365. Public domain (the ``faithful`` data set distributed with R).

    Returns:
        ``(X, feature_names)``: ``X`` is a float64 array ``[272, 2]`` and ``feature_names`` is
        ``["eruptions", "waiting"]``.
    """
    return _read_csv("old_faithful.csv")
