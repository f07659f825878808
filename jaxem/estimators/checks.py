"""The checks a hyperparameter declaration names: each is ``check(value, name)`` and raises
``ValueError`` with a one-line message naming the hyperparameter, or returns quietly.

The engine's own checks (:func:`jaxem.core.validation.check_positive_int`, ``check_tolerance``,
``check_nonnegative_float``) already have this form and are used as they are.
"""

from __future__ import annotations

import numpy as np

from ..core.checkpoint import as_checkpoint
from ..core.validation import check_nonnegative_float

M_STEPS = ("auto", "closed_form", "gradient")


def one_of(options: tuple, described: str | None = None):
    """A check that the value is one of ``options``; the message lists them, or says
    ``described`` in their place."""
    wanted = f"one of {options}" if described is None else described

    def check(value, name: str) -> None:
        if value not in options:
            raise ValueError(f"{name} must be {wanted}, got {value!r}")

    return check


check_m_step = one_of(M_STEPS, "'auto', 'closed_form' or 'gradient'")


def check_checkpoint(value, name: str) -> None:
    """``None``, a file name or a :class:`jaxem.Checkpoint` (see :mod:`jaxem.core.checkpoint`)."""
    if value is not None:
        try:
            as_checkpoint(value, False)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{name}: {err}") from None


def check_accelerate(value, name: str) -> None:
    """``"auto"``, ``"squarem"``, ``True``, ``False`` or ``None`` (see :func:`jaxem.fit`)."""
    if not (value is None or isinstance(value, bool) or value in ("auto", "squarem")):
        raise ValueError(f"{name} must be 'auto', 'squarem', True, False or None, got {value!r}")


def check_concentration(value, name: str) -> None:
    """A symmetric Dirichlet concentration ``>= 1`` (1 is flat; infinity is allowed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
        raise ValueError(f"{name} must be a number >= 1, got {value!r}")


def check_finite_at_least_one(value, name: str) -> None:
    """A finite real ``>= 1``."""
    if not check_nonnegative_float(value, name) >= 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")


def bad_integers(X: np.ndarray, high=np.inf) -> np.ndarray:
    """Where ``X`` (no NaN) is not an integer in ``[0, high)``, as a boolean array."""
    return (X < 0) | (X >= high) | (X != np.round(X))
