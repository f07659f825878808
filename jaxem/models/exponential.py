"""Mixtures of independent exponential durations.

Parameters: ``{"weights": [K], "rates": [K, D]}``. An observation is ``x [D]`` with entries
``>= 0`` and component log-density ``Σ_d log λ_kd - λ_kd x_d``. Statistics ``Σ_n r_nk``,
``Σ_n r_nk x_n``; M-step ``λ_k = Σ r / Σ r x`` (means floored at ``1e-6`` of the column mean, so a
component of exact zeros cannot have an infinite rate).
"""

from __future__ import annotations

from ..core.model import Model, model_factory
from . import distributions as dist
from .independent import INIT_METHODS, feature_mixture

__all__ = ["INIT_METHODS", "exponential_mixture"]


@model_factory
def exponential_mixture(n_components: int, init: str = "kmeans",
                        dirichlet_alpha: float = 1.0) -> Model:
    """A mixture of independent exponential features with a closed-form M-step.

    Args:
        n_components: number of components ``K``.
        init: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``.
        dirichlet_alpha: symmetric Dirichlet prior ``α >= 1`` on the weights.

    Returns:
        A memoised :class:`jaxem.Model` for data ``[N, D]``.
    """
    return feature_mixture(n_components, dist.exponential(), init, dirichlet_alpha,
                           f"exponential_mixture({n_components})")
