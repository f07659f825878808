"""Mixtures of factor analysers and of probabilistic PCA: the Woodbury E-step against dense
covariances, the closed-form M-step against numerical maximisation, planted subspaces."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import start_params
from scipy.linalg import subspace_angles
from scipy.stats import multivariate_normal

import jaxem as jem
from jaxem.app import cli
from jaxem.app.selection import count_free_parameters
from jaxem.models import factor_analysers as family

K, D, Q = 3, 12, 2


def _planted(n=900, seed=0, noise=0.3):
    """Rows from K components of rank-Q structure plus isotropic noise, with the true loadings."""
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(K, D, Q)) * 2
    means = rng.normal(size=(K, D)) * 5
    X = np.concatenate([means[k] + rng.normal(size=(n // K, Q)) @ loadings[k].T
                        + noise * rng.normal(size=(n // K, D)) for k in range(K)])
    return X - X.mean(axis=0), loadings, means - X.mean(axis=0)


def _dense_log_likelihood(params, X):
    cov = np.asarray(family.covariances(params))
    weights, means = np.asarray(params["weights"]), np.asarray(params["means"])
    parts = [np.log(weights[k]) + multivariate_normal(means[k], cov[k]).logpdf(X)
             for k in range(len(weights))]
    return float(np.sum(np.logaddexp.reduce(parts, axis=0)))


@pytest.mark.parametrize("isotropic", [False, True])
def test_every_step_equals_the_dense_log_likelihood(x64, isotropic):
    """The fit's history, step by step, equals the log-likelihood of the same parameters
    evaluated with dense ``W W^T + Ψ`` covariances; and it never decreases."""
    X, _, _ = _planted()
    model = family.mixture_of_factor_analysers(K, Q, isotropic=isotropic)
    params = start_params(model, jax.random.key(0), X)
    n_iter = 6
    result = jem.fit(model, X, init_params=params, max_iter=n_iter, tol=None, accelerate=None)
    history = np.asarray(result.history)[0]

    @jax.jit  # one program (op by op: over a hundred small ones)
    def em_step(params, X):
        resp = jax.nn.softmax(model.log_joint_matrix(params, X), axis=1)
        return model.maximize(model.suff_stats(params, X, resp), params)

    for t in range(n_iter):
        params = em_step(params, jnp.asarray(X))
        assert abs(history[t] - _dense_log_likelihood(params, X)) <= 1e-6 * abs(history[t])
    assert np.all(np.diff(history) > 0)
    if isotropic:
        assert result.params["noise"].shape == (K,)


def _complete_data_q(params, stats, isotropic):
    """The complete-data Q over components and factors, from the statistics the M-step uses
    (the noise as a log-variance so that plain gradient ascent may move it freely)."""
    W, mu, log_psi = params["loadings"], params["means"], params["log_noise"]
    psi = jnp.exp(log_psi)
    psi = jnp.broadcast_to(psi[:, None], mu.shape) if isotropic else psi
    aug = jnp.concatenate([W, mu[:, :, None]], axis=2)                  # [K, D, q+1]
    sxz = jnp.concatenate([stats["sxz"], stats["sx"][:, :, None]], axis=2)
    szz = jnp.concatenate([
        jnp.concatenate([stats["szz"], stats["sz"][:, :, None]], axis=2),
        jnp.concatenate([stats["sz"], stats["nk"][:, None]], axis=1)[:, None, :]], axis=1)
    residual = (stats["sxx"] - 2 * jnp.sum(aug * sxz, axis=2)
                + jnp.einsum("kdi,kij,kdj->kd", aug, szz, aug))
    nk = stats["nk"]
    return jnp.sum(-0.5 * nk[:, None] * jnp.log(psi) - 0.5 * residual / psi)


@pytest.mark.parametrize("isotropic", [False, True])
def test_closed_form_step_maximises_its_q(x64, isotropic):
    """Gradient ascent (L-BFGS) on the complete-data Q from the previous parameters reaches the
    closed-form M-step's parameters (1e-4)."""
    X, _, _ = _planted(n=300)
    model = family.mixture_of_factor_analysers(K, Q, isotropic=isotropic, reg_covar=0.0)
    params = start_params(model, jax.random.key(1), X)
    resp = jax.nn.softmax(model.log_joint_matrix(params, jnp.asarray(X)), axis=1)
    stats = model.suff_stats(params, jnp.asarray(X), resp)
    closed = model.maximize(stats, params)
    start = {"loadings": params["loadings"], "means": params["means"],
             "log_noise": jnp.log(params["noise"])}

    def loss(p):
        return -_complete_data_q(p, stats, isotropic)

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        p, state = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = solver.update(grad, state, p, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(p, updates), state), None

    (found, _), _ = jax.lax.scan(step, (start, solver.init(start)), None, length=100)
    scale = np.abs(np.asarray(closed["loadings"])).max()
    np.testing.assert_allclose(found["means"], closed["means"], atol=1e-4 * scale)
    np.testing.assert_allclose(found["loadings"], closed["loadings"], atol=1e-4 * scale)
    np.testing.assert_allclose(np.exp(found["log_noise"]), closed["noise"], rtol=1e-4)


