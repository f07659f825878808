"""scikit-learn-style mixtures whose components are products of per-feature families.

:class:`FeatureMixture` is the machinery the single-family estimators (``PoissonMixture``,
``ExponentialMixture``, ``GammaMixture``, ``CategoricalMixture``) and :class:`IndependentMixture`
share: value checks per feature group, fitted attributes named after the family's parameters
(``rates`` becomes ``rates_``), BIC parameter counts and sampling.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .. import em
from ..models import independent as independent_family
from ..validation import check_data, check_positive_int
from ._base import MixtureEstimator


class FeatureMixture(MixtureEstimator):
    """Base of the product-form mixture estimators (not used directly).

    Subclasses set ``_family_keys`` (the parameter names of their single feature, e.g.
    ``("rates",)``; empty for :class:`IndependentMixture`) and implement ``_specs()``.
    """

    _family_keys: tuple[str, ...] = ()

    def _specs(self):
        raise NotImplementedError

    def _model(self):
        raise NotImplementedError

    def _check_hyperparameters(self) -> None:
        super()._check_hyperparameters()
        if self.init_params not in independent_family.INIT_METHODS:
            raise ValueError(f"init_params must be one of {independent_family.INIT_METHODS}, got "
                             f"{self.init_params!r}")
        alpha = self.dirichlet_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 1:
            raise ValueError(f"dirichlet_alpha must be a number >= 1, got {alpha!r}")

    def _check_values(self, X: np.ndarray) -> None:
        independent_family.check_feature_values(self._specs(), X, type(self).__name__)

    # -- parameters ----------------------------------------------------------------------------
    def _params(self):
        dtype = em.default_float_dtype()
        params = {"weights": jnp.asarray(self.weights_, dtype)}
        params.update({k: jnp.asarray(getattr(self, k + "_"), dtype) for k in self._family_keys})
        return params

    def _set_params_from(self, params) -> None:
        self.weights_ = np.asarray(params["weights"])
        for k in self._family_keys:
            setattr(self, k + "_", np.asarray(params[k]))

    def _initial_params(self, X: np.ndarray):
        given = {k: getattr(self, k + "_init") for k in ("weights",) + self._family_keys}
        if all(v is None for v in given.values()):
            return None
        (feature, cols), = self._specs()
        k = self.n_components
        defaults = feature.default_params(k, X.shape[1], em.default_float_dtype())
        params = {"weights": np.full(k, 1.0 / k)}
        params.update({key: np.asarray(v) for key, v in defaults.items()})
        for key, value in given.items():
            if value is None:
                continue
            value = np.asarray(value, dtype=np.float64)
            if value.shape != params[key].shape:
                raise ValueError(f"{key}_init must have shape {params[key].shape}, got "
                                 f"{value.shape}")
            params[key] = value
        params["weights"] = params["weights"] / params["weights"].sum()
        dtype = em.default_float_dtype()
        return {key: jnp.asarray(v, dtype) for key, v in params.items()}

    def _group_params(self) -> list[dict]:
        return [{k: np.asarray(getattr(self, k + "_"), np.float64) for k in self._family_keys}]

    def _n_parameters(self) -> int:
        return independent_family.n_free_parameters(self.n_components, self._specs(),
                                                    self.n_features_in_)

    def sample(self, n_samples: int = 1, random_state=None) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` rows; returns ``(X [n_samples, D], labels [n_samples])``."""
        self._check_fitted()
        n_samples = check_positive_int(n_samples, "n_samples")
        rng = np.random.default_rng(random_state)
        labels = self._sample_components(n_samples, rng)
        X = np.empty((n_samples, self.n_features_in_))
        for (feature, cols), params in zip(self._specs(), self._group_params(), strict=True):
            cols = slice(None) if cols is None else list(cols)
            X[:, cols] = feature.sample(rng, {k: v[labels] for k, v in params.items()})
        return X, labels


