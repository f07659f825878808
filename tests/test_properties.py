"""Property-based tests (hypothesis) of fits on random data: shapes, scales, duplicates, parameters.

For every drawn data set the fit must return no NaN anywhere, a history that never decreases,
responsibilities that sum to 1, and a float32 log-likelihood that agrees with the same parameters
evaluated in float64 within ``LL_RTOL`` of ``Σ_n (|log p(x_n)| + 1)``: float32 carries about 7
digits, and each row's log-density is a sum of terms as large as that row's own value.

To keep compilation (seconds per distinct program) out of the loop, shapes come from a small fixed
set and every other choice (scale, offset, duplicates, parameters) is data, so the examples reuse
a handful of compiled fits. ``derandomize=True`` keeps CI deterministic.
"""

from __future__ import annotations

import copy
import warnings

import jax
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from scipy import special

import jaxem as jem

LL_RTOL = 1e-5
N = 48
# No shrinking: a failure prints its (unshrunk) example at once instead of refitting for minutes.
SETTINGS = settings(max_examples=10, deadline=None, derandomize=True,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def gaussian_data(draw):
    """``(X [N, D] float32, covariance_type)`` from a random mixture at a random scale, with
    optional duplicated rows."""
    # Two compiled programs in all: one feature with diagonal, three with full covariances.
    d, covariance_type = draw(st.sampled_from([(1, "diag"), (3, "full")]))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = 10.0 ** draw(st.floats(-6, 6))
    offset = draw(st.floats(-100, 100))          # in units of the scale
    duplicate_share = draw(st.sampled_from([0.0, 0.25, 0.75]))
    rng = np.random.default_rng(seed)
    k_true = rng.integers(1, 4)
    means = rng.normal(0, 5, size=(k_true, d))
    # Column spreads within a factor 10: float32 cannot hold covariances conditioned much beyond
    # 1e6 (see test_pathological for a feature scaled 1e6 times another).
    sds = 10.0 ** rng.uniform(-0.5, 0.5, size=(k_true, d))
    z = rng.choice(k_true, size=N, p=rng.dirichlet(np.ones(k_true)))
    X = means[z] + sds[z] * rng.standard_normal((N, d))
    n_dup = int(duplicate_share * N)
    X[:n_dup] = X[n_dup] if n_dup else X[:0]
    return ((offset + X) * scale).astype(np.float32), covariance_type


def float64_score_samples(est, X):
    """The fitted (float32) parameters evaluated in float64 on the same data (an estimator
    predicts in the float type of its fitted arrays, so a copy holds them as float64)."""
    wide = copy.copy(est)
    for name, value in vars(est).items():
        if name.endswith("_") and isinstance(value, np.ndarray) and value.dtype == np.float32:
            setattr(wide, name, value.astype(np.float64))
    with jax.enable_x64(True):
        return wide.score_samples(X.astype(np.float64))


def assert_agrees_in_float64(est, X, scale=None) -> float:
    """Check float32 against float64 log-likelihoods at the fitted parameters; returns the
    resolution used, ``LL_RTOL * scale``. ``scale``: the magnitude float32 round-off is relative
    to, by default ``Σ_n (|log p(x_n)| + 1)`` (rows of both signs make the total smaller than the
    terms it is summed from)."""
    rows32 = est.score_samples(X)
    rows64 = float64_score_samples(est, X)
    assert rows32.dtype == np.float32 and rows64.dtype == np.float64
    scale = np.sum(np.abs(rows64) + 1) if scale is None else scale
    assert abs(rows32.sum(dtype=np.float64) - rows64.sum()) <= LL_RTOL * scale, (
        rows32.sum(), rows64.sum())
    return LL_RTOL * scale


def assert_history_non_decreasing(result, resolution):
    """No restart's log-likelihood (initial, then each iteration) falls by more than round-off."""
    history = np.concatenate([result.initial_log_likelihood[:, None], result.history], axis=1)
    for r, row in enumerate(history):
        row = row[~np.isnan(row)].astype(np.float64)
        assert np.all(np.diff(row) >= -resolution), (r, np.diff(row).min(), resolution)


def assert_all_finite(*arrays):
    for a in arrays:
        assert np.all(np.isfinite(np.asarray(a))), a


@SETTINGS
@given(gaussian_data())
def test_gaussian_mixture_properties(data):
    X, covariance_type = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jem.ConvergenceWarning)
        # reg_covar follows the data's scale: an absolute one swamps data at 1e-6 (a warning says
        # so), and its M-step, no longer an exact maximiser, can then lower the log-likelihood.
        # In float32 a component collapsed on duplicates needs it above ~1e-5 of the variance:
        # below that its covariance is conditioned beyond float32's 7 digits.
        reg_covar = 1e-5 * float(np.mean(np.var(X.astype(np.float64), axis=0)))
        gm = jem.GaussianMixture(2, covariance_type=covariance_type, n_restarts=2, max_iter=25,
                                 reg_covar=reg_covar, random_state=0, dtype="float32").fit(X)
    proba = gm.predict_proba(X)
    assert_all_finite(gm.weights_, gm.means_, gm.covariances_, gm.precisions_cholesky_, proba,
                      gm.score_samples(X), gm.fit_result_.all_log_likelihoods)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(gm.weights_.sum(), 1.0, atol=1e-5)
    assert_history_non_decreasing(gm.fit_result_, assert_agrees_in_float64(gm, X))


