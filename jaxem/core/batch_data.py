"""Many data sets as one padded batch: ``X [B, N_max, ...]`` with row weights ``[B, N_max]``.

A data set with fewer rows than the largest is padded with weight-0 rows, so every sum the fit
takes over its rows is exactly its own. The padded rows cycle through the data set's own rows
(row ``i`` is row ``i mod n_b``), so an initialiser, which sees rows without their weights, sees
each data set's own values in about the proportions they have.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .validation import check_data, check_sample_weight


class Batch(NamedTuple):
    """Data sets padded to one shape (NumPy, host side).

    Attributes:
        X: ``[B, N_max, ...]``.
        weights: ``[B, N_max]`` row weights, 0 on padded rows.
        n_rows: ``[B]`` rows of each data set.
    """

    X: np.ndarray
    weights: np.ndarray
    n_rows: np.ndarray


def stack_datasets(Xs, sample_weight=None, model=None) -> Batch:
    """Check ``B`` data sets and pad them into one :class:`Batch`.

    Args:
        Xs: a list of arrays ``[N_b, ...]`` (row counts may differ; the rest of the shape may not)
            or one array ``[B, N, ...]``.
        sample_weight: ``None``, a list of ``[N_b]`` weights, or ``[B, N]`` for an array ``Xs``.
        model: the model, for its data checks (missing values, its own ``check_data``).
    """
    if isinstance(Xs, (list, tuple)):
        datasets = list(Xs)
    else:
        arr = check_data(Xs, name="Xs")
        if arr.ndim < 2:
            raise ValueError(f"Xs must be a list of data sets or an array [B, N, ...], got shape "
                             f"{arr.shape}")
        datasets = list(arr)
    if not datasets:
        raise ValueError("Xs holds no data set; give a list of arrays or an array [B, N, ...]")
    allow_nan = bool(getattr(model, "handles_missing", False))
    checked = [check_data(X, name=f"Xs[{b}]", allow_nan=allow_nan) for b, X in enumerate(datasets)]
    for b, X in enumerate(checked):
        if getattr(model, "check_data", None) is not None:
            model.check_data(X)
        if X.shape[1:] != checked[0].shape[1:]:
            raise ValueError(f"Xs[{b}] has rows of shape {X.shape[1:]} but Xs[0] has "
                             f"{checked[0].shape[1:]}; every data set needs the same features")
    if sample_weight is None:
        weights = [None] * len(checked)
    else:
        weights = list(sample_weight)
        if len(weights) != len(checked):
            raise ValueError(f"sample_weight has {len(weights)} entries for {len(checked)} data "
                             "sets; give one [N_b] array per data set")
    n_rows = np.array([X.shape[0] for X in checked])
    n_max = int(n_rows.max())
    X_out = np.stack([X[np.arange(n_max) % X.shape[0]] for X in checked])
    W_out = np.zeros((len(checked), n_max), X_out.dtype)
    for b, (X, w) in enumerate(zip(checked, weights, strict=True)):
        w = check_sample_weight(w, X.shape[0])
        W_out[b, :X.shape[0]] = 1.0 if w is None else w
    return Batch(X_out, W_out, n_rows)
