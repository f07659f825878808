"""Observed information and standard errors (issue 22): textbook formulas, finite differences,
Louis' identity, the minimal charts, models with no code of their own, and the reports of a
singular or ill-conditioned information."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem as jem
from jaxem.core.information import coordinates, model_coordinates
from jaxem.hmm.model import as_sequences


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_one_gaussian_standard_errors_are_sigma_over_root_n(x64):
    x = np.random.default_rng(0).normal(3.0, 2.0, (400, 1))
    mu, sigma = x.mean(), x.std()   # the maximum-likelihood estimates
    params = {"weights": jnp.ones(1), "means": jnp.array([[mu]]),
              "prec_chol": jnp.array([[[1 / sigma]]])}
    model = jem.gaussian_mixture(1)
    se = jem.standard_errors(model, params, x)
    assert _rel(se["means"], sigma / np.sqrt(400)) < 1e-6
    # Var(1/σ̂) by the delta method: the information on log σ is 2n, so SE(1/σ) = 1/(σ √(2n)).
    assert _rel(se["prec_chol"], 1 / (sigma * np.sqrt(800))) < 1e-6
    assert np.asarray(se["weights"]).shape == (1,) and float(se["weights"][0]) == 0.0
    lower, upper = jem.confidence_intervals(model, params, x, level=0.95)
    assert _rel(upper["means"] - lower["means"], 2 * 1.959963984540054 * sigma / np.sqrt(400)) < 1e-6


def test_one_poisson_standard_error_is_root_lambda_over_n(x64):
    counts = np.random.default_rng(1).poisson(4.0, (500, 1)).astype(float)
    model = jem.poisson_mixture(1)
    result = jem.fit(model, counts, key=jax.random.key(0), tol=1e-12)
    se = result.standard_errors(counts)
    assert _rel(se["rates"], np.sqrt(counts.mean() / 500)) < 1e-6


def _two_blobs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.0, 1.0, (n // 2, 2)),
                           rng.normal([3.0, 1.0], 0.7, (n - n // 2, 2))])


def _finite_difference_hessian(f, u, h=1e-4):
    """Central second differences of a scalar function of ``u [P]``."""
    P = u.shape[0]
    H = np.zeros((P, P))
    eye = np.eye(P) * h
    for i in range(P):
        for j in range(i, P):
            H[i, j] = H[j, i] = (f(u + eye[i] + eye[j]) - f(u + eye[i] - eye[j])
                                 - f(u - eye[i] + eye[j]) + f(u - eye[i] - eye[j])) / (4 * h * h)
    return H


def test_gmm_hessian_equals_finite_differences_and_louis_identity(x64):
    X = _two_blobs()
    model = jem.gaussian_mixture(2)
    params = jem.fit(model, X, key=jax.random.key(0), tol=1e-12, max_iter=1000).params
    coords = coordinates(model.constraints, params)
    u = np.asarray(coords.encode(params))
    assert u.shape == (1 + 4 + 6,)   # K - 1 weights, K D means, K D(D+1)/2 Cholesky entries
    info = np.asarray(jem.observed_information(model, params, X))
    loglik = jax.jit(lambda v: jem.log_likelihood(model, coords.decode(v), X))
    fd = -_finite_difference_hessian(lambda v: float(loglik(jnp.asarray(v))), u)
    louis = np.asarray(jem.louis_information(model, params, X))
    assert _rel(info, fd) < 1e-4
    assert _rel(louis, info) < 1e-4
    # Blocked over rows or not, the same sum.
    assert _rel(jem.observed_information(model, params, X, block_size=37), info) < 1e-10
    # The empirical information estimates the same matrix: positive definite, same scale.
    emp = np.asarray(jem.empirical_information(model, params, X))
    assert np.linalg.eigvalsh(emp)[0] > 0 and 0.3 < np.trace(emp) / np.trace(info) < 3


def test_minimal_charts_round_trip(x64):
    rng = np.random.default_rng(2)
    A = np.tril(rng.normal(size=(3, 4, 4)), -1) + np.eye(4) * rng.uniform(0.5, 2, (3, 1, 1))
    params = {"w": jnp.asarray(rng.dirichlet(np.ones(5), size=2)), "A": jnp.asarray(A),
              "s": jnp.asarray(rng.uniform(0.1, 3, (2, 3))), "p": jnp.asarray([0.2, 0.9]),
              "x": jnp.asarray(rng.normal(size=(3,)))}
    cons = {"w": jem.constraints.simplex, "A": jem.constraints.cholesky,
            "s": jem.constraints.positive, "p": jem.constraints.unit_interval, "x": None}
    coords = coordinates(cons, params)
    assert len(coords.names) == 2 * 4 + 3 * 10 + 6 + 2 + 3
    back = coords.decode(coords.encode(params))
    for key in params:
        np.testing.assert_allclose(back[key], params[key], rtol=1e-12, atol=1e-12)


def test_custom_gradient_model_gets_standard_errors_with_no_code_of_its_own(x64):
    """A researcher's model (init and log-joint only, gradient M-step): its fit's standard errors
    are the textbook ones, with nothing written for them."""
    def init(key, X):
        return {"mean": jnp.mean(X, 0) + 0.1, "scale": jnp.std(X, 0) * 1.2}

    def log_joint(params, x):
        z = (x - params["mean"]) / params["scale"]
        return jnp.atleast_1d(jnp.sum(-0.5 * z * z - jnp.log(params["scale"]) - 0.9189385332046727))

    model = jem.Model(init=init, log_joint=log_joint,
                      constraints={"mean": jem.constraints.real, "scale": jem.constraints.positive})
    x = np.random.default_rng(3).normal(-1.0, 0.5, (250, 1))
    result = jem.fit(model, x, key=jax.random.key(0), max_iter=200, tol=1e-14)
    se = result.standard_errors(x)
    scale = float(result.params["scale"][0])
    assert abs(scale / x.std() - 1) < 1e-5   # the gradient M-step reached the maximum
    assert _rel(se["mean"], scale / np.sqrt(250)) < 1e-6
    lower, upper = result.confidence_intervals(x, level=0.9)
    assert float(lower["mean"][0]) < float(result.params["mean"][0]) < float(upper["mean"][0])


def test_an_empty_component_is_reported_by_name(x64):
    X = _two_blobs()
    model = jem.gaussian_mixture(3)
    params = {"weights": jnp.array([0.5, 1e-9, 0.5 - 1e-9]),
              "means": jnp.array([[0.0, 0.0], [40.0, 40.0], [3.0, 1.0]]),
              "prec_chol": jnp.broadcast_to(jnp.eye(2), (3, 2, 2))}
    with pytest.raises(ValueError, match=r"singular.*condition number.*\[1, "):
        jem.standard_errors(model, params, X)


def test_a_component_with_almost_no_rows_warns(x64):
    """A MAP fit keeps a component that no row reaches (its prior determines it): the information
    is positive definite, but the component's standard errors rest on no data, and say so."""
    X = _two_blobs()
    prior = jem.models.gaussian_prior(X, 3, "full", weight_concentration=2.0,
                                      mean=np.array([40.0, 40.0]), mean_precision=1.0)
    model = jem.gaussian_mixture(3, prior=prior)
    start = jem.fit(jem.gaussian_mixture(2), X, key=jax.random.key(0), tol=1e-12).params
    start = {"weights": jnp.array([0.45, 0.45, 0.1]),
             "means": jnp.concatenate([start["means"], jnp.array([[40.0, 40.0]])]),
             "prec_chol": jnp.concatenate([start["prec_chol"], jnp.eye(2)[None]])}
    params = jem.fit(model, X, init_params=start, tol=1e-13, max_iter=3000).params
    with pytest.warns(jem.IllConditionedWarning, match=r"component \d carries 0 rows.*condition number"):
        se = jem.standard_errors(model, params, X)
    assert np.all(np.isfinite(np.asarray(se["means"])))