@st.composite
def count_data(draw):
    """``X [N, 2]`` Poisson counts from random rates spanning 1e-2 .. 1e5, with duplicates."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    rates = 10.0 ** rng.uniform(-2, 5, size=(2, 2))
    z = rng.integers(0, 2, size=N)
    X = rng.poisson(rates[z]).astype(np.float32)
    n_dup = int(draw(st.sampled_from([0.0, 0.5])) * N)
    X[:n_dup] = X[n_dup]
    return X


@SETTINGS
@given(count_data())
def test_poisson_mixture_properties(X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jem.ConvergenceWarning)
        pm = jem.PoissonMixture(2, n_restarts=2, max_iter=25, random_state=0, dtype="float32").fit(X)
    proba = pm.predict_proba(X)
    assert_all_finite(pm.weights_, pm.rates_, proba, pm.score_samples(X))
    assert np.all(pm.rates_ >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)

    # A Poisson log-density x log λ - λ - log x! cancels terms far larger than its value when
    # counts are large (1e5 log 1e5 ≈ 1e6 against a result near -10), and float32 keeps 7 digits
    # of the terms, not of the result: round-off is relative to the terms' magnitude.
    rates = np.asarray(pm.rates_, np.float64)
    Xd = X.astype(np.float64)[:, None, :]
    terms = np.max(np.abs(special.xlogy(Xd, rates)) + rates + special.gammaln(Xd + 1), axis=1).sum()
    assert_history_non_decreasing(pm.fit_result_,
                                  assert_agrees_in_float64(pm, X, scale=terms + len(X)))


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.sampled_from([1, 4]), st.floats(-6, 6))
def test_e_step_on_random_parameters(seed, d, log_scale):
    """The functional E-step at random (not fitted) parameters: posteriors sum to 1, and the ELBO
    at the posterior equals the log-likelihood (the decomposition of section 1 of the design)."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** log_scale
    k = 3
    A = np.tril(rng.normal(size=(k, d, d)), -1) + np.eye(d) * rng.uniform(0.2, 3, size=(k, 1, 1))
    params = {"weights": rng.dirichlet(np.ones(k)).astype(np.float32),
              "means": (scale * rng.normal(0, 3, size=(k, d))).astype(np.float32),
              "prec_chol": (A / scale).astype(np.float32)}
    X = (scale * rng.normal(0, 3, size=(N, d))).astype(np.float32)
    model = jem.gaussian_mixture(k, "full")
    resp, ll = jem.e_step(model, params, X)
    resp = np.asarray(resp)
    assert_all_finite(resp, ll)
    np.testing.assert_allclose(resp.sum(axis=1), 1.0, atol=1e-5)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        resp64, ll64 = jem.e_step(model, p64, X.astype(np.float64))
        elbo64 = jem.elbo(model, p64, X.astype(np.float64), resp64)
        rows64 = np.asarray(jem.log_likelihood(model, p64, X.astype(np.float64)))
    np.testing.assert_allclose(float(elbo64), float(ll64), rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(float(rows64), float(ll64), rtol=1e-12)
    row_scale = np.sum(np.abs(np.asarray(
        jax.nn.logsumexp(model.log_joint_matrix(p64, X.astype(np.float64)), axis=1))) + 1)
    assert abs(float(ll) - float(ll64)) <= LL_RTOL * row_scale
