"""Numerically nasty data from peers' issue trackers, all in float32: no NaN, sensible fits.

Cases (scikit-learn, hmmlearn and pomegranate users have reported each one breaking EM): a cluster
of identical points, more components than distinct points, a constant feature, one feature 1e6
times another, extreme outliers. Every fit must return finite parameters and probabilities, a
history that never decreases, and a log-likelihood at least that of the one-component fit (the
closed-form maximum, computed here with scipy). The engine's failure handling (a diverging restart
marked failed and never chosen, :class:`jaxem.FitError` when all fail), the
:class:`jaxem.ConvergenceWarning` and run-to-run determinism are checked here too.

All Gaussian cases share one data shape (60 x 2) so each covariance type compiles once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_non_decreasing
from scipy import stats

import jaxem as jem

N, D, K = 60, 2, 3
REG = 1e-6  # GaussianMixture's default reg_covar


def _normal(seed=0, n=N):
    return np.random.default_rng(seed).normal(size=(n, D))


def identical_cluster():
    X = _normal()
    X[:40] = [1.0, -2.0]
    return X


def two_distinct_points():
    """More components (3) than distinct points (2)."""
    return np.repeat([[0.0, 0.0], [5.0, 3.0]], N // 2, axis=0)


def all_identical():
    return np.full((N, D), 7.5)


def constant_feature():
    X = _normal()
    X[:, 1] = 5.0
    return X


def scaled_feature():
    X = _normal()
    X[:, 1] *= 1e6
    return X


def extreme_outliers():
    X = _normal()
    X[:2] = [[1e6, -1e6], [-3e5, 2e5]]
    return X


CASES = [identical_cluster, two_distinct_points, all_identical, constant_feature, scaled_feature,
         extreme_outliers]


def one_component_log_likelihood(X, covariance_type, reg=REG):
    """The maximum log-likelihood of one Gaussian (with reg_covar on the diagonal), in float64."""
    X = np.asarray(X, np.float64)
    mean = X.mean(axis=0)
    cov = np.cov(X.T, bias=True).reshape(D, D)
    cov = {"full": cov, "tied": cov, "diag": np.diag(np.diag(cov)),
           "spherical": np.eye(D) * np.trace(cov) / D}[covariance_type] + reg * np.eye(D)
    # By Cholesky rather than scipy's eigen-decomposition, which calls a condition number of 1e12
    # (the scaled feature) singular.
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (X - mean).T)
    log_det = 2 * np.sum(np.log(np.diag(chol)))
    return -0.5 * np.sum(z**2) - 0.5 * len(X) * (log_det + D * np.log(2 * np.pi))


def float64_log_likelihoods(est, X) -> np.ndarray:
    """``[R]`` each restart's total log-likelihood at its final parameters, in float64, of the
    rows the fit saw: the estimator centres ``X`` on its mean (in float32)."""
    result, covariance_type = est.fit_result_, est.covariance_type
    Xc = np.asarray(X - est._offset, np.float64)
    out = []
    for r in range(len(result.all_log_likelihoods)):
        p = {name: np.asarray(v[r], np.float64) for name, v in result.all_params.items()}
        n_components, A, lj = len(p["weights"]), p["prec_chol"], []
        # Every type's precision Cholesky as [K, D, D].
        if covariance_type == "tied":
            A = np.broadcast_to(A, (n_components, D, D))
        elif covariance_type == "diag":
            A = A[:, :, None] * np.eye(D)
        elif covariance_type == "spherical":
            A = A[:, None, None] * np.eye(D)
        for k in range(n_components):
            Ak = A[k]
            y = (Xc - p["means"][k]) @ Ak.T
            lj.append(np.log(p["weights"][k]) + np.sum(np.log(np.diag(Ak)))
                      - 0.5 * D * np.log(2 * np.pi) - 0.5 * np.sum(y * y, axis=1))
        out.append(np.sum(np.logaddexp.reduce(np.stack(lj, axis=1), axis=1)))
    return np.array(out)


def assert_finite_fit(est, X):
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        value = np.asarray(getattr(est, name))
        assert np.all(np.isfinite(value)), (name, value)
    proba = est.predict_proba(X)
    assert np.all(np.isfinite(proba))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(est.score_samples(X)))
    assert not est.fit_result_.failed[est.fit_result_.best_restart]


@pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")
@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_gaussian_pathological_data(covariance_type):
    for make in CASES:
        X = make().astype(np.float32)
        gm = jem.GaussianMixture(K, covariance_type=covariance_type, n_restarts=2, max_iter=30,
                                 random_state=0).fit(X)
        assert_finite_fit(gm, X)
        # float32 accumulates about eps * |ℓ_n| per row; the data span up to 1e6. Beyond that, a
        # step can look like a drop only by what float32 misses of ℓ at fixed parameters: with
        # outliers at 1e6, whitening them (A x - A μ) rounds by eps |A| |x|, which moved ℓ by
        # 0.006 between two compilations of the same pass at one fixed point. Each end of a
        # step may be off by that much, measured here against float64 at the final parameters.
        result = gm.fit_result_
        final = np.array([row[~np.isnan(row)][-1] for row in result.history])
        evaluation_error = np.abs(final - float64_log_likelihoods(gm, X))
        assert_non_decreasing(result, rel=2e-5, atol=2 * evaluation_error)
        total = gm.score(X) * len(X)
        floor = one_component_log_likelihood(X, covariance_type)
        assert total >= floor - 1e-4 * (abs(floor) + len(X)), (make.__name__, total, floor)


@pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")
def test_components_sit_on_distinct_points():
    """Three components, two distinct points: both points get their own component, each
    component's mean lies on a data point, and the surplus component is harmless."""
    X = two_distinct_points().astype(np.float32)
    gm = jem.GaussianMixture(K, covariance_type="full", n_restarts=2, max_iter=30,
                             random_state=0).fit(X)
    labels = gm.predict(X)
    assert labels[0] != labels[-1] and len(set(labels[: N // 2])) == len(set(labels[N // 2:])) == 1
    distinct = np.array([[0.0, 0.0], [5.0, 3.0]])
    gaps = np.min(np.linalg.norm(gm.means_[:, None] - distinct[None], axis=-1), axis=1)
    used = gm.weights_ > 1e-3
    assert np.all(gaps[used] < 1e-3), (gm.means_, gm.weights_)
    np.testing.assert_allclose(np.sort(gm.weights_[used])[-2:], [0.5, 0.5], atol=1e-3)


def test_warning_when_reg_covar_swamps_a_feature():
    """An absolute reg_covar of 1e-6 is most of the variance of data measured at 1e-4: say so."""
    X = (1e-4 * _normal(6)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"reg_covar=1e-06 is .* times the variance of column"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jem.ConvergenceWarning)
            jem.GaussianMixture(K, covariance_type="full", n_restarts=2, max_iter=30,
                                random_state=0).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # data at unit scale: no warning
        warnings.simplefilter("ignore", jem.ConvergenceWarning)
        jem.GaussianMixture(K, covariance_type="full", n_restarts=2, max_iter=30,
                            random_state=0).fit(1e4 * X)


def test_extreme_outlier_gets_its_own_component_not_the_bulk():
    X = extreme_outliers().astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jem.ConvergenceWarning)
        gm = jem.GaussianMixture(K, covariance_type="diag", n_restarts=2, max_iter=30,
                                 random_state=0).fit(X)
    labels = gm.predict(X)
    # The 58 ordinary rows share one component; the outliers are not put with them.
    bulk = np.bincount(labels[2:]).argmax()
    assert np.mean(labels[2:] == bulk) > 0.9 and bulk not in labels[:2]


@pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")
def test_bernoulli_pathological_data():
    """Binary rows: a column that is always 0, another always 1, all rows one of 2 patterns,
    with 3 components."""
    X = np.repeat([[0, 1, 1, 0], [0, 1, 0, 1]], 30, axis=0).astype(np.float32)
    bm = jem.BernoulliMixture(K, n_restarts=2, max_iter=30, random_state=0).fit(X)
    assert np.all(np.isfinite(bm.weights_)) and np.all(np.isfinite(bm.probs_))
    assert np.all((bm.probs_ >= 0) & (bm.probs_ <= 1))
    proba = bm.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert_non_decreasing(bm.fit_result_)
    # Two patterns, each given to a pure component: the log-likelihood is N log(1/2).
    np.testing.assert_allclose(bm.score(X), np.log(0.5), atol=1e-4)


@pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")
def test_poisson_pathological_data():
    """Counts with an all-zero column, identical rows and one enormous count."""
    X = np.zeros((N, 2), np.float32)
    X[:, 0] = np.random.default_rng(0).poisson(3.0, N)
    X[:20, 0] = 4.0
    X[0, 0] = 1e6
    pm = jem.PoissonMixture(K, n_restarts=2, max_iter=30, random_state=0).fit(X)
    assert np.all(np.isfinite(pm.weights_)) and np.all(np.isfinite(pm.rates_))
    assert np.all(pm.rates_ >= 0)
    np.testing.assert_allclose(pm.predict_proba(X).sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(pm.score_samples(X)))
    assert_non_decreasing(pm.fit_result_, rel=2e-5)
    # At least the one-component maximum (rates = column means).
    floor = stats.poisson(X.mean(axis=0)).logpmf(X).sum()
    assert pm.score(X) * N >= floor - 1e-5 * abs(floor)
    assert pm.predict(X)[0] not in pm.predict(X)[1:]  # the huge count is alone


@pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")
def test_gaussian_hmm_pathological_data():
    """A constant feature and long runs of identical rows in one sequence."""
    X = _normal(3)
    X[:, 1] = -4.0
    X[10:40, 0] = 2.0
    hmm = jem.GaussianHMM(2, covariance_type="diag", n_restarts=2, n_iter=20,
                          random_state=0).fit(X.astype(np.float32))
    for name in ("startprob_", "transmat_", "means_", "covars_"):
        assert np.all(np.isfinite(getattr(hmm, name))), name
    logprob, post = hmm.score_samples(X.astype(np.float32))
    assert np.isfinite(logprob)
    np.testing.assert_allclose(post.sum(axis=1), 1.0, atol=1e-5)
    assert_non_decreasing(hmm.fit_result_, rel=2e-5)


# -- failed restarts ------------------------------------------------------------------------------
def _sometimes_nan_model(fail_all: bool):
    """The full-covariance Gaussian mixture, except that the initialiser hands some restarts
    (those whose key draws below 1/2, or all of them) NaN means: they diverge at once."""
    base = jem.gaussian_mixture(2, "full")

    def init(key, X):
        params = base.init(key, X)
        # float32 draws whatever the fit's float type, so the test can tell which restarts fail.
        bad = jnp.asarray(True) if fail_all else jax.random.uniform(key, dtype=jnp.float32) < 0.5
        return {**params, "means": jnp.where(bad, jnp.nan, params["means"])}

    return jem.Model(init=init, log_joint=base.log_joint, batch_log_joint=base.batch_log_joint,
                     suff_stats=base.suff_stats, maximize=base.maximize, n_components=2,
                     name="sometimes-nan")


@pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")
def test_diverging_restart_is_marked_failed_and_never_best():
    X = _normal(1).astype(np.float32)
    model = _sometimes_nan_model(fail_all=False)
    keys = jax.random.split(jax.random.key(0), 6)
    bad = np.asarray(jax.vmap(lambda k: jax.random.uniform(k, dtype=jnp.float32) < 0.5)(keys))
    assert bad.any() and not bad.all()
    result = jem.fit(model, X, key=keys, max_iter=20)
    np.testing.assert_array_equal(result.failed, bad)
    assert not result.failed[result.best_restart]
    assert np.isfinite(result.log_likelihood)
    assert result.log_likelihood == np.max(result.all_log_likelihoods[~bad])
    assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(result.params))


def test_all_restarts_failing_raises_fit_error_with_the_reason():
    model = _sometimes_nan_model(fail_all=True)
    with pytest.raises(jem.FitError, match=r"all 3 restarts failed: the log-likelihood became NaN"):
        jem.fit(model, _normal(1).astype(np.float32), key=jax.random.key(0), n_restarts=3,
                max_iter=20)


# -- convergence warning and determinism -----------------------------------------------------------
def test_convergence_warning_when_max_iter_is_hit():
    X = _normal(2).astype(np.float32)
    with pytest.warns(jem.ConvergenceWarning, match="no restart converged within max_iter=1"):
        gm = jem.GaussianMixture(K, covariance_type="full", n_restarts=2, max_iter=1, tol=0.0,
                                 random_state=0).fit(X)
    assert not gm.converged_
    with pytest.warns(jem.ConvergenceWarning, match="max_iter=1"):
        jem.GaussianHMM(2, covariance_type="diag", n_restarts=2, n_iter=1, tol=0.0,
                        random_state=0).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", jem.ConvergenceWarning)
        jem.GaussianMixture(K, covariance_type="full", n_restarts=2, max_iter=30, tol=1e-3,
                            random_state=0).fit(X)


_DETERMINISM_SCRIPT = """
import json, sys, numpy as np, jaxem as jem
X = np.random.default_rng(5).normal(size=(60, 2)).astype(np.float32)
gm = jem.GaussianMixture(3, n_restarts=2, max_iter=30, random_state=7).fit(X)
print(json.dumps({k: np.asarray(v).tobytes().hex() for k, v in
                  (("means", gm.means_), ("covariances", gm.covariances_), ("weights", gm.weights_),
                   ("history", gm.fit_result_.history))}))
"""


@pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")
def test_same_key_gives_bit_identical_results_in_and_across_processes():
    namespace: dict = {}
    runs = []
    for _ in range(2):
        out = []
        namespace["print"] = out.append
        exec(_DETERMINISM_SCRIPT, namespace)
        runs.append(json.loads(out[0]))
    assert runs[0] == runs[1]
    proc = subprocess.run([sys.executable, "-c", _DETERMINISM_SCRIPT], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == runs[0]


def test_means_far_from_the_origin_keep_what_the_fit_resolved():
    """A timestamp-like column (1.7e9 + {0, 100} + noise): the fit runs centred, and the reported
    means, score and labels keep the 100 apart that float32 cannot hold at 1.7e9."""
    rng = np.random.default_rng(0)
    truth = rng.choice([0.0, 100.0], 400)
    X = np.column_stack([1.7e9 + truth + rng.normal(0, 1, 400), rng.normal(size=400)])
    gm = jem.GaussianMixture(2, random_state=0).fit(X)
    assert gm.means_.dtype == np.float64
    np.testing.assert_allclose(np.sort(gm.means_[:, 0]) - 1.7e9, [0.0, 100.0], atol=0.5)
    assert gm.score(X) == pytest.approx(gm.lower_bound_, rel=1e-4)
    labels = gm.predict(X)
    assert set(labels.tolist()) == {0, 1}
    agree = np.mean(labels == (truth > 0))
    assert max(agree, 1 - agree) == 1.0


def test_a_restart_with_non_finite_parameters_has_failed_not_converged():
    """The loop stops a restart whose objective is not finite; one whose parameters are not
    finite while its objective is counts as failed too, is never reported as converged, and is
    never chosen as the best."""
    from jaxem.core.loop import LoopOutput
    from jaxem.core.result import result_from_loop

    params = {"means": np.array([[0.0, 1.0], [np.nan, 1.0]]), "weights": np.array([[1.0], [1.0]])}
    out = LoopOutput(params, objective=np.array([-10.0, -1.0]), initial_objective=np.zeros(2),
                     n_iter=np.array([3, 3]), converged=np.array([True, True]),
                     history=np.zeros((2, 3)))
    result = result_from_loop(out, keys=np.zeros(2), max_iter=3, tol=1e-6)
    assert result.best_restart == 0 and result.failed.tolist() == [False, True]
    assert result.converged.tolist() == [True, False]
    with pytest.raises(jem.FitError, match=r"parameter \"\['means'\]\" became NaN"):
        result_from_loop(out._replace(objective=np.array([np.nan, -1.0])), keys=np.zeros(2),
                         max_iter=3, tol=1e-6)
