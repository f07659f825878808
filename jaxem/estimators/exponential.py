"""scikit-learn-style exponential mixture over :func:`jaxem.fit`."""

from __future__ import annotations

from ..models import distributions as dist
from ..models.exponential import exponential_mixture
from .independent import FeatureMixture


class ExponentialMixture(FeatureMixture):
    """Mixture of independent exponential durations (each column non-negative).

    Args: as :class:`PoissonMixture` (starting parameters ``weights_init [K]``,
    ``rates_init [K, D]``).

    Fitted attributes:
        ``weights_ [K]``, ``rates_ [K, D]`` (means ``1 / rates_``), ``converged_``, ``n_iter_``,
        ``lower_bound_``, ``history_``, ``fit_result_``.
    """

    _family_keys = ("rates",)
    _feature, _mixture = staticmethod(dist.exponential), staticmethod(exponential_mixture)
