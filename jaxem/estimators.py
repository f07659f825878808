"""scikit-learn-style estimators over :func:`jaxem.fit`.

``fit`` returns ``self``; fitted attributes end in ``_``. The estimators hold hyperparameters and
fitted arrays only; all computation is the functional engine's.
"""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np

from . import em
from .models import bernoulli as bernoulli_family
from .models import gaussian as gaussian_family
from .validation import (
    NotFittedError,
    check_data,
    check_nonnegative_float,
    check_positive_int,
    check_sample_weight,
)


def _as_key(random_state):
    """A JAX key from ``None`` (fresh entropy from NumPy), an int, or a key."""
    if random_state is None:
        return jax.random.key(int(np.random.randint(0, 2**31 - 1)))
    if isinstance(random_state, (int, np.integer)):
        return jax.random.key(int(random_state))
    return random_state


class _Mixture:
    """Shared machinery of the mixture estimators (not public)."""

    _fitted_attribute = "weights_"

    # -- scikit-learn parameter protocol -------------------------------------------------------
    @classmethod
    def _param_names(cls):
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        """Hyperparameters as a dict (scikit-learn's protocol, so ``clone`` and grid search work)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Set hyperparameters; returns ``self``."""
        for name, value in params.items():
            if name not in self._param_names():
                raise ValueError(f"{type(self).__name__} has no parameter {name!r}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- hooks for the families ------------------------------------------------------------------
    def _check_hyperparameters(self) -> None:
        check_positive_int(self.n_components, "n_components")
        check_positive_int(self.n_restarts, "n_restarts")
        check_positive_int(self.max_iter, "max_iter")
        check_nonnegative_float(self.tol, "tol")
        if self.m_step not in ("auto", "closed_form", "gradient"):
            raise ValueError(f"m_step must be 'auto', 'closed_form' or 'gradient', got "
                             f"{self.m_step!r}")

    def _model(self):
        raise NotImplementedError

    def _check_values(self, X: np.ndarray) -> None:
        """Family-specific checks on the values of validated 2-D data."""

    def _params(self):
        """The engine's parameter pytree, built from the fitted attributes."""
        raise NotImplementedError

    def _set_params_from(self, params) -> None:
        raise NotImplementedError

    def _initial_params(self, X: np.ndarray):
        """User-given starting parameters, or ``None`` to use the model's initialiser."""
        return None

    def _transform(self, X: np.ndarray) -> np.ndarray:
        """Map validated data into the coordinates the parameters live in."""
        return X

    def _n_parameters(self) -> int:
        raise NotImplementedError

    # -- data checks -----------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, self._fitted_attribute):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(X) before using it")

    def _validate(self, X, fitting: bool) -> np.ndarray:
        name = type(self).__name__
        X = check_data(X)
        if X.ndim == 1:
            raise ValueError(f"{name} expects 2-D data [n_samples, n_features], got 1-D shape "
                             f"{X.shape}; use X.reshape(-1, 1) for a single feature")
        if X.ndim != 2:
            raise ValueError(f"{name} expects 2-D data [n_samples, n_features], got shape "
                             f"{X.shape}")
        if not fitting and X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {name} was fitted with "
                             f"{self.n_features_in_} features")
        self._check_values(X)
        return X

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None):
        """Fit by EM with ``n_restarts`` vmapped starts; keep the best.

        Args:
            X: ``[N, D]`` data.
            y: ignored (scikit-learn convention).
            sample_weight: optional ``[N]`` non-negative frequency weights.

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
        result = em.fit(
            self._model(), self._transform(X), key=_as_key(self.random_state),
            n_restarts=1 if init_params is not None else self.n_restarts,
            max_iter=self.max_iter, tol=self.tol, sample_weight=weights,
            init_params=init_params, m_step=self.m_step, optimizer=self.optimizer)
        total_weight = X.shape[0] if weights is None else float(np.sum(weights))
        best = result.best_restart
        self._set_params_from(result.params)
        self.converged_ = bool(result.converged[best])
        self.n_iter_ = int(result.n_iter[best])
        self.lower_bound_ = result.log_likelihood / total_weight
        self.history_ = result.history[best] / total_weight
        self.fit_result_ = result
        return self

    def _prepare(self, X: np.ndarray) -> None:
        """Record data-dependent constants before fitting (none by default)."""

    def fit_predict(self, X, y=None, sample_weight=None) -> np.ndarray:
        """Fit, then return the most probable component of each row ``[N]``."""
        return self.fit(X, sample_weight=sample_weight).predict(X)

    # -- inference -------------------------------------------------------------------------------
    def _posterior(self, X):
        self._check_fitted()
        X = self._transform(self._validate(X, fitting=False))
        Xj = jnp.asarray(X, dtype=em.default_float_dtype())
        resp, row_ll = em.posterior_rows(self._model(), self._params(), Xj)
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
        X = check_data(X)
        return -2 * self.score(X) * X.shape[0] + self._n_parameters() * math.log(X.shape[0])

    def aic(self, X) -> float:
        """Akaike information criterion on ``X`` (lower is better)."""
        return -2 * self.score(X) * check_data(X).shape[0] + 2 * self._n_parameters()

    def _sample_components(self, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        weights = np.asarray(self.weights_, dtype=np.float64)
        return rng.choice(len(weights), size=n_samples, p=weights / weights.sum())


class GaussianMixture(_Mixture):
    """Gaussian mixture fitted by EM (scikit-learn's ``GaussianMixture`` API).

    Args:
        n_components: number of components ``K``.
        covariance_type: ``"full"`` (``covariances_ [K, D, D]``), ``"diag"`` (``[K, D]``),
            ``"spherical"`` (``[K]``) or ``"tied"`` (``[D, D]``).
        tol: convergence threshold on the relative change of the total log-likelihood.
        reg_covar: non-negative value added to the diagonal of every covariance.
        max_iter: EM iterations per restart.
        n_restarts: random starts, run together as one vmapped program; the best is kept.
        init_params: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``.
        weights_init, means_init, precisions_init: optional starting parameters in
            scikit-learn's shapes; when any is given the fit runs once from them (missing ones
            default to equal weights and the data's variance).
        random_state: ``None``, an int seed, or a JAX key.
        m_step: ``"auto"``/``"closed_form"`` or ``"gradient"`` (optax ascent on Q).
        optimizer: optax transformation for the gradient M-step (default L-BFGS).

    Fitted attributes:
        ``weights_ [K]``, ``means_ [K, D]``, ``covariances_``, ``precisions_``,
        ``precisions_cholesky_`` (scikit-learn's upper-triangular convention), ``converged_``,
        ``n_iter_``, ``lower_bound_`` (final mean log-likelihood per sample), ``history_``
        (``[max_iter]`` mean log-likelihood per iteration, NaN after stopping),
        ``fit_result_`` (the full :class:`jaxem.FitResult`, in centred coordinates).
    """

    def __init__(self, n_components: int = 1, *, covariance_type: str = "full",
                 tol: float = 1e-6, reg_covar: float = 1e-6, max_iter: int = 100,
                 n_restarts: int = 1, init_params: str = "kmeans", weights_init=None,
                 means_init=None, precisions_init=None, random_state=None,
                 m_step: str = "auto", optimizer=None):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_restarts = n_restarts
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.m_step = m_step
        self.optimizer = optimizer

    def _check_hyperparameters(self) -> None:
        super()._check_hyperparameters()
        check_nonnegative_float(self.reg_covar, "reg_covar")
        if self.covariance_type not in gaussian_family.COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {gaussian_family.COVARIANCE_TYPES},"
                             f" got {self.covariance_type!r}")
        if self.init_params not in gaussian_family.INIT_METHODS:
            raise ValueError(f"init_params must be one of {gaussian_family.INIT_METHODS}, got "
                             f"{self.init_params!r}")

    def _model(self):
        return gaussian_family.gaussian_mixture(
            self.n_components, self.covariance_type, float(self.reg_covar), self.init_params)

    def _prepare(self, X: np.ndarray) -> None:
        # Fitting in coordinates centred on the data mean keeps float32 products accurate for
        # data far from the origin; means_ are reported in the user's coordinates.
        self._offset = X.mean(axis=0)

    def _transform(self, X: np.ndarray) -> np.ndarray:
        return X - self._offset

    def _params(self):
        dtype = em.default_float_dtype()
        A = np.asarray(self.precisions_cholesky_)
        if self.covariance_type in ("full", "tied"):
            A = np.swapaxes(A, -1, -2)
        return {"weights": jnp.asarray(self.weights_, dtype),
                "means": jnp.asarray(np.asarray(self.means_) - self._offset, dtype),
                "prec_chol": jnp.asarray(A, dtype)}

    def _set_params_from(self, params) -> None:
        A = np.asarray(params["prec_chol"])
        self.weights_ = np.asarray(params["weights"])
        self.means_ = np.asarray(params["means"]) + self._offset.astype(A.dtype)
        self.covariances_ = np.asarray(
            gaussian_family.covariances_from_prec_chol(params["prec_chol"], self.covariance_type))
        if self.covariance_type in ("full", "tied"):
            self.precisions_cholesky_ = np.swapaxes(A, -1, -2)
            self.precisions_ = self.precisions_cholesky_ @ A
        else:
            self.precisions_cholesky_ = A
            self.precisions_ = A * A

    def _initial_params(self, X: np.ndarray):
        if self.weights_init is None and self.means_init is None and self.precisions_init is None:
            return None
        k, d = self.n_components, X.shape[1]
        ct = self.covariance_type
        weights = (np.full(k, 1.0 / k) if self.weights_init is None
                   else np.asarray(self.weights_init, dtype=np.float64))
        means = (np.broadcast_to(self._offset, (k, d)) if self.means_init is None
                 else np.asarray(self.means_init, dtype=np.float64))
        if self.precisions_init is None:
            var = X.var(axis=0) + self.reg_covar
            prec = {"full": np.broadcast_to(np.diag(1 / var), (k, d, d)), "tied": np.diag(1 / var),
                    "diag": np.broadcast_to(1 / var, (k, d)),
                    "spherical": np.full(k, 1 / var.mean())}[ct]
        else:
            prec = np.asarray(self.precisions_init, dtype=np.float64)
        expected = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[ct]
        for name, arr, shape in (("weights_init", weights, (k,)), ("means_init", means, (k, d)),
                                 ("precisions_init", prec, expected)):
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
        if ct in ("full", "tied"):
            # precision Λ = A^T A with A = chol(Λ^{-1})^{-1}, lower triangular.
            cov_chol = np.linalg.cholesky(np.linalg.inv(prec))
            A = np.linalg.inv(cov_chol)
        else:
            A = np.sqrt(prec)
        dtype = em.default_float_dtype()
        return {"weights": jnp.asarray(weights / weights.sum(), dtype),
                "means": jnp.asarray(means - self._offset, dtype),
                "prec_chol": jnp.asarray(A, dtype)}

    def _n_parameters(self) -> int:
        k, d = self.n_components, self.n_features_in_
        cov = {"full": k * d * (d + 1) // 2, "diag": k * d, "tied": d * (d + 1) // 2,
               "spherical": k}[self.covariance_type]
        return cov + k * d + k - 1

    def sample(self, n_samples: int = 1, random_state=None) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` rows from the fitted mixture.

        Returns:
            ``(X [n_samples, D], labels [n_samples])``.
        """
        self._check_fitted()
        n_samples = check_positive_int(n_samples, "n_samples")
        rng = np.random.default_rng(random_state)
        labels = self._sample_components(n_samples, rng)
        k, d = self.n_components, self.n_features_in_
        cov = np.asarray(self.covariances_, dtype=np.float64)
        cov = {"full": cov, "tied": np.broadcast_to(cov, (k, d, d)),
               "diag": cov[:, :, None] * np.eye(d), "spherical": cov[:, None, None] * np.eye(d)
               }[self.covariance_type]
        chol = np.linalg.cholesky(cov)
        z = rng.standard_normal((n_samples, d))
        X = np.asarray(self.means_, np.float64)[labels] + np.einsum("nij,nj->ni", chol[labels], z)
        return X, labels


class BernoulliMixture(_Mixture):
    """Mixture of independent Bernoulli features (binomial counts with ``n_trials > 1``).

    Args:
        n_components: number of components ``K``.
        n_trials: trials per feature; data must be integers in ``[0, n_trials]``.
        tol, max_iter, n_restarts, random_state, m_step, optimizer: as in
            :class:`GaussianMixture`.
        init_params: ``"kmeans"`` or ``"random"``.

    Fitted attributes:
        ``weights_ [K]``, ``probs_ [K, D]``, ``converged_``, ``n_iter_``, ``lower_bound_``,
        ``history_``, ``fit_result_``.
    """

    def __init__(self, n_components: int = 1, *, n_trials: int = 1, tol: float = 1e-6,
                 max_iter: int = 100, n_restarts: int = 1, init_params: str = "kmeans",
                 random_state=None, m_step: str = "auto", optimizer=None):
        self.n_components = n_components
        self.n_trials = n_trials
        self.tol = tol
        self.max_iter = max_iter
        self.n_restarts = n_restarts
        self.init_params = init_params
        self.random_state = random_state
        self.m_step = m_step
        self.optimizer = optimizer

    def _check_hyperparameters(self) -> None:
        super()._check_hyperparameters()
        check_positive_int(self.n_trials, "n_trials")
        if self.init_params not in bernoulli_family.INIT_METHODS:
            raise ValueError(f"init_params must be one of {bernoulli_family.INIT_METHODS}, got "
                             f"{self.init_params!r}")

    def _check_values(self, X: np.ndarray) -> None:
        bad = (X < 0) | (X > self.n_trials) | (X != np.round(X))
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            allowed = "0 or 1" if self.n_trials == 1 else f"integers in [0, {self.n_trials}]"
            raise ValueError(f"{type(self).__name__} needs data in {allowed}; got {X[row, col]} "
                             f"at row {row}, column {col}")

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
