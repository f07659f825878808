"""SQUAREM (jaxem.core.accelerate): the optimum of plain EM in far fewer passes, histories that never
decrease, the safeguard, and the option's checks, for every kind of fit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_non_decreasing

import jaxem as jem
from jaxem.core import loop
from jaxem.core.accelerate import Squarem


def _overlapping(n=400, seed=0):
    """Two heavily overlapping 2-D Gaussians: plain EM needs over a thousand iterations."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.0, 1.0, (n // 2, 2)), rng.normal(1.0, 1.2, (n // 2, 2))])


def _pair(fit, **kwargs):
    return fit(accelerate=None, **kwargs), fit(accelerate="squarem", **kwargs)


def test_squarem_reaches_plain_em_optimum_in_a_third_of_the_passes(x64):
    X = _overlapping()
    plain, fast = _pair(jem.fit, model=jem.gaussian_mixture(2), X=X, key=jax.random.key(0),
                        n_restarts=2, max_iter=4000, tol=1e-11)
    assert plain.converged.all() and fast.converged.all()
    # Same starts, same optimum; plain EM stops a little short of it on this slow problem.
    np.testing.assert_allclose(fast.all_log_likelihoods, plain.all_log_likelihoods, rtol=1e-9)
    assert np.all(fast.all_log_likelihoods >= plain.all_log_likelihoods - 1e-9)
    assert np.all(3 * fast.n_iter <= plain.n_iter), (fast.n_iter, plain.n_iter)
    assert plain.n_fallbacks is None
    # The safeguard fires in an ordinary fit, and the history still never goes down.
    assert np.all(fast.n_fallbacks > 0)
    assert_non_decreasing(fast)
    assert fast.history[0, fast.n_iter[0] - 1] == fast.all_log_likelihoods[0]


def _custom_gradient_model():
    """A 1-D two-component Gaussian mixture with no closed form (gradient M-step)."""
    def init(key, X):
        means = jax.random.choice(key, X[:, 0], (2,), replace=False)
        return {"weights": jnp.full(2, 0.5, X.dtype), "means": means,
                "scales": jnp.full(2, jnp.std(X[:, 0]), X.dtype)}

    def log_joint(params, x):
        z = (x[0] - params["means"]) / params["scales"]
        return (jnp.log(params["weights"]) - 0.5 * z * z - jnp.log(params["scales"])
                - 0.5 * jnp.log(2 * jnp.pi))

    return jem.Model(init=init, log_joint=log_joint, n_components=2,
                     constraints={"weights": jem.constraints.simplex, "means": jem.constraints.real,
                                  "scales": jem.constraints.positive})


def test_squarem_with_a_gradient_m_step_on_a_custom_model(x64):
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(0.0, 1.0, 150), rng.normal(1.5, 1.0, 150)])[:, None]
    model = _custom_gradient_model()
    plain, fast = _pair(jem.fit, model=model, X=X, key=jax.random.key(3), max_iter=3000, tol=1e-11)
    assert plain.converged[0] and fast.converged[0]
    np.testing.assert_allclose(fast.log_likelihood, plain.log_likelihood, rtol=1e-9)
    assert fast.n_iter[0] * 3 <= plain.n_iter[0], (fast.n_iter, plain.n_iter)
    assert_non_decreasing(fast)
    assert np.isclose(float(jnp.sum(fast.params["weights"])), 1.0) and np.all(fast.params["scales"] > 0)


