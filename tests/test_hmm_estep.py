"""E-step rules for hidden Markov chains: Viterbi training (hard) and annealed Baum-Welch."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_non_decreasing

import jaxem as jem
from jaxem import hmm as jhmm
from jaxem.hmm.passes import SequenceLayout, posteriors


def _sequences(seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([60, 45, 80, 30])
    states = [0]
    for _ in range(lengths.sum() - 1):   # sticky two-state chain
        states.append(states[-1] if rng.uniform() < 0.85 else 1 - states[-1])
    Y = rng.normal(size=(lengths.sum(), 2)) + 2.0 * np.asarray(states)[:, None]
    return Y, lengths


def test_viterbi_training_climbs_and_stops_at_its_fixed_point(x64):
    """Hard EM's history (the best paths' log-joint) never falls; where it stops, the chain is
    the normalised count of the decoded paths' transitions and the history's last value is their
    log-joint, so one more M-step would change nothing."""
    Y, lengths = _sequences()
    # covars_prior=0: the maximum-likelihood fit (hmmlearn's default prior adds its log density).
    est = jem.GaussianHMM(2, "full", e_step="hard", n_iter=100, tol=None, random_state=0,
                          covars_prior=0.0)
    est.fit(Y, lengths)
    result = est.fit_result_
    assert result.converged[0] and result.n_iter[0] < 100
    assert_non_decreasing(result)
    hmm, params = est._hmm(), est._params()
    states, log_probs = jhmm.decode(hmm, params, Y, lengths)
    np.testing.assert_allclose(result.log_likelihood, log_probs.sum(), rtol=1e-10)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    counts = np.zeros((2, 2))
    for begin, n in zip(starts, lengths, strict=True):
        path = states[begin:begin + n]
        np.add.at(counts, (path[:-1], path[1:]), 1.0)
    np.testing.assert_allclose(est.transmat_, counts / counts.sum(1, keepdims=True), rtol=1e-10)
    for k in range(2):
        np.testing.assert_allclose(est.means_[k], Y[states == k].mean(0), rtol=1e-8)


def test_tempered_posterior_is_the_normalised_power_of_the_joint(x64):
    """Annealing's E-step: marginals of p(z, x)^(1/T), checked against all 3^4 paths."""
    rng = np.random.default_rng(1)
    K, T, temperature = 3, 4, 2.5
    hmm = jhmm.gaussian_hmm(K, "diag")
    Y = rng.normal(size=(T, 1))
    emission = {"weights": jnp.full(K, 1 / K), "means": jnp.array([[-1.0], [0.0], [1.5]]),
                "prec_chol": jnp.array([[1.0], [0.7], [1.3]])}
    params = {"initial": jnp.array([0.5, 0.3, 0.2]),
              "transition": jnp.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]),
              "emission": emission}
    layout = SequenceLayout(1, T, None)
    post = posteriors(hmm, params, layout.observation_blocks(jnp.asarray(Y)[None]),
                       jnp.ones((1, T), bool), layout, "scan", jnp.asarray(temperature))
    dens = np.asarray(hmm.emission_model.log_joint_matrix(emission, jnp.asarray(Y)))
    log_A, log_pi = np.log(np.asarray(params["transition"])), np.log(np.asarray(params["initial"]))
    weights = np.zeros((T, K))
    for path in itertools.product(range(K), repeat=T):
        log_joint = log_pi[path[0]] + sum(log_A[a, b] for a, b in zip(path[:-1], path[1:], strict=True))
        log_joint += sum(dens[t, z] for t, z in enumerate(path))
        for t, z in enumerate(path):
            weights[t, z] += np.exp(log_joint / temperature)
    np.testing.assert_allclose(np.asarray(post.marginals[0]), weights / weights.sum(1, keepdims=True),
                               rtol=1e-10)


def test_annealed_baum_welch_reports_the_log_likelihood(x64):
    """While cooling, the posteriors are tempered but the history is still log p(X): its last
    value equals the score of the fitted model, and convergence waits for T = 1."""
    Y, lengths = _sequences(seed=2)
    schedule = jem.Annealing(start=2.0, n_iters=8)
    est = jem.GaussianHMM(2, "diag", e_step=schedule, n_iter=60, random_state=0,
                          covars_prior=0.0).fit(Y, lengths)
    assert est.fit_result_.n_iter[0] > schedule.n_iters
    history = est.history_[np.isfinite(est.history_)]
    np.testing.assert_allclose(history[-1], est.score(Y, lengths), rtol=1e-10)
    # A pass at T = 3 still reports log p(X), not the tempered normaliser.
    hot = jhmm.fit(est._hmm(), Y, lengths, init_params=est._params(), max_iter=1,
                   e_step=jem.Annealing(start=3.0, n_iters=5))
    np.testing.assert_allclose(hot.initial_log_likelihood[0], est.score(Y, lengths), rtol=1e-10)


def test_bad_e_step_and_chunked_hard_are_refused():
    Y, lengths = _sequences()
    with pytest.raises(ValueError, match="e_step must be one of"):
        jem.GaussianHMM(2, e_step="viterbi").fit(Y, lengths)
    with pytest.raises(ValueError, match="only e_step='soft'"):
        jem.GaussianHMM(2, e_step="hard").fit_chunked(Y, lengths)
    with pytest.raises(ValueError, match="e_step must be one of"):
        jhmm.fit(jhmm.gaussian_hmm(2), Y, lengths, key=jax.random.key(0), e_step=1)
