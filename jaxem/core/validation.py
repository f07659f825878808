"""Input checks run before any compute, with messages that say what is wrong and where."""

from __future__ import annotations

import numbers
import warnings

import jax
import jax.numpy as jnp
import numpy as np


class NotFittedError(ValueError, AttributeError):
    """Raised when a method that needs fitted parameters is called before ``fit``."""


class NotNumericError(ValueError, TypeError):
    """Data whose entries cannot be read as numbers: a ``ValueError`` (jaxem's convention for bad
    input) that is also the ``TypeError`` NumPy and scikit-learn raise for it."""


class ConvergenceWarning(UserWarning):
    """Warned when no restart of a fit converged within ``max_iter`` iterations."""


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def check_data(X, *, name: str = "X", ndim: int | None = None, allow_nan: bool = False,
               min_rows: int = 1) -> np.ndarray:
    """Convert ``X`` to a numeric NumPy array and check it.

    Args:
        X: array-like ``[N, ...]``.
        name: how to call the array in messages.
        ndim: required number of dimensions, if any.
        allow_nan: whether NaN entries are allowed (missing values); infinities never are.
        min_rows: the fewest rows accepted.

    Returns:
        ``np.ndarray`` of a floating dtype (integers and booleans become float64; JAX later
        casts to its default float width).
    """
    if hasattr(X, "toarray") and hasattr(X, "nnz"):
        raise ValueError(f"{name} is a sparse matrix; sparse input is not supported, pass a dense "
                         f"array ({name}.toarray())")
    try:
        arr = np.asarray(X)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} could not be converted to a numeric array: {err}") from None
    if np.iscomplexobj(arr):
        raise ValueError(f"Complex data not supported: {name} must be real, got dtype {arr.dtype}")
    if arr.dtype == object:
        # An object array of numbers (e.g. from a DataFrame with mixed columns) is numeric data.
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise NotNumericError(f"{name} must be numeric; its object-dtype entries could not be "
                                  f"read as numbers: {err}") from None
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if arr.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension (rows), got a scalar")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} has {arr.shape[0]} rows but at least {min_rows} are needed")
    if arr.ndim >= 2 and arr.shape[1] == 0:
        raise ValueError(f"{name} has 0 feature(s) (shape={arr.shape}) while a minimum of 1 is "
                         "required.")
    if arr.size and not np.isfinite(arr).all():
        bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
        if bad.any():
            where = _first_bad(bad)
            value = arr[where]
            place = f"row {where[0]}" + (f", column {where[1]}" if len(where) > 1 else "")
            hint = " (this model takes no missing values)" if np.isnan(value) else ""
            what = "NaN" if np.isnan(value) else value
            raise ValueError(f"{name} contains {what} at {place}; remove or impute it{hint}")
    return arr


