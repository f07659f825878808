"""The model zoo (part A) against the math and against scipy.stats: log-densities, monotone
histories, tight ELBO, single-component M-steps equal to scipy's maximum-likelihood fits, the
Fisher identity for the gradient M-step.

Compilation dominates the run time, so the engine-level properties are checked on two programs:
a product mixture that uses every per-feature family at once (with missing values) and the
Student-t mixture. The single-family models are that same code with one feature group; their
fits are exercised in test_families_estimators.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as st
from conftest import assert_non_decreasing

import jaxem as jem
from jaxem.models import distributions as dist

ALL_FEATURES = [("gaussian", [0, 1]), ("poisson", [2]), ("bernoulli", [3, 4]),
                ("categorical", [5], {"n_categories": [3]}), ("gamma", [6]), ("exponential", [7])]
MISSING_COLUMNS = (0, 2, 5, 6)


def mixed_data(n=600, seed=0, missing=0.1):
    """Two components over eight columns of six families; a share ``missing`` of NaN in columns
    0, 2, 5 and 6. Returns ``(X [n, 8], z [n])``."""
    rng = np.random.default_rng(seed)
    z = rng.choice(2, size=n, p=[0.6, 0.4])
    one = z == 1
    cat = np.where(one, rng.choice(3, n, p=[0.1, 0.2, 0.7]), rng.choice(3, n, p=[0.6, 0.3, 0.1]))
    X = np.column_stack([rng.normal(np.where(one, 3.0, 0.0), 1.0),
                         rng.normal(np.where(one, -1.0, 1.0), 0.5),
                         rng.poisson(np.where(one, 9.0, 2.0)),
                         rng.random(n) < np.where(one, 0.8, 0.2),
                         rng.random(n) < np.where(one, 0.3, 0.6),
                         cat,
                         rng.gamma(np.where(one, 8.0, 2.0), np.where(one, 0.5, 1.0)),
                         rng.exponential(np.where(one, 5.0, 1.0))]).astype(float)
    for col in MISSING_COLUMNS:
        X[rng.random(n) < missing, col] = np.nan
    return X, z


def t_data(n=600, seed=0):
    a = st.multivariate_t.rvs([0, 0], [[1, 0.5], [0.5, 1]], df=3, size=n // 2, random_state=seed)
    b = st.multivariate_t.rvs([5, 2], [[0.5, 0], [0, 2]], df=8, size=n - n // 2,
                              random_state=seed + 1)
    return np.concatenate([a, b])


MIXED = jem.independent_mixture(2, ALL_FEATURES, init="random")
STUDENT_T = jem.student_t_mixture(2, "full", init="random_from_data")


def mixed_params():
    """Hand-set parameters of :data:`MIXED` (not the truth), for density and gradient checks."""
    return {"weights": jnp.array([0.3, 0.7]), "features": (
        {"means": jnp.array([[0.5, 0.0], [2.0, -0.5]]),
         "variances": jnp.array([[1.5, 0.3], [0.8, 0.6]])},
        {"rates": jnp.array([[3.0], [7.0]])},
        {"probs": jnp.array([[0.3, 0.5], [0.7, 0.4]])},
        {"probs": jnp.array([[[0.5, 0.3, 0.2]], [[0.2, 0.2, 0.6]]])},
        {"shapes": jnp.array([[1.5], [6.0]]), "rates": jnp.array([[0.8], [1.5]])},
        {"rates": jnp.array([[0.7], [0.3]])})}


def t_params():
    return {"weights": jnp.array([0.45, 0.55]), "means": jnp.array([[0.5, 0.2], [4.0, 1.0]]),
            "prec_chol": jnp.array([[[1.2, 0.0], [-0.4, 0.9]], [[0.8, 0.0], [0.1, 0.6]]]),
            "dofs": jnp.array([4.0, 12.0])}


def _scipy_mixed(params, X):
    """``[N, K]`` log-joints of :data:`MIXED` from scipy.stats, NaN terms dropped."""
    p = jax.tree.map(np.asarray, params)
    g, po, b, c, ga, ex = p["features"]
    cols = []
    for k in range(2):
        terms = np.column_stack([
            st.norm.logpdf(X[:, :2], g["means"][k], np.sqrt(g["variances"][k])),
            st.poisson.logpmf(X[:, 2], po["rates"][k, 0]),
            st.bernoulli.logpmf(X[:, 3:5], b["probs"][k]),
            np.log(c["probs"][k, 0][np.nan_to_num(X[:, 5]).astype(int)]),
            st.gamma.logpdf(X[:, 6], ga["shapes"][k, 0], scale=1 / ga["rates"][k, 0]),
            st.expon.logpdf(X[:, 7], scale=1 / ex["rates"][k, 0])])
        # Independent columns: the marginal of the observed ones is the product without the rest.
        cols.append(np.where(np.isnan(X), 0.0, terms).sum(axis=1))
    return np.log(p["weights"])[None] + np.stack(cols, axis=1)


def test_product_log_joint_matches_scipy_with_missing_terms_dropped(x64):
    X, _ = mixed_data(n=60)
    assert np.isnan(X).any(axis=1).sum() > 10
    expected = _scipy_mixed(mixed_params(), X)
    got = MIXED.batch_log_joint(mixed_params(), jnp.asarray(X))
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    row = int(np.argmax(np.isnan(X).any(axis=1)))
    np.testing.assert_allclose(MIXED.log_joint(mixed_params(), jnp.asarray(X[row])), expected[row],
                               rtol=1e-10)


def test_single_family_log_joints_match_scipy(x64):
    rng = np.random.default_rng(1)
    w = jnp.array([0.4, 0.6])
    r = jnp.array([[1.5, 4.0], [6.0, 0.5]])
    counts, pos = rng.poisson(3.0, (40, 2)).astype(float), rng.gamma(2.0, 1.0, (40, 2))
    cases = [
        (jem.poisson_mixture(2), {"weights": w, "rates": r}, counts,
         lambda k: st.poisson.logpmf(counts, r[k]).sum(1)),
        (jem.exponential_mixture(2), {"weights": w, "rates": r}, pos,
         lambda k: st.expon.logpdf(pos, scale=1 / r[k]).sum(1)),
        (jem.gamma_mixture(2), {"weights": w, "shapes": r[::-1], "rates": r}, pos,
         lambda k: st.gamma.logpdf(pos, r[::-1][k], scale=1 / r[k]).sum(1)),
    ]
    probs = jnp.array([[[0.2, 0.8, 0.0], [0.1, 0.3, 0.6]], [[0.5, 0.5, 0.0], [0.3, 0.3, 0.4]]])
    codes = np.column_stack([rng.choice(2, 40), rng.choice(3, 40)]).astype(float)
    cases.append((jem.categorical_mixture(2, (2, 3)), {"weights": w, "probs": probs}, codes,
                  lambda k: np.log(np.asarray(probs[k])[[0, 1], codes.astype(int)]).sum(1)))
    X = t_data(n=40)
    cov = jem.models.gaussian.covariances_from_prec_chol(t_params()["prec_chol"], "full")
    cases.append((STUDENT_T, t_params(), X, lambda k: st.multivariate_t.logpdf(
        X, t_params()["means"][k], cov[k], df=float(t_params()["dofs"][k]))))
    for model, params, data, oracle in cases:
        weights = np.asarray(params["weights"])
        expected = np.log(weights)[None] + np.stack([oracle(k) for k in range(2)], 1)
        np.testing.assert_allclose(model.batch_log_joint(params, jnp.asarray(data)), expected,
                                   rtol=1e-10, err_msg=model.name)


@pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")  # a fixed number of iterations
@pytest.mark.parametrize("name", ["product", "student_t"])
def test_history_never_decreases_and_elbo_is_tight(name):
    model, X = (MIXED, mixed_data()[0]) if name == "product" else (STUDENT_T, t_data())
    result = jem.fit(model, X, key=jax.random.key(1), n_restarts=2, max_iter=40, tol=0.0)
    assert_non_decreasing(result)
    # The random starts really climbed, so monotonicity was tested on a real path.
    assert np.all(result.all_log_likelihoods > result.initial_log_likelihood + 1.0)
    Xj = jnp.asarray(X, jnp.float32)
    loglik = jem.log_likelihood(model, result.params, Xj)
    assert float(loglik) == pytest.approx(result.log_likelihood, rel=1e-5)
    q = jax.nn.softmax(model.batch_log_joint(result.params, Xj), axis=1)
    assert float(jem.elbo(model, result.params, Xj, q)) == pytest.approx(float(loglik), rel=1e-5)


def _m_step(model, X, weights, params=None):
    """One closed-form M-step from responsibilities ``weights [N]`` on a single component."""
    X = jnp.asarray(X, jnp.float64)
    params = model.init(jax.random.key(0), X) if params is None else params
    resp = jnp.asarray(weights, jnp.float64)[:, None]
    return model.maximize(model.suff_stats(params, X, resp), params)


def test_single_component_m_steps_equal_scipy_fits(x64):
    rng = np.random.default_rng(3)
    x = rng.gamma(3.5, 1 / 2.0, size=(300, 1))
    counts = rng.integers(1, 4, size=300)                   # frequency weights
    rep = np.repeat(x[:, 0], counts)
    one = {"weights": jnp.ones(1)}
    # Gamma: scipy's MLE with the location fixed at 0 solves the same equation; the weighted
    # M-step equals scipy's fit of the data with rows repeated.
    p = _m_step(jem.gamma_mixture(1), x, counts, {**one, "shapes": jnp.ones((1, 1)),
                                                  "rates": jnp.ones((1, 1))})
    a, _, scale = st.gamma.fit(rep, floc=0)
    np.testing.assert_allclose([p["shapes"][0, 0], p["rates"][0, 0]], [a, 1 / scale], rtol=1e-7)
    _, scale = st.expon.fit(rep, floc=0)
    p = _m_step(jem.exponential_mixture(1), x, counts, {**one, "rates": jnp.ones((1, 1))})
    np.testing.assert_allclose(p["rates"][0, 0], 1 / scale, rtol=1e-12)
    k = rng.poisson(4.2, size=(300, 2)).astype(float)
    p = _m_step(jem.poisson_mixture(1), k, counts, {**one, "rates": jnp.ones((1, 2))})
    np.testing.assert_allclose(p["rates"][0], np.average(k, axis=0, weights=counts), rtol=1e-12)
    # Categorical: normalised weighted counts per column; the padding stays exactly 0.
    c = np.column_stack([rng.choice(4, 300), rng.choice(2, 300)]).astype(float)
    p = _m_step(jem.categorical_mixture(1, (4, 2)), c, counts,
                {**one, "probs": dist.categorical((4, 2)).default_params(1, 2, jnp.float64)["probs"]})
    for d in range(2):
        freq = np.bincount(c[:, d].astype(int), weights=counts, minlength=4) / counts.sum()
        np.testing.assert_allclose(p["probs"][0, d], freq, rtol=1e-12, atol=1e-300)


def test_missing_entries_add_nothing_to_the_statistics(x64):
    """One component: each column's estimate is the NaN-ignoring estimate of that column."""
    X, _ = mixed_data(n=400)
    model = jem.independent_mixture(1, ALL_FEATURES)
    start = jax.tree.map(lambda a: a[:1], mixed_params())
    start["weights"] = jnp.ones(1)
    g, po, b, c, ga, ex = _m_step(model, X, np.ones(len(X)), start)["features"]
    np.testing.assert_allclose(g["means"][0], np.nanmean(X[:, :2], axis=0), rtol=1e-12)
    np.testing.assert_allclose(g["variances"][0], np.nanvar(X[:, :2], axis=0), rtol=1e-10)
    np.testing.assert_allclose(po["rates"][0, 0], np.nanmean(X[:, 2]), rtol=1e-12)
    freq = np.bincount(X[~np.isnan(X[:, 5]), 5].astype(int), minlength=3)
    np.testing.assert_allclose(c["probs"][0, 0], freq / freq.sum(), rtol=1e-12)
    shape, _, scale = st.gamma.fit(X[~np.isnan(X[:, 6]), 6], floc=0)
    np.testing.assert_allclose([ga["shapes"][0, 0], ga["rates"][0, 0]], [shape, 1 / scale],
                               rtol=1e-7)


