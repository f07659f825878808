"""scikit-learn-style Bernoulli / binomial mixture over :func:`jaxem.fit`."""

from __future__ import annotations

import numpy as np

from ..core.validation import check_positive_int
from ..models import bernoulli as bernoulli_family
from .base import MixtureEstimator
from .checks import one_of


class BernoulliMixture(MixtureEstimator):
    """Mixture of independent Bernoulli features (binomial counts with ``n_trials > 1``).

    Args:
        n_components: number of components ``K``.
        n_trials: trials per feature; data must be integers in ``[0, n_trials]``.
        tol, max_iter, n_restarts, random_state, m_step, optimizer, e_step, accelerate, verbose: as in
            :class:`GaussianMixture`.
        init_params: ``"kmeans"`` or ``"random"``.

    Fitted attributes:
        ``weights_ [K]``, ``probs_ [K, D]``, ``converged_``, ``n_iter_``, ``lower_bound_``,
        ``history_``, ``fit_result_``.
    """

    _parameters = {"n_components": ..., "n_trials": 1}
    _constraints = {"n_trials": check_positive_int,
                    "init_params": one_of(bernoulli_family.INIT_METHODS)}
    _param_keys = ("weights", "probs")
    # Non-negative integer counts (scikit-learn's tags cannot say "at most n_trials").
    _input_tags = {"categorical": True, "positive_only": True}

    def _check_values(self, X: np.ndarray) -> None:
        bernoulli_family.check_counts(X, self.n_trials, type(self).__name__)

    def _model(self):
        return bernoulli_family.bernoulli_mixture(self.n_components, int(self.n_trials),
                                                  self.init_params)

    def _n_parameters(self) -> int:
        return self.n_components * self.n_features_in_ + self.n_components - 1

    def _sample_rows(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        X = rng.binomial(self.n_trials, np.asarray(self.probs_, np.float64)[labels])
        return X.astype(np.float64)
