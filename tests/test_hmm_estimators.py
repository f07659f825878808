"""HMM estimators against hmmlearn (float64): the same score, posteriors and Viterbi paths for the
same parameters, the same Baum-Welch trajectory from the same start, and the estimator API."""

import warnings

import numpy as np
import pytest
from conftest import assert_non_decreasing
from hmmlearn import hmm as hl

import jaxem as jem
from jaxem.hmm import CategoricalHMM, GaussianHMM, PoissonHMM

LENGTHS = [1, 40, 5, 1, 80, 2]
START = np.array([0.6, 0.3, 0.1])
TRANS = np.array([[0.8, 0.15, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
MEANS = np.array([[0.0, 0.0], [3.0, 1.0], [0.0, 4.0]])
COVARS = {"full": np.array([np.eye(2) * 0.5, [[1.0, 0.3], [0.3, 0.8]], [[1.0, -0.2], [-0.2, 0.6]]]),
          "diag": np.array([[0.5, 1.0], [1.0, 2.0], [0.3, 0.4]]),
          "spherical": np.array([0.5, 1.0, 2.0]),
          "tied": np.array([[1.0, 0.3], [0.3, 0.8]])}


def _assign(model, **attributes):
    for name, value in attributes.items():
        setattr(model, name, value)
    return model


def _same_inference(ours, ref, X, lengths):
    assert ours.score(X, lengths) == pytest.approx(ref.score(X, lengths), rel=1e-6)
    np.testing.assert_array_equal(ours.predict(X, lengths), ref.predict(X, lengths))
    logprob, path = ours.decode(X, lengths)
    ref_logprob, ref_path = ref.decode(X, lengths)
    assert logprob == pytest.approx(ref_logprob, rel=1e-6)
    np.testing.assert_allclose(ours.predict_proba(X, lengths), ref.predict_proba(X, lengths),
                               atol=1e-8)
    assert ours.bic(X, lengths) == pytest.approx(ref.bic(X, lengths), rel=1e-6)
    assert ours.aic(X, lengths) == pytest.approx(ref.aic(X, lengths), rel=1e-6)


@pytest.mark.parametrize("covariance_type", list(COVARS))
def test_gaussian_hmm_matches_hmmlearn(x64, covariance_type):
    params = dict(startprob_=START, transmat_=TRANS, means_=MEANS, covars_=COVARS[covariance_type])
    ref = _assign(hl.GaussianHMM(3, covariance_type=covariance_type), **params)
    X, _ = ref.sample(sum(LENGTHS), random_state=1)
    # Attributes assigned by hand, as in hmmlearn, before any fit.
    ours = _assign(GaussianHMM(3, covariance_type=covariance_type), **params)
    _same_inference(ours, ref, X, LENGTHS)
    if covariance_type != "spherical":   # hmmlearn's spherical getter returns [K*D, D, D]
        np.testing.assert_allclose(ours.covars_, ref.covars_)
    assert ours.covars_.shape == (3, 2, 2)


def test_categorical_and_poisson_hmm_match_hmmlearn(x64):
    chain = dict(startprob_=START[:2] / START[:2].sum(), transmat_=np.array([[0.9, 0.1],
                                                                             [0.25, 0.75]]))
    cat = dict(chain, emissionprob_=np.array([[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.5, 0.3]]))
    ref = _assign(hl.CategoricalHMM(2), **cat)
    X, _ = ref.sample(sum(LENGTHS), random_state=0)
    _same_inference(_assign(CategoricalHMM(2), **cat), ref, X, LENGTHS)
    poi = dict(chain, lambdas_=np.array([[1.0, 6.0, 0.2], [8.0, 0.5, 3.0]]))
    ref = _assign(hl.PoissonHMM(2), **poi)
    X, _ = ref.sample(sum(LENGTHS), random_state=0)
    _same_inference(_assign(PoissonHMM(2), **poi), ref, X, LENGTHS)


@pytest.fixture(scope="module")
def training_data():
    true = _assign(hl.GaussianHMM(3, covariance_type="full"), startprob_=START, transmat_=TRANS,
                   means_=MEANS, covars_=COVARS["full"])
    lengths = [1, 300, 50, 2, 150]
    X, Z = true.sample(sum(lengths), random_state=3)
    return X, Z, lengths


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_baum_welch_follows_hmmlearn_from_the_same_start(x64, training_data, covariance_type):
    X, _, lengths = training_data
    start = dict(startprob_=np.array([0.4, 0.3, 0.3]), transmat_=np.full((3, 3), 1 / 3),
                 means_=np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 3.0]]),
                 covars_=np.ones((3, 2)) if covariance_type == "diag" else np.array([np.eye(2)] * 3))
    # The covariance prior off on both sides, so both run maximum-likelihood Baum-Welch.
    plain = dict(covars_prior=0.0, min_covar=0.0,
                 covars_weight=1.0 if covariance_type == "diag" else 0.0)
    ref = _assign(hl.GaussianHMM(3, covariance_type=covariance_type, n_iter=12, tol=-np.inf,
                                 init_params="", **plain), **start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit(X, lengths)
    ours = _assign(GaussianHMM(3, covariance_type=covariance_type, n_iter=12, tol=0.0,
                               init_params="", accelerate=None, **plain), **start)
    with pytest.warns(jem.ConvergenceWarning, match="max_iter=12"):
        ours.fit(X, lengths)
    assert ours.n_iter_ == ref.monitor_.iter == 12
    assert ours.score(X, lengths) == pytest.approx(ref.score(X, lengths), rel=1e-10)
    np.testing.assert_allclose(ours.means_, ref.means_, atol=1e-9)
    np.testing.assert_allclose(ours.covars_, ref.covars_, atol=1e-9)
    np.testing.assert_allclose(ours.transmat_, ref.transmat_, atol=1e-9)
    np.testing.assert_allclose(ours.startprob_, ref.startprob_, atol=1e-9)
    # hmmlearn's history is the log-likelihood before each M-step; ours after it.
    np.testing.assert_allclose(ours.history_[:11], np.array(ref.monitor_.history)[1:], rtol=1e-10)
    assert_non_decreasing(ours.fit_result_, rel=1e-12)


def test_fit_from_random_starts_recovers_states(training_data):
    X, Z, lengths = training_data
    model = GaussianHMM(3, covariance_type="full", n_restarts=4, random_state=0, n_iter=100,
                        tol=1e-7).fit(X, lengths)
    assert model.fit_result_.history.shape == (4, 100)
    assert_non_decreasing(model.fit_result_)
    states = model.predict(X, lengths)
    # States are recovered up to a permutation: each true state maps to one fitted state.
    agreement = sum(np.max(np.bincount(states[Z == k], minlength=3)) for k in range(3))
    assert agreement / len(Z) > 0.97
    order = [int(np.argmin(((model.means_ - m) ** 2).sum(1))) for m in MEANS]
    np.testing.assert_allclose(model.means_[order], MEANS, atol=0.2)
    np.testing.assert_allclose(model.transmat_[np.ix_(order, order)], TRANS, atol=0.08)
    Xs, Zs = model.sample(300, random_state=0)
    assert Xs.shape == (300, 2) and Zs.shape == (300,) and set(np.unique(Zs)) <= {0, 1, 2}


def test_categorical_fit_and_sample():
    true = _assign(CategoricalHMM(2), startprob_=np.array([0.5, 0.5]),
                   transmat_=np.array([[0.95, 0.05], [0.05, 0.95]]),
                   emissionprob_=np.array([[0.7, 0.2, 0.1, 0.0], [0.0, 0.1, 0.2, 0.7]]))
    X, Z = true.sample(3000, random_state=0)
    assert X.shape == (3000, 1) and X.dtype.kind == "i"
    model = CategoricalHMM(2, n_restarts=3, random_state=0).fit(X, [1000, 1000, 1000])
    assert_non_decreasing(model.fit_result_)
    order = np.argsort(model.emissionprob_[:, 0])[::-1]
    np.testing.assert_allclose(model.emissionprob_[order], true.emissionprob_, atol=0.04)
    np.testing.assert_allclose(model.transmat_[np.ix_(order, order)], true.transmat_, atol=0.02)
    assert model.emissionprob_.shape == (2, 4)


def test_estimator_api_and_validation():
    model = GaussianHMM(2, covariance_type="diag")
    with pytest.raises(jem.NotFittedError, match="no startprob_"):
        model.score(np.zeros((5, 2)))
    _assign(model, startprob_=[0.5, 0.5], transmat_=[[0.9, 0.1], [0.1, 0.9]],
            means_=[[0.0, 0.0], [1.0, 1.0]], covars_=np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match=r"covars_ for covariance_type='diag' must be assigned "
                                          r"with shape \(2, 2\)"):
        model.score(np.zeros((5, 2)))
    model.covars_ = np.ones((2, 2))
    with pytest.raises(ValueError, match="X contains NaN at row 0"):
        model.fit(np.full((5, 2), np.nan))
    assert np.shape(model.means_) == (2, 2)      # a refused fit leaves the parameters alone
    with pytest.raises(ValueError, match="lengths sum to 4 but X has 5 rows"):
        model.score(np.zeros((5, 2)), lengths=[2, 2])
    with pytest.raises(ValueError, match="X has 3 features"):
        model.score(np.zeros((5, 3)))
    model.transmat_ = [[0.9, 0.2], [0.1, 0.9]]
    with pytest.raises(ValueError, match="transmat_ rows must sum to 1"):
        model.predict(np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"symbols that are non-negative integers below 3; got 3.0 "
                                          r"at row 1"):
        CategoricalHMM(2, n_features=3).fit(np.array([[0], [3], [1]]))
    with pytest.raises(ValueError, match="non-negative integer counts; got -1.0 at row 0"):
        PoissonHMM(2).fit(np.array([[-1.0], [2.0]]))
    params = GaussianHMM(3, covariance_type="tied", n_restarts=2).get_params()
    assert params["covariance_type"] == "tied" and params["n_restarts"] == 2
    assert "n_iter" in params and "min_covar" in params
