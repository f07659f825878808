"""scikit-learn-style mixtures of linear regressions and mixtures of experts over :func:`jaxem.fit`.

Both take inputs and a target separately: ``fit(X, y, sample_weight=None, labels=None)`` with
``X [N, D]`` and ``y [N]``; ``labels`` are optional partial component labels (``-1`` unknown) for
semi-supervised EM. Internally a row is ``[x, y]``, centred on the training means so that float32
least squares stay accurate far from the origin; coefficients are reported in the user's units.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ..core import inference as em
from ..core.validation import check_data, check_nonnegative_float
from ..models import experts as experts_family
from ..models import regression as regression_family
from .base import MixtureEstimator
from .checks import one_of


class _RegressionMixture(MixtureEstimator):
    """Shared machinery: the joint rows, the centring, coefficients in user units."""

    _fitted_attribute = "coef_"
    _parameters = {"n_components": ..., "reg_var": 1e-6}
    _constraints = {"reg_var": check_nonnegative_float,
                    "init_params": one_of(regression_family.INIT_METHODS)}

    def _model(self):
        return self._mixture(self.n_components, True, float(self.reg_var), self.init_params)

    def _joint(self, X, y) -> np.ndarray:
        """Validated ``[N, D + 1]`` rows ``[x, y]``."""
        name = type(self).__name__
        X = check_data(X, name="X")
        if X.ndim != 2:
            raise ValueError(f"{name} expects 2-D inputs X [n_samples, n_features], got shape "
                             f"{X.shape}; use X.reshape(-1, 1) for a single feature")
        y = check_data(y, name="y")
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise ValueError(f"y must have shape ({X.shape[0]},) to match X, got {y.shape}")
        if hasattr(self, "n_inputs_"):
            self._check_n_features(X.shape[1], self.n_inputs_)
        return np.concatenate([X, y[:, None].astype(X.dtype)], axis=1)

    def fit(self, X, y, sample_weight=None, labels=None):
        """Fit by EM with ``n_restarts`` vmapped starts; keep the best.

        Args:
            X: ``[N, D]`` inputs.
            y: ``[N]`` targets.
            sample_weight: optional ``[N]`` non-negative frequency weights.
            labels: optional ``[N]`` partial labels: the component of a row when known, ``-1``
                when not (semi-supervised EM).

        Returns:
            ``self``, with the fitted attributes set.
        """
        for name in ("n_inputs_", "n_features_in_"):
            self.__dict__.pop(name, None)
        Z = self._joint(X, y)
        super().fit(Z, sample_weight=sample_weight, labels=labels)
        self.n_inputs_ = self.n_features_in_ = Z.shape[1] - 1
        return self

    def _validate(self, X, fitting: bool) -> np.ndarray:
        # Rows arrive already joined by _joint; the base checks then see D + 1 columns.
        X = check_data(X)
        self._check_values(X)
        return X

    def _prepare(self, Z: np.ndarray) -> None:
        self._offset = Z.mean(axis=0)

    def _transform(self, Z: np.ndarray) -> np.ndarray:
        return Z - self._offset

    def _to_user(self, coef: np.ndarray) -> np.ndarray:
        """Centred-coordinate ``[.., D + 1]`` coefficients (intercept last) to user units."""
        x_off, y_off = self._offset[:-1], self._offset[-1]
        slopes, intercept = coef[..., :-1], coef[..., -1]
        return np.concatenate([slopes, (intercept + y_off - slopes @ x_off)[..., None]], axis=-1)

    def _to_centred(self, coef: np.ndarray, target_offset: float) -> np.ndarray:
        x_off = self._offset[:-1]
        slopes, intercept = coef[..., :-1], coef[..., -1]
        return np.concatenate([slopes, (intercept - target_offset + slopes @ x_off)[..., None]],
                              axis=-1)

    def _set_experts(self, params) -> None:
        full = self._to_user(np.asarray(params["coef"], dtype=np.float64))
        self.coef_, self.intercept_ = full[:, :-1], full[:, -1]
        self.sigma_ = np.asarray(params["sigma"])

    def _expert_params(self) -> dict:
        dtype = em.default_float_dtype()
        coef = self._to_centred(np.c_[self.coef_, self.intercept_], self._offset[-1])
        return {"coef": jnp.asarray(coef, dtype), "sigma": jnp.asarray(self.sigma_, dtype)}

    def _expert_means(self, X) -> np.ndarray:
        """``[N, K]`` each expert's prediction ``β_k · x + b_k``."""
        return np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_

    # -- inference on (X, y) pairs ---------------------------------------------------------------
    def predict_proba(self, X, y) -> np.ndarray:
        """Posterior probability of each component for each ``(x, y)`` pair, ``[N, K]``."""
        return self._posterior(self._joint(X, y))[0]

    def predict_component(self, X, y) -> np.ndarray:
        """Most probable component of each ``(x, y)`` pair, ``[N]`` integers."""
        return np.argmax(self.predict_proba(X, y), axis=1)

    def score_samples(self, X, y) -> np.ndarray:
        """Log-likelihood ``log p(y_n | x_n)`` of each pair, ``[N]``."""
        return self._posterior(self._joint(X, y))[1]

    def score(self, X, y) -> float:
        """Mean conditional log-likelihood of ``y`` given ``X`` (not scikit-learn's R²)."""
        return float(np.mean(self.score_samples(X, y)))

    def bic(self, X, y) -> float:
        """Bayesian information criterion on ``(X, y)`` (lower is better)."""
        n = len(np.asarray(y))
        return -2 * self.score(X, y) * n + self._n_parameters() * math.log(n)

    def aic(self, X, y) -> float:
        """Akaike information criterion on ``(X, y)`` (lower is better)."""
        return -2 * self.score(X, y) * len(np.asarray(y)) + 2 * self._n_parameters()

    def fit_predict(self, X, y, sample_weight=None, labels=None) -> np.ndarray:
        """Fit, then return the most probable component of each pair ``[N]``."""
        return self.fit(X, y, sample_weight, labels).predict_component(X, y)

    def _component_probabilities(self, X) -> np.ndarray:
        raise NotImplementedError

    def predict(self, X) -> np.ndarray:
        """The conditional mean ``E[y | x] = Σ_k p(z=k | x) (β_k · x + b_k)``, ``[N]``."""
        self._check_fitted()
        X = self._joint(X, np.zeros(len(np.asarray(X))))[:, :-1]
        return np.sum(self._component_probabilities(X) * self._expert_means(X), axis=1)

    def sample(self, X, random_state=None) -> tuple[np.ndarray, np.ndarray]:
        """Draw a target for each input row from the fitted conditional mixture.

        Returns:
            ``(y [N], labels [N])``.
        """
        self._check_fitted()
        X = self._joint(X, np.zeros(len(np.asarray(X))))[:, :-1]
        rng = np.random.default_rng(random_state)
        probs = self._component_probabilities(X)
        cdf = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
        labels = np.minimum((rng.uniform(size=(len(X), 1)) > cdf).sum(axis=1), probs.shape[1] - 1)
        mean = self._expert_means(X)[np.arange(len(X)), labels]
        return mean + np.asarray(self.sigma_, np.float64)[labels] * rng.standard_normal(len(X)), labels