def test_student_t_single_component_equals_scipy_t_fit(x64):
    x = st.t.rvs(4.0, loc=1.0, scale=2.0, size=600, random_state=5)[:, None]
    result = jem.fit(jem.student_t_mixture(1, "diag"), x, key=jax.random.key(0), max_iter=3000,
                     tol=1e-14)
    assert_non_decreasing(result)
    ours = [float(result.params["dofs"][0]), float(result.params["means"][0, 0]),
            1 / float(result.params["prec_chol"][0, 0])]
    ref = st.t.fit(x[:, 0])
    # Both are the maximum-likelihood estimate: ours is at least as likely as scipy's optimum
    # and the parameters agree to scipy's optimiser tolerance (Nelder-Mead, ~1e-4 relative).
    assert -st.t.logpdf(x[:, 0], *ours).sum() <= -st.t.logpdf(x[:, 0], *ref).sum() + 1e-7
    np.testing.assert_allclose(ours, ref, rtol=2e-3)


def test_log_minus_digamma_and_its_inverse(x64):
    a = jnp.asarray([0.05, 0.7, 3.0, 7.9, 8.1, 50.0, 300.0])
    g, dg = dist.log_minus_digamma(a)
    np.testing.assert_allclose(g, jnp.log(a) - jax.scipy.special.digamma(a), rtol=1e-10)
    np.testing.assert_allclose(dg, 1 / a - jax.scipy.special.polygamma(1, a), rtol=1e-9)
    np.testing.assert_allclose(dist.solve_log_minus_digamma(g), a, rtol=1e-9)


