"""Mixtures of independent Poisson counts.

Parameters: ``{"weights": [K], "rates": [K, D]}``. An observation is ``x [D]`` of non-negative
integers with component log-density ``Σ_d x_d log λ_kd - λ_kd - log x_d!``. Statistics
``Σ_n r_nk``, ``Σ_n r_nk x_n``; M-step ``λ_k = Σ r x / Σ r``.
"""

from __future__ import annotations

from ..core.model import Model, model_factory
from . import distributions as dist
from .independent import INIT_METHODS, feature_mixture

__all__ = ["INIT_METHODS", "poisson_mixture"]


@model_factory
def poisson_mixture(n_components: int, init: str = "kmeans", dirichlet_alpha: float = 1.0) -> Model:
    """A mixture of independent Poisson features with a closed-form M-step.

    Args:
        n_components: number of components ``K``.
        init: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"`` (see
            :func:`jaxem.init.initial_responsibilities`).
        dirichlet_alpha: symmetric Dirichlet prior ``α >= 1`` on the weights (MAP-EM when > 1).

    Returns:
        A memoised :class:`jaxem.Model` for data ``[N, D]``.
    """
    return feature_mixture(n_components, dist.poisson(), init, dirichlet_alpha,
                           f"poisson_mixture({n_components})")
