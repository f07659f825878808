"""Estimators fitted from chunk sources leave the same attributes as ``fit(X)`` from the same start."""

import numpy as np
import pytest
from conftest import three_blobs

import jaxem as jem
from jaxem.chunked_estimators import fit_hmm, fit_mixture

pytestmark = pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")  # fixed iterations


def test_gaussian_mixture_from_npy_matches_fit(tmp_path):
    X = three_blobs(601) + 50.0                  # far from the origin: the centring matters
    path = tmp_path / "X.npy"
    np.save(path, X)
    start = dict(means_init=X[[0, 300, 500]], weights_init=np.full(3, 1 / 3),
                 precisions_init=np.broadcast_to(np.eye(2), (3, 2, 2)))
    # One float type for both: dtype='auto' would fit these 601 rows in float64 and the file,
    # whose size it does not count, in float32.
    kw = dict(max_iter=15, tol=0.0, dtype="float32", **start)
    ref = jem.GaussianMixture(3, **kw).fit(X)
    est = fit_mixture(jem.GaussianMixture(3, **kw), str(path), chunk_size=128, init_size=200)
    np.testing.assert_allclose(est.history_, ref.history_, rtol=1e-5)
    np.testing.assert_allclose(est.means_, ref.means_, atol=1e-3)
    np.testing.assert_allclose(est.covariances_, ref.covariances_, atol=1e-3)
    np.testing.assert_allclose(est.predict_proba(X), ref.predict_proba(X), atol=1e-3)
    with pytest.raises(ValueError, match="closed-form"):
        fit_mixture(jem.GaussianMixture(3, m_step="gradient"), X)


def test_gaussian_hmm_from_memmap_matches_fit(tmp_path):
    rng = np.random.default_rng(0)
    lengths = np.array([40, 25, 60, 33, 51])
    states = rng.integers(0, 2, size=lengths.sum())
    X = rng.normal(size=(lengths.sum(), 2)) + 3.0 * states[:, None]
    np.save(tmp_path / "X.npy", X)
    memmap = np.load(tmp_path / "X.npy", mmap_mode="r")

    def start():
        # 6 iterations: each still changes the log-likelihood by far more than float32
        # round-off, so both fits run all of them.
        hmm = jem.GaussianHMM(2, "diag", init_params="", n_iter=6, tol=0.0)
        hmm.startprob_ = np.array([0.6, 0.4])
        hmm.transmat_ = np.array([[0.8, 0.2], [0.3, 0.7]])
        hmm.means_ = np.array([[0.0, 0.0], [2.0, 2.0]])
        hmm.covars_ = np.ones((2, 2))
        return hmm

    ref = start().fit(X, lengths)
    est = fit_hmm(start(), memmap, lengths, chunk_size=2)
    assert est.n_iter_ == ref.n_iter_ == 6
    np.testing.assert_allclose(est.history_, ref.history_, rtol=1e-5)
    np.testing.assert_allclose(est.transmat_, ref.transmat_, atol=1e-5)
    np.testing.assert_allclose(est.means_, ref.means_, atol=1e-4)
    assert est.score(X, lengths) == pytest.approx(ref.score(X, lengths), rel=1e-5)


def test_estimator_methods_fit_chunked_like_the_module_functions():
    """``est.fit_chunked`` (mixtures and HMMs) is the chunked fit users find on the estimator."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1200, 2))
    X[:600] += 4
    est = jem.GaussianMixture(2, random_state=0, max_iter=20).fit_chunked(X, chunk_size=500)
    full = jem.GaussianMixture(2, random_state=0, max_iter=20).fit(X)
    np.testing.assert_allclose(np.sort(est.means_[:, 0]), np.sort(full.means_[:, 0]), atol=1e-3)
    hmm = jem.GaussianHMM(2, random_state=0, n_iter=10).fit_chunked(X, lengths=[400, 800],
                                                                    chunk_size=1)
    assert np.all(np.isfinite(hmm.means_)) and hmm.transmat_.shape == (2, 2)