def test_squarem_baum_welch_reaches_hmmlearns_optimum(x64):
    from hmmlearn import hmm as hl

    rng = np.random.default_rng(2)
    states = np.repeat([0, 1, 2, 1, 0, 2] * 10, 8)
    X = rng.normal(np.array([0.0, 0.8, 1.6])[states], 1.0)[:, None]
    transition = np.full((3, 3), 1 / 3)
    transition[0, 1], transition[0, 0] = 0.0, 2 / 3
    start = dict(startprob_=np.full(3, 1 / 3), transmat_=transition,
                 means_=np.array([[-0.5], [0.5], [2.0]]), covars_=np.ones((3, 1)))
    ref = hl.GaussianHMM(3, "diag", n_iter=20000, tol=1e-10, init_params="", covars_prior=0.0,
                         min_covar=0.0, covars_weight=1.0)
    for name, value in start.items():
        setattr(ref, name, value)
    ref.fit(X)
    assert ref.monitor_.converged and ref.monitor_.iter > 300
    ours = jem.GaussianHMM(3, "diag", min_covar=0.0, covars_prior=0.0, n_iter=20000, tol=1e-13,
                           init_params="",
                           accelerate="squarem")
    for name, value in start.items():
        setattr(ours, name, value)
    ours.fit(X)
    # 146-150 passes against hmmlearn's 448 iterations (0.33-0.335; an exact structural zero
    # kept since the hmmlearn-parity chain update moves it by a few): the 1/3 is a median
    # over slow cases, measured by benchmarks/convergence.py, so this case only asks for 2.5x.
    assert ours.converged_ and 2.5 * ours.n_iter_ <= ref.monitor_.iter, (ours.n_iter_,
                                                                        ref.monitor_.iter)
    assert ours.score(X) == pytest.approx(ref.score(X), rel=1e-9)
    assert ours.score(X) >= ref.score(X) - 1e-9
    np.testing.assert_allclose(np.sort(ours.means_[:, 0]), np.sort(ref.means_[:, 0]), atol=1e-3)
    assert_non_decreasing(ours.fit_result_)
    # A transition that starts at 0 stays (round-off of forward-backward aside) at 0.
    assert ours.transmat_[0, 1] < 1e-12


def test_chunked_squarem_follows_the_in_memory_one(x64):
    X = _overlapping(300, seed=4)
    model = jem.gaussian_mixture(2)
    start = jem.fit(model, X, key=jax.random.key(1), max_iter=1, tol=None, accelerate=None).params
    memory = jem.fit(model, X, init_params=start, max_iter=3000, tol=1e-11, accelerate="squarem")
    chunked = jem.fit_chunked(model, X, chunk_size=128, init_params=start, max_iter=3000,
                              tol=1e-11, accelerate="squarem")
    assert chunked.converged[0] and chunked.n_iter[0] == memory.n_iter[0]
    assert chunked.n_fallbacks[0] == memory.n_fallbacks[0] > 0
    np.testing.assert_allclose(chunked.history, memory.history, rtol=1e-10)
    plain = jem.fit(model, X, init_params=start, max_iter=3000, tol=1e-11, accelerate=None)
    np.testing.assert_allclose(chunked.log_likelihood, plain.log_likelihood, rtol=1e-9)
    assert 3 * chunked.n_iter[0] <= plain.n_iter[0]


def test_a_rejected_extrapolation_is_replaced_by_the_plain_em_step():
    # A map that contracts x fast and y slowly: S3's one step length, fitted to y, throws x far
    # past its fixed point, where the objective (which weights x heavily) is lower.
    def m_step(params, aux):
        del aux
        return params * jnp.array([0.5, 0.99]) + jnp.array([0.5, 0.01])

    def e_pass(params, iteration, active):
        del iteration, active
        objective = -1000 * (params[:, 0] - 1) ** 2 - (params[:, 1] - 1) ** 2
        return objective, jnp.zeros(params.shape[:1])

    settings = loop.Settings(jnp.asarray(1e-12), 400, lambda it: True, Squarem.over(None))
    out = jax.jit(lambda p: loop.run_compiled_loop(e_pass, m_step, p, settings))(
        jnp.zeros((1, 2)))
    assert out.converged[0] and out.fallbacks[0] > 0
    history = np.asarray(out.history[0, :out.n_iter[0]])
    assert np.all(np.diff(history) >= 0)
    # A held trip repeats the objective it kept; the next one is the EM step it fell back to.
    held = np.flatnonzero(np.diff(history) == 0)
    assert held.size >= out.fallbacks[0] - 1
    np.testing.assert_allclose(out.params[0], [1.0, 1.0], atol=1e-4)
    plain = jax.jit(lambda p: loop.run_compiled_loop(e_pass, m_step, p, settings._replace(
        accelerate=None)))(jnp.zeros((1, 2)))
    assert not plain.converged[0] and plain.n_iter[0] == 400


