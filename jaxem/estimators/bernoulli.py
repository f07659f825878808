"""scikit-learn-style Bernoulli / binomial mixture over :func:`jaxem.fit`."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .. import em
from ..models import bernoulli as bernoulli_family
from ..validation import check_positive_int
from ._base import MixtureEstimator


class BernoulliMixture(MixtureEstimator):
    """Mixture of independent Bernoulli features (binomial counts with ``n_trials > 1``).

    Args:
        n_components: number of components ``K``.
        n_trials: trials per feature; data must be integers in ``[0, n_trials]``.
        tol, max_iter, n_restarts, random_state, m_step, optimizer, e_step, verbose: as in
            :class:`GaussianMixture`.
        init_params: ``"kmeans"`` or ``"random"``.

    Fitted attributes:
        ``weights_ [K]``, ``probs_ [K, D]``, ``converged_``, ``n_iter_``, ``lower_bound_``,
        ``history_``, ``fit_result_``.
    """

    def __init__(self, n_components: int = 1, *, n_trials: int = 1, tol: float = 1e-6,
                 max_iter: int = 100, n_restarts: int = 1, init_params: str = "kmeans",
                 random_state=None, m_step: str = "auto", optimizer=None,
                 e_step="soft", verbose: int = 0):
        self.n_components = n_components
        self.n_trials = n_trials
        self.tol = tol
        self.max_iter = max_iter
        self.n_restarts = n_restarts
        self.init_params = init_params
        self.random_state = random_state
        self.m_step = m_step
        self.optimizer = optimizer
        self.e_step = e_step
        self.verbose = verbose

    def _check_hyperparameters(self) -> None:
        super()._check_hyperparameters()
        check_positive_int(self.n_trials, "n_trials")
        if self.init_params not in bernoulli_family.INIT_METHODS:
            raise ValueError(f"init_params must be one of {bernoulli_family.INIT_METHODS}, got "
                             f"{self.init_params!r}")

    def _check_values(self, X: np.ndarray) -> None:
        bernoulli_family.check_counts(X, self.n_trials, type(self).__name__)

    def _model(self):
        return bernoulli_family.bernoulli_mixture(self.n_components, int(self.n_trials),
                                                  self.init_params)

    def _params(self):
        dtype = em.default_float_dtype()
        return {"weights": jnp.asarray(self.weights_, dtype),
                "probs": jnp.asarray(self.probs_, dtype)}

    def _set_params_from(self, params) -> None:
        self.weights_ = np.asarray(params["weights"])
        self.probs_ = np.asarray(params["probs"])

    def _n_parameters(self) -> int:
        return self.n_components * self.n_features_in_ + self.n_components - 1

    def sample(self, n_samples: int = 1, random_state=None) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` rows; returns ``(X [n_samples, D], labels [n_samples])``."""
        self._check_fitted()
        n_samples = check_positive_int(n_samples, "n_samples")
        rng = np.random.default_rng(random_state)
        labels = self._sample_components(n_samples, rng)
        X = rng.binomial(self.n_trials, np.asarray(self.probs_, np.float64)[labels])
        return X.astype(np.float64), labels
