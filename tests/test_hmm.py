"""Hidden Markov models, functional API: inference against enumeration, the Fisher identity,
scan vs associative scan, long float32 sequences, Baum-Welch monotonicity and recovery, priors,
the gradient M-step, layouts and validation."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_non_decreasing
from jax.scipy.stats import poisson

import jaxem as jem
import jaxem.hmm as H
from jaxem.hmm import inference

TRUE_START = np.array([0.6, 0.3, 0.1])
TRUE_TRANS = np.array([[0.90, 0.07, 0.03], [0.05, 0.90, 0.05], [0.10, 0.10, 0.80]])
TRUE_MEANS = np.array([[0.0, 0.0], [3.0, 1.0], [0.0, 4.0]])
TRUE_COVS = np.array([[[0.5, 0.0], [0.0, 0.5]], [[1.0, 0.3], [0.3, 0.8]], [[1.0, -0.2], [-0.2, 0.6]]])
LENGTHS = [1, 400, 3, 250, 1, 345]


def gaussian_params(dtype=np.float64):
    prec_chol = np.linalg.inv(np.linalg.cholesky(TRUE_COVS))
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), {
        "initial": TRUE_START, "transition": TRUE_TRANS,
        "emission": {"means": TRUE_MEANS, "prec_chol": prec_chol}})


def simulate(lengths, seed=0):
    """Rows of several sequences from the true 3-state Gaussian HMM, and their states."""
    rng = np.random.default_rng(seed)
    X, Z = [], []
    for n in lengths:
        z = [rng.choice(3, p=TRUE_START)]
        for _ in range(n - 1):
            z.append(rng.choice(3, p=TRUE_TRANS[z[-1]]))
        z = np.array(z)
        noise = np.einsum("nij,nj->ni", np.linalg.cholesky(TRUE_COVS)[z], rng.normal(size=(n, 2)))
        X.append(TRUE_MEANS[z] + noise)
        Z.append(z)
    return np.concatenate(X), np.concatenate(Z)


@pytest.fixture(scope="module")
def data():
    return simulate(LENGTHS)


def enumerate_paths(initial, transition, log_obs):
    """Exact posterior by summing over every state path: (log p(x), marginals, counts, best)."""
    T, K = log_obs.shape
    paths = np.array(list(itertools.product(range(K), repeat=T)))
    lp = np.log(initial)[paths[:, 0]] + log_obs[np.arange(T), paths].sum(axis=1)
    lp += np.log(transition)[paths[:, :-1], paths[:, 1:]].sum(axis=1)
    ll = np.logaddexp.reduce(lp)
    w = np.exp(lp - ll)
    marginals = np.stack([np.bincount(paths[:, t], w, K) for t in range(T)])
    counts = np.zeros((K, K))
    np.add.at(counts, (paths[:, :-1], paths[:, 1:]), w[:, None])
    return ll, marginals, counts, paths[np.argmax(lp)]


@pytest.mark.parametrize("method", ["scan", "associative"])
def test_forward_backward_and_viterbi_match_enumeration(x64, method):
    rng = np.random.default_rng(1)
    K, T = 3, 6
    initial, transition = rng.dirichlet(np.ones(K)), rng.dirichlet(np.ones(K), size=K)
    log_obs = 3 * rng.normal(size=(T, K))
    ll, marginals, counts, best = enumerate_paths(initial, transition, log_obs)
    # Padding after the real steps must change nothing.
    padded = np.concatenate([log_obs, rng.normal(size=(3, K))])
    mask = np.arange(T + 3) < T
    # Jitted: op by op the recursions compiled over a hundred small programs.
    post = jax.jit(inference.forward_backward, static_argnames="method")(
        initial, transition, padded, mask, method=method)
    assert float(post.log_likelihood) == pytest.approx(ll, rel=1e-12)
    np.testing.assert_allclose(post.marginals[:T], marginals, atol=1e-12)
    np.testing.assert_array_equal(post.marginals[T:], 0.0)
    np.testing.assert_allclose(post.transitions, counts, atol=1e-12)
    path, score = jax.jit(inference.viterbi)(initial, transition, padded, mask)
    np.testing.assert_array_equal(path[:T], best)
    assert float(jax.jit(inference.log_likelihood)(initial, transition, padded, mask)) == \
        pytest.approx(ll)


def test_fisher_identity(x64, data):
    """grad log p(X | θ) by the forward algorithm = grad Q(θ | θ_old) at θ = θ_old."""
    hmm = H.gaussian_hmm(3, "full")
    X = jnp.asarray(data[0][:60])
    theta = gaussian_params()

    def log_obs(p):
        return hmm.batch_log_emission(p["emission"], X)

    def loglik(p):
        return inference.log_likelihood(p["initial"], p["transition"], log_obs(p))

    post = inference.forward_backward(theta["initial"], theta["transition"], log_obs(theta))

    def expected_complete(p):
        return (jnp.sum(post.marginals[0] * jnp.log(p["initial"]))
                + jnp.sum(post.transitions * jnp.log(p["transition"]))
                + jnp.sum(post.marginals * log_obs(p)))

    # One compiled program for both gradients.
    g_ll, g_q = jax.jit(lambda p: (jax.grad(loglik)(p), jax.grad(expected_complete)(p)))(theta)
    for a, b in zip(jax.tree.leaves(g_ll), jax.tree.leaves(g_q), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    # And the forward algorithm's value is the E-step's log-likelihood.
    assert float(loglik(theta)) == pytest.approx(float(post.log_likelihood), rel=1e-12)


def test_100k_steps_in_float32_and_scan_equals_associative_scan():
    rng = np.random.default_rng(0)
    K, T = 4, 100_000
    transition = 0.8 * np.eye(K) + 0.2 * rng.dirichlet(np.ones(K), size=K)
    cdf, u = np.cumsum(transition, axis=1), rng.uniform(size=T)
    z = np.zeros(T, int)
    for t in range(1, T):
        z[t] = min(np.searchsorted(cdf[z[t - 1]], u[t]), K - 1)
    x = 1.5 * z + rng.normal(size=T)
    log_obs = -0.5 * (x[:, None] - 1.5 * np.arange(K)) ** 2 - 0.5 * np.log(2 * np.pi)
    initial = np.full(K, 1 / K)
    fb = jax.jit(inference.forward_backward, static_argnames="method")
    with jax.enable_x64(True):
        exact = fb(initial, transition, log_obs, method="scan")
        exact_ll, exact_marginals = float(exact.log_likelihood), np.asarray(exact.marginals)
    args = [jnp.asarray(a, jnp.float32) for a in (initial, transition, log_obs)]
    post = fb(*args, method="scan")
    assert post.marginals.dtype == jnp.float32
    # p(x) is about exp(-180000), far below float32's range; normalised messages keep every
    # quantity finite and accurate.
    assert float(post.log_likelihood) == pytest.approx(exact_ll, rel=1e-6)
    np.testing.assert_allclose(post.marginals, exact_marginals, atol=1e-5)
    np.testing.assert_allclose(np.sum(post.transitions), T - 1, rtol=1e-5)
    # The associative scan on a long stretch (its compile time grows with log T, so not all of
    # it) gives the same posterior in float32.
    n = 8192
    short = [args[0], args[1], args[2][:n]]
    scan, parallel = fb(*short, method="scan"), fb(*short, method="associative")
    assert float(parallel.log_likelihood) == pytest.approx(float(scan.log_likelihood), rel=1e-6)
    # Both within float32 round-off of each other (this once caught backward scores kept as
    # absolute log-likelihoods, which lose float32 precision over long stretches).
    np.testing.assert_allclose(parallel.marginals, scan.marginals, atol=1e-5)
    np.testing.assert_allclose(parallel.transitions, scan.transitions, rtol=1e-5)


@pytest.fixture(scope="module")
def gaussian_fit(data):
    X, _ = data
    return H.fit(H.gaussian_hmm(3, "full"), X.astype(np.float32), LENGTHS,
                 key=jax.random.key(0), n_restarts=3, max_iter=60, tol=1e-7)


def _match_states(means):
    """Permutation taking fitted states to the true ones (nearest true mean)."""
    d = ((means[:, None, :] - TRUE_MEANS[None]) ** 2).sum(-1)
    perm = np.argmin(d, axis=1)
    assert sorted(perm) == [0, 1, 2]
    return np.argsort(perm)


def test_baum_welch_is_monotone_and_recovers_parameters(gaussian_fit):
    result = gaussian_fit
    assert result.history.shape == (3, 60) and result.all_params["transition"].shape == (3, 3, 3)
    assert_non_decreasing(result)
    p = jax.tree.map(np.asarray, result.params)
    order = _match_states(p["emission"]["means"])
    # 1000 steps in 6 sequences: means within 0.15, transitions within 0.05 of the truth.
    np.testing.assert_allclose(p["emission"]["means"][order], TRUE_MEANS, atol=0.15)
    np.testing.assert_allclose(p["transition"][np.ix_(order, order)], TRUE_TRANS, atol=0.05)
    covs = jem.models.gaussian.covariances_from_prec_chol(p["emission"]["prec_chol"], "full")
    np.testing.assert_allclose(np.asarray(covs)[order], TRUE_COVS, atol=0.2)
    np.testing.assert_allclose(p["transition"].sum(axis=1), 1.0, rtol=1e-5)


def test_padded_layout_equals_lengths(gaussian_fit, data):
    X, _ = data
    params = gaussian_fit.params
    marginals, ll = H.posterior(H.gaussian_hmm(3, "full"), params, X, LENGTHS)
    T, starts = max(LENGTHS), np.cumsum([0] + LENGTHS[:-1])
    padded = np.full((len(LENGTHS), T, 2), np.nan)       # padding may hold anything, even NaN
    mask = np.arange(T)[None] < np.array(LENGTHS)[:, None]
    for b, (s, n) in enumerate(zip(starts, LENGTHS, strict=True)):
        padded[b, :n] = X[s:s + n]
    m_pad, ll_pad = H.posterior(H.gaussian_hmm(3, "full"), params, padded, mask=mask)
    np.testing.assert_allclose(ll_pad, ll, rtol=1e-6)
    np.testing.assert_allclose(m_pad[mask], marginals, atol=1e-6)
    # One sequence at a time gives the same per-sequence log-likelihoods: statistics add up.
    one = [H.posterior(H.gaussian_hmm(3, "full"), params, X[s:s + n])[1][0]
           for s, n in zip(starts[:2], LENGTHS[:2], strict=True)]
    np.testing.assert_allclose(one, ll[:2], rtol=1e-5)
    states, _ = H.decode(H.gaussian_hmm(3, "full"), params, padded, mask=mask)
    np.testing.assert_array_equal(states[mask], H.decode(H.gaussian_hmm(3, "full"), params, X,
                                                         LENGTHS)[0])


def _poisson_data(seed=0, n=600):
    rng = np.random.default_rng(seed)
    rates = np.array([[1.0, 8.0], [6.0, 0.5]])
    z = [0]
    for _ in range(n - 1):
        z.append(z[-1] if rng.uniform() < 0.9 else 1 - z[-1])
    return rng.poisson(rates[np.array(z)]).astype(float)


def test_gradient_m_step_for_a_custom_emission_matches_closed_form(x64):
    def log_emission(params, x):                        # ONE observation x [2] -> [K]
        return jnp.sum(poisson.logpmf(x, params["rates"]), axis=-1)

    custom = H.HMM(init=lambda key, X: {"rates": jnp.ones((2, 2))}, log_emission=log_emission,
                   n_states=2, constraints={"rates": jem.constraints.positive})
    X = _poisson_data()
    start = {"initial": np.array([0.5, 0.5]), "transition": np.full((2, 2), 0.5),
             "emission": {"rates": np.array([[2.0, 5.0], [4.0, 1.0]])}}
    grad = H.fit(custom, X, init_params=start, key=jax.random.key(0), max_iter=25, tol=0,
                 accelerate=None)
    exact = H.fit(H.poisson_hmm(2), X, init_params=start, key=jax.random.key(0), max_iter=25, tol=0,
                  accelerate=None)
    assert_non_decreasing(grad, rel=1e-12)
    assert grad.log_likelihood == pytest.approx(exact.log_likelihood, rel=1e-6)
    np.testing.assert_allclose(grad.params["emission"]["rates"], exact.params["emission"]["rates"],
                               rtol=1e-3)


def test_dirichlet_transition_prior_is_map_and_monotone(x64):
    X = _poisson_data(seed=1, n=300)
    alpha = 20.0
    hmm = H.poisson_hmm(2, transition_concentration=alpha)
    result = H.fit(hmm, X, key=jax.random.key(1), n_restarts=2, max_iter=200, tol=1e-12)
    assert_non_decreasing(result, rel=1e-12)
    p = result.params
    post = inference.forward_backward(p["initial"], p["transition"],
                                      hmm.batch_log_emission(p["emission"], jnp.asarray(X)))
    # At the fixed point, each row is the posterior mode (counts + α - 1) / (row total + K(α - 1)).
    map_rows = post.transitions + alpha - 1
    np.testing.assert_allclose(p["transition"], map_rows / map_rows.sum(1, keepdims=True),
                               rtol=1e-6)
    objective = float(post.log_likelihood) + (alpha - 1) * float(jnp.sum(jnp.log(p["transition"])))
    assert result.log_likelihood == pytest.approx(objective, rel=1e-10)


def test_sample_follows_the_chain():
    params = gaussian_params(np.float32)
    X, states = H.sample(H.gaussian_hmm(3, "full"), params, jax.random.key(0), 20_000)
    assert X.shape == (20_000, 2) and states.shape == (20_000,)
    states = np.asarray(states)
    counts = np.zeros((3, 3))
    np.add.at(counts, (states[:-1], states[1:]), 1)
    np.testing.assert_allclose(counts / counts.sum(1, keepdims=True), TRUE_TRANS, atol=0.02)
    for k in range(3):
        np.testing.assert_allclose(np.cov(np.asarray(X)[states == k].T), TRUE_COVS[k], atol=0.1)


def test_validation_messages():
    hmm = H.gaussian_hmm(3, "full")
    X = np.zeros((10, 2))
    with pytest.raises(ValueError, match="lengths sum to 9 but X has 10 rows"):
        H.fit(hmm, X, [4, 5], key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"lengths\[1\] = 0"):
        H.fit(hmm, X, [10, 0], key=jax.random.key(0))
    with pytest.raises(ValueError, match="mask row 1 has a gap"):
        H.fit(hmm, np.zeros((2, 5, 2)), mask=np.array([[1, 1, 1, 0, 0], [1, 0, 1, 0, 0]], bool),
              key=jax.random.key(0))
    with pytest.raises(ValueError, match="contains NaN at row 3"):
        H.fit(hmm, np.where(np.arange(10)[:, None] == 3, np.nan, X), key=jax.random.key(0))
    with pytest.raises(ValueError, match="n_states=3 but only 2 observations"):
        H.fit(hmm, X[:2], key=jax.random.key(0))
    with pytest.raises(ValueError, match="method must be one of"):
        H.fit(hmm, X, key=jax.random.key(0), method="parallel")
    with pytest.raises(ValueError, match="transition_concentration must be"):
        H.poisson_hmm(2, transition_concentration=0.0)  # > 0 (below 1 allowed, as hmmlearn)
