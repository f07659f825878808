"""scikit-learn-style mixtures whose components are products of per-feature families.

:class:`FeatureMixture` is the machinery the single-family estimators (``PoissonMixture``,
``ExponentialMixture``, ``GammaMixture``, ``CategoricalMixture``) and :class:`IndependentMixture`
share: value checks per feature group, fitted attributes named after the family's parameters
(``rates`` becomes ``rates_``), BIC parameter counts and sampling.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..core import inference as em
from ..core.validation import check_data
from ..models import independent as independent_family
from .base import MixtureEstimator
from .checks import check_concentration, one_of


class FeatureMixture(MixtureEstimator):
    """Base of the product-form mixture estimators (not used directly).

    A single-family subclass sets ``_family_keys`` (the parameter names of its feature, e.g.
    ``("rates",)``; they bring the hyperparameters ``weights_init`` and ``<key>_init``),
    ``_feature`` (the feature's :mod:`jaxem.models.distributions` factory) and ``_mixture`` (the
    model factory ``(n_components, *family_args, init, dirichlet_alpha)``), both as
    ``staticmethod``; :class:`IndependentMixture` implements ``_specs`` and ``_model`` instead.
    """

    _parameters = {"init_params": ..., "dirichlet_alpha": 1.0}
    _constraints = {"init_params": one_of(independent_family.INIT_METHODS),
                    "dirichlet_alpha": check_concentration}
    _family_keys: tuple[str, ...] = ()

    @classmethod
    def _own_parameters(cls) -> dict:
        keys = cls.__dict__.get("_family_keys", ())
        starts = {"dirichlet_alpha": ..., "weights_init": None, **{k + "_init": None for k in keys}}
        return {**(starts if keys else {}), **super()._own_parameters()}

    @property
    def _param_keys(self) -> tuple[str, ...]:
        return ("weights",) + self._family_keys

    def _family_args(self) -> tuple:
        """Arguments of ``_feature`` and ``_mixture`` after ``n_components``."""
        return ()

    def _specs(self):
        return ((self._feature(*self._family_args()), None),)

    def _model(self):
        return self._mixture(self.n_components, *self._family_args(), self.init_params,
                             float(self.dirichlet_alpha))

    def _check_values(self, X: np.ndarray) -> None:
        independent_family.check_feature_values(self._specs(), X, type(self).__name__)

    def _initial_params(self, X: np.ndarray):
        given = {k: getattr(self, k + "_init") for k in self._param_keys}
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

    def _sample_rows(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        X = np.empty((len(labels), self.n_features_in_))
        for (feature, cols), params in zip(self._specs(), self._group_params(), strict=True):
            cols = slice(None) if cols is None else list(cols)
            X[:, cols] = feature.sample(rng, {k: v[labels] for k, v in params.items()})
        return X


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
        tol, max_iter, n_restarts, random_state, m_step, optimizer, e_step, accelerate, verbose: as in
            :class:`GaussianMixture`.
        init_params: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``.
        dirichlet_alpha: symmetric Dirichlet prior ``α >= 1`` on the weights (MAP when > 1).

    Fitted attributes:
        ``weights_ [K]``, ``feature_params_`` (one dict of ``[K, D_g, ...]`` arrays per group, keys as
        in :mod:`jaxem.models.distributions`), ``converged_``, ``n_iter_``, ``lower_bound_``,
        ``history_``, ``fit_result_``.
    """

    _fitted_attribute = "feature_params_"
    _input_tags = {"allow_nan": True}  # NaN entries are marginalised out
    _parameters = {"n_components": ..., "features": ()}

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
        if not fitting:
            self._check_n_features(X.shape[1], self.n_features_in_)
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
