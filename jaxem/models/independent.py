"""Mixtures whose components are products of per-feature families (pomegranate's
``IndependentComponents``), and the one mechanism every single-family mixture is built on.

Parameters (a dict):
    ``weights``   ``[K]`` mixing weights.
    ``features``  a tuple with one parameter dict per feature group, in the order given (see
                  :mod:`jaxem.models.distributions` for each family's keys and shapes).
Single-family mixtures (``poisson_mixture``, ...) put the family's keys next to ``weights``
instead, e.g. ``{"weights": [K], "rates": [K, D]}``.

Missing values: with ``missing=True`` NaN entries are marginalised out exactly (a feature's term is
dropped for a row where it is NaN, and it adds nothing to that column's statistics). A row that is
entirely NaN then contributes only its mixing weights; estimators refuse such rows.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..core import blocks
from ..core import constraints as C
from ..core.model import Model
from ..core.validation import check_positive_int, negative_note
from . import distributions as dist
from . import init as initialisers
from .common import dirichlet_log_prior, mixing_weights

Array = jax.Array

INIT_METHODS = initialisers.INIT_METHODS

# Share of every initial responsibility spread uniformly over the components: no component or
# column starts with no data, so every starting parameter is a real estimate.
_INIT_SMOOTHING = 0.05

Specs = tuple  # ((Feature, columns tuple | None), ...)


def _groups(X: Array, specs: Specs, missing: bool):
    """Per group ``(X_g [N, D_g], M_g [N, D_g] | None)``; missing entries hold the family's fill."""
    out = []
    for feature, cols in specs:
        if cols is not None and max(cols) >= X.shape[1]:
            raise ValueError(f"{feature.name} feature uses column {max(cols)} but the data have "
                             f"{X.shape[1]} columns")
        Xg = X if cols is None else X[:, np.asarray(cols)]
        if missing:
            observed = ~jnp.isnan(Xg)
            out.append((jnp.where(observed, Xg, feature.fill_value), observed.astype(X.dtype)))
        else:
            out.append((Xg, None))
    return out


def _unpack(params, specs: Specs, flat: bool):
    if flat:
        return params["weights"], ({k: v for k, v in params.items() if k != "weights"},)
    return params["weights"], tuple(params["features"])


def _pack(weights, group_params, flat: bool):
    if flat:
        return {"weights": weights, **group_params[0]}
    return {"weights": weights, "features": tuple(group_params)}


def _batch_log_joint(params, X, specs, flat, missing):
    weights, gparams = _unpack(params, specs, flat)
    total = jnp.log(weights)[None]
    for (feature, _), p, (Xg, Mg) in zip(specs, gparams, _groups(X, specs, missing), strict=True):
        total = total + feature.log_prob(p, Xg, Mg)
    return total


def _log_joint(params, x, specs, flat, missing):
    # The one-observation contract is the batched form on a batch of one: one formula to trust.
    return _batch_log_joint(params, x[None], specs, flat, missing)[0]


def _suff_stats(params, X, resp, specs, flat, missing):
    _, gparams = _unpack(params, specs, flat)
    groups = _groups(X, specs, missing)
    return {"nk": jnp.sum(resp, axis=0),
            "features": tuple(f.stats(p, Xg, Mg, resp)
                              for (f, _), p, (Xg, Mg) in zip(specs, gparams, groups, strict=True))}


def _maximize(stats, params, specs, flat, dirichlet_alpha):
    _, gparams = _unpack(params, specs, flat)
    new = tuple(f.maximize(s, p) for (f, _), s, p in zip(specs, stats["features"], gparams,
                                                          strict=True))
    return _pack(mixing_weights(stats["nk"], dirichlet_alpha), new, flat)


def _embedding(X: Array) -> Array:
    """Standardised columns with missing entries at the column mean, for the k-means starts."""
    mean = jnp.nan_to_num(jnp.nanmean(X, axis=0))
    Z = jnp.where(jnp.isnan(X), mean, X) - mean
    scale = jnp.sqrt(jnp.mean(Z * Z, axis=0))
    return Z / jnp.where(scale > 0, scale, 1.0)