def check_sample_weight(sample_weight, n_rows: int) -> np.ndarray | None:
    """Check ``sample_weight``: ``None`` or ``n_rows`` finite non-negative numbers, not all zero."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != n_rows:
        raise ValueError(f"sample_weight must have shape ({n_rows},), got {w.shape}")
    if not np.isfinite(w).all():
        i = int(np.argwhere(~np.isfinite(w))[0, 0])
        raise ValueError(f"sample_weight contains {'NaN' if np.isnan(w[i]) else w[i]} at row {i}")
    if (w < 0).any():
        i = int(np.argwhere(w < 0)[0, 0])
        raise ValueError(f"sample_weight must be non-negative, got {w[i]} at row {i}")
    if not (w > 0).any():
        raise ValueError("sample_weight is zero everywhere; at least one row must have weight > 0")
    return w


def check_values(X: np.ndarray, bad: np.ndarray, requirement: str, who: str = "X") -> None:
    """Refuse data whose entries break a family's requirement, naming the first bad entry.

    Args:
        X: ``[N]`` or ``[N, D]`` validated data.
        bad: bool array of ``X``'s shape, ``True`` where an entry is not allowed.
        requirement: what the entries must be, e.g. ``"0 or 1"``.
        who: the model or estimator asking, for the message.

    Raises:
        ValueError: ``"{who} needs {requirement}; got {value} at row r, column c (n such entries)"``.
    """
    if not bad.any():
        return
    where = _first_bad(bad)
    place = f"row {where[0]}" + (f", column {where[1]}" if len(where) > 1 else "")
    count = int(np.count_nonzero(bad))
    more = f" ({count} such entries)" if count > 1 else ""
    raise ValueError(f"{who} needs {requirement}; got {X[where]} at {place}{more}"
                     f"{negative_note(X[where])}")


def negative_note(value) -> str:
    """What a refusal of ``value`` adds when it is negative: scikit-learn's wording (its checks
    of estimators for non-negative data look for it)."""
    return " (Negative values in data)" if value < 0 else ""


def warn_if_regularisation_dominates(X: np.ndarray, reg: float, name: str = "reg_covar",
                                    share: float = 0.01) -> None:
    """Warn when ``reg``, added to every variance, is at least ``share`` of a column's variance.

    An absolute ``reg_covar`` of 1e-6 is nothing for data in metres but swamps data in
    micrometres: every covariance is then mostly regularisation (clusters merge), and since the
    regularised M-step no longer maximises the expected log-likelihood, the history may fall.
    Constant columns (variance 0) are what the regularisation is for and are not reported.

    Args:
        X: ``[N, D]`` data (NaN = missing).
        reg: the value added to the diagonal of every covariance.
        name: the hyperparameter's name, for the message.
        share: the fraction of a column's variance above which to warn.
    """
    if reg <= 0 or X.ndim != 2 or X.shape[0] < 2:
        return
    var = np.nanvar(np.asarray(X, np.float64), axis=0)
    small = (var > 0) & (reg >= share * var)
    if small.any():
        col = int(np.argmax(np.where(small, reg / np.where(var > 0, var, 1.0), 0.0)))
        warnings.warn(
            f"{name}={reg:g} is {reg / var[col]:.3g} times the variance of column {col} "
            f"({var[col]:.3g}): the fit mostly describes the regularisation; rescale the data or "
            f"lower {name}", UserWarning, stacklevel=4)  # the user's call to fit


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """Check that ``value`` is an integer ``>= minimum`` and return it as ``int``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_nonnegative_float(value, name: str) -> float:
    """Check that ``value`` is a finite real ``>= 0`` and return it as ``float``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) \
            or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_tolerance(value, name: str = "tol") -> float | None:
    """Check a convergence tolerance: a finite real ``>= 0``, or ``None`` (no objective test: run
    ``max_iter`` iterations unless an iteration leaves the parameters exactly unchanged)."""
    return None if value is None else check_nonnegative_float(value, name)


def tolerance_value(tol: float | None) -> float:
    """The tolerance as the compiled loop takes it: a negative number switches the test off."""
    return -1.0 if tol is None else tol


def check_enough_rows(n_rows: int, n_components: int) -> None:
    """Refuse fits with fewer (weighted-positive) rows than components."""
    if n_rows < n_components:
        raise ValueError(
            f"n_components={n_components} but only {n_rows} samples; a mixture needs at least as "
            "many samples as components")


def check_labels(labels, n_rows: int, n_components: int) -> np.ndarray:
    """Partial labels for semi-supervised EM: ``[N]`` integers in ``[-1, K)``, ``-1`` = unknown.

    Returns:
        ``np.ndarray`` of int32.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n_rows:
        raise ValueError(f"labels must have shape ({n_rows},) to match X, got {arr.shape}")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer)
                                 or (np.issubdtype(arr.dtype, np.floating)
                                     and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))):
        raise ValueError(f"labels must be integers (component index, or -1 for unknown), got dtype "
                         f"{arr.dtype}")
    bad = (arr < -1) | (arr >= n_components)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"labels must be -1 (unknown) or a component in [0, {n_components}); got "
                         f"{arr[row]} at row {row}")
    return arr.astype(np.int32)


def default_float_dtype():
    """The float dtype JAX uses by default (float32 unless ``jax_enable_x64``)."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


# XLA:CPU takes a host buffer aligned to this many bytes as it is, without copying it.
_HOST_ALIGNMENT = 64


def to_device(arr: np.ndarray) -> jax.Array:
    """``arr [N, ...]`` (checked data) as a JAX array of the default float dtype, copied at most
    once.

    ``jnp.asarray`` copies host data on a CPU even when no conversion is needed (0.1 s for
    128 MB). Here an array that is already C-contiguous, of the default dtype and 64-byte aligned
    is handed to the device as it is (on a CPU the device array then shares its memory, which is
    safe for the synchronous fits and predictions that use it); any other is converted once into
    an aligned buffer that the device array then owns. On an accelerator it is one transfer.
    """
    dtype = np.dtype(default_float_dtype())
    if not (arr.dtype == dtype and arr.flags.c_contiguous
            and arr.ctypes.data % _HOST_ALIGNMENT == 0):
        raw = np.empty(arr.size * dtype.itemsize + _HOST_ALIGNMENT, np.uint8)
        start = -raw.ctypes.data % _HOST_ALIGNMENT
        aligned = raw[start:start + arr.size * dtype.itemsize].view(dtype).reshape(arr.shape)
        aligned[...] = arr
        arr = aligned
    return jax.device_put(arr)
