"""Standard errors and Wald intervals of an estimator's fitted attributes.

An estimator names the map from the engine's parameters to its fitted attributes as a traceable
``_fitted_arrays(params) -> {attribute: array}`` (``means_``, ``covariances_``, ``transmat_``...);
the delta method (:func:`jaxem.core.standard_errors.standard_errors`) carries the observed
information's covariance through it, so each attribute gets its own standard errors.
"""

from __future__ import annotations

import numpy as np

from ..core.standard_errors import standard_errors, wald_intervals
from ..core.validation import check_sample_weight, to_device


def mixture_arrays(param_keys: tuple, params) -> dict:
    """``{name + "_": params[name]}``: the attributes of a family that stores its parameters
    under their own names."""
    if not param_keys:
        raise ValueError("this estimator does not say how its fitted attributes follow from the "
                         "model's parameters; use jaxem.standard_errors(model, params, X)")
    return {k + "_": params[k] for k in param_keys}


def estimator_standard_errors(est, X, sample_weight=None) -> dict:
    """``{attribute: standard errors}`` of a fitted mixture estimator on the data ``X`` it was
    fitted to (see :meth:`jaxem.estimators.base.MixtureEstimator.standard_errors`)."""
    est._check_fitted()
    X = est._transform(est._validate(X, fitting=False))
    weights = check_sample_weight(sample_weight, X.shape[0])
    errors = standard_errors(est._model(), est._params(), to_device(X), weights,
                             transform=est._fitted_arrays)
    return {name: np.asarray(value) for name, value in errors.items()}


def hmm_standard_errors(est, X, lengths=None) -> dict:
    """``{attribute: standard errors}`` of a fitted HMM estimator on sequences ``X`` (rows one
    sequence after another, split by ``lengths``)."""
    params = est._params()
    seqs = est._sequences(X, lengths)
    errors = standard_errors(est._hmm(), params, seqs.X, mask=seqs.mask,
                             transform=est._fitted_arrays)
    return {name: np.asarray(value) for name, value in errors.items()}


def intervals(est, errors: dict, level: float) -> dict:
    """``{attribute: (lower [...], upper [...])}`` Wald intervals around the fitted attributes."""
    estimate = {name: np.asarray(value, np.float64)
                for name, value in est._fitted_arrays(est._params()).items()}
    lower, upper = wald_intervals(estimate, errors, level)
    return {name: (np.asarray(lower[name]), np.asarray(upper[name])) for name in errors}