def test_extrapolation_keeps_constraints_zeros_and_unchanged_leaves(x64):
    constraints = {"w": jem.constraints.simplex, "s": jem.constraints.positive,
                   "c": jem.constraints.real}
    thetas = [{"w": jnp.array(w), "s": jnp.array([2.0, s]), "c": jnp.array([3.0])}
              for w, s in (([0.5, 0.5, 0.0], 1.0), ([0.6, 0.4, 0.0], 1.1), ([0.65, 0.35, 0.0], 1.15))]
    theta, step = Squarem.over(constraints).extrapolate(*thetas, jnp.asarray(16.0))
    assert 1.0 < step <= 16.0
    assert theta["w"][2] == 0.0 and np.isclose(float(jnp.sum(theta["w"])), 1.0)
    assert theta["w"][0] > 0.65 and theta["s"][1] > 1.15
    # A leaf that did not move keeps its value bit for bit; an entry, up to the round trip.
    assert theta["c"][0] == 3.0 and np.isclose(theta["s"][0], 2.0, rtol=1e-15)
    # A step of 1 is the second EM step itself.
    same, one = Squarem.over(constraints).extrapolate(*thetas, jnp.asarray(1.0))
    assert one == 1.0 and all(np.array_equal(same[k], thetas[2][k]) for k in same)


def test_accelerate_option_is_checked_before_any_compute():
    X = _overlapping(40)
    model = jem.gaussian_mixture(2)
    with pytest.raises(ValueError, match="accelerate must be"):
        jem.fit(model, X, key=jax.random.key(0), accelerate="fast")
    with pytest.raises(ValueError, match="needs e_step='soft'"):
        jem.fit(model, X, key=jax.random.key(0), accelerate="squarem", e_step="hard")
    with pytest.raises(ValueError, match="needs e_step='soft'"):
        jem.hmm.fit(jem.hmm.gaussian_hmm(2, "diag"), X, key=jax.random.key(0), accelerate=True,
                    e_step="anneal")
    with pytest.raises(ValueError, match="accelerate must be"):
        jem.GaussianMixture(2, accelerate="yes").fit(X)
    # "auto" (the default) is plain EM where SQUAREM does not apply.
    hard = jem.fit(model, X, key=jax.random.key(0), e_step="hard", max_iter=5)
    assert hard.n_fallbacks is None
    assert jem.KMeans(2).get_params().get("accelerate") is None
    assert "accelerate" in jem.GaussianHMM(2).get_params()


@pytest.mark.parametrize("overshoot", [1.0, 4.0])
def test_newton_points_replace_the_extrapolation_and_are_damped_after_rejections(overshoot):
    """A gradient M-step's Newton step (``Ascent.newton``) is tried in phase 1 instead of the S3
    point: exact, the loop converges in a few trips where EM's slow direction (rate 0.999) takes
    thousands; one that overshoots the maximum ``overshoot`` times is rejected, replaced by the
    EM step, and tried at half the length next time, until it lands. Histories never decrease."""
    optimum = jnp.array([1.0, 1.0])

    def m_step(params, aux):
        del aux
        em = params * jnp.array([0.5, 0.999]) + optimum * jnp.array([0.5, 0.001])
        return loop.Ascent(em, jnp.zeros(()), overshoot * (optimum - params))

    def e_pass(params, iteration, active):
        del iteration, active
        return -jnp.sum((params - optimum) ** 2 * jnp.array([1.0, 100.0]), axis=1), \
            jnp.zeros(params.shape[:1])

    settings = loop.Settings(jnp.asarray(1e-12), 400, lambda it: True, Squarem.over(None))
    out = jax.jit(lambda p: loop.run_compiled_loop(e_pass, m_step, p, settings))(
        jnp.zeros((1, 2)))
    assert out.converged[0]
    np.testing.assert_allclose(out.params[0], optimum, atol=1e-6)
    history = np.asarray(out.history[0, :out.n_iter[0]])
    assert np.all(np.diff(history) >= 0)
    if overshoot == 1.0:
        assert out.n_iter[0] <= 6 and out.fallbacks[0] == 0
    else:
        # Lengths 1 and 1/2 overshoot (rejected), 1/4 lands.
        assert out.fallbacks[0] == 2 and out.n_iter[0] <= 12
