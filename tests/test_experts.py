"""Mixture of experts: softmax gate on the inputs, linear-Gaussian experts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_non_decreasing

import jaxem as jem
from jaxem.models import experts as E

COEF = np.array([[1.5, -1.0], [-2.0, 0.5]])
INTERCEPT = np.array([0.5, -1.0])
SIGMA = np.array([0.3, 0.6])
GATE = np.array([3.0, 0.0, -0.5])       # logit of expert 1 over expert 0: 3 x_0 - 0.5


def gated(n=800, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-3, 3, size=(n, 2))
    p1 = 1 / (1 + np.exp(-(X @ GATE[:2] + GATE[2])))
    z = (rng.uniform(size=n) < p1).astype(int)
    y = np.sum(X * COEF[z], axis=1) + INTERCEPT[z] + SIGMA[z] * rng.normal(size=n)
    return X.astype(dtype), y.astype(dtype), z


def test_recovers_gate_and_experts():
    X, y, z = gated()
    est = jem.MixtureOfExperts(2, n_restarts=3, random_state=0, tol=1e-7, max_iter=400).fit(X, y)
    assert est.converged_
    assert_non_decreasing(est.fit_result_)
    order = np.argsort(est.coef_[:, 0])[::-1]
    # 800 rows: slopes to ~0.1, the gate (a logistic regression on ~soft labels) to ~25%.
    np.testing.assert_allclose(est.coef_[order], COEF, atol=0.1)
    np.testing.assert_allclose(est.intercept_[order], INTERCEPT, atol=0.15)
    np.testing.assert_allclose(est.sigma_[order], SIGMA, rtol=0.15)
    gate = np.c_[est.gate_coef_, est.gate_intercept_][order]
    np.testing.assert_allclose(gate[1] - gate[0], GATE, atol=0.8)
    assert np.mean(est.predict_component(X, y) == order[z]) > 0.9
    np.testing.assert_allclose(est.gate_proba(X).sum(axis=1), 1.0, rtol=1e-6)
    expected = np.sum(est.gate_proba(X) * (X @ est.coef_.T + est.intercept_), axis=1)
    np.testing.assert_allclose(est.predict(X), expected, rtol=1e-6)
    model, params = est._model(), est._params()
    rows = est._transform(est._joint(X, y))
    # The gate in user units is the engine's gate on centred rows.
    np.testing.assert_allclose(est.gate_proba(X),
                               E.gate_probabilities(est.fit_result_.params, jnp.asarray(rows)),
                               rtol=1e-4, atol=1e-6)
    resp, loglik = jem.e_step(model, params, rows)
    assert float(jem.elbo(model, params, rows, resp)) == pytest.approx(float(loglik), rel=1e-5)
    assert float(loglik) / len(y) == pytest.approx(est.score(X, y), rel=1e-5)
    assert est.bic(X, y) == pytest.approx(-2 * est.score(X, y) * len(y) + 11 * np.log(len(y)),
                                          rel=1e-6)


def _gate_q(gate, rows, resp):
    Phi, _ = E.design(rows, True)
    return jnp.sum(resp * jax.nn.log_softmax(E.gate_logits(gate, Phi), axis=-1))


def test_gate_step_climbs_q_and_em_stops_at_a_stationary_point(x64):
    """Böhning's bound step climbs the gate's part of Q (here from a poor gate, for three
    components), the experts' update is its exact maximiser, and EM with this M-step stops at a
    stationary point of the likelihood."""
    X, y, _ = gated(n=300, dtype=np.float64)
    rows = jnp.asarray(np.c_[X, y])
    model = jem.mixture_of_experts(3, reg_var=0.0, init="random")
    params = model.init(jax.random.key(1), rows)
    resp, _ = jem.e_step(model, params, rows)
    # A gate far from the one the responsibilities came from: lots for the step to climb.
    params["gate"] = params["gate"] + jnp.array([[2.0, -1.0, 0.5], [-1.5, 0.5, 1.0]])
    # Jitted, as the gradients below: op by op they compiled over a hundred small programs.
    new = jax.jit(lambda p: model.maximize(model.suff_stats(p, rows, resp), p))(params)
    assert _gate_q(new["gate"], rows, resp) > _gate_q(params["gate"], rows, resp) + 1.0
    # Q in the experts alone is maximised: its gradient there is zero.
    experts = {"gate": new["gate"], "coef": new["coef"], "sigma": new["sigma"]}
    grad = jax.jit(jax.grad(lambda p: jem.expected_log_joint(model, p, rows, resp)))(experts)
    np.testing.assert_allclose(grad["coef"], 0.0, atol=1e-7)
    np.testing.assert_allclose(grad["sigma"], 0.0, atol=1e-7)

    # EM with this M-step climbs to a stationary point of the likelihood: where the all-gradient
    # M-step would stop too.
    two = jem.mixture_of_experts(2, reg_var=0.0)
    closed = jem.fit(two, rows, key=jax.random.key(0), max_iter=2000, tol=1e-12)
    assert closed.converged[0]
    assert_non_decreasing(closed)
    grad = jax.jit(jax.grad(lambda p: jem.log_likelihood(two, p, rows)))(closed.params)
    for name, g in grad.items():
        np.testing.assert_allclose(g, 0.0, atol=1e-3, err_msg=name)


def test_fisher_identity(x64):
    X, y, _ = gated(n=100, dtype=np.float64)
    rows = jnp.asarray(np.c_[X, y])
    model = jem.mixture_of_experts(3, init="random")
    params = model.init(jax.random.key(3), rows)
    resp, _ = jem.e_step(model, params, rows)
    # Jitted: op by op the gradients compiled dozens of small programs.
    grad_ll = jax.jit(jax.grad(lambda p: jem.log_likelihood(model, p, rows)))(params)
    grad_q = jax.jit(jax.grad(lambda p: jem.expected_log_joint(model, p, rows, resp)))(params)
    for name in grad_ll:
        np.testing.assert_allclose(grad_q[name], grad_ll[name], rtol=1e-9, atol=1e-9)
        assert np.abs(np.asarray(grad_ll[name])).max() > 1e-3, name