def test_fit_result_without_a_model_says_what_to_do():
    result = jem.fit(jem.gaussian_mixture(1), _two_blobs(40), key=jax.random.key(0))
    import dataclasses

    bare = dataclasses.replace(result, model=None)
    with pytest.raises(ValueError, match="jaxem.standard_errors"):
        bare.standard_errors(_two_blobs(40))
    with pytest.raises(ValueError, match="level must be in"):
        result.confidence_intervals(_two_blobs(40), level=1.5)


def test_estimator_standard_errors_follow_the_fitted_attributes(x64):
    X = _two_blobs() + 100.0   # the estimator fits in centred coordinates; its means_ are not
    est = jem.GaussianMixture(2, random_state=0, tol=1e-10).fit(X)
    se = est.standard_errors(X)
    assert {k: v.shape for k, v in se.items()} == {"weights_": (2,), "means_": (2, 2),
                                                   "covariances_": (2, 2, 2)}
    model = jem.gaussian_mixture(2)
    params = {"weights": jnp.asarray(est.weights_), "means": jnp.asarray(est.means_),
              "prec_chol": jnp.swapaxes(jnp.asarray(est.precisions_cholesky_), -1, -2)}
    direct = jem.standard_errors(model, params, X)
    assert _rel(se["means_"], direct["means"]) < 1e-5
    assert _rel(se["weights_"], direct["weights"]) < 1e-5
    lower, upper = est.confidence_intervals(X)["covariances_"]
    assert np.all(lower <= est.covariances_ + 1e-12) and np.all(est.covariances_ <= upper + 1e-12)


