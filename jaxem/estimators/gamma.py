"""scikit-learn-style gamma mixture over :func:`jaxem.fit`."""

from __future__ import annotations

from ..models import distributions as dist
from ..models.gamma import gamma_mixture
from .independent import FeatureMixture


class GammaMixture(FeatureMixture):
    """Mixture of independent gamma magnitudes (each column positive).

    Shapes are updated by Newton's method inside the M-step (see :mod:`jaxem.models.gamma`).

    Args: as :class:`PoissonMixture`; the starting parameters are ``weights_init [K]``,
    ``shapes_init [K, D]`` and ``rates_init [K, D]`` (missing ones default to 1).

    Fitted attributes:
        ``weights_ [K]``, ``shapes_ [K, D]``, ``rates_ [K, D]`` (scipy's ``scale = 1 / rate``),
        ``converged_``, ``n_iter_``, ``lower_bound_``, ``history_``, ``fit_result_``.
    """

    _family_keys = ("shapes", "rates")
    _feature, _mixture = staticmethod(dist.gamma), staticmethod(gamma_mixture)
