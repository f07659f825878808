"""scikit-learn-style Poisson mixture over :func:`jaxem.fit`."""

from __future__ import annotations

from ..models import _distributions as dist
from ..models.poisson import poisson_mixture
from .independent import FeatureMixture


class PoissonMixture(FeatureMixture):
    """Mixture of independent Poisson counts (each column a count).

    Args:
        n_components: number of components ``K``.
        tol, max_iter, n_restarts, random_state, m_step, optimizer, e_step, verbose: as in
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

    def __init__(self, n_components: int = 1, *, tol: float = 1e-6, max_iter: int = 100,
                 n_restarts: int = 1, init_params: str = "kmeans", dirichlet_alpha: float = 1.0,
                 weights_init=None, rates_init=None, random_state=None, m_step: str = "auto",
                 optimizer=None,
                 e_step="soft", verbose: int = 0):
        self.n_components = n_components
        self.tol = tol
        self.max_iter = max_iter
        self.n_restarts = n_restarts
        self.init_params = init_params
        self.dirichlet_alpha = dirichlet_alpha
        self.weights_init = weights_init
        self.rates_init = rates_init
        self.random_state = random_state
        self.m_step = m_step
        self.optimizer = optimizer
        self.e_step = e_step
        self.verbose = verbose

    def _specs(self):
        return ((dist.poisson(), None),)

    def _model(self):
        return poisson_mixture(self.n_components, self.init_params, float(self.dirichlet_alpha))
