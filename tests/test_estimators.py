"""The scikit-learn-style estimators: API, shapes, validation messages."""

import warnings

import numpy as np
import pytest
from conftest import binary_data, three_blobs

import jaxem as jem

SHAPES = {"full": (3, 2, 2), "diag": (3, 2), "spherical": (3,), "tied": (2, 2)}


@pytest.fixture(scope="module")
def blobs():
    return three_blobs()


@pytest.mark.parametrize("covariance_type", list(SHAPES))
def test_gaussian_mixture_fitted_attributes(blobs, covariance_type):
    gm = jem.GaussianMixture(3, covariance_type=covariance_type, n_restarts=2, random_state=0)
    assert gm.fit(blobs) is gm
    assert gm.weights_.shape == (3,) and gm.means_.shape == (3, 2)
    assert gm.covariances_.shape == SHAPES[covariance_type]
    assert gm.precisions_.shape == SHAPES[covariance_type]
    assert gm.weights_.sum() == pytest.approx(1.0, abs=1e-6)
    assert gm.converged_ and 1 <= gm.n_iter_ <= 100
    assert gm.history_.shape == (100,)
    # lower_bound_ is the mean log-likelihood of the final parameters on the training data.
    assert gm.lower_bound_ == pytest.approx(gm.score(blobs), rel=1e-5)
    assert gm.history_[gm.n_iter_ - 1] == pytest.approx(gm.lower_bound_, rel=1e-6)
    proba = gm.predict_proba(blobs)
    assert proba.shape == (len(blobs), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(gm.predict(blobs), proba.argmax(axis=1))
    assert gm.score_samples(blobs).shape == (len(blobs),)


def test_gaussian_mixture_recovers_clusters_and_samples(blobs):
    gm = jem.GaussianMixture(3, n_restarts=4, random_state=0).fit(blobs)
    truth = np.repeat([0, 1, 2], [300, 200, 100])
    labels = gm.predict(blobs)
    # Labels are arbitrary; map each true cluster to its majority label.
    agreement = sum(np.max(np.bincount(labels[truth == c], minlength=3)) for c in range(3))
    assert agreement / len(blobs) > 0.93
    sample, sample_labels = gm.sample(20000, random_state=0)
    assert sample.shape == (20000, 2) and sample_labels.shape == (20000,)
    np.testing.assert_allclose(sample.mean(axis=0), gm.means_.T @ gm.weights_, atol=0.05)
    np.testing.assert_allclose(np.bincount(sample_labels) / 20000, gm.weights_, atol=0.015)
    # A model with more components fits better but pays for it in BIC on 3-cluster data.
    bigger = jem.GaussianMixture(6, n_restarts=4, max_iter=500, random_state=0).fit(blobs)
    assert bigger.score(blobs) > gm.score(blobs)
    assert bigger.bic(blobs) > gm.bic(blobs)


def test_bernoulli_mixture_estimator():
    X, weights, probs, z = binary_data(n=2000, d=12, seed=2)
    bm = jem.BernoulliMixture(3, n_restarts=4, random_state=0).fit(X)
    assert bm.probs_.shape == (3, 12) and bm.weights_.shape == (3,)
    labels = bm.predict(X)
    agreement = sum(np.max(np.bincount(labels[z == c], minlength=3)) for c in range(3))
    # The classes overlap: even the true parameters label only this share correctly.
    true_log_joint = np.log(weights) + X @ np.log(probs).T + (1 - X) @ np.log(1 - probs).T
    bayes_accuracy = np.mean(true_log_joint.argmax(axis=1) == z)
    assert agreement / len(X) > bayes_accuracy - 0.02
    sample, _ = bm.sample(500, random_state=0)
    assert set(np.unique(sample)) <= {0.0, 1.0}
    assert bm.bic(X) == pytest.approx(-2 * bm.score(X) * 2000 + (3 * 12 + 2) * np.log(2000))


def test_binomial_counts_with_n_trials():
    rng = np.random.default_rng(0)
    z = rng.choice(2, 1000, p=[0.4, 0.6])
    X = rng.binomial(20, np.array([[0.2, 0.7], [0.8, 0.4]])[z]).astype(float)
    bm = jem.BernoulliMixture(2, n_trials=20, n_restarts=4, random_state=0).fit(X)
    order = np.argsort(bm.probs_[:, 0])
    np.testing.assert_allclose(bm.probs_[order], [[0.2, 0.7], [0.8, 0.4]], atol=0.02)


def test_gradient_m_step_through_the_estimator(blobs):
    closed = jem.GaussianMixture(3, covariance_type="diag", random_state=0).fit(blobs)
    grad = jem.GaussianMixture(3, covariance_type="diag", random_state=0, m_step="gradient").fit(blobs)
    assert grad.score(blobs) == pytest.approx(closed.score(blobs), abs=1e-3)


def test_get_params_set_params_and_sklearn_clone():
    from sklearn.base import clone

    gm = jem.GaussianMixture(4, covariance_type="diag", n_restarts=3)
    params = gm.get_params()
    assert params["n_components"] == 4 and params["covariance_type"] == "diag"
    copy = clone(gm)
    assert copy.get_params() == params and copy is not gm
    assert gm.set_params(n_components=2) is gm and gm.n_components == 2
    with pytest.raises(ValueError, match="(?i)invalid parameter 'bogus'"):
        gm.set_params(bogus=1)
    assert repr(gm).startswith("GaussianMixture(") and "n_components=2" in repr(gm)


BAD_HYPERPARAMETERS = [
    (dict(n_components=0), "n_components must be an integer >= 1"),
    (dict(n_components=2.5), "n_components must be an integer >= 1"),
    (dict(n_components=2, tol=-1.0), "tol must be a finite number >= 0"),
    (dict(n_components=2, reg_covar=-1e-3), "reg_covar must be a finite number >= 0"),
    (dict(n_components=2, covariance_type="bogus"), "covariance_type must be one of"),
    (dict(n_components=2, max_iter=0), "max_iter must be an integer >= 1"),
    (dict(n_components=2, n_restarts=0), "n_restarts must be an integer >= 1"),
    (dict(n_components=2, init_params="nope"), "init_params must be one of"),
    (dict(n_components=2, m_step="newton"), "m_step must be"),
]


@pytest.mark.parametrize("kwargs, message", BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_are_named(blobs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        jem.GaussianMixture(**kwargs).fit(blobs)


def test_bad_data_is_named_before_any_compute(blobs):
    X = blobs.copy()
    # A NaN entry is a missing value for GaussianMixture; a row with nothing observed is an error.
    X[17, :] = np.nan
    with pytest.raises(ValueError, match="row 17 is all NaN"):
        jem.GaussianMixture(2).fit(X)
    with pytest.raises(ValueError, match="contains NaN at row 17, column 0"):
        jem.BernoulliMixture(2).fit(X)
    X[17, 1] = np.inf
    with pytest.raises(ValueError, match="contains inf at row 17, column 1"):
        jem.GaussianMixture(2).fit(X)
    with pytest.raises(ValueError, match="n_components=3 but only 2 samples"):
        jem.GaussianMixture(3).fit(blobs[:2])
    with pytest.raises(ValueError, match=r"reshape\(-1, 1\)"):
        jem.GaussianMixture(2).fit(blobs[:, 0])
    with pytest.raises(ValueError, match="must be numeric"):
        jem.GaussianMixture(2).fit([["a", "b"], ["c", "d"]])
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(600,\)"):
        jem.GaussianMixture(2).fit(blobs, sample_weight=np.ones(5))
    with pytest.raises(ValueError, match="sample_weight must be non-negative, got -1.0 at row 3"):
        w = np.ones(len(blobs))
        w[3] = -1
        jem.GaussianMixture(2).fit(blobs, sample_weight=w)
    with pytest.raises(ValueError, match="needs data in 0 or 1; got 2.0 at row 0, column 0"):
        jem.BernoulliMixture(2).fit(np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))


def test_predict_before_fit_and_feature_mismatch(blobs):
    gm = jem.GaussianMixture(2)
    with pytest.raises(jem.NotFittedError, match="not fitted yet"):
        gm.predict(blobs)
    gm.fit(blobs)
    with pytest.raises(ValueError, match="X has 3 features, but GaussianMixture is expecting 2 features"):
        gm.predict(np.ones((4, 3)))


def test_user_starting_parameters_have_checked_shapes(blobs):
    with pytest.raises(ValueError, match=r"means_init must have shape \(2, 2\)"):
        jem.GaussianMixture(2, means_init=np.zeros((3, 2))).fit(blobs)


def test_functional_fit_validates_too(blobs):
    model = jem.gaussian_mixture(3)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        jem.fit(model, blobs)
    with pytest.raises(ValueError, match="n_components=3 but only 2 samples"):
        jem.fit(model, blobs[:2], key=np.array([0, 1], dtype=np.uint32))
    with pytest.raises(ValueError, match="tol must be a finite number >= 0"):
        jem.fit(model, blobs, key=np.array([0, 1], dtype=np.uint32), tol=-1)
    with pytest.raises(ValueError, match="has no closed-form M-step"):
        jem.fit(jem.Model(init=lambda k, X: {}, log_joint=lambda p, x: x), blobs,
                key=np.array([0, 1], dtype=np.uint32), m_step="closed_form")
    with pytest.raises(ValueError, match="needs both suff_stats and maximize"):
        jem.Model(init=None, log_joint=None, suff_stats=lambda p, X, r: r)


def test_no_warning_on_a_converged_fit(blobs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jem.GaussianMixture(2, random_state=0).fit(blobs)


def test_convergence_warning_when_no_restart_converged(blobs):
    with pytest.warns(jem.ConvergenceWarning, match="no restart converged within max_iter=2"):
        gm = jem.GaussianMixture(3, init_params="random_from_data", max_iter=2, n_restarts=2,
                                 random_state=0).fit(blobs)
    assert not gm.converged_ and gm.n_iter_ == 2


@pytest.mark.parametrize("covariance_type", list(SHAPES))
def test_float32_fit_of_far_apart_clusters_matches_float64(covariance_type):
    """Clusters 10^4 standard deviations apart. Moments about a common point, or an expanded
    Mahalanobis square, lose ``eps * (10^4)^2`` to float32 cancellation (wrong variances, wrong
    likelihoods, or a failed fit); about each component's own mean, whitened before squaring,
    float32 keeps float64's answer."""
    import jax

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-1e4, 1.0, (500, 2)), rng.normal(1e4, 1.0, (300, 2))])
    fit32 = jem.GaussianMixture(2, covariance_type=covariance_type, random_state=0)
    fit32.fit(X.astype(np.float32))
    with jax.enable_x64(True):
        fit64 = jem.GaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(X)
        score64 = fit64.score(X)
    o32, o64 = np.argsort(fit32.means_[:, 0]), np.argsort(fit64.means_[:, 0])
    cov32, cov64 = fit32.covariances_, fit64.covariances_
    if covariance_type != "tied":
        cov32, cov64 = cov32[o32], cov64[o64]
    np.testing.assert_allclose(cov32, cov64, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(fit32.means_[o32], fit64.means_[o64], rtol=1e-6)
    assert fit32.score(X) == pytest.approx(score64, rel=1e-5)
