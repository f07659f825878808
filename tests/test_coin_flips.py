"""The worked coin-flip example of DESIGN.md section 1 (the seed tutorial's numbers)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_non_decreasing
from scipy.stats import binom

import jaxem as jem

# NumPy float64 on purpose: JAX computes in float64 under the x64 fixture, float32 otherwise.
FLIPS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=np.float64)[:, None]
PARAMS = {"weights": np.array([0.3, 0.7]), "probs": np.array([[0.6], [0.8]])}


def test_incomplete_data_log_likelihood_matches_tutorial(x64):
    model = jem.bernoulli_mixture(2)
    resp, loglik = jem.e_step(model, PARAMS, FLIPS)
    assert round(float(loglik), 5) == -9.28686
    # By hand: 4 log(0.3*0.6 + 0.7*0.8) + 6 log(0.3*0.4 + 0.7*0.2).
    assert float(loglik) == pytest.approx(4 * np.log(0.74) + 6 * np.log(0.26), rel=1e-6)
    # Posterior of coin 1 after heads: 0.18 / 0.74; after tails: 0.12 / 0.26.
    np.testing.assert_allclose(resp[0], [0.18 / 0.74, 0.56 / 0.74], rtol=1e-6)
    np.testing.assert_allclose(resp[-1], [0.12 / 0.26, 0.14 / 0.26], rtol=1e-6)


def test_elbo_with_exact_posterior_equals_log_likelihood(x64):
    model = jem.bernoulli_mixture(2)
    resp, loglik = jem.e_step(model, PARAMS, FLIPS)
    value = float(jem.elbo(model, PARAMS, FLIPS, resp))
    assert round(value, 5) == -9.28686
    assert value == pytest.approx(float(loglik), abs=1e-12)


def test_elbo_equals_log_likelihood_in_float32():
    model = jem.bernoulli_mixture(2)
    resp, loglik = jem.e_step(model, PARAMS, FLIPS)
    assert resp.dtype == jnp.float32
    # float32 carries about 7 significant digits of -9.28686.
    assert float(jem.elbo(model, PARAMS, FLIPS, resp)) == pytest.approx(float(loglik), rel=1e-6)
    assert float(loglik) == pytest.approx(-9.28686, rel=1e-6)


def test_elbo_below_log_likelihood_by_the_kl_gap():
    model = jem.bernoulli_mixture(2)
    resp, loglik = jem.e_step(model, PARAMS, FLIPS)
    q = jnp.full_like(resp, 0.5)
    kl = jnp.sum(q * (jnp.log(q) - jnp.log(resp)))
    gap = float(loglik - jem.elbo(model, PARAMS, FLIPS, q))
    assert gap > 0.1
    assert gap == pytest.approx(float(kl), rel=1e-5)


def test_binomial_mixture_with_n_trials_counts_heads_per_coin():
    """With n_trials, a row is a count of heads; the binomial coefficient enters the likelihood."""
    model = jem.bernoulli_mixture(2, n_trials=10)
    counts = np.array([[5.0], [9.0], [8.0], [4.0], [7.0]], dtype=np.float32)
    params = {"weights": jnp.array([0.5, 0.5]), "probs": jnp.array([[0.6], [0.5]])}
    _, loglik = jem.e_step(model, params, counts)
    expected = sum(np.log(0.5 * binom.pmf(c, 10, 0.6) + 0.5 * binom.pmf(c, 10, 0.5))
                   for c in counts[:, 0])
    assert float(loglik) == pytest.approx(expected, rel=1e-5)
    result = jem.fit(model, counts, key=jax.random.key(0), n_restarts=4, max_iter=200)
    assert_non_decreasing(result)
    assert result.log_likelihood >= float(loglik) - 1e-4