def test_gradient_m_step_fit_climbs():
    """The engine's gradient M-step works on this family with no extra code: its history never
    decreases, and since it maximises Q with the factors summed out while the closed-form step is
    one EM step over the factors too, it climbs at least as fast (here about 5 iterations to the
    height 30 closed-form steps have not reached)."""
    X, _, _ = _planted(n=300)
    model = family.mixture_of_factor_analysers(K, Q)
    params = start_params(model, jax.random.key(2), np.asarray(X, np.float32))
    closed = jem.fit(model, X, init_params=params, max_iter=30, tol=None)
    grad = jem.fit(model, X, init_params=params, max_iter=30, tol=None, m_step="gradient")
    history = np.asarray(grad.history)[0][:int(grad.n_iter[0])]
    assert len(history) > 2 and np.all(np.diff(history) >= -1e-5 * np.abs(history[1:]))
    assert grad.log_likelihood >= closed.log_likelihood - 1e-5 * abs(closed.log_likelihood)


def test_the_gradient_optimum_is_a_fixed_point_of_the_closed_form_step(x64):
    """Both M-steps climb the same likelihood, by different problems per step (the closed form
    maximises Q over the factors too, the gradient Q with them summed out), so they agree where
    EM ends. The closed form crawls there (3000 steps stop 5e-5 nats short); L-BFGS on Q gets
    there in a few steps, and from that point 200 closed-form steps move no covariance by more
    than 1e-4 of its scale (3.5e-8 measured) and do not change the likelihood."""
    X, _, _ = _planted(n=300)
    model = family.mixture_of_factor_analysers(K, Q, reg_covar=0.0)
    start = start_params(model, jax.random.key(2), X)
    near = jem.fit(model, X, init_params=start, max_iter=3000, tol=1e-10)
    grad = jem.fit(model, X, init_params=near.params, max_iter=20, tol=None, m_step="gradient",
                   m_step_iters=50, optimizer=optax.lbfgs())
    assert grad.log_likelihood >= near.log_likelihood
    closed = jem.fit(model, X, init_params=grad.params, max_iter=200, tol=None)
    assert closed.log_likelihood == pytest.approx(grad.log_likelihood, rel=1e-12)
    cov_grad = np.asarray(family.covariances(grad.params))
    cov_closed = np.asarray(family.covariances(closed.params))
    np.testing.assert_allclose(cov_closed, cov_grad, atol=1e-4 * np.abs(cov_grad).max())
    np.testing.assert_allclose(closed.params["means"], grad.params["means"],
                               atol=1e-4 * np.abs(np.asarray(grad.params["means"])).max())
    np.testing.assert_allclose(closed.params["weights"], grad.params["weights"], atol=1e-4)


def test_recovers_the_planted_subspaces(tmp_path):
    X, loadings, means = _planted(n=1500, seed=3)
    fitted = jem.MixtureOfFactorAnalysers(K, n_factors=Q, random_state=0, max_iter=150).fit(X)
    for k in range(K):
        j = int(np.argmin(np.linalg.norm(fitted.means_ - means[k], axis=1)))
        angles = np.degrees(subspace_angles(loadings[k], fitted.loadings_[j]))
        assert angles.max() < 5
    factors = fitted.transform(X)
    assert factors.shape == (X.shape[0], Q)
    loaded = jem.load(fitted.save(tmp_path / "mfa.npz"))
    np.testing.assert_array_equal(loaded.transform(X), factors)
    # BIC counts each component's loadings up to rotation: D q - q (q - 1) / 2.
    p = (K - 1) + K * D + K * (D * Q - Q * (Q - 1) // 2) + K * D
    assert fitted.bic(X) == pytest.approx(-2 * fitted.score(X) * len(X) + p * np.log(len(X)))
    assert fitted.sample(5, random_state=0)[0].shape == (5, D)


def test_select_components_counts_loadings_up_to_rotation():
    model = family.mixture_of_factor_analysers(2, Q)
    params = {"weights": jnp.full(2, 0.5), "means": jnp.zeros((2, D)),
              "loadings": jnp.ones((2, D, Q)), "noise": jnp.ones((2, D))}
    expected = 2 * (D * Q - Q * (Q - 1) // 2 + D + D) + 1
    assert count_free_parameters(model, params) == expected


def test_chunked_equals_in_memory(x64):
    X, _, _ = _planted(n=300)
    model = family.mixture_of_factor_analysers(K, Q)
    params = start_params(model, jax.random.key(0), X)
    memory = jem.fit(model, X, init_params=params, max_iter=5, tol=None)
    chunked = jem.fit_chunked(model, X, chunk_size=64, init_params=params, max_iter=5, tol=None)
    np.testing.assert_allclose(chunked.history, memory.history, rtol=1e-10)


def test_too_many_factors_is_named():
    X, _, _ = _planted(n=60)
    with pytest.raises(ValueError, match="lower n_factors"):
        jem.MixtureOfFactorAnalysers(2, n_factors=D).fit(X)
    with pytest.raises(ValueError, match="isotropic"):
        jem.MixtureOfFactorAnalysers(2, isotropic="yes").fit(X)


def test_command_line_fit_and_save(tmp_path, capsys):
    X, _, _ = _planted(n=150)
    data, model = tmp_path / "rows.npy", tmp_path / "mfa.npz"
    np.save(data, X)
    assert cli.main(["fit", str(data), "--model", "mfa", "-k", "3", "--restarts", "1",
                             "--set", "n_factors=2", "--out", str(model), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "MixtureOfFactorAnalysers(n_components=3" in out and "BIC" in out
    fitted = jem.load(model)
    assert isinstance(fitted, jem.MixtureOfFactorAnalysers) and fitted.loadings_.shape == (3, D, 2)
