"""scikit-learn-style Poisson mixture over :func:`jaxem.fit`."""

from __future__ import annotations

from ..models import distributions as dist
from ..models.poisson import poisson_mixture
from .independent import FeatureMixture


class PoissonMixture(FeatureMixture):
    """Mixture of independent Poisson counts (each column a count).

    Args:
        n_components: number of components ``K``.
        tol, max_iter, n_restarts, random_state, m_step, optimizer, e_step, accelerate, verbose: as in
            :class:`GaussianMixture`.
        init_params: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``.
        dirichlet_alpha: symmetric Dirichlet prior ``α >= 1`` on the weights (MAP when > 1).
        weights_init ``[K]``, rates_init ``[K, D]``: optional starting parameters; when any is
            given the fit runs once from them.

    Fitted attributes:
        ``weights_ [K]``, ``rates_ [K, D]``, ``converged_``, ``n_iter_``, ``lower_bound_``,
        ``history_``, ``fit_result_``.
    """

    _family_keys = ("rates",)
    _input_tags = {"categorical": True, "positive_only": True}  # non-negative integer counts
    _feature, _mixture = staticmethod(dist.poisson), staticmethod(poisson_mixture)