def _init(key, X, n_components, specs, flat, missing, method):
    k = n_components
    stats_fn = functools.partial(_suff_stats, specs=specs, flat=flat, missing=missing)
    maximize = functools.partial(_maximize, specs=specs, flat=flat, dirichlet_alpha=1.0)
    defaults = tuple(f.default_params(k, X.shape[1] if c is None else len(c), X.dtype)
                     for f, c in specs)
    start = _pack(jnp.full((k,), 1.0 / k, X.dtype), defaults, flat)
    # One component fitted to all the data first: every component then starts from real
    # estimates (centred statistics included) before the assignment below moves them apart.
    uniform = jnp.full((X.shape[0], k), 1.0 / k, X.dtype)
    start = maximize(blocks.blocked_suff_stats(stats_fn, start, X, uniform), start)
    resp = initialisers.initial_responsibilities(key, _embedding(X), k, method)
    resp = (1.0 - _INIT_SMOOTHING) * resp + _INIT_SMOOTHING / k
    return maximize(blocks.blocked_suff_stats(stats_fn, start, X, resp), start)


def _constraints(specs: Specs, flat: bool):
    if flat:
        return {"weights": C.simplex, **specs[0][0].constraints}
    return {"weights": C.simplex, "features": tuple(f.constraints for f, _ in specs)}


@functools.cache
def product_mixture(n_components: int, specs: Specs, *, flat: bool = False, missing: bool = False,
                    init: str = "kmeans", dirichlet_alpha: float = 1.0, name: str = "") -> Model:
    """The :class:`jaxem.Model` of a mixture whose components are products of feature groups.

    Args:
        n_components: ``K``.
        specs: ``((feature, columns), ...)``: a :class:`~jaxem.models.distributions.Feature` and
            a tuple of column indices (``None``: all columns).
        flat: parameters as ``{"weights", **the single group's keys}`` (single-family mixtures).
        missing: marginalise NaN entries (``Model.handles_missing``).
        init: one of :data:`jaxem.init.INIT_METHODS`; the starting responsibilities come from
            standardised (mean-imputed) columns, then one M-step gives the parameters.
        dirichlet_alpha: symmetric Dirichlet prior ``α >= 1`` on the weights (MAP-EM when > 1).
        name: a name for messages.

    Returns:
        A memoised :class:`jaxem.Model` for data ``[N, D]`` with a closed-form M-step.
    """
    check_positive_int(n_components, "n_components")
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")
    if not dirichlet_alpha >= 1.0:
        raise ValueError(f"dirichlet_alpha must be >= 1, got {dirichlet_alpha!r}")
    common = {"specs": specs, "flat": flat}
    log_prior = (None if dirichlet_alpha == 1.0 else
                 lambda params: dirichlet_log_prior(params["weights"], dirichlet_alpha))
    return Model(
        init=functools.partial(_init, n_components=n_components, missing=missing, method=init,
                               **common),
        log_joint=functools.partial(_log_joint, missing=missing, **common),
        batch_log_joint=functools.partial(_batch_log_joint, missing=missing, **common),
        suff_stats=functools.partial(_suff_stats, missing=missing, **common),
        maximize=functools.partial(_maximize, dirichlet_alpha=dirichlet_alpha, **common),
        constraints=_constraints(specs, flat),
        n_components=n_components,
        name=name or f"product_mixture({n_components}, {[f.name for f, _ in specs]})",
        log_prior=log_prior,
        handles_missing=missing,
        check_data=functools.partial(check_feature_values, specs, who=name or "product_mixture"),
    )


def check_feature_values(specs: Specs, X, who: str) -> None:
    """Refuse values a feature group cannot take (NaN passes: missing), naming the first one.

    Args:
        specs: ``((feature, columns), ...)`` as in :func:`product_mixture`.
        X: ``[N, D]`` validated NumPy data.
        who: the model or estimator, for the message.
    """
    if X.ndim != 2:
        raise ValueError(f"{who} expects 2-D data [n_samples, n_features], got shape {X.shape}")
    for feature, cols in specs:
        cols = tuple(range(X.shape[1])) if cols is None else tuple(cols)
        if max(cols) >= X.shape[1]:
            raise ValueError(f"{who} has a {feature.name} feature on column {max(cols)} but X has "
                             f"{X.shape[1]} columns")
        bad, requirement = feature.check(X[:, list(cols)])
        if bad.any():
            row, j = (int(i) for i in np.argwhere(bad)[0])
            value = X[row, cols[j]]
            raise ValueError(f"{who}: the {feature.name} feature needs {requirement}; got "
                             f"{value} at row {row}, column {cols[j]}{negative_note(value)}")


