"""Every runner gives the same answer on every family (issue 24).

- ``jem.fit_chunked`` equals ``jem.fit`` / ``jem.hmm.fit`` from the same start, for every built-in
  family, missing values, a MAP prior, annealed and hard E-steps, and the categorical and Poisson
  HMMs (test_chunked.py has the Gaussian and Bernoulli mixtures, a custom model and the diagonal
  Gaussian HMM);
- forward-backward by ``method="associative"`` (the accelerator default) equals ``"scan"``;
- a chunked HMM fit initialised from the data (no ``init_params``) equals the in-memory fit.

The fits run in float64 for a fixed number of iterations (``tol=None``), so the only difference
between two runners is the order of the sums: float64 round-off, amplified a little by the
iterations. The data have a last chunk shorter than the others.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import three_blobs
from test_families_math import ALL_FEATURES, mixed_data
from test_gaussian_missing import _with_holes as with_holes

import jaxem as jem
from jaxem import hmm as jhmm
from jaxem.models.gaussian_prior import gaussian_prior

pytestmark = pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")  # fixed iterations

N, CHUNK = 301, 64             # 4 full chunks and a last one of 45 rows
FIT = dict(max_iter=8, tol=None)
RTOL = 1e-8


def _start(model, X, seed=3):
    return jax.jit(model.init)(jax.random.key(seed), jnp.asarray(X))


def _assert_same_fit(a, b, rtol=RTOL):
    np.testing.assert_allclose(b.history, a.history, rtol=rtol)
    np.testing.assert_allclose(b.initial_log_likelihood, a.initial_log_likelihood, rtol=rtol)
    np.testing.assert_array_equal(b.n_iter, a.n_iter)
    np.testing.assert_array_equal(b.converged, a.converged)
    for leaf_a, leaf_b in zip(jax.tree.leaves(a.all_params), jax.tree.leaves(b.all_params),
                              strict=True):
        leaf_a, leaf_b = np.asarray(leaf_a), np.asarray(leaf_b)
        assert leaf_a.shape == leaf_b.shape
        np.testing.assert_allclose(leaf_b, leaf_a, rtol=rtol, atol=rtol * np.max(np.abs(leaf_a)))


# -- data -------------------------------------------------------------------------------------
def _counts(rng):
    z = rng.choice(2, N, p=[0.6, 0.4])
    return rng.poisson(np.where(z[:, None] == 1, [8.0, 1.0], [2.0, 5.0])).astype(float)


def _codes(rng):
    z = rng.choice(2, N, p=[0.5, 0.5])
    first = np.where(z == 1, rng.choice(3, N, p=[0.1, 0.2, 0.7]), rng.choice(3, N, p=[0.6, 0.3, 0.1]))
    second = np.where(z == 1, rng.choice(4, N, p=[0.4, 0.4, 0.1, 0.1]), rng.choice(4, N))
    return np.column_stack([first, second]).astype(float)


def _positive(rng):
    z = rng.choice(2, N, p=[0.6, 0.4])
    return rng.gamma(np.where(z[:, None] == 1, [6.0, 2.0], [1.5, 4.0]),
                     np.where(z[:, None] == 1, [0.5, 2.0], [1.0, 0.3]))


def _heavy_tailed(rng):
    z = rng.choice(2, N, p=[0.5, 0.5])
    return np.where(z[:, None] == 1, [4.0, 1.0], [0.0, 0.0]) + rng.standard_t(4.0, size=(N, 2))


def _regression(rng):
    """Rows ``[x_1, x_2, y]``: two lines, chosen by the sign of ``x_1`` with some noise (so the
    experts' gate has something to learn)."""
    inputs = rng.normal(size=(N, 2))
    z = (inputs[:, 0] + 0.5 * rng.normal(size=N)) > 0
    y = np.where(z, inputs @ [2.0, -1.0] + 1.0, inputs @ [-1.0, 0.5] - 2.0) + 0.3 * rng.normal(size=N)
    return np.column_stack([inputs, y])


# The product of families, with missing values; gamma and exponential have their own cases.
MIXED_FEATURES = ALL_FEATURES[:4]


def _case(name):
    rng = np.random.default_rng(0)
    if name == "poisson":
        return jem.poisson_mixture(2), _counts(rng)
    if name == "categorical":
        return jem.categorical_mixture(2, (3, 4)), _codes(rng)
    if name == "exponential":
        return jem.exponential_mixture(2), _positive(rng)
    if name == "gamma":
        return jem.gamma_mixture(2), _positive(rng)
    if name == "student_t":
        return jem.student_t_mixture(2, "full"), _heavy_tailed(rng)
    if name == "independent":
        X = mixed_data(n=N, seed=1)[0][:, :6]                  # NaN in columns 0, 2 and 5
        return jem.independent_mixture(2, MIXED_FEATURES, init="random"), X
    if name == "linear_regressions":
        return jem.mixture_of_linear_regressions(2), _regression(rng)
    if name == "experts":
        return jem.mixture_of_experts(2), _regression(rng)
    if name == "gaussian_missing":
        X = np.concatenate([three_blobs(N, dtype=np.float64), rng.normal(size=(N, 1))], axis=1)
        return jem.gaussian_mixture(3, "full", missing=True), with_holes(X, rate=0.2)
    raise AssertionError(name)


FAMILIES = ["poisson", "categorical", "exponential", "gamma", "student_t", "independent",
            "linear_regressions", "experts", "gaussian_missing"]


# -- 1. chunked equals in memory -----------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_equals_in_memory(x64, family):
    model, X = _case(family)
    start = _start(model, X)
    a = jem.fit(model, X, init_params=start, **FIT)
    b = jem.fit_chunked(model, X, chunk_size=CHUNK, init_params=start, **FIT)
    assert np.all(np.isfinite(a.history))
    _assert_same_fit(a, b)


@pytest.mark.parametrize("e_step", ["anneal", "hard"])
def test_map_prior_chunked_equals_in_memory(x64, e_step):
    """A Gaussian mixture with a MAP prior (the history includes the log prior, added once per
    pass by each runner), with the annealed E-step (the default schedule: 20 iterations of
    cooling, then soft E-steps at T = 1) and the hard one."""
    X = three_blobs(N, dtype=np.float64)
    prior = gaussian_prior(X, 3, "full", weight_concentration=2.0, mean_precision=0.5)
    model = jem.gaussian_mixture(3, "full", prior=prior)
    fit = dict(max_iter=24 if e_step == "anneal" else 8, tol=None)
    start = _start(model, X)
    a = jem.fit(model, X, init_params=start, e_step=e_step, **fit)
    b = jem.fit_chunked(model, X, chunk_size=CHUNK, init_params=start, e_step=e_step, **fit)
    _assert_same_fit(a, b)
    # The history is the penalised objective: the log prior at the start is not negligible.
    assert abs(float(model.log_prior(start))) > 1.0


# -- HMMs ----------------------------------------------------------------------------------------
LENGTHS = np.array([40, 25, 60, 33, 51, 18, 47])        # chunks of 3 sequences: the last holds one
CHAIN = {"initial": jnp.array([0.6, 0.4]), "transition": jnp.array([[0.8, 0.2], [0.3, 0.7]])}


def _hmm_case(name):
    rng = np.random.default_rng(0)
    n = int(LENGTHS.sum())
    states = np.zeros(n, int)
    for t in range(1, n):                                 # a sticky two-state chain
        states[t] = states[t - 1] if rng.random() < 0.85 else 1 - states[t - 1]
    if name == "categorical":
        probs = np.array([[0.6, 0.2, 0.1, 0.1], [0.1, 0.1, 0.3, 0.5]])
        X = np.array([rng.choice(4, p=probs[s]) for s in states], float)[:, None]
        return jhmm.categorical_hmm(2, 4), X
    if name == "poisson":
        return jhmm.poisson_hmm(2), rng.poisson(np.array([[1.0, 6.0], [7.0, 2.0]])[states]) * 1.0
    if name == "gaussian":
        # Random rows as the means: restarts start apart (k-means would find one start).
        hmm = jhmm.gaussian_hmm(2, "diag", init="random_from_data")
        return hmm, rng.normal(size=(n, 2)) + 3.0 * states[:, None]
    raise AssertionError(name)


def _hmm_start(hmm, X):
    return {**CHAIN, "emission": _start(hmm, X, seed=0)}


@pytest.mark.parametrize("name", ["categorical", "poisson"])
def test_hmm_chunks_of_sequences_equal_in_memory(x64, name):
    hmm, X = _hmm_case(name)
    start = _hmm_start(hmm, X)
    a = jhmm.fit(hmm, X, LENGTHS, init_params=start, method="scan", **FIT)
    b = jem.fit_chunked(hmm, X, lengths=LENGTHS, chunk_size=3, init_params=start, **FIT)
    _assert_same_fit(a, b)
    if name == "categorical":
        # 2. Forward-backward by ``method="associative"`` (the default on accelerators, never
        # chosen on a CPU) gives the Baum-Welch trajectory of ``method="scan"``. The two differ
        # only in the chain's recursions, so one emission family serves.
        associative = jhmm.fit(hmm, X, LENGTHS, init_params=start, method="associative", **FIT)
        _assert_same_fit(a, associative)


# -- 4. a chunked HMM initialised from the data ----------------------------------------------------
def test_hmm_chunked_initialised_from_the_data_equals_in_memory(x64):
    """No ``init_params``: the chunked fit calls the emission's ``init`` on ``init_size`` sampled
    rows, the in-memory fit on all rows, each restart with its key and the uniform chain.

    Approach: ``init_size >= N``. Then the chunked "sample" is every row in file order (the
    array source returns ``X[:]``, not a permutation; the order matters, since the initialiser
    here, ``"random_from_data"``, picks rows by index, as k-means seeding does), so both runners
    call ``init`` on the same rows with the same restart keys (``key`` split ``n_restarts`` ways
    by the same driver) and must agree from the first iteration on, every restart's parameters
    included. A sample smaller than ``N`` is a random subset drawn with a seed derived from the
    key, which only the chunked runner has.
    """
    hmm, X = _hmm_case("gaussian")
    kw = dict(key=jax.random.key(5), n_restarts=2, **FIT)
    a = jhmm.fit(hmm, X, LENGTHS, **kw)
    b = jem.fit_chunked(hmm, X, lengths=LENGTHS, chunk_size=3, init_size=len(X), **kw)
    c = jem.fit_chunked(hmm, X, lengths=LENGTHS, chunk_size=3, init_size=10 * len(X), **kw)
    _assert_same_fit(a, b)
    _assert_same_fit(a, c)
    # The two restarts started apart (else the test would not see a key mix-up).
    assert abs(a.initial_log_likelihood[0] - a.initial_log_likelihood[1]) > 1e-3
