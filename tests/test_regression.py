"""Mixtures of linear regressions: weighted least squares against scikit-learn, recovery of
simulated lines, frequency weights, partial labels, the estimator API."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_non_decreasing, start_params
from sklearn.linear_model import LinearRegression

import jaxem as jem

COEF = np.array([[1.5, -1.0], [-2.0, 0.5]])
INTERCEPT = np.array([0.5, -1.0])
SIGMA = np.array([0.3, 0.6])
WEIGHTS = np.array([0.6, 0.4])


def two_lines(n=600, seed=0, dtype=np.float32):
    """Inputs ``[N, 2]``, targets ``[N]`` and true components from two regression planes."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-3, 3, size=(n, 2))
    z = rng.choice(2, n, p=WEIGHTS)
    y = np.sum(X * COEF[z], axis=1) + INTERCEPT[z] + SIGMA[z] * rng.normal(size=n)
    return X.astype(dtype), y.astype(dtype), z


def test_one_component_is_weighted_least_squares(x64):
    X, y, _ = two_lines(n=200, dtype=np.float64)
    w = np.random.default_rng(1).uniform(0.1, 3.0, size=len(y))
    ours = jem.MixtureOfLinearRegressions(1, reg_var=0.0).fit(X, y, sample_weight=w)
    ref = LinearRegression().fit(X, y, sample_weight=w)
    np.testing.assert_allclose(ours.coef_[0], ref.coef_, rtol=1e-10)
    assert ours.intercept_[0] == pytest.approx(ref.intercept_, rel=1e-10)
    residual = y - ref.predict(X)
    assert ours.sigma_[0] ** 2 == pytest.approx(np.sum(w * residual**2) / w.sum(), rel=1e-10)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-10)


def test_recovers_two_simulated_lines():
    X, y, z = two_lines()
    # 20 labelled rows (partial labels, -1 elsewhere) tie component k to line k.
    labels = np.full(len(y), -1)
    labels[:20] = z[:20]
    est = jem.MixtureOfLinearRegressions(2, n_restarts=4, random_state=0)
    est.fit(X, y, labels=labels)
    assert est.converged_
    assert_non_decreasing(est.fit_result_)
    order = np.arange(2)
    # 600 rows, noise 0.3/0.6: standard errors are ~0.02 on the slopes; 5 of them is 0.1.
    np.testing.assert_allclose(est.coef_[order], COEF, atol=0.1)
    np.testing.assert_allclose(est.intercept_[order], INTERCEPT, atol=0.15)
    np.testing.assert_allclose(est.sigma_[order], SIGMA, rtol=0.15)
    np.testing.assert_allclose(est.weights_[order], WEIGHTS, atol=0.05)
    assert np.mean(est.predict_component(X, y) == order[z]) > 0.9
    # ELBO = log-likelihood right after an E-step, on the joint rows the model sees.
    model, params = est._model(), est._params()
    rows = est._transform(est._joint(X, y))
    resp, loglik = jem.e_step(model, params, rows)
    assert float(jem.elbo(model, params, rows, resp)) == pytest.approx(float(loglik), rel=1e-5)
    assert float(loglik) / len(y) == pytest.approx(est.score(X, y), rel=1e-5)
    # Inference API shapes and the conditional mean.
    proba = est.predict_proba(X, y)
    assert proba.shape == (len(y), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    expected = (X @ est.coef_.T + est.intercept_) @ est.weights_
    np.testing.assert_allclose(est.predict(X), expected, rtol=1e-4, atol=1e-4)
    draws, labels = est.sample(X, random_state=0)
    assert draws.shape == (len(y),) and set(np.unique(labels)) <= {0, 1}
    assert est.bic(X, y) == pytest.approx(-2 * est.score(X, y) * len(y) + 9 * np.log(len(y)),
                                          rel=1e-6)


def _rows(X, y):
    return np.concatenate([X, y[:, None]], axis=1)


@pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")  # a fixed number of iterations
def test_frequency_weights_equal_duplicated_rows_and_labels_fix_responsibilities(x64):
    X, y, z = two_lines(n=150, dtype=np.float64)
    rows = _rows(X, y)
    model = jem.mixture_of_linear_regressions(2)
    start = start_params(model, jax.random.key(0), rows)
    counts = np.random.default_rng(2).integers(0, 4, size=len(y))
    kw = dict(key=jax.random.key(0), init_params=start, max_iter=25, tol=0.0)
    weighted = jem.fit(model, rows, sample_weight=counts.astype(float), **kw)
    repeated = jem.fit(model, np.repeat(rows, counts, axis=0), **kw)
    np.testing.assert_allclose(weighted.history, repeated.history, rtol=1e-10)
    for name in ("weights", "coef", "sigma"):
        np.testing.assert_allclose(weighted.params[name], repeated.params[name], rtol=1e-8)
    # Every row labelled: EM is per-class least squares, whatever the start.
    labelled = jem.fit(model, rows, labels=z, **kw)
    for k in range(2):
        ref = LinearRegression().fit(X[z == k], y[z == k])
        np.testing.assert_allclose(labelled.params["coef"][k], [*ref.coef_, ref.intercept_],
                                   rtol=1e-9)
    np.testing.assert_allclose(labelled.params["weights"], np.bincount(z) / len(z), rtol=1e-12)


def test_fisher_identity(x64):
    X, y, _ = two_lines(n=100, dtype=np.float64)
    rows = jnp.asarray(_rows(X, y))
    model = jem.mixture_of_linear_regressions(2, init="random")
    params = model.init(jax.random.key(3), rows)
    resp, _ = jem.e_step(model, params, rows)
    # Jitted: op by op the gradients compiled dozens of small programs.
    grad_ll = jax.jit(jax.grad(lambda p: jem.log_likelihood(model, p, rows)))(params)
    grad_q = jax.jit(jax.grad(lambda p: jem.expected_log_joint(model, p, rows, resp)))(params)
    for name in grad_ll:
        np.testing.assert_allclose(grad_q[name], grad_ll[name], rtol=1e-9, atol=1e-9)


def test_bad_input_is_named():
    X, y, _ = two_lines(n=20)
    est = jem.MixtureOfLinearRegressions(2)
    with pytest.raises(ValueError, match=r"y must have shape \(20,\) to match X, got \(19,\)"):
        est.fit(X, y[:-1])
    with pytest.raises(ValueError, match=r"reshape\(-1, 1\)"):
        est.fit(X[:, 0], y)
    bad = y.copy()
    bad[4] = np.nan
    with pytest.raises(ValueError, match="y contains NaN at row 4"):
        est.fit(X, bad)
    with pytest.raises(ValueError, match="reg_var must be a finite number >= 0"):
        jem.MixtureOfLinearRegressions(2, reg_var=-1.0).fit(X, y)
    with pytest.raises(jem.NotFittedError):
        est.predict(X)