def feature_mixture(n_components: int, feature: dist.Feature, init: str, dirichlet_alpha: float,
                    name: str) -> Model:
    """A mixture of one family over all columns, with flat parameters (the single-family models)."""
    return product_mixture(n_components, ((feature, None),), flat=True, init=init,
                           dirichlet_alpha=float(dirichlet_alpha), name=name)


def normalize_features(features) -> Specs:
    """Turn user feature groups into ``((Feature, columns), ...)``.

    Each group is ``(family, columns)`` or ``(family, columns, options)``: ``family`` a name in
    ``"gaussian"``, ``"poisson"``, ``"exponential"``, ``"gamma"``, ``"bernoulli"``,
    ``"categorical"`` (options ``{"n_categories": [C_1, ...]}`` required) or a ``Feature``;
    ``columns`` a non-empty sequence of column indices; options keyword arguments of the family.
    Column groups must not overlap.
    """
    if isinstance(features, dict):
        features = list(features.items())
    specs, seen = [], {}
    for i, group in enumerate(features):
        if not isinstance(group, Sequence) or isinstance(group, str) or len(group) not in (2, 3):
            raise ValueError(f"feature group {i} must be (family, columns) or (family, columns, "
                             f"options), got {group!r}")
        family, cols, options = group[0], group[1], (group[2] if len(group) == 3 else {})
        cols = tuple(int(c) for c in np.atleast_1d(np.asarray(cols)))
        if not cols or min(cols) < 0:
            raise ValueError(f"feature group {i} needs non-negative column indices, got {cols}")
        for c in cols:
            if c in seen:
                raise ValueError(f"column {c} is in feature groups {seen[c]} and {i}")
            seen[c] = i
        if isinstance(family, dist.Feature):
            feature = family
        elif family == "categorical":
            n_cat = tuple(int(c) for c in options.get("n_categories", ()))
            if len(n_cat) != len(cols) or min(n_cat, default=0) < 1:
                raise ValueError(f"categorical feature group {i} needs n_categories, one count >= 1 "
                                 f"per column ({len(cols)}), got {options.get('n_categories')!r}")
            feature = dist.categorical(n_cat)
        elif family in dist.FEATURES:
            feature = dist.FEATURES[family](**options)
        else:
            raise ValueError(f"feature group {i}: unknown family {family!r}; use one of "
                             f"{sorted(dist.FEATURES) + ['categorical']}")
        specs.append((feature, cols))
    if not specs:
        raise ValueError("features must name at least one (family, columns) group")
    return tuple(specs)


def independent_mixture(n_components: int, features, *, init: str = "kmeans",
                        dirichlet_alpha: float = 1.0) -> Model:
    """A mixture whose component density is a product of per-feature families.

    Example: ``independent_mixture(3, [("gaussian", [0, 1, 2]), ("poisson", [3]),
    ("bernoulli", range(4, 10))])``. NaN entries are marginalised out (missing values).

    Args:
        n_components: ``K``.
        features: groups ``(family, columns[, options])``, see :func:`normalize_features`.
        init: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``.
        dirichlet_alpha: symmetric Dirichlet prior ``α >= 1`` on the weights.

    Returns:
        A memoised :class:`jaxem.Model` for data ``[N, D]``, parameters
        ``{"weights": [K], "features": (group params, ...)}``.
    """
    return product_mixture(n_components, normalize_features(features), missing=True, init=init,
                           dirichlet_alpha=float(dirichlet_alpha))


def n_free_parameters(n_components: int, specs: Specs, n_columns: int) -> int:
    """Free parameters of the mixture (for BIC/AIC): ``K - 1`` weights plus each group's."""
    per = sum(f.n_free(n_columns if c is None else len(c)) for f, c in specs)
    return n_components - 1 + n_components * per