@pytest.mark.parametrize("name", ["product", "student_t"])
def test_fisher_identity(x64, name):
    """∇ log p(X|θ) = ∇ Q(θ|θ) for the objective the gradient M-step climbs (every feature family
    at once for the product mixture, NaN entries included)."""
    model, params, X = ((MIXED, mixed_params(), mixed_data(n=200)[0]) if name == "product"
                        else (STUDENT_T, t_params(), t_data(n=200)))
    X = jnp.asarray(X)
    resp = jax.nn.softmax(jax.jit(model.batch_log_joint)(params, X), axis=1)
    # Jitted: op by op the gradients compiled over a hundred small programs.
    grad_ll = jax.jit(jax.grad(lambda p: jem.log_likelihood(model, p, X)))(params)
    grad_q = jax.jit(jax.grad(lambda p: jem.expected_log_joint(model, p, X, resp)))(params)
    leaves_ll, leaves_q = jax.tree.leaves(grad_ll), jax.tree.leaves(grad_q)
    for g_ll, g_q in zip(leaves_ll, leaves_q, strict=True):
        assert np.isfinite(g_ll).all()
        np.testing.assert_allclose(g_q, g_ll, rtol=1e-9, atol=1e-9 * X.shape[0])
    assert all(np.abs(g).max() > 1e-3 for g in leaves_ll)


