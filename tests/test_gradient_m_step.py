"""The EM-gradient M-step, restarts that stop costing when they stop, and honest convergence of
gradient M-steps (issue 26)."""

import runpy
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_non_decreasing

import jaxem as jem
from jaxem.core import ascent, curvature, loop

K = 2


def _gamma_model():
    def init(key, X):
        mean = jax.random.choice(key, X, (K,), replace=False)
        return {"weights": jnp.full(K, 1.0 / K), "shape": jnp.full(K, 2.0), "rate": 2.0 / mean}

    def log_joint(params, x):
        a, b = params["shape"], params["rate"]
        return (jnp.log(params["weights"]) + a * jnp.log(b) - jax.scipy.special.gammaln(a)
                + (a - 1) * jnp.log(x) - b * x)

    return jem.Model(init=init, log_joint=log_joint, n_components=K,
                     constraints={"weights": jem.constraints.simplex,
                                  "shape": jem.constraints.positive,
                                  "rate": jem.constraints.positive})


# The Laplace mixture of the examples (K = 2), written as the README's custom model.
MODEL = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "custom_laplace.py"))["model"]
GAMMA = _gamma_model()


def _gamma_data(n=800, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.choice(K, size=n, p=[0.5, 0.5])
    return rng.gamma(np.array([2.0, 12.0])[z], 1 / np.array([1.0, 1.5])[z])


def _laplace_data(n=800, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.choice(K, size=n, p=[0.6, 0.4])
    return rng.laplace(np.array([-2.0, 2.5])[z], np.array([0.7, 1.2])[z])


def _numpy_laplace_em(X, start, n_iter):
    """EM with the closed-form Laplace M-step (weighted median, weighted mean deviation)."""
    order = np.argsort(X)
    w, loc, scale = (np.asarray(start[k], np.float64) for k in ("weights", "loc", "scale"))
    for _ in range(n_iter):
        dens = np.log(w) - np.log(2 * scale) - np.abs(X[:, None] - loc) / scale
        resp = np.exp(dens - np.logaddexp.reduce(dens, axis=1, keepdims=True))
        nk = resp.sum(0)
        w = nk / nk.sum()
        cum = np.cumsum(resp[order], axis=0)
        loc = np.array([X[order][np.searchsorted(cum[:, k], cum[-1, k] / 2)] for k in range(K)])
        scale = np.sum(resp * np.abs(X[:, None] - loc), 0) / nk
    dens = np.log(w) - np.log(2 * scale) - np.abs(X[:, None] - loc) / scale
    return float(np.sum(np.logaddexp.reduce(dens, axis=1)))


def test_em_gradient_is_the_default_and_reaches_the_closed_form_optimum(x64):
    """Default gradient M-step on a Laplace mixture (Q piecewise linear in the locations, where
    a Hessian alone gives no step): monotone history, converged, at the log-likelihood of EM
    with the exact (weighted-median) M-step from the same start. Not to the last digits: where
    Q has a kink (a location on a data point) a gradient step can stop at a point that no step
    length along its direction improves (here 2e-6 relative short; L-BFGS M-steps, many
    evaluations each, get through)."""
    X = _laplace_data()
    start = MODEL.init(jax.random.key(1), jnp.asarray(X))
    result = jem.fit(MODEL, X, init_params=start, max_iter=500, tol=1e-10)
    assert result.converged.all()
    assert_non_decreasing(result)
    exact = _numpy_laplace_em(X, start, 500)
    assert result.log_likelihood == pytest.approx(exact, abs=1e-5 * abs(exact))


def test_em_gradient_step_never_decreases_q(x64):
    """From several random points (far from the maximum too), one step does not lower Q."""
    X = jnp.asarray(_laplace_data(300, seed=3))
    for seed in range(4):
        params = MODEL.init(jax.random.key(seed), X)
        params["scale"] = params["scale"] * (0.05 if seed % 2 else 20.0)
        resp, _ = jem.e_step(MODEL, params, X)
        Xb, Rb = X[None], resp[None]
        step = ascent.gradient_m_step(MODEL, params, Xb, Rb, ascent.DEFAULT_OPTIMIZER, 1)
        before = ascent.expected_log_joint_blocks(MODEL, params, Xb, Rb)
        after = ascent.expected_log_joint_blocks(MODEL, step.params, Xb, Rb)
        assert float(after) > float(before)
        assert float(step.gap) == 0.0


def _curvature_by_whole_block_autodiff(model, flat_u, unravel, Xb, Rb, total):
    """The oracle: Q over the whole block as a function of ``u``, differentiated through the
    constraints by ``jax.grad``/``jax.hessian``, and the score outer products from its Jacobian.
    Rows of weight 0 add nothing and are left out (their log-joints may not be finite)."""
    R = Rb.reshape(-1, Rb.shape[-1])
    kept = np.asarray(jnp.sum(R, axis=1) > 0)
    R, X = R[kept], Xb.reshape(-1, *Xb.shape[2:])[kept]

    def log_joints(v):
        return jax.vmap(model.log_joint, (None, 0))(
            jem.constraints.constrain(model.constraints, unravel(v)), X)

    def objective(v):
        q = jnp.sum(jnp.where(R > 0, R * log_joints(v), 0.0))
        if model.log_prior is not None:
            q = q + model.log_prior(jem.constraints.constrain(model.constraints, unravel(v)))
        return q

    scores = jnp.where((R > 0)[..., None], jax.jacfwd(log_joints)(flat_u), 0.0)
    info = jnp.einsum("nk,nkp,nkq->pq", R, scores, scores)
    expected_scores = jnp.einsum("nk,nkp->np", R, scores) / jnp.sum(R, axis=1, keepdims=True)
    expected = jnp.einsum("n,np,nq->pq", jnp.sum(R, axis=1), expected_scores, expected_scores)
    return (-objective(flat_u) / total, -jax.grad(objective)(flat_u) / total,
            -jax.hessian(objective)(flat_u) / total, info / total, expected / total)


@pytest.mark.parametrize("case", ["laplace", "gamma_prior", "gaussian_2d_subdivided"])
def test_curvature_by_rows_and_chain_rule_matches_whole_block_autodiff(case, x64, monkeypatch):
    """The EM-gradient step's loss, gradient, Hessian, information and expected-score products,
    taken with respect to the constrained parameters and carried through the constraints by the
    chain rule, equal autodiff of Q over the whole block with respect to the unconstrained
    parameters: simplex, positive and real parameters, a log-prior, 2-D rows, zero-weight rows
    whose log-joint is -inf, and blocks subdivided into smaller passes."""
    from jax.flatten_util import ravel_pytree
    if case == "laplace":
        model, X = MODEL, jnp.asarray(_laplace_data(300, seed=2))
    elif case == "gamma_prior":
        base = GAMMA
        model = jem.Model(init=base.init, log_joint=base.log_joint, n_components=K,
                          constraints=base.constraints,
                          log_prior=lambda p: jnp.sum(-2.0 * p["shape"] + jnp.log(p["rate"])))
        X = jnp.asarray(_gamma_data(300, seed=2))
    else:
        model = jem.models.gaussian_mixture(K, covariance_type="full")
        X = jnp.asarray(np.random.default_rng(2).normal(size=(300, 2)))
        monkeypatch.setattr(curvature, "_CURVATURE_VALUES_PER_PASS", 14 * 2 * 20)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), model.init(jax.random.key(4), X))
    resp, _ = jem.e_step(model, params, X)
    resp = resp.at[:5].set(0.0).at[5:10, 0].set(0.0)     # zero-weight rows and entries
    if case == "gamma_prior":
        X = X.at[:5].set(0.0)                              # log-joint -inf: log(0)
    Xb, Rb = X.reshape(3, 100, *X.shape[1:]), resp.reshape(3, 100, K)
    flat_u, unravel = ravel_pytree(jem.constraints.unconstrain(model.constraints, params))
    total = jnp.sum(Rb)
    got = curvature.curvature(model, flat_u, unravel, Xb, Rb, total)
    want = _curvature_by_whole_block_autodiff(model, flat_u, unravel, Xb, Rb, total)
    for g, w in zip(got, want, strict=True):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11)


