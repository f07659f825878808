"""The machinery shared by the scikit-learn-style estimators.

``fit`` returns ``self``; fitted attributes end in ``_``. The estimators hold hyperparameters and
fitted arrays only; all computation is the functional engine's.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ..core import inference as em
from ..core.progress import progress_bar
from ..core.validation import (
    check_data,
    check_positive_int,
    check_sample_weight,
    to_device,
)
from . import uncertainty
from .compat import DensityMixin, NotFittedError
from .params import EMEstimator, _as_key, recording_interrupted


class MixtureEstimator(DensityMixin, EMEstimator):
    """Base of the mixture estimators: validation, fit over :func:`jaxem.fit`, inference.

    Families declare their hyperparameters and constraints (see :mod:`jaxem.estimators.params`),
    implement ``_model``, ``_n_parameters`` and ``_sample_rows``, name their parameters in
    ``_param_keys`` (or implement ``_params`` and ``_set_params_from``), and may override the
    ``_check_values``, ``_validate``, ``_prepare``, ``_transform`` and ``_initial_params`` hooks.
    """

    _parameters = {"tol": ..., "max_iter": 100, "init_params": "kmeans"}
    _constraints = {"max_iter": check_positive_int}
    _fitted_attribute = "weights_"
    # The engine's parameter names; each is stored as the fitted attribute ``name + "_"``.
    _param_keys: tuple[str, ...] = ()

    # -- hooks for the families ------------------------------------------------------------------
    def _model(self):
        raise NotImplementedError

    def _check_values(self, X: np.ndarray) -> None:
        """Family-specific checks on the values of validated 2-D data."""

    def _params(self):
        """The engine's parameter pytree, built from the fitted attributes."""
        dtype = em.default_float_dtype()
        return {k: jnp.asarray(getattr(self, k + "_"), dtype) for k in self._param_keys}

    def _set_params_from(self, params) -> None:
        for k in self._param_keys:
            setattr(self, k + "_", np.asarray(params[k]))

    def _initial_params(self, X: np.ndarray):
        """User-given starting parameters, or ``None`` to use the model's initialiser."""
        return None

    def _prepare(self, X: np.ndarray) -> None:
        """Record data-dependent constants before fitting (none by default)."""

    def _transform(self, X: np.ndarray) -> np.ndarray:
        """Map validated data into the coordinates the parameters live in."""
        return X

    def _n_parameters(self) -> int:
        raise NotImplementedError

    def _fitted_arrays(self, params) -> dict:
        """The fitted attributes as a traceable function of the engine's parameters (for
        standard errors); families whose attributes are not their parameters override it."""
        return uncertainty.mixture_arrays(self._param_keys, params)

    def _sample_rows(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``[n, D]`` rows drawn from the components ``labels [n]``."""
        raise NotImplementedError

    # -- data checks -----------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, self._fitted_attribute):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(X) before using it")

    def _check_n_features(self, n_features: int, fitted: int) -> None:
        if n_features != fitted:
            raise ValueError(f"X has {n_features} features, but {type(self).__name__} is expecting "
                             f"{fitted} features as input (the number it was fitted with)")

    def _validate(self, X, fitting: bool) -> np.ndarray:
        name = type(self).__name__
        X = check_data(X)
        if X.ndim == 1:
            raise ValueError(f"{name} expects 2-D data [n_samples, n_features], got 1-D shape "
                             f"{X.shape}; Reshape your data: X.reshape(-1, 1) for a single feature, "
                             "X.reshape(1, -1) for a single sample")
        if X.ndim != 2:
            raise ValueError(f"{name} expects 2-D data [n_samples, n_features], got shape "
                             f"{X.shape}")
        if not fitting:
            self._check_n_features(X.shape[1], self.n_features_in_)
        self._check_values(X)
        return X

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None, labels=None):
        """Fit by EM with ``n_restarts`` vmapped starts; keep the best.

        Args:
            X: ``[N, D]`` data.
            y: ignored (scikit-learn's convention for unsupervised estimators, so that pipelines
                and cross-validation may pass class labels through).
            sample_weight: optional ``[N]`` non-negative frequency weights.
            labels: optional ``[N]`` partial labels for semi-supervised EM: a row's component
                when it is known, ``-1`` when it is not (``None``: every component unknown).

        Returns:
            ``self``, with the fitted attributes set.
        """
        self._check_hyperparameters()
        X = self._validate(X, fitting=True)
        weights = check_sample_weight(sample_weight, X.shape[0])
        n_positive = X.shape[0] if weights is None else int(np.sum(weights > 0))
        if n_positive < self.n_components:
            raise ValueError(f"n_components={self.n_components} but only {n_positive} samples; "
                             "a mixture needs at least as many samples as components")
        self.n_features_in_ = X.shape[1]
        self._prepare(X)
        init_params = self._initial_params(X)
        total_weight = X.shape[0] if weights is None else float(np.sum(weights))
        with (progress_bar(self.verbose, self.max_iter, desc=type(self).__name__) as bar,
              recording_interrupted(lambda partial: self._record_fit(partial, total_weight))):
            result = em.fit(
                self._model(), self._transform(X), key=_as_key(self.random_state),
                n_restarts=self._restarts(init_params), max_iter=self.max_iter, tol=self.tol,
                sample_weight=weights, labels=labels, init_params=init_params, e_step=self.e_step,
                m_step=self.m_step, optimizer=self.optimizer, progress=bar,
                checkpoint=self.checkpoint, resume=self.resume, accelerate=self.accelerate,
                dtype=None)  # the estimator's own dtype scope (estimators.params)
        return self._record_fit(result, total_weight)

    def _record_fit(self, result, total_weight: float):
        """Set the fitted attributes from a :class:`jaxem.FitResult` (in-memory or chunked fit);
        ``lower_bound_`` and ``history_`` are per unit of sample weight. Returns ``self``."""
        self._set_params_from(result.params)
        self.lower_bound_ = result.log_likelihood / total_weight
        self._record_run(result, per=total_weight)
        return self

    def fit_chunked(self, source, y=None, sample_weight=None, *, labels=None, chunk_size=None,
                    init_size: int = 65536, devices=None):
        """Fit by exact EM reading ``source`` in chunks, for data larger than memory.

        Args:
            source: ``[N, D]`` rows: an array, ``np.memmap``, ``.npy`` path, or a callable
                returning a fresh iterable of arrays (see :mod:`jaxem.data`).
            y, sample_weight, labels: as in :meth:`fit` (``y`` ignored).
            chunk_size: rows per chunk (peak memory grows with it, not with ``N``).
            init_size: rows the initialiser sees (a random sample).
            devices: ``None`` (one device), ``"all"`` or a list of devices to split chunks over.

        Returns:
            ``self``, fitted as by :meth:`fit` (see :func:`jaxem.estimators.chunked.fit_mixture`).
        """
        from .chunked import fit_mixture

        return fit_mixture(self, source, chunk_size=chunk_size, labels=labels,
                           sample_weight=sample_weight,
                           init_size=init_size, devices=devices)

    def fit_predict(self, X, y=None, sample_weight=None, labels=None) -> np.ndarray:
        """Fit, then return the most probable component of each row ``[N]`` (``y`` ignored)."""
        return self.fit(X, sample_weight=sample_weight, labels=labels).predict(X)

    # -- inference -------------------------------------------------------------------------------
    def _posterior(self, X):
        self._check_fitted()
        X = self._transform(self._validate(X, fitting=False))
        resp, row_ll = em.posterior_rows(self._model(), self._params(), to_device(X))
        return np.asarray(resp), np.asarray(row_ll)

    def predict_proba(self, X) -> np.ndarray:
        """Posterior probability of each component for each row, ``[N, K]``."""
        return self._posterior(X)[0]

    def predict(self, X) -> np.ndarray:
        """Most probable component of each row, ``[N]`` integers."""
        return np.argmax(self.predict_proba(X), axis=1)

    def score_samples(self, X) -> np.ndarray:
        """Log-likelihood ``log p(x_n)`` of each row, ``[N]``."""
        return self._posterior(X)[1]

    def score(self, X, y=None) -> float:
        """Mean per-row log-likelihood of ``X``."""
        return float(np.mean(self.score_samples(X)))

    def bic(self, X) -> float:
        """Bayesian information criterion on ``X`` (lower is better)."""
        # NaN passes here; score() decides whether this family accepts missing values.
        X = check_data(X, allow_nan=True)
        return -2 * self.score(X) * X.shape[0] + self._n_parameters() * math.log(X.shape[0])

    def aic(self, X) -> float:
        """Akaike information criterion on ``X`` (lower is better)."""
        return (-2 * self.score(X) * check_data(X, allow_nan=True).shape[0]
                + 2 * self._n_parameters())

    def standard_errors(self, X, sample_weight=None) -> dict:
        """Standard errors of the fitted attributes from the observed information on ``X``.

        Args:
            X: ``[N, D]`` the data the estimator was fitted to.
            sample_weight: the ``[N]`` weights it was fitted with, if any.

        Returns:
            ``{attribute name: array shaped like the attribute}``, e.g. ``weights_``, ``means_``,
            ``covariances_`` (see :func:`jaxem.standard_errors`; singular or ill-conditioned
            information raises or warns naming the parameter).
        """
        return uncertainty.estimator_standard_errors(self, X, sample_weight)

    def confidence_intervals(self, X, level: float = 0.95, sample_weight=None) -> dict:
        """Wald intervals: ``{attribute name: (lower, upper)}`` at ``level`` (see
        :meth:`standard_errors`)."""
        return uncertainty.intervals(self, self.standard_errors(X, sample_weight), level)

    def sample(self, n_samples: int = 1, random_state=None) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` rows from the fitted model.

        Returns:
            ``(X [n_samples, D], labels [n_samples])``.
        """
        self._check_fitted()
        n_samples = check_positive_int(n_samples, "n_samples")
        rng = np.random.default_rng(random_state)
        labels = self._sample_components(n_samples, rng)
        return self._sample_rows(labels, rng), labels

    def _sample_components(self, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        weights = np.asarray(self.weights_, dtype=np.float64)
        return rng.choice(len(weights), size=n_samples, p=weights / weights.sum())


class CentredCoordinates:
    """Mixin for a mixture estimator whose model works in coordinates centred on the data mean
    (``_offset [D]``, set from the fitting data): float32 moments stay accurate far from the
    origin. The family reports ``means_`` in the user's coordinates itself."""

    def _prepare(self, X: np.ndarray) -> None:
        self._offset = X.mean(axis=0)

    def _transform(self, X: np.ndarray) -> np.ndarray:
        return X - self._offset
