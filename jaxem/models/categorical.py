"""Mixtures of independent categorical features (one or several), integer-coded.

Parameters: ``{"weights": [K], "probs": [K, D, C]}`` with ``C = max_d C_d``; column ``d`` takes
values ``0 .. C_d - 1`` and ``probs[k, d, c] = 0`` for the padding ``c >= C_d``. Component
log-density ``Σ_d log p_{k, d, x_d}`` (a product of the rows' one-hot codes with ``log p``).
Statistics: category counts ``Σ_n r_nk [x_nd = c]``; M-step: normalised counts.
"""

from __future__ import annotations

from ..core.model import Model, model_factory
from . import distributions as dist
from .independent import INIT_METHODS, feature_mixture

__all__ = ["INIT_METHODS", "categorical_mixture"]


@model_factory
def categorical_mixture(n_components: int, n_categories: tuple[int, ...] | int,
                        init: str = "kmeans", dirichlet_alpha: float = 1.0) -> Model:
    """A mixture of independent categorical features with a closed-form M-step.

    Args:
        n_components: number of components ``K``.
        n_categories: categories per column ``(C_1, ..., C_D)`` (an int for a single column).
        init: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``; the k-means
            starts cluster the standardised codes.
        dirichlet_alpha: symmetric Dirichlet prior ``α >= 1`` on the weights.

    Returns:
        A memoised :class:`jaxem.Model` for integer-coded data ``[N, D]``.
    """
    if isinstance(n_categories, int):
        n_categories = (n_categories,)
    n_categories = tuple(int(c) for c in n_categories)
    if not n_categories or min(n_categories) < 1:
        raise ValueError(f"n_categories needs one count >= 1 per column, got {n_categories!r}")
    return feature_mixture(n_components, dist.categorical(n_categories), init, dirichlet_alpha,
                           f"categorical_mixture({n_components}, {n_categories})")
