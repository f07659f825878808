"""Stochastic (online) EM: the Cappé-Moulines update and its convergence to the batch optimum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import binary_data, three_blobs

import jaxem as jem
from jaxem.online import fit_online, step_sizes
from jaxem.streaming import log_likelihood_chunked


def _shuffled_blobs(n, seed=2):
    X = three_blobs(n, seed=seed)
    np.random.default_rng(0).shuffle(X)      # minibatches of contiguous rows must be mixed
    return X


def test_step_sizes_follow_cappe_moulines():
    rho = step_sizes(1000, kappa=0.6, t0=2.0)
    assert rho[0] == 1.0 and np.all(np.diff(rho) < 0)
    t = np.arange(1, 1001)
    np.testing.assert_allclose(rho, (3.0 / (2.0 + t)) ** 0.6)
    # Robbins-Monro: the tail decays like t^-kappa (sum diverges, sum of squares converges).
    assert rho[-1] * 1000**0.6 == pytest.approx(3.0**0.6, rel=0.01)


@pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")  # one iteration by design
def test_one_full_batch_step_is_one_em_iteration():
    """With the whole data as the minibatch, ρ_1 = 1 makes step 1 exactly a batch M-step."""
    X = _shuffled_blobs(3000)
    model = jem.gaussian_mixture(3)
    start = jax.jit(model.init)(jax.random.key(0), jnp.asarray(X[:500]))
    batch = jem.fit(model, X, init_params=start, max_iter=1, tol=0.0)
    online = fit_online(model, X, batch_size=len(X), max_steps=1, init_params=start)
    for name in start:
        np.testing.assert_allclose(online.params[name], batch.params[name], rtol=1e-6, atol=1e-6)
    assert online.history[0] * len(X) == pytest.approx(batch.initial_log_likelihood[0], rel=1e-6)


@pytest.mark.parametrize("family", ["gaussian", "bernoulli"])
def test_reaches_batch_log_likelihood(family):
    """A few epochs of minibatches reach the batch optimum's log-likelihood within 0.1%."""
    if family == "gaussian":
        X, model = _shuffled_blobs(20000), jem.gaussian_mixture(3)
    else:
        X, model = binary_data(20000, d=10)[0], jem.bernoulli_mixture(3)
    start = jax.jit(model.init)(jax.random.key(0), jnp.asarray(X[:2000]))
    batch = jem.fit(model, X, init_params=start, max_iter=300, tol=1e-7)
    # Bernoulli batch EM crosses a long plateau (about 40 iterations): 120 small steps do too.
    online = fit_online(model, X, batch_size=500, n_epochs=3, init_params=start,
                        key=jax.random.key(1))
    assert online.n_steps == 120
    online_ll = log_likelihood_chunked(model, online.params, X, chunk_size=8192)
    gap = (batch.log_likelihood - online_ll) / abs(batch.log_likelihood)
    assert -1e-5 < gap < 1e-3, gap


def test_bad_arguments_are_refused():
    X = _shuffled_blobs(300)
    model = jem.gaussian_mixture(3)
    for kappa in (0.5, 1.2):
        with pytest.raises(ValueError, match="kappa"):
            fit_online(model, X, kappa=kappa, key=jax.random.key(0))
    with pytest.raises(ValueError, match="closed-form"):
        fit_online(jem.Model(init=model.init, log_joint=model.log_joint), X,
                   key=jax.random.key(0))
    with pytest.raises(ValueError, match="n_epochs"):
        fit_online(model, X, n_epochs=0, key=jax.random.key(0))