def test_gain_ahead_is_the_newton_decrement_of_the_log_likelihood(x64):
    """Louis' identity: the curvature pieces at the E-step's own point give the log-likelihood's
    gradient and negative Hessian, so the gain ahead equals ``½ gᵀ (-∇²ℓ)⁻¹ g`` computed by
    autodiff of the marginal log-likelihood itself (a gamma mixture near, not at, its maximum),
    and is close to what 100 more iterations gain."""
    from jax.flatten_util import ravel_pytree
    X = jnp.asarray(_gamma_data(400, seed=5))
    start = GAMMA.init(jax.random.key(2), X)
    params = jem.fit(GAMMA, X, init_params=start, max_iter=30, tol=None).params
    final = jem.fit(GAMMA, X, init_params=params, max_iter=100, tol=None).log_likelihood
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    flat_u, unravel = ravel_pytree(jem.constraints.unconstrain(GAMMA.constraints, params))

    def log_likelihood(v):
        theta = jem.constraints.constrain(GAMMA.constraints, unravel(v))
        return jnp.sum(jax.nn.logsumexp(GAMMA.log_joint_matrix(theta, X), axis=-1))

    resp, _ = jem.e_step(GAMMA, params, X)
    total = jnp.sum(resp)
    _, grad, hess, info, expected = curvature.curvature(GAMMA, flat_u, unravel, X[None], resp[None],
                                                      total)
    g, observed = jax.grad(log_likelihood)(flat_u), -jax.hessian(log_likelihood)(flat_u)
    np.testing.assert_allclose(-grad * total, g, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose((hess - info + expected) * total, observed, rtol=1e-7, atol=1e-6)
    # The simplex's shift direction has no curvature and no gradient: left out of both.
    newton = 0.5 * g @ np.linalg.lstsq(np.asarray(observed), np.asarray(g), rcond=1e-10)[0]
    gain = float(curvature.likelihood_newton(grad, hess, info, expected).gain * total)
    assert gain == pytest.approx(float(newton), rel=1e-6)
    # ... and estimates what the fit still gains (a quadratic model of a non-quadratic function).
    still = final - float(log_likelihood(flat_u))
    assert still > 0.1
    assert 0.5 * still < gain < 2 * still


def test_large_models_fall_back_to_the_optax_optimizer(x64):
    """Above ``max_params`` the EM-gradient step gives way to its fallback: the same fit as that
    optimiser given explicitly."""
    X = _laplace_data(400)
    start = MODEL.init(jax.random.key(0), jnp.asarray(X))
    kw = dict(init_params=start, max_iter=15, tol=None, m_step_iters=5)
    fallback = jem.fit(MODEL, X, optimizer=ascent.EMGradient(max_params=5,
                                                             fallback=optax.adam(0.1)), **kw)
    explicit = jem.fit(MODEL, X, optimizer=optax.adam(0.1), **kw)
    np.testing.assert_allclose(fallback.history, explicit.history, rtol=1e-12)


def _gain_in_100_more(result, X, optimizer, r):
    start = jax.tree.map(lambda a: a[r], result.all_params)
    more = jem.fit(GAMMA, X, init_params=start, max_iter=100, tol=None, optimizer=optimizer)
    ll = float(result.all_log_likelihoods[r])
    return (more.log_likelihood - ll) / abs(ll)


@pytest.mark.parametrize("optimizer", [None, optax.adam(0.05)], ids=["em_gradient", "adam"])
def test_no_gradient_fit_reports_converged_short_of_the_maximum(optimizer, x64):
    """A restart reported converged gains at most ``tol`` (relative) in 100 more iterations; adam
    with small steps used to "converge" well below the maximum (issue 26). When none converges,
    the warning names the optimiser setting to change. (A gamma mixture: smooth, with a shape
    parameter.)"""
    X = _gamma_data()
    tol = 1e-8
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Plain EM: SQUAREM's extrapolations carry adam's short steps to the maximum (restarts
        # then converge honestly, as the first check below still requires).
        result = jem.fit(GAMMA, X, key=jax.random.key(0), n_restarts=3, max_iter=150, tol=tol,
                         optimizer=optimizer, accelerate=None)
    messages = [str(w.message) for w in caught if issubclass(w.category, jem.ConvergenceWarning)]
    for r in np.flatnonzero(result.converged):
        assert _gain_in_100_more(result, X, optimizer, r) <= tol
    if optimizer is not None:
        assert not result.converged.any()
        assert "learning rate" in messages[0] and "optimizer=None" in messages[0]
    else:
        assert result.converged.all() and not messages


def test_map_restarts_skips_inactive_restarts_in_sequence():
    calls = jnp.arange(4.0)
    out = jax.jit(lambda x, a: loop.map_restarts(lambda v: (v + 1, v * 2), x, in_sequence=True,
                                                 active=a))(calls, jnp.array([True, False, True,
                                                                              False]))
    np.testing.assert_array_equal(out[0], [1.0, 0.0, 3.0, 0.0])
    np.testing.assert_array_equal(out[1], [0.0, 0.0, 4.0, 0.0])


def test_restarts_in_sequence_keep_their_own_iterations():
    """On a CPU a converged restart is skipped while others run on; each batch restart still
    ends where it would alone."""
    X = _laplace_data(600, seed=1)
    result = jem.fit(MODEL, X, key=jax.random.key(4), n_restarts=3, max_iter=200, tol=1e-5)
    assert len(set(result.n_iter.tolist())) > 1, "restarts stopped together: nothing skipped"
    for r in range(3):
        alone = jem.fit(MODEL, X, key=result.restart_keys[r:r + 1], max_iter=200, tol=1e-5)
        assert abs(int(alone.n_iter[0]) - int(result.n_iter[r])) <= 1
        assert alone.log_likelihood == pytest.approx(result.all_log_likelihoods[r], rel=1e-5)
