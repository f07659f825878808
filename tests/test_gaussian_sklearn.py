"""GaussianMixture against scikit-learn (the reference oracle), in float64."""

import numpy as np
import pytest
from conftest import three_blobs
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import jaxem as jem

COVARIANCE_TYPES = ["full", "diag", "spherical", "tied"]


def _start(covariance_type, X, k=3, seed=0):
    """A deliberately poor common start: random rows as means, unit (co)variances."""
    rng = np.random.default_rng(seed)
    d = X.shape[1]
    means = X[rng.choice(len(X), k, replace=False)]
    precisions = {"full": np.broadcast_to(np.eye(d), (k, d, d)).copy(), "tied": np.eye(d),
                  "diag": np.ones((k, d)), "spherical": np.ones(k)}[covariance_type]
    return np.full(k, 1 / k), means, precisions


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_same_start_same_converged_log_likelihood(x64, covariance_type):
    X = three_blobs(n=500, dtype=np.float64) + np.array([100.0, -50.0])
    weights, means, precisions = _start(covariance_type, X)
    common = dict(n_components=3, covariance_type=covariance_type, weights_init=weights,
                  means_init=means, precisions_init=precisions, max_iter=3000)
    ours = jem.GaussianMixture(tol=1e-13, **common).fit(X)
    ref = SkGaussianMixture(tol=1e-12, random_state=0, **common).fit(X)
    assert ours.converged_ and ref.converged_
    assert ours.score(X) == pytest.approx(ref.score(X), rel=1e-5)
    # The same local optimum, not just the same value: parameters agree too.
    order = [int(np.argmin(np.linalg.norm(ours.means_ - m, axis=1))) for m in ref.means_]
    np.testing.assert_allclose(ours.means_[order], ref.means_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.weights_[order], ref.weights_, rtol=1e-4, atol=1e-5)
    cov = ours.covariances_ if covariance_type == "tied" else ours.covariances_[order]
    np.testing.assert_allclose(cov, ref.covariances_, rtol=1e-4, atol=1e-6)
    prec = ours.precisions_ if covariance_type == "tied" else ours.precisions_[order]
    np.testing.assert_allclose(prec, ref.precisions_, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")  # a fixed number of iterations
def test_scores_and_criteria_equal_sklearn_for_the_same_parameters(x64, covariance_type):
    """Evaluate both libraries at identical parameters (copied from a scikit-learn fit)."""
    X = three_blobs(n=400, dtype=np.float64)
    ref = SkGaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(X)
    ours = jem.GaussianMixture(3, covariance_type=covariance_type, weights_init=ref.weights_,
                               means_init=ref.means_, precisions_init=ref.precisions_, max_iter=1)
    ours.fit(X)
    # Overwrite with scikit-learn's parameters exactly, then compare every inference method.
    ours.weights_, ours.means_ = ref.weights_, ref.means_
    ours.precisions_cholesky_ = ref.precisions_cholesky_
    np.testing.assert_allclose(ours.score_samples(X), ref.score_samples(X), rtol=1e-10)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-10)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    assert ours.bic(X) == pytest.approx(ref.bic(X), rel=1e-10)
    assert ours.aic(X) == pytest.approx(ref.aic(X), rel=1e-10)


def test_restarts_do_at_least_as_well_as_sklearn_n_init(x64):
    X = three_blobs(n=600, dtype=np.float64)
    ours = jem.GaussianMixture(3, n_restarts=8, random_state=0).fit(X)
    ref = SkGaussianMixture(3, n_init=8, random_state=0, tol=1e-8).fit(X)
    assert ours.score(X) >= ref.score(X) - 1e-6


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("n_features", [1, 3, 8])
@pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")  # one iteration on purpose
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_one_iteration_equals_sklearn_with_few_and_many_features(x64, covariance_type, n_features):
    """Few features take other code paths than many: distances from ``x - mu`` feature by feature
    (every type at 1 feature, diagonal types up to a few), centred_moments' rows-along-the-minor-
    axis layout (full and tied, a few features), the matrix products otherwise (8 features). One EM
    iteration from the same start gives scikit-learn's parameters on each."""
    from jaxem.models import common, gaussian

    assert 1 <= gaussian.DIRECT_MAX_FEATURES[covariance_type] < 8
    assert 3 <= common.ROW_MINOR_MAX_FEATURES < 8
    rng = np.random.default_rng(1)
    centres = 4.0 * rng.normal(size=(3, n_features))
    X = centres[rng.integers(0, 3, 400)] + rng.normal(size=(400, n_features))
    weights, means, precisions = _start(covariance_type, X)
    common = dict(n_components=3, covariance_type=covariance_type, weights_init=weights,
                  means_init=means, precisions_init=precisions, max_iter=1)
    ours = jem.GaussianMixture(tol=0.0, accelerate=None, **common).fit(X)
    ref = SkGaussianMixture(tol=0.0, reg_covar=ours.reg_covar, **common).fit(X)
    np.testing.assert_allclose(ours.weights_, ref.weights_, rtol=1e-10)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.covariances_, ref.covariances_, rtol=1e-9, atol=1e-12)
