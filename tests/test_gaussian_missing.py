"""Missing values (NaN) in Gaussian mixtures: exact marginalisation in the E-step, conditional
moments in the M-step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_non_decreasing, three_blobs
from scipy.stats import multivariate_normal

import jaxem as jem
from jaxem.models import gaussian as G

COVARIANCE_TYPES = ["full", "diag", "spherical", "tied"]


def _with_holes(X, rate=0.25, seed=0):
    rng = np.random.default_rng(seed)
    X = np.array(X, dtype=np.float64)
    holes = rng.uniform(size=X.shape) < rate
    holes[holes.all(axis=1), 0] = False
    X[holes] = np.nan
    return X


def _correlated(n=200, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.choice([-3.0, 3.0], (n, 1))


def _random_params(covariance_type, k=3, d=4, seed=0):
    """Weights, means and correlated covariances drawn at random (no initialiser to compile)."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(k, d, d)) / np.sqrt(d)
    cov = factors @ np.swapaxes(factors, 1, 2) + 0.5 * np.eye(d)
    if covariance_type == "tied":
        prec_chol = G._precision_cholesky(jnp.asarray(cov[0]))
    elif covariance_type == "full":
        prec_chol = G._precision_cholesky(jnp.asarray(cov))
    else:
        var = np.diagonal(cov, axis1=1, axis2=2)
        prec_chol = jnp.asarray(1 / np.sqrt(var if covariance_type == "diag" else var.mean(axis=1)))
    return {"weights": jnp.asarray(rng.dirichlet(np.full(k, 5.0))),
            "means": jnp.asarray(rng.choice([-3.0, 3.0], (k, 1)) + rng.normal(size=(k, d))),
            "prec_chol": prec_chol}


def _dense_covariances(params, covariance_type, k, d):
    cov = np.asarray(G.covariances_from_prec_chol(params["prec_chol"], covariance_type))
    if covariance_type in ("full", "tied"):
        return np.broadcast_to(cov, (k, d, d))
    var = cov if covariance_type == "diag" else cov[:, None] * np.ones(d)
    return np.stack([np.diag(v) for v in var])


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_likelihood_of_a_row_with_nans_is_the_observed_marginal(x64, covariance_type):
    X = _correlated()
    Xn = _with_holes(X)
    model = jem.gaussian_mixture(3, covariance_type, missing=True)
    params = _random_params(covariance_type)
    # The model's functions jitted: op by op they compiled over a hundred small programs.
    log_joint = np.asarray(jax.jit(model.log_joint_matrix)(params, jnp.asarray(Xn)))
    cov = _dense_covariances(params, covariance_type, 3, 4)
    for n in range(30):
        seen = ~np.isnan(Xn[n])
        for k in range(3):
            ref = multivariate_normal(np.asarray(params["means"][k])[seen],
                                      cov[k][np.ix_(seen, seen)]).logpdf(Xn[n, seen])
            assert log_joint[n, k] == pytest.approx(np.log(params["weights"][k]) + ref, abs=1e-9)
    # On complete rows the variant is the ordinary model, statistics included.
    complete = jem.gaussian_mixture(3, covariance_type)
    np.testing.assert_allclose(jax.jit(model.log_joint_matrix)(params, jnp.asarray(X)),
                               jax.jit(complete.log_joint_matrix)(params, jnp.asarray(X)), rtol=1e-12)
    resp = jax.nn.softmax(log_joint, axis=1)
    ours, plain = (jax.jit(m.suff_stats)(params, jnp.asarray(X), resp) for m in (model, complete))
    for name, value in ours.items():
        np.testing.assert_allclose(value, plain[name], rtol=1e-10, atol=1e-10, err_msg=name)


