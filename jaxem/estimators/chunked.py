"""Estimators fitted out of core: an estimator's own hooks around :func:`jaxem.fit_chunked`.

``fit_mixture(GaussianMixture(...), "X.npy", chunk_size=...)`` fits a mixture estimator (any
:class:`jaxem.estimators.MixtureEstimator` with a closed-form M-step), and ``fit_hmm`` a
hidden Markov model estimator, from a chunk source (see :mod:`jaxem.data`), leaving the same
fitted attributes as ``fit(X)``. What needs data in memory runs on ``init_size`` rows drawn from
the source: the estimator's shape checks, its data-dependent constants (``GaussianMixture``
centres its coordinates on the sample's mean, which only has to be near the data, and builds a
default prior from the sample) and the initialiser. Every chunk then passes the estimator's value
checks and change of coordinates as it is read.
"""

from __future__ import annotations

import types

import numpy as np

from ..core.validation import check_sample_weight
from ..scale.chunked import DEFAULT_INIT_ROWS, fit_chunked
from ..scale.data import as_source, map_source
from .params import _as_key, recording_interrupted


def _sample(source, init_size: int, random_state):
    seed = random_state if isinstance(random_state, (int, np.integer)) else 0
    return source.sample(init_size, np.random.default_rng(seed), np.float64, allow_nan=True)[1]


def _check_chunkable(est) -> None:
    est._check_hyperparameters()
    if est.m_step == "gradient":
        raise ValueError("chunked fits need the closed-form M-step; set m_step='auto'")


def fit_mixture(estimator, source, *, chunk_size: int | None = None, labels=None, sample_weight=None,
                init_size: int = DEFAULT_INIT_ROWS, devices=None):
    """Fit a mixture estimator by chunked exact EM; returns the estimator.

    Args:
        estimator: e.g. :class:`jaxem.GaussianMixture` or :class:`jaxem.BernoulliMixture`
            (``m_step`` must not be ``"gradient"``).
        source: ``[N, D]`` rows: an array, memmap, ``.npy`` path or callable (see
            :mod:`jaxem.data`).
        chunk_size, init_size, devices: as in :func:`jaxem.fit_chunked`.
        labels: optional ``[N]`` partial labels (``-1`` unknown); sample_weight: optional ``[N]``.

    Returns:
        ``estimator``, fitted.
    """
    est = estimator
    _check_chunkable(est)
    source = as_source(source)
    sample = est._validate(_sample(source, init_size, est.random_state), fitting=True)
    est.n_features_in_ = sample.shape[1]
    est._prepare(sample)
    init_params = est._initial_params(sample)

    def to_model_coordinates(chunk):
        chunk = est._validate(chunk, fitting=False)
        return est._transform(chunk)

    weights = check_sample_weight(sample_weight, source.n_rows)
    total_weight = source.n_rows if weights is None else float(np.sum(weights))
    with recording_interrupted(lambda partial: est._record_fit(partial, total_weight)):
        result = fit_chunked(
            est._model(), map_source(source, to_model_coordinates), chunk_size=chunk_size,
            key=_as_key(est.random_state), n_restarts=est._restarts(init_params),
            max_iter=est.max_iter, tol=est.tol, sample_weight=sample_weight, labels=labels,
            init_params=init_params, init_size=init_size, e_step=est.e_step, devices=devices,
            checkpoint=est.checkpoint, resume=est.resume, accelerate=est.accelerate,
            dtype=None)  # the estimator's own dtype scope (estimators.params)
    return est._record_fit(result, total_weight)


def fit_hmm(estimator, source, lengths=None, *, chunk_size: int | None = None,
            init_size: int = DEFAULT_INIT_ROWS, devices=None):
    """Fit an HMM estimator (e.g. :class:`jaxem.GaussianHMM`) by chunked Baum-Welch.

    Args:
        estimator: the estimator (``m_step`` must not be ``"gradient"``).
        source: ``[N, D]`` rows of all sequences one after another: an array, memmap or ``.npy``
            path.
        lengths: optional ``[B]`` sequence lengths summing to ``N`` (default one sequence).
        chunk_size: sequences per chunk; init_size, devices: as in :func:`jaxem.fit_chunked`.

    Returns:
        ``estimator``, fitted.
    """
    est = estimator
    _check_chunkable(est)
    for letter in est._letters():
        for name in est._attributes.get(letter, ()):
            est.__dict__.pop(name, None)
    source = as_source(source)
    sample = _sample(source, init_size, est.random_state)
    if sample.ndim != 2:
        raise ValueError(f"X must be 2-dimensional [n_samples, n_features] rows, got rows of "
                         f"shape {sample.shape[1:]}")
    est._check_values(sample)
    key = _as_key(est.random_state)
    start = est._start(types.SimpleNamespace(rows=sample), key)
    with recording_interrupted(est._record_fit):
        result = fit_chunked(est._hmm(), source, lengths=lengths, chunk_size=chunk_size, key=key,
                             n_restarts=est._restarts(start), max_iter=est.n_iter, tol=est.tol,
                             init_params=start, method=est.method, e_step=est.e_step,
                             init_size=init_size, devices=devices,
                             checkpoint=est.checkpoint, resume=est.resume,
                             accelerate=est.accelerate, dtype=None)  # the estimator's scope
    return est._record_fit(result)