class MixtureOfLinearRegressions(_RegressionMixture):
    """Mixture of linear regressions ``y | x ~ Σ_k w_k N(β_k · x + b_k, σ_k²)`` fitted by EM.

    Args:
        n_components: number of regression lines (hyperplanes) ``K``.
        reg_var: non-negative value added to every noise variance in the M-step.
        tol, max_iter, n_restarts, random_state, m_step, optimizer, e_step, accelerate, verbose: as in
            :class:`jaxem.GaussianMixture`.
        init_params: starting responsibilities from clustering the rows ``[x, y]``:
            ``"kmeans"``, ``"k-means++"``, ``"random_from_data"`` or ``"random"``.

    Fitted attributes:
        ``weights_ [K]``, ``coef_ [K, D]``, ``intercept_ [K]``, ``sigma_ [K]`` (noise standard
        deviations), ``converged_``, ``n_iter_``, ``lower_bound_``, ``history_``, ``fit_result_``.
    """

    _mixture = staticmethod(regression_family.mixture_of_linear_regressions)

    def _set_params_from(self, params) -> None:
        self.weights_ = np.asarray(params["weights"])
        self._set_experts(params)

    def _params(self):
        return {"weights": jnp.asarray(self.weights_, em.default_float_dtype()),
                **self._expert_params()}

    def _n_parameters(self) -> int:
        k, d = self.n_components, self.n_inputs_
        return k * (d + 1) + k + k - 1

    def _component_probabilities(self, X) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.weights_, np.float64), (len(X), self.n_components))


class MixtureOfExperts(_RegressionMixture):
    """Mixture of linear-Gaussian experts with a softmax-regression gate on the inputs.

    ``p(y | x) = Σ_k softmax_k(V [x, 1]) N(y; β_k · x + b_k, σ_k²)``. The experts' M-step is
    weighted least squares; the gate's is Böhning's bound-optimisation step (both inside the
    engine's closed-form pass), or ``m_step="gradient"`` for optax on everything.

    Args: as :class:`MixtureOfLinearRegressions`.

    Fitted attributes:
        ``gate_coef_ [K, D]`` and ``gate_intercept_ [K]`` (the last component's are 0),
        ``coef_ [K, D]``, ``intercept_ [K]``, ``sigma_ [K]``, ``converged_``, ``n_iter_``,
        ``lower_bound_``, ``history_``, ``fit_result_``.
    """

    _parameters = {"n_components": 2, "max_iter": 200}
    _mixture = staticmethod(experts_family.mixture_of_experts)

    def _set_params_from(self, params) -> None:
        gate = np.asarray(params["gate"], dtype=np.float64)
        gate = self._to_user(np.concatenate([gate, np.zeros_like(gate[:1])]))
        # The gate has no target: undo the target shift _to_user applied to its intercepts.
        gate[:, -1] -= self._offset[-1]
        self.gate_coef_, self.gate_intercept_ = gate[:, :-1], gate[:, -1]
        self._set_experts(params)

    def _params(self):
        gate = self._to_centred(np.c_[self.gate_coef_, self.gate_intercept_], 0.0)
        gate = gate[:-1] - gate[-1]
        return {"gate": jnp.asarray(gate, em.default_float_dtype()), **self._expert_params()}

    def _n_parameters(self) -> int:
        k, d = self.n_components, self.n_inputs_
        return k * (d + 1) + k + (k - 1) * (d + 1)

    def _component_probabilities(self, X) -> np.ndarray:
        """``[N, K]`` gate probabilities ``p(z=k | x)``."""
        logits = np.asarray(X, np.float64) @ self.gate_coef_.T + self.gate_intercept_
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    def gate_proba(self, X) -> np.ndarray:
        """Gate probabilities ``p(z=k | x)`` of each input row, ``[N, K]``."""
        self._check_fitted()
        return self._component_probabilities(self._joint(X, np.zeros(len(np.asarray(X))))[:, :-1])
