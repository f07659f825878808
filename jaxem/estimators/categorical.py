"""scikit-learn-style categorical mixture over :func:`jaxem.fit`."""

from __future__ import annotations

import numpy as np

from ..core.validation import check_data, negative_note
from ..models import distributions as dist
from ..models.categorical import categorical_mixture
from .checks import bad_integers
from .independent import FeatureMixture


class CategoricalMixture(FeatureMixture):
    """Mixture of independent categorical features, integer-coded ``0 .. C_d - 1`` per column.

    Args:
        n_components: number of components ``K``.
        n_categories: categories per column (an int for all columns, or one per column); ``None``
            infers ``max + 1`` of each column from the training data.
        tol, max_iter, n_restarts, random_state, m_step, optimizer, e_step, accelerate, verbose: as in
            :class:`GaussianMixture`.
        init_params: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``.
        dirichlet_alpha: symmetric Dirichlet prior ``α >= 1`` on the weights (MAP when > 1).
        weights_init ``[K]``, probs_init ``[K, D, max C_d]``: optional starting parameters.

    Fitted attributes:
        ``weights_ [K]``, ``probs_ [K, D, C]`` (``C = max_d C_d``; entries ``c >= C_d`` are 0),
        ``n_categories_`` (tuple, categories per column), ``converged_``, ``n_iter_``,
        ``lower_bound_``, ``history_``, ``fit_result_``.
    """

    _family_keys = ("probs",)
    _input_tags = {"categorical": True, "positive_only": True}  # non-negative integer codes
    _parameters = {"n_components": ..., "n_categories": None}
    _feature, _mixture = staticmethod(dist.categorical), staticmethod(categorical_mixture)

    def _user_counts(self, n_cols: int) -> tuple[int, ...] | None:
        if self.n_categories is None:
            return None
        counts = np.asarray(self.n_categories)
        counts = np.full(n_cols, counts) if counts.ndim == 0 else counts
        if counts.shape != (n_cols,) or (counts < 1).any() or (counts != np.round(counts)).any():
            raise ValueError(f"n_categories must be an integer >= 1 or one per column ({n_cols}), "
                             f"got {self.n_categories!r}")
        return tuple(int(c) for c in counts)

    def _validate(self, X, fitting: bool) -> np.ndarray:
        # While fitting, codes are checked against the user's counts (or only for being
        # non-negative integers when they are inferred); afterwards against the fitted counts.
        if fitting:
            X = check_data(X)
            n_cols = X.shape[1] if X.ndim == 2 else 1
            self._counts = self._user_counts(n_cols)
        else:
            self._counts = getattr(self, "n_categories_", None)
        return super()._validate(X, fitting)

    def _check_values(self, X: np.ndarray) -> None:
        high = np.inf if self._counts is None else np.asarray(self._counts, float)[None, :]
        bad = bad_integers(X, high)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            allowed = ("non-negative integer codes" if self._counts is None else
                       f"integer codes 0 .. {self._counts[col] - 1} in column {col}")
            raise ValueError(f"{type(self).__name__} needs {allowed}; got {X[row, col]} at row "
                             f"{row}, column {col}{negative_note(X[row, col])}")

    def _family_args(self) -> tuple:
        return (self.n_categories_,)

    def _prepare(self, X: np.ndarray) -> None:
        self.n_categories_ = self._counts or tuple(int(c) + 1 for c in X.max(axis=0))
        self._counts = self.n_categories_