class IndependentMixture(FeatureMixture):
    """Mixture whose component density is a product of per-feature families chosen by the user.

    Missing values (NaN) are marginalised out exactly: a row's NaN entries drop out of its
    likelihood and out of the statistics. A row with no observed value is an error.

    Args:
        n_components: number of components ``K``.
        features: groups ``(family, columns)`` or ``(family, columns, options)``, e.g.
            ``[("gaussian", [0, 1, 2]), ("poisson", [3]), ("bernoulli", range(4, 10))]``; families
            ``"gaussian"`` (option ``min_variance``), ``"poisson"``, ``"exponential"``,
            ``"gamma"``, ``"bernoulli"``, ``"categorical"`` (option ``n_categories``, inferred
            from the data as ``max + 1`` per column when omitted). Every column must be in a group.
        tol, max_iter, n_restarts, random_state, m_step, optimizer, e_step, verbose: as in
            :class:`GaussianMixture`.
        init_params: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``.
        dirichlet_alpha: symmetric Dirichlet prior ``α >= 1`` on the weights (MAP when > 1).

    Fitted attributes:
        ``weights_ [K]``, ``feature_params_`` (one dict of ``[K, D_g, ...]`` arrays per group, keys as
        in :mod:`jaxem.models._distributions`), ``converged_``, ``n_iter_``, ``lower_bound_``,
        ``history_``, ``fit_result_``.
    """

    _fitted_attribute = "feature_params_"

    def __init__(self, n_components: int = 1, *, features=(), tol: float = 1e-6,
                 max_iter: int = 100, n_restarts: int = 1, init_params: str = "kmeans",
                 dirichlet_alpha: float = 1.0, random_state=None, m_step: str = "auto",
                 optimizer=None,
                 e_step="soft", verbose: int = 0):
        self.n_components = n_components
        self.features = features
        self.tol = tol
        self.max_iter = max_iter
        self.n_restarts = n_restarts
        self.init_params = init_params
        self.dirichlet_alpha = dirichlet_alpha
        self.random_state = random_state
        self.m_step = m_step
        self.optimizer = optimizer
        self.e_step = e_step
        self.verbose = verbose

    def _groups(self, X: np.ndarray | None = None) -> list:
        """User groups with categorical counts filled in (from ``X`` when fitting)."""
        groups = []
        for group in (list(self.features.items()) if isinstance(self.features, dict)
                      else list(self.features)):
            group = tuple(group)
            if len(group) == 2 and group[0] == "categorical":
                if X is None:
                    counts = self._n_categories[len(groups)]
                else:
                    values = X[:, list(np.atleast_1d(group[1]))]
                    counts = tuple(int(np.nanmax(v)) + 1 if not np.isnan(v).all() else 1
                                   for v in values.T)
                group = group + ({"n_categories": counts},)
            groups.append(group)
        return groups

    def _specs(self):
        if not hasattr(self, "_specs_cache"):  # after jem.load: rebuilt from the stored state
            self._specs_cache = independent_family.normalize_features(self._groups(None))
        return self._specs_cache

    def _validate(self, X, fitting: bool) -> np.ndarray:
        # NaN marks a missing value here (the base class refuses it); infinities are still errors.
        name = type(self).__name__
        X = check_data(X, allow_nan=True, ndim=2)
        if not fitting and X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {name} was fitted with "
                             f"{self.n_features_in_} features")
        empty_rows = np.isnan(X).all(axis=1)
        if empty_rows.any():
            raise ValueError(f"{name}: row {int(np.argmax(empty_rows))} has no observed value (all "
                             f"NaN); drop it ({int(empty_rows.sum())} such rows)")
        if fitting:
            empty_cols = np.isnan(X).all(axis=0)
            if empty_cols.any():
                raise ValueError(f"{name}: column {int(np.argmax(empty_cols))} has no observed "
                                 "value (all NaN)")
            self._set_specs(X)
        self._check_values(X)
        return X

    def _set_specs(self, X: np.ndarray) -> None:
        groups = self._groups(X)
        specs = independent_family.normalize_features(groups)
        covered = sorted(c for _, cols in specs for c in cols)
        if covered != list(range(X.shape[1])):
            missing = sorted(set(range(X.shape[1])) - set(covered))
            raise ValueError(f"{type(self).__name__}: every column needs a feature group; "
                             f"columns {missing or covered} are not covered by features")
        self._n_categories = [g[2]["n_categories"] if g[0] == "categorical" else None
                              for g in groups]
        self._specs_cache = specs

    def _model(self):
        return independent_family.product_mixture(
            self.n_components, self._specs(), missing=True, init=self.init_params,
            dirichlet_alpha=float(self.dirichlet_alpha))

    def _params(self):
        dtype = em.default_float_dtype()
        return {"weights": jnp.asarray(self.weights_, dtype),
                "features": tuple({k: jnp.asarray(v, dtype) for k, v in p.items()}
                                  for p in self.feature_params_)}

    def _set_params_from(self, params) -> None:
        self.weights_ = np.asarray(params["weights"])
        self.feature_params_ = [{k: np.asarray(v) for k, v in p.items()}
                                for p in params["features"]]

    def _initial_params(self, X: np.ndarray):
        return None

    def _group_params(self) -> list[dict]:
        return [{k: np.asarray(v, np.float64) for k, v in p.items()} for p in self.feature_params_]
