"""The variational Bayesian Gaussian mixture against scikit-learn's, iteration by iteration."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import betaln, gammaln

import jaxem as jem
from jaxem.app import cli
from jaxem.models import bayesian_gaussian as family

sklearn_mixture = pytest.importorskip("sklearn.mixture")

K = 5
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")


def _data():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(60, 3)) + 5, rng.normal(size=(50, 3)) * 0.5,
                        rng.normal(size=(40, 3)) - 4])
    return X, rng.dirichlet(np.ones(K), size=X.shape[0])


def _omitted_constant(X, prior, ct, pt):
    """The terms scikit-learn's ``_compute_lower_bound`` leaves out of the bound.

    At the posterior update ``q(θ) = M(r)`` the bound is ``H(r) - N D/2 log 2π + Σ_k log Z_k -
    K log Z_0 + log B(α) - log B(α0)`` with ``Z`` the Normal-Wishart normaliser; scikit-learn
    keeps ``H(r)``, ``Σ_k log Z_k`` less ``D/2 log 2π + D(D-1)/4 log π`` each, and ``log B(α)``.
    """
    n, d = X.shape
    nu0, beta0, gamma0 = prior.degrees_of_freedom, prior.mean_precision, prior.weight_concentration
    log_det_psi = family._log_det_covariance_prior(prior, ct, d)
    c = (-n * d / 2 * math.log(2 * math.pi) + K * d / 2 * math.log(beta0)
         - K * nu0 * d / 2 * math.log(2) + K * nu0 / 2 * log_det_psi
         - K * sum(gammaln((nu0 - j) / 2) for j in range(d)))
    return c - ((K * gammaln(gamma0) - gammaln(K * gamma0)) if pt == "dirichlet_distribution"
                else K * betaln(1, gamma0))


def _reg_covar_term(params, resp, ct, reg_covar, d):
    """scikit-learn adds ``reg_covar`` to each scatter as if it were data, so its bound lacks
    ``½ reg_covar Σ_k N_k tr(E[Λ_k])`` of the true one at the same parameters."""
    A = np.asarray(params["prec_chol"])
    trace = {"full": lambda: np.einsum("kij,kij->k", A, A), "tied": lambda: np.sum(A * A),
             "diag": lambda: np.sum(A * A, axis=1), "spherical": lambda: d * A * A}[ct]()
    return 0.5 * reg_covar * np.sum(resp.sum(axis=0) * trace)


def _sklearn_run(X, resp0, ct, pt, n_iter):
    """scikit-learn's fit loop from the responsibilities ``resp0``: per iteration its bound, the
    responsibilities its M-step used, and its log-joints and parameters after the M-step."""
    sk = sklearn_mixture.BayesianGaussianMixture(n_components=K, covariance_type=ct,
                                                 weight_concentration_prior_type=pt)
    sk._check_parameters(X)
    sk._initialize(X, resp0)
    steps = []
    for _ in range(n_iter):
        log_prob_norm, log_resp = sk._e_step(X)
        sk._m_step(X, log_resp)
        # Tied: scikit-learn returns the bound as a 1-element array.
        bound = float(np.ravel(sk._compute_lower_bound(log_resp, log_prob_norm))[0])
        steps.append(dict(bound=bound,
                          log_resp=log_resp, log_joint=sk._estimate_weighted_log_prob(X),
                          means=sk.means_.copy(), covariances=np.copy(sk.covariances_)))
    return sk, steps


def _start(X, resp0, ct, pt, reg_covar):
    prior = family.variational_prior(X, K, ct)
    centres = (resp0.T @ X) / resp0.sum(0)[:, None]
    params = family.initial_params(jnp.asarray(X), jnp.asarray(resp0), jnp.asarray(centres), ct,
                                   pt, reg_covar, prior)
    return prior, family.bayesian_gaussian_mixture(K, prior, ct, pt, reg_covar=reg_covar), params


@pytest.mark.parametrize("pt", PRIOR_TYPES)
@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_bound_equals_sklearn_every_iteration(x64, ct, pt):
    """Same data, same initial responsibilities: at every iteration our bound at scikit-learn's
    (responsibilities, posterior) pair is its lower bound plus the constants it omits."""
    X, resp0 = _data()
    sk, steps = _sklearn_run(X, resp0, ct, pt, n_iter=8)
    prior, model, params = _start(X, resp0, ct, pt, sk.reg_covar)
    c = _omitted_constant(X, prior, ct, pt)
    for step in steps:
        resp = np.exp(step["log_resp"])
        params = model.maximize(model.suff_stats(params, jnp.asarray(X), jnp.asarray(resp)), params)
        log_joint = np.asarray(model.log_joint_matrix(params, jnp.asarray(X)))
        np.testing.assert_allclose(log_joint, step["log_joint"], rtol=1e-9, atol=1e-9)
        ours = float(np.sum(resp * (log_joint - step["log_resp"])) + model.log_prior(params))
        theirs = step["bound"] + c + _reg_covar_term(params, resp, ct, sk.reg_covar, X.shape[1])
        assert abs(ours - theirs) <= 1e-9 * abs(theirs)
    np.testing.assert_allclose(np.asarray(params["means"]), sk.means_, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("ct, pt", [("full", "dirichlet_process"), ("tied", "dirichlet_distribution")])
def test_fit_history_is_the_bound(x64, ct, pt):
    """``jem.fit``'s history is the bound after each E-step: scikit-learn's bound at the same
    posterior plus the gain of its next E-step, ``Σ_n logsumexp ℓ_n - Σ r (ℓ - log r)``."""
    X, resp0 = _data()
    n_iter = 8
    sk, steps = _sklearn_run(X, resp0, ct, pt, n_iter)
    prior, model, params = _start(X, resp0, ct, pt, sk.reg_covar)
    result = jem.fit(model, X, init_params=params, max_iter=n_iter, tol=None, accelerate=None)
    c = _omitted_constant(X, prior, ct, pt)
    expected = []
    for step in steps:
        resp = np.exp(step["log_resp"])
        after = np.logaddexp.reduce(step["log_joint"], axis=1).sum()
        used = np.sum(resp * (step["log_joint"] - step["log_resp"]))
        # The reg_covar term at scikit-learn's parameters of step t (equal to ours, tested above).
        sk_params = {"prec_chol": np.linalg.inv(np.linalg.cholesky(step["covariances"]))
                     if ct in ("full", "tied") else 1 / np.sqrt(step["covariances"])}
        expected.append(step["bound"] + c + after - used
                        + _reg_covar_term(sk_params, resp, ct, sk.reg_covar, X.shape[1]))
    np.testing.assert_allclose(np.asarray(result.history)[0], expected, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(result.params["means"]), steps[-1]["means"], rtol=1e-8)


def test_unneeded_components_get_no_weight(tmp_path):
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    X = np.concatenate([rng.normal(size=(200, 2)) + m for m in centres])
    # One restart: variational EM has several local optima here. A second restart (since the
    # exploring initialisers, one from random rows) finds one that splits a cluster in two
    # (weights .195 + .135) with all 6 spares at exactly 0, and its bound is higher (-4.077 vs
    # -4.121 per row) than this 3-cluster one whose 7 spares keep .002 each: the bound charges
    # each spare that still holds responsibility for its parameters. The best restart is the one
    # with the higher bound, as it should be.
    bgm = jem.BayesianGaussianMixture(10, random_state=0, max_iter=300).fit(X)
    weights = np.sort(bgm.weights_)[::-1]
    assert weights[:3].min() > 0.3 and weights[3:].max() < 1e-2
    two = jem.BayesianGaussianMixture(10, random_state=0, max_iter=300, n_restarts=2).fit(X)
    assert two.lower_bound_ >= bgm.lower_bound_
    assert bgm.converged_ and np.all(np.diff(bgm.history_[:bgm.n_iter_]) >= -1e-6)
    assert set(bgm.predict(centres)) == set(np.argsort(bgm.weights_)[-3:])
    assert isinstance(bgm.weight_concentration_, tuple) and bgm.mean_precision_.shape == (10,)
    assert bgm.covariances_.shape == (10, 2, 2) and bgm.degrees_of_freedom_.shape == (10,)
    loaded = jem.load(bgm.save(tmp_path / "bgm.npz"))
    np.testing.assert_array_equal(loaded.predict_proba(X), bgm.predict_proba(X))
    np.testing.assert_array_equal(loaded.weight_concentration_[1], bgm.weight_concentration_[1])
    with pytest.raises(ValueError, match="no BIC"):
        bgm.bic(X)


def test_chunked_equals_in_memory(x64):
    X, resp0 = _data()
    _, model, params = _start(X, resp0, "diag", "dirichlet_process", 1e-6)
    memory = jem.fit(model, X, init_params=params, max_iter=6, tol=None)
    chunked = jem.fit_chunked(model, X, chunk_size=64, init_params=params, max_iter=6, tol=None)
    np.testing.assert_allclose(chunked.history, memory.history, rtol=1e-10)


def test_bad_arguments_are_named():
    X, _ = _data()
    with pytest.raises(ValueError, match="weight_concentration_prior_type"):
        jem.BayesianGaussianMixture(2, weight_concentration_prior_type="pitman-yor").fit(X)
    with pytest.raises(ValueError, match="degrees_of_freedom prior must be > 2"):
        jem.BayesianGaussianMixture(2, degrees_of_freedom_prior=1.0).fit(X)


def test_command_line_fit(tmp_path, capsys):
    X, _ = _data()
    data = tmp_path / "rows.npy"
    np.save(data, X)
    assert cli.main(["fit", str(data), "--model", "bgmm", "-k", "6", "--restarts", "1",
                             "--covariance", "diag", "--max-iter", "5", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "BayesianGaussianMixture(n_components=6" in out and "lower bound" in out
    assert "BIC" not in out


def test_gradient_m_step_agrees_with_the_update(x64):
    """The engine's gradient M-step maximises Σ r ℓ + log_prior over the variational parameters;
    the closed-form posterior update is that maximum, so they agree (1e-4): log_prior is the KL
    the update optimises."""
    X, resp0 = _data()
    _, model, params = _start(X, resp0, "diag", "dirichlet_process", 1e-6)
    resp = jax.nn.softmax(model.log_joint_matrix(params, jnp.asarray(X)), axis=1)
    closed = model.maximize(model.suff_stats(params, jnp.asarray(X), resp), params)
    grad = jem.fit(model, X, init_params=params, max_iter=1, tol=None, m_step="gradient",
                   m_step_iters=200, optimizer=optax.lbfgs())  # to the maximum, not one EM-gradient step
    for name, value in closed.items():
        np.testing.assert_allclose(grad.params[name], value, rtol=1e-4)
