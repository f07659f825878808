"""MAP-EM for Gaussian mixtures: Dirichlet weights, Normal-Wishart (full, tied) and
Normal-inverse-gamma (diag, spherical) priors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_non_decreasing, three_blobs

import jaxem as jem
from jaxem import constraints as C
from jaxem.models import gaussian as G
from jaxem.models.gaussian_prior import GaussianPrior, gaussian_prior

COVARIANCE_TYPES = ["full", "diag", "spherical", "tied"]


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_map_m_step_is_the_mode_of_q_plus_log_prior(x64, covariance_type):
    """The closed-form MAP update is a stationary point of Q(θ) + log p(θ), so the M-step and the
    log_prior the engine adds to the history describe the same objective; and it beats the
    starting point."""
    X = jnp.asarray(three_blobs(n=300, dtype=np.float64))
    prior = gaussian_prior(X, 3, covariance_type, weight_concentration=3.0, mean_precision=0.5,
                           degrees_of_freedom=5.0)
    model = jem.gaussian_mixture(3, covariance_type, reg_covar=0.0, init="random_from_data",
                                 prior=prior)
    start = model.init(jax.random.key(0), X)
    resp, _ = jem.e_step(model, start, X)
    # Jitted, as the functions below: op by op they compiled over a hundred small programs.
    new = jax.jit(lambda p: model.maximize(model.suff_stats(p, X, resp), p))(start)
    cons = G.constraints_for(covariance_type)

    @jax.jit
    def objective(u):
        p = C.constrain(cons, u)
        return jem.expected_log_joint(model, p, X, resp) + model.log_prior(p)

    grads = jax.jit(jax.grad(objective))(C.unconstrain(cons, new))
    for name, g in grads.items():
        np.testing.assert_allclose(g, 0.0, atol=1e-8, err_msg=name)
    assert objective(C.unconstrain(cons, new)) > objective(C.unconstrain(cons, start)) + 1.0


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_map_history_is_the_monotone_penalised_log_likelihood(covariance_type):
    X = three_blobs(n=300)
    prior = gaussian_prior(X, 3, covariance_type, weight_concentration=2.0)
    model = jem.gaussian_mixture(3, covariance_type, reg_covar=0.0, init="random_from_data",
                                 prior=prior)
    result = jem.fit(model, X, key=jax.random.key(1), n_restarts=2, max_iter=40, tol=0.0)
    assert_non_decreasing(result)
    assert np.all(result.all_log_likelihoods > result.initial_log_likelihood + 1.0)
    _, loglik = jem.e_step(model, result.params, X)
    penalised = float(loglik) + float(model.log_prior(result.params))
    assert result.log_likelihood == pytest.approx(penalised, rel=1e-5)
    # The Dirichlet mode: w_k = (N_k + α - 1) / (N + K(α - 1)) at the final responsibilities.
    resp, _ = jem.e_step(model, result.params, X)
    nk = np.asarray(resp).sum(axis=0)
    weights_next = model.maximize(model.suff_stats(result.params, jnp.asarray(X), resp),
                                  result.params)["weights"]
    np.testing.assert_allclose(weights_next, (nk + 1.0) / (len(X) + 3.0), rtol=1e-5)


def _duplicates_and_a_blob(seed=0):
    rng = np.random.default_rng(seed)
    blob = rng.normal(0.0, 1.0, size=(100, 2))
    return np.concatenate([blob, np.tile([[6.0, 6.0]], (20, 1))]).astype(np.float32)


def test_map_fit_cannot_collapse_onto_duplicated_points():
    """A component starting on 20 copies of one point: maximum likelihood (reg_covar=0) shrinks
    its covariance to nothing; the MAP fit keeps it positive definite with every eigenvalue at
    least λ_min(Ψ0) / (N + ν0 + D + 2)."""
    X = _duplicates_and_a_blob()
    start = dict(weights_init=[0.8, 0.2], means_init=[[0.0, 0.0], [6.0, 6.0]],
                 precisions_init=np.stack([np.eye(2)] * 2), reg_covar=0.0, max_iter=30)
    try:
        ml = jem.GaussianMixture(2, **start).fit(X)
        smallest_ml = np.linalg.eigvalsh(ml.covariances_).min()
    except jem.FitError:
        smallest_ml = 0.0
    assert smallest_ml < 1e-6
    psi = 0.5 * np.eye(2)
    gm = jem.GaussianMixture(2, covariance_prior=psi, degrees_of_freedom_prior=3.0, **start).fit(X)
    assert gm.converged_
    bound = 0.5 / (len(X) + 3.0 + 2 + 2)
    assert np.linalg.eigvalsh(gm.covariances_).min() >= bound
    assert_non_decreasing(gm.fit_result_)


BAD_PRIORS = [
    (dict(weight_concentration=0.5), "weight_concentration must be >= 1"),
    (dict(degrees_of_freedom_prior=0.5), r"degrees_of_freedom must be > 1"),
    (dict(covariance_prior=np.eye(3)), r"must have shape \(2, 2\), got \(3, 3\)"),
    (dict(covariance_prior=-np.eye(2)), "symmetric positive definite"),
    (dict(mean_prior=[0.0, 0.0, 0.0]), r"mean_prior must have shape \(2,\) to match X"),
    (dict(mean_precision_prior=-1.0), "mean_precision_prior must be a finite number >= 0"),
]


@pytest.mark.parametrize("kwargs, message", BAD_PRIORS)
def test_bad_prior_hyperparameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        jem.GaussianMixture(2, **kwargs).fit(three_blobs(n=60))


def test_prior_object_checks():
    with pytest.raises(ValueError, match="needs a covariance prior"):
        jem.gaussian_mixture(2, prior=GaussianPrior(mean_precision=1.0))
    with pytest.raises(ValueError, match=r"for covariance_type='diag' must have shape \(2,\)"):
        jem.gaussian_mixture(2, "diag", prior=GaussianPrior(mean=(0.0, 0.0), covariance=1.0,
                                                            degrees_of_freedom=2.0))
