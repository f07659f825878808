"""Mixtures of independent gamma magnitudes.

Parameters: ``{"weights": [K], "shapes": [K, D], "rates": [K, D]}``. An observation is ``x [D]``
with positive entries and component log-density
``Σ_d a log b + (a - 1) log x_d - b x_d - log Γ(a)``. Statistics ``Σ r``, ``Σ r x``, ``Σ r log x``
(additive). The shape has no closed form: the M-step solves
``log a - ψ(a) = log mean(x) - mean(log x)`` by Newton's method and keeps the result only when it
does not lower Q (generalized EM); the rate is then exact, ``b = a / mean(x)``.
"""

from __future__ import annotations

from ..core.model import Model, model_factory
from . import distributions as dist
from .independent import INIT_METHODS, feature_mixture

__all__ = ["INIT_METHODS", "gamma_mixture"]


@model_factory
def gamma_mixture(n_components: int, init: str = "kmeans", dirichlet_alpha: float = 1.0) -> Model:
    """A mixture of independent gamma features (Newton M-step for the shapes).

    Args:
        n_components: number of components ``K``.
        init: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``.
        dirichlet_alpha: symmetric Dirichlet prior ``α >= 1`` on the weights.

    Returns:
        A memoised :class:`jaxem.Model` for data ``[N, D]``.
    """
    return feature_mixture(n_components, dist.gamma(), init, dirichlet_alpha,
                           f"gamma_mixture({n_components})")
