"""scikit-learn's own tooling on jaxem's estimators: ``check_estimator``, ``clone``, pickling,
``Pipeline`` + ``GridSearchCV`` + ``cross_val_score``, and the protocol without scikit-learn."""

import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, clone, is_clusterer
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import jaxem as jem

# Small fits: every check fits on new shapes, and each new shape compiles anew; three iterations
# from rows drawn from the data (no k-means initialiser to compile) keep the checks to seconds.
SMALL = {"max_iter": 3, "init_params": "random_from_data"}

# At most three expected failures per estimator, each with its reason.
WEIGHTS_NOT_REPEATS = {"check_sample_weight_equivalence_on_dense_data": (
    "EM from a random start stops after a few iterations at a point that depends on the start; "
    "the start is drawn from rows without their weights, so weighting a row and repeating it "
    "start, and so end, at different points (scikit-learn marks this check for its KMeans too; "
    "tests/test_families_features.py checks that a weight equals repeated rows from one start)")}
STUDENT_T_SINGULAR = {"check_sample_weight_equivalence_on_dense_data": (
    WEIGHTS_NOT_REPEATS["check_sample_weight_equivalence_on_dense_data"] + "; moreover its 15 "
    "distinct rows in 30 dimensions make full scale matrices singular, and the fit stops with "
    "FitError instead of returning NaN")}
FLOATS_FOR_COUNTS = {"check_sample_weight_equivalence_on_dense_data": (
    "the check passes uniform floats without applying the estimator's input tags (categorical, "
    "positive_only), and this family takes only non-negative integers; weighted = repeated rows "
    "is tested in tests/test_families_features.py")}
CHECKED = {
    "GaussianMixture": (jem.GaussianMixture(2, **SMALL), WEIGHTS_NOT_REPEATS),
    # n_trials=50: the binomial form, since the integer data the tags ask for exceed 1.
    "BernoulliMixture": (jem.BernoulliMixture(2, n_trials=50, max_iter=3, init_params="random"),
                         FLOATS_FOR_COUNTS),
    "CategoricalMixture": (jem.CategoricalMixture(2, **SMALL), FLOATS_FOR_COUNTS),
    "PoissonMixture": (jem.PoissonMixture(2, **SMALL), FLOATS_FOR_COUNTS),
    "StudentTMixture": (jem.StudentTMixture(2, **SMALL), STUDENT_T_SINGULAR),
    "KMeans": (jem.KMeans(2, max_iter=3, init="random_from_data"), WEIGHTS_NOT_REPEATS),
}


@pytest.mark.parametrize("name", list(CHECKED))
def test_check_estimator(name):
    estimator, expected = CHECKED[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, expected_failed_checks=expected, on_fail=None)
    failed = [f"{r['check_name']}: {r['exception']!r}"[:400] for r in results
              if r["status"] == "failed"]
    assert not failed, "\n".join(failed)
    xfailed = {r["check_name"] for r in results if r["status"] == "xfail"}
    assert xfailed == set(expected)  # an expected failure that passes should be unlisted


def test_estimators_are_scikit_learn_estimators():
    gmm = jem.GaussianMixture(3, covariance_type="diag")
    assert isinstance(gmm, BaseEstimator)
    assert is_clusterer(jem.KMeans(2))
    assert repr(gmm) == "GaussianMixture(covariance_type='diag', n_components=3)"
    assert "GaussianMixture" in gmm._repr_html_()
    twin = clone(gmm)
    assert twin.get_params() == gmm.get_params() and twin is not gmm
    with pytest.raises(NotFittedError, match="not fitted yet"):
        gmm.predict(np.zeros((3, 2)))
    with pytest.raises(jem.NotFittedError):
        gmm.predict(np.zeros((3, 2)))


def test_a_fitted_estimator_pickles():
    X = np.random.default_rng(0).normal(size=(60, 2))
    gmm = jem.GaussianMixture(2, random_state=0, **SMALL).fit(X)
    back = pickle.loads(pickle.dumps(gmm))
    np.testing.assert_array_equal(back.score_samples(X), gmm.score_samples(X))
    assert back.get_params() == gmm.get_params()


def test_pipeline_grid_search_and_cross_validation():
    """A scikit-learn workflow with the import swapped: scaling, a grid over n_components and
    covariance_type scored by the mean log-likelihood, and cross-validation of the whole search.
    y (class labels here) passes through and is ignored, as scikit-learn's convention says."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    y = np.repeat(np.arange(3), 40)
    X = (centres[y] + rng.normal(size=(120, 2))) * np.array([1.0, 100.0])
    # Starts drawn from the data (no k-means initialiser to compile for each grid point).
    pipe = make_pipeline(StandardScaler(), jem.GaussianMixture(
        random_state=0, max_iter=50, n_restarts=3, init_params="random_from_data"))
    grid = GridSearchCV(pipe, {"gaussianmixture__n_components": [1, 3],
                               "gaussianmixture__covariance_type": ["full", "spherical"]},
                        cv=KFold(2, shuffle=True, random_state=0))
    outer = cross_validate(grid, X, y, cv=KFold(2, shuffle=True, random_state=1),
                           return_estimator=True)
    assert outer["test_score"].shape == (2,) and np.all(np.isfinite(outer["test_score"]))
    scores = cross_val_score(make_pipeline(StandardScaler(), jem.GaussianMixture(
        3, random_state=0, max_iter=50, init_params="random_from_data")), X, y,
        cv=KFold(2, shuffle=True, random_state=1))
    assert scores.shape == (2,) and np.all(np.isfinite(scores))
    for fitted in outer["estimator"]:
        # Three well separated round clusters: three components beat one.
        assert fitted.best_params_["gaussianmixture__n_components"] == 3
        assert fitted.best_estimator_[-1].weights_.shape == (3,)


def test_the_protocol_holds_without_scikit_learn():
    """With scikit-learn hidden, the estimators fall back to jaxem's own base class: the same
    get_params/set_params/repr, clone by hand, and fit and predict work."""
    code = """
import sys
sys.modules["sklearn"] = None  # any import of scikit-learn now fails
import numpy as np
import jaxem as jem
from jaxem.estimators import compat
assert not compat.HAVE_SKLEARN
km = jem.KMeans(2, max_iter=5, random_state=0)
assert repr(km) == "KMeans(max_iter=5, n_clusters=2, random_state=0)", repr(km)
twin = type(km)(**km.get_params())
assert twin.get_params() == km.get_params()
try:
    km.set_params(n_clusterz=3)
except ValueError as err:
    assert "n_clusterz" in str(err)
else:
    raise AssertionError("set_params accepted an unknown name")
X = np.r_[np.zeros((5, 2)), np.ones((5, 2)) * 10]
assert (km.fit_predict(X) == km.labels_).all() and km.fit_transform(X).shape == (10, 2)
try:
    jem.GaussianMixture(2).predict(X)
except jem.NotFittedError:
    pass
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
