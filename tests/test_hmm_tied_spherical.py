"""Tied and spherical Gaussian HMMs follow hmmlearn's Baum-Welch from the same start (float64).

test_hmm_estimators.py compares the full and diagonal fits; these are the other two covariance
types. hmmlearn's tied M-step is the pooled within-state scatter over all steps, and its spherical
one is the per-state mean of the diagonal variances: jaxem's maximum-likelihood updates. With
``covars_prior=0``, ``min_covar=0`` (and ``covars_weight`` that cancels) both run plain
maximum-likelihood Baum-Welch.
"""

import warnings

import numpy as np
import pytest
from conftest import assert_non_decreasing
from hmmlearn import hmm as hl

import jaxem as jem

K, D, N_ITER = 3, 2, 8
START = np.array([0.6, 0.3, 0.1])
TRANS = np.array([[0.8, 0.15, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
MEANS = np.array([[0.0, 0.0], [3.0, 1.0], [0.0, 4.0]])
TRUE_COVARS = np.array([np.eye(2) * 0.5, [[1.0, 0.3], [0.3, 0.8]], [[1.0, -0.2], [-0.2, 0.6]]])
LENGTHS = [1, 120, 40, 2, 90]
# The start, in each covariance type's own shape (hmmlearn's covars_ setter).
INIT_COVARS = {"tied": np.array([[1.5, 0.2], [0.2, 1.0]]), "spherical": np.array([1.0, 2.0, 0.7])}


def _assign(model, **attributes):
    for name, value in attributes.items():
        setattr(model, name, value)
    return model


def _dense(covars, covariance_type):
    """hmmlearn's stored ``_covars_`` as ``[K, D, D]`` (its spherical getter is not usable: it
    returns ``[K * D, D, D]`` after a fit, where ``_covars_`` is ``[K, D]`` with equal columns)."""
    c = np.asarray(covars)
    if covariance_type == "tied":
        return np.broadcast_to(c, (K, D, D))
    variances = c.reshape(K, -1)
    np.testing.assert_allclose(variances, variances[:, :1] * np.ones_like(variances), rtol=1e-12)
    return variances[:, :1, None] * np.eye(D)[None]


@pytest.fixture(scope="module")
def data():
    true = _assign(hl.GaussianHMM(K, covariance_type="full"), startprob_=START, transmat_=TRANS,
                   means_=MEANS, covars_=TRUE_COVARS)
    X, _ = true.sample(sum(LENGTHS), random_state=3)
    return X


@pytest.mark.parametrize("covariance_type", ["tied", "spherical"])
def test_baum_welch_follows_hmmlearn_from_the_same_start(x64, data, covariance_type):
    X = data
    start = dict(startprob_=np.array([0.4, 0.3, 0.3]), transmat_=np.full((K, K), 1 / K),
                 means_=np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 3.0]]),
                 covars_=INIT_COVARS[covariance_type])
    # covars_weight: hmmlearn divides by max(w - 1, 0) + N_k (spherical) and max(w - D, 0) + N
    # (tied), so 1 and 0 leave the maximum-likelihood denominators.
    plain = dict(covars_prior=0.0, min_covar=0.0,
                 covars_weight=1.0 if covariance_type == "spherical" else 0.0)
    ref = _assign(hl.GaussianHMM(K, covariance_type=covariance_type, n_iter=N_ITER, tol=-np.inf,
                                 init_params="", params="stmc", **plain), **start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit(X, LENGTHS)
    ours = _assign(jem.GaussianHMM(K, covariance_type=covariance_type, n_iter=N_ITER, tol=0.0,
                                   init_params="", accelerate=None,
                                   **plain), **start)
    with pytest.warns(jem.ConvergenceWarning, match=f"max_iter={N_ITER}"):
        ours.fit(X, LENGTHS)
    assert ours.n_iter_ == ref.monitor_.iter == N_ITER
    assert ours.score(X, LENGTHS) == pytest.approx(ref.score(X, LENGTHS), rel=1e-10)
    np.testing.assert_allclose(ours.startprob_, ref.startprob_, atol=1e-9)
    np.testing.assert_allclose(ours.transmat_, ref.transmat_, atol=1e-9)
    np.testing.assert_allclose(ours.means_, ref.means_, atol=1e-9)
    np.testing.assert_allclose(ours.covars_, _dense(ref._covars_, covariance_type), atol=1e-9)
    # hmmlearn's history is the log-likelihood before each M-step; ours after it.
    np.testing.assert_allclose(ours.history_[:N_ITER - 1], np.array(ref.monitor_.history)[1:],
                               rtol=1e-10)
    assert_non_decreasing(ours.fit_result_, rel=1e-12)
    # The fit moved away from the start (else the comparison would be vacuous).
    assert ref.monitor_.history[-1] > ref.monitor_.history[0] + 1.0