def test_hmm_standard_errors_match_finite_differences(x64):
    rng = np.random.default_rng(4)
    z = np.zeros(400, int)
    for t in range(1, 400):
        z[t] = z[t - 1] if rng.uniform() < 0.9 else 1 - z[t - 1]
    X = rng.normal(np.array([[-1.0], [2.0]])[z], 1.0)
    # Sequences that start in both states: with every start in one state the start
    # probabilities' maximum is an exact 0, on the boundary, where no information is defined.
    lengths = [100, 100, 100, 100]
    est = jem.GaussianHMM(2, covariance_type="diag", random_state=0, n_iter=500, tol=1e-12)
    est.fit(X, lengths)
    se = est.standard_errors(X, lengths)
    assert {k: v.shape for k, v in se.items()} == {"startprob_": (2,), "transmat_": (2, 2),
                                                   "means_": (2, 1), "covars_": (2, 1)}
    hmm, params = est.fit_result_.model, est.fit_result_.params
    coords = model_coordinates(hmm, params)
    info = np.asarray(jem.observed_information(hmm, params, X, lengths=lengths))
    seqs = as_sequences(X, lengths)

    @jax.jit
    def loglik(v):   # by forward-backward, not the forward pass the information uses
        p = coords.decode(v)
        dens = jax.vmap(lambda x: hmm.emission.log_joint_matrix(p["emission"], x))(seqs.X)
        post = jax.vmap(jem.hmm.forward_backward, in_axes=(None, None, 0, 0))(
            p["initial"], p["transition"], dens, seqs.mask)
        return jnp.sum(post.log_likelihood)

    fd = -_finite_difference_hessian(lambda v: float(loglik(jnp.asarray(v))),
                                     np.asarray(coords.encode(params)), h=1e-3)
    # The initial state's log-ratio sits near the boundary (two sequences): left out.
    keep = [i for i, name in enumerate(coords.names) if not name.startswith("initial")]
    assert _rel(info[np.ix_(keep, keep)], fd[np.ix_(keep, keep)]) < 1e-4
    # Each transition row sums to 1, so its two entries' standard errors agree.
    np.testing.assert_allclose(se["transmat_"][:, 0], se["transmat_"][:, 1], rtol=1e-8)