@pytest.mark.parametrize("rows_minor", [True, False])
@pytest.mark.parametrize("centred", [True, False])
def test_centred_moments_keep_float32_accuracy_far_from_the_origin(centred, rows_minor,
                                                                   monkeypatch):
    """The shared weighted moments (Gaussian, Student-t, regression statistics) equal a float64
    oracle in float32 even for rows 1e3 from the origin (moments about each centre, not about one
    point), weightless rows add exactly nothing, and the diagonal form is the full form's diagonal;
    in both layouts (rows along the minor axis, chosen for few features, or not)."""
    from jaxem.models import common
    from jaxem.models.common import centred_moments

    monkeypatch.setattr(common, "ROW_MINOR_MAX_FEATURES", 3 if rows_minor else 0)

    rng = np.random.default_rng(3)
    offset = 1e3 if centred else 0.0
    means = offset + rng.normal(0.0, 2.0, (4, 3))
    X = means[rng.integers(0, 4, 500)] + rng.normal(0.0, 0.5, (500, 3))
    W = rng.dirichlet(np.ones(4), 500) * rng.uniform(0.5, 2.0, (500, 1))
    W[:50] = 0.0
    X32, W32 = X.astype(np.float32), W.astype(np.float32)
    m32 = means.astype(np.float32) if centred else None
    first, second = centred_moments(jnp.asarray(X32), m32, jnp.asarray(W32))
    _, diag = centred_moments(jnp.asarray(X32), m32, jnp.asarray(W32), full=False)
    # The oracle takes the float32 inputs exactly, so only the computation's error is measured.
    about = X32.astype(float)[None] - (0.0 if m32 is None else m32.astype(float)[:, None])
    W64 = W32.astype(float)
    ref_first = np.einsum("nk,knd->kd", W64, about)
    ref_second = np.einsum("nk,knd,kne->kde", W64, about, about)
    scale = np.max(np.abs(ref_second))
    np.testing.assert_allclose(second, ref_second, rtol=0, atol=2e-6 * scale)
    np.testing.assert_allclose(first, ref_first, rtol=0, atol=2e-6 * np.sqrt(scale * W64.sum()))
    np.testing.assert_allclose(diag, np.diagonal(np.asarray(second), axis1=1, axis2=2), rtol=1e-6)
    # Rows of weight 0 contribute exactly nothing, whatever their values.
    X_bad = X32.copy()
    X_bad[:50] = 1e30
    _, second_bad = centred_moments(jnp.asarray(X_bad), m32, jnp.asarray(W32))
    np.testing.assert_array_equal(second_bad, second)