def _reference_em_step(X, params, covariance_type):
    """One exact EM step written row by row in NumPy: the conditional mean of each row's missing
    coordinates and their conditional covariance (Little & Rubin, ch. 11)."""
    k, d = np.shape(params["means"])
    cov = _dense_covariances(params, covariance_type, k, d)
    means, weights = np.asarray(params["means"]), np.asarray(params["weights"])
    n = len(X)
    log_joint = np.empty((n, k))
    fills = np.empty((n, k, d))
    cond = np.zeros((n, k, d, d))
    for i in range(n):
        o = ~np.isnan(X[i])
        m = ~o
        for j in range(k):
            S = cov[j]
            log_joint[i, j] = np.log(weights[j]) + multivariate_normal(
                means[j][o], S[np.ix_(o, o)]).logpdf(X[i, o])
            gain = S[np.ix_(m, o)] @ np.linalg.inv(S[np.ix_(o, o)])
            fills[i, j, o] = X[i, o]
            fills[i, j, m] = means[j][m] + gain @ (X[i, o] - means[j][o])
            cond[i, j][np.ix_(m, m)] = S[np.ix_(m, m)] - gain @ S[np.ix_(o, m)]
    resp = np.exp(log_joint - np.logaddexp.reduce(log_joint, axis=1, keepdims=True))
    nk = resp.sum(axis=0)
    new_means = np.einsum("nk,nkd->kd", resp, fills) / nk[:, None]
    centred = fills - new_means[None]
    scatter = np.einsum("nk,nkd,nke->kde", resp, centred, centred) + np.einsum("nk,nkde->kde",
                                                                                resp, cond)
    return nk / n, new_means, scatter / nk[:, None, None]


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_one_em_step_matches_a_row_by_row_reference(x64, covariance_type):
    X = _with_holes(_correlated(n=120), rate=0.3, seed=1)
    model = jem.gaussian_mixture(3, covariance_type, reg_covar=0.0, missing=True)
    params = _random_params(covariance_type, seed=2)

    @jax.jit  # one program (op by op: over a hundred small ones)
    def em_step(params, X):
        resp = jax.nn.softmax(model.log_joint_matrix(params, X), axis=1)
        return model.maximize(model.suff_stats(params, X, resp), params)

    new = em_step(params, jnp.asarray(X))
    weights, means, cov = _reference_em_step(X, params, covariance_type)
    np.testing.assert_allclose(new["weights"], weights, rtol=1e-10)
    np.testing.assert_allclose(new["means"], means, rtol=1e-9, atol=1e-10)
    ours = _dense_covariances(new, covariance_type, 3, 4)
    expected = cov if covariance_type == "full" else np.stack([np.diag(np.diag(c)) for c in cov])
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")
def test_fit_with_nans_is_monotone_and_a_missing_column_leaves_the_rest_untouched(x64):
    """Marginalising a column that is NaN in every row gives exactly the fit of the other
    columns: same log-likelihood, same means and covariances on the observed block. In float64:
    the two are different programs, and over 30 iterations float32 round-off drifts apart along
    the slow directions of EM (4e-4 in a mean with other compiler settings)."""
    X2 = three_blobs(n=300).astype(np.float64)
    X3 = np.concatenate([X2, np.full((len(X2), 1), np.nan)], axis=1)
    start2 = jax.jit(G.gaussian_mixture(3).init)(jax.random.key(0), jnp.asarray(X2))
    start3 = {"weights": start2["weights"],
              "means": jnp.concatenate([start2["means"], jnp.zeros((3, 1))], axis=1),
              "prec_chol": jax.vmap(jax.scipy.linalg.block_diag)(start2["prec_chol"],
                                                                 jnp.ones((3, 1, 1)))}
    kw = dict(key=jax.random.key(0), max_iter=30, tol=0.0, dtype="float64", accelerate=None)
    ours = jem.fit(jem.gaussian_mixture(3, missing=True), X3, init_params=start3, **kw)
    plain = jem.fit(jem.gaussian_mixture(3), X2, init_params=start2, **kw)
    assert_non_decreasing(ours)
    np.testing.assert_allclose(ours.history, plain.history, rtol=1e-12)
    np.testing.assert_allclose(ours.params["means"][:, :2], plain.params["means"], rtol=1e-9)
    cov3 = G.covariances_from_prec_chol(ours.params["prec_chol"], "full")
    cov2 = G.covariances_from_prec_chol(plain.params["prec_chol"], "full")
    np.testing.assert_allclose(cov3[:, :2, :2], cov2, rtol=1e-9, atol=1e-12)


def test_estimator_fits_and_scores_data_with_nans():
    Xn = _with_holes(three_blobs(n=300), rate=0.2).astype(np.float32)
    gm = jem.GaussianMixture(3, covariance_type="diag", random_state=0, max_iter=50).fit(Xn)
    assert_non_decreasing(gm.fit_result_)
    assert np.isfinite(gm.score(Xn)) and np.isfinite(gm.means_).all()
    assert gm.lower_bound_ == pytest.approx(gm.score(Xn), rel=1e-5)
    np.testing.assert_allclose(gm.predict_proba(Xn).sum(axis=1), 1.0, rtol=1e-5)
    bad = Xn.copy()
    bad[7] = np.nan
    with pytest.raises(ValueError, match="X row 7 is all NaN"):
        jem.GaussianMixture(3).fit(bad)
    bad[7] = [np.inf, 0.0]
    with pytest.raises(ValueError, match="contains inf at row 7, column 0"):
        jem.GaussianMixture(3).fit(bad)
    with pytest.raises(ValueError, match="contains NaN"):
        jem.fit(jem.gaussian_mixture(3), Xn, key=jax.random.key(0))
