"""The EM engine against the math of DESIGN.md section 1, for every family and covariance type."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_non_decreasing, binary_data, start_params, three_blobs

import jaxem as jem

COVARIANCE_TYPES = ["full", "diag", "spherical", "tied"]


def _families():
    X = three_blobs()
    B, *_ = binary_data()
    # Random starts (random rows as means), so that every restart has a long way to climb.
    cases = [(jem.gaussian_mixture(3, ct, init="random_from_data"), X, f"gmm-{ct}")
             for ct in COVARIANCE_TYPES]
    cases.append((jem.bernoulli_mixture(3, init="random"), B, "bernoulli"))
    return cases


FAMILIES = _families()


@pytest.mark.parametrize("model, X, name", FAMILIES, ids=[c[2] for c in FAMILIES])
@pytest.mark.parametrize("m_step", ["closed_form", "gradient"])
def test_history_never_decreases_and_elbo_is_tight(model, X, name, m_step):
    result = jem.fit(model, X, key=jax.random.key(1), n_restarts=3, max_iter=60, tol=0.0,
                     m_step=m_step)
    assert result.history.shape == (3, 60)
    assert_non_decreasing(result)
    # Random starts really climbed (the test would pass vacuously on a flat history).
    assert np.all(result.all_log_likelihoods > result.initial_log_likelihood + 1.0)
    # Right after an E-step the bound touches the likelihood: L(q*, θ) = log p(X | θ).
    resp, loglik = jem.e_step(model, result.params, X)
    assert float(loglik) == pytest.approx(result.log_likelihood, rel=1e-6)
    assert float(jem.elbo(model, result.params, X, resp)) == pytest.approx(float(loglik), rel=1e-6)
    np.testing.assert_allclose(np.sum(resp, axis=1), 1.0, rtol=1e-6)


def _fisher_check(model, params, X):
    resp, _ = jem.e_step(model, params, X)
    grad_ll = jax.grad(lambda p: jem.log_likelihood(model, p, X))(params)
    grad_q = jax.grad(lambda p: jem.expected_log_joint(model, p, X, resp))(params)
    for key in grad_ll:
        np.testing.assert_allclose(grad_q[key], grad_ll[key], rtol=1e-9, atol=1e-9 * X.shape[0])
        assert np.abs(np.asarray(grad_ll[key])).max() > 1e-3, key


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_fisher_identity_gaussian(x64, covariance_type):
    X = jnp.asarray(three_blobs(dtype=np.float64))
    model = jem.gaussian_mixture(3, covariance_type, init="random_from_data")
    params = model.init(jax.random.key(3), X)
    _fisher_check(model, params, X)


def test_fisher_identity_bernoulli(x64):
    B, *_ = binary_data()
    X = jnp.asarray(B, dtype=jnp.float64)
    model = jem.bernoulli_mixture(3, init="random")
    _fisher_check(model, model.init(jax.random.key(3), X), X)


def _gaussian_case():
    return jem.gaussian_mixture(3, "full", reg_covar=0.0), three_blobs(dtype=np.float64)


def _bernoulli_case():
    # From random responsibilities: the greedy k-means++ start of this data set sits on a
    # plateau that neither M-step leaves within 3000 iterations at tol=1e-12.
    return jem.bernoulli_mixture(3, init="random"), binary_data(n=750, seed=3)[0].astype(np.float64)


@pytest.mark.parametrize("case", [_gaussian_case, _bernoulli_case], ids=["gaussian", "bernoulli"])
def test_gradient_and_closed_form_m_steps_reach_the_same_optimum(x64, case):
    """Both are EM on the same likelihood from the same start; run to a tight tolerance they stop
    at the same local maximum. The gradient M-step maximises the unregularised Q, so the Gaussian
    closed form runs with reg_covar=0. With tol=1e-12 the last likelihood change is ~1e-9, so
    parameters agree to ~sqrt(1e-9 / N) per coordinate; 1e-4 leaves a margin of about 50x."""
    model, X = case()
    start = start_params(model, jax.random.key(0), X)
    closed = jem.fit(model, X, key=jax.random.key(0), init_params=start, max_iter=3000, tol=1e-12)
    # 30 L-BFGS steps make each M-step exact to ~1e-8 for these 39-54 parameters; with fewer, the
    # generalized-EM iterates lag the exact ones and take far longer to meet tol=1e-12.
    grad = jem.fit(model, X, key=jax.random.key(0), init_params=start, max_iter=3000, tol=1e-12,
                   m_step="gradient", m_step_iters=30)
    assert closed.converged.all() and grad.converged.all()
    assert grad.log_likelihood == pytest.approx(closed.log_likelihood, rel=1e-9)
    for key in start:
        np.testing.assert_allclose(grad.params[key], closed.params[key], atol=1e-4)


def test_gradient_m_step_with_adam(x64):
    """Any optax transformation works, and the GEM guard keeps the history monotone."""
    import optax

    X = three_blobs(dtype=np.float64)
    model = jem.gaussian_mixture(3, "diag", init="random_from_data")
    result = jem.fit(model, X, key=jax.random.key(2), n_restarts=2, max_iter=80, tol=0.0,
                     m_step="gradient", optimizer=optax.adam(0.05), m_step_iters=20)
    assert_non_decreasing(result)
    assert np.all(result.all_log_likelihoods > result.initial_log_likelihood + 1.0)


def test_restarts_are_one_vmapped_program_equal_to_single_fits():
    X = three_blobs()
    model = jem.gaussian_mixture(3, "full")
    result = jem.fit(model, X, key=jax.random.key(7), n_restarts=5, max_iter=50)
    assert result.history.shape == (5, 50)
    assert result.all_params["means"].shape == (5, 3, 2)
    assert result.converged.shape == result.n_iter.shape == (5,)
    assert len({float(v) for v in result.all_log_likelihoods}) > 1, "restarts were not distinct"
    # Even restarts start from the model's initialiser, odd ones from its explore_init (varied
    # starts); a single fit starts from the initialiser, so it reproduces the even ones.
    for r in (0, 2):
        single = jem.fit(model, X, key=result.restart_keys[r:r + 1], max_iter=50)
        assert single.n_iter[0] == result.n_iter[r]
        np.testing.assert_allclose(single.history[0], result.history[r], rtol=1e-6)
        np.testing.assert_allclose(single.params["means"], result.all_params["means"][r],
                                   rtol=1e-5, atol=1e-5)
    best = int(np.argmax(result.all_log_likelihoods))
    assert result.best_restart == best
    assert result.log_likelihood == result.all_log_likelihoods[best]


def test_restart_plan_runs_cpu_passes_in_sequence_and_batches_them_on_accelerators():
    from jaxem.core import blocks

    assert blocks.plan_restarts(8, "cpu") == (True, blocks.DEFAULT_BLOCK_ROWS)
    assert blocks.plan_restarts(8, "gpu") == (False, blocks.RESTART_BLOCK_WORK // 8)
    assert blocks.plan_restarts(64, "gpu") == (False, blocks.MIN_BLOCK_ROWS)
    assert blocks.plan_restarts(1, "gpu") == (False, blocks.DEFAULT_BLOCK_ROWS)
    assert blocks.plan_restarts(1, "cpu").in_sequence is False  # one restart runs unbatched
    assert blocks.plan_restarts(8, "cpu", block_size=100) == (True, 100)


@pytest.mark.parametrize("how", ["closed_form", "gradient", "chunked", "hmm", "hmm_chunked"])
def test_restarts_in_sequence_and_vmapped_give_the_same_fit(how, monkeypatch):
    """On a CPU the restarts' passes run one after another; an accelerator's vmapped batch (forced
    here by emptying the platform list) must give the same fit, restart by restart."""
    from jaxem.core import blocks

    X = three_blobs(n=900)
    model = jem.gaussian_mixture(3, "full", init="random_from_data")

    def run():
        kwargs = dict(key=jax.random.key(3), n_restarts=3, max_iter=15, tol=None, block_size=128)
        if how.startswith("hmm"):
            hmm, lengths = jem.hmm.gaussian_hmm(3, "full", init="random_from_data"), [300] * 3
            if how == "hmm_chunked":
                return jem.fit_chunked(hmm, X, lengths=lengths, chunk_size=2, **kwargs)
            return jem.hmm.fit(hmm, X, lengths, **kwargs)
        if how == "chunked":
            return jem.fit_chunked(model, X, chunk_size=400, **kwargs)
        if how == "gradient":
            kwargs.update(m_step="gradient", m_step_iters=5)
        return jem.fit(model, X, **kwargs)

    in_sequence = run()
    monkeypatch.setattr(blocks, "SEQUENTIAL_RESTART_PLATFORMS", ())
    vmapped = run()
    # Distinct starts (accelerated EM may bring two of them to one optimum within 15 iterations).
    assert len({float(v) for v in in_sequence.initial_log_likelihood}) == 3
    np.testing.assert_array_equal(in_sequence.n_iter, vmapped.n_iter)
    np.testing.assert_allclose(in_sequence.history, vmapped.history, rtol=1e-5)
    for ours, theirs in zip(jax.tree.leaves(in_sequence.all_params),
                            jax.tree.leaves(vmapped.all_params), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_same_key_gives_bit_identical_results():
    X = three_blobs()
    model = jem.gaussian_mixture(3, "diag")
    a = jem.fit(model, X, key=jax.random.key(11), n_restarts=3, max_iter=30)
    b = jem.fit(model, X, key=jax.random.key(11), n_restarts=3, max_iter=30)
    np.testing.assert_array_equal(a.history, b.history)
    np.testing.assert_array_equal(a.all_params["means"], b.all_params["means"])


def test_blocked_pass_equals_single_block():
    """Row blocks (with a padded last block) give the same fit as one block."""
    X = three_blobs(n=601)
    model = jem.gaussian_mixture(3, "full")
    one = jem.fit(model, X, key=jax.random.key(0), n_restarts=2, max_iter=40, accelerate=None)
    blocked = jem.fit(model, X, key=jax.random.key(0), n_restarts=2, max_iter=40, block_size=64,
                     accelerate=None)
    np.testing.assert_allclose(blocked.history, one.history, rtol=1e-5)
    # Compare restart by restart: two restarts may reach the same optimum with permuted labels,
    # and which of them is "best" then depends on round-off.
    np.testing.assert_allclose(blocked.all_params["means"], one.all_params["means"], rtol=1e-4,
                               atol=1e-4)


@pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")  # a fixed number of iterations
def test_sample_weight_two_equals_duplicated_row(x64):
    X = three_blobs(n=300, dtype=np.float64)
    weights = np.ones(len(X))
    weights[::7] = 2.0
    duplicated = np.concatenate([X, X[::7]])
    model = jem.gaussian_mixture(3, "full")
    start = start_params(model, jax.random.key(0), X)
    weighted = jem.fit(model, X, key=jax.random.key(0), init_params=start, sample_weight=weights,
                       max_iter=15, tol=0.0)
    plain = jem.fit(model, duplicated, key=jax.random.key(0), init_params=start, max_iter=15,
                    tol=0.0)
    # 15 iterations: both still move by far more than round-off, so both run all of them (a fit
    # stops once a step changes the log-likelihood by round-off only).
    assert weighted.n_iter[0] == plain.n_iter[0] == 15
    np.testing.assert_allclose(weighted.history, plain.history, rtol=1e-10)
    for key in start:
        np.testing.assert_allclose(weighted.params[key], plain.params[key], rtol=1e-8, atol=1e-10)


def test_custom_model_from_init_and_log_joint_recovers_poisson_rates():
    """A user model written only as init + log_joint (no closed form: gradient M-step)."""
    rng = np.random.default_rng(0)
    true_rates, true_weights = np.array([2.0, 12.0]), np.array([0.35, 0.65])
    z = rng.choice(2, size=3000, p=true_weights)
    X = rng.poisson(true_rates[z]).astype(np.float32)[:, None]

    def init(key, X):
        rates = jax.random.choice(key, X[:, 0], (2,), replace=False) + 0.5
        return {"weights": jnp.full((2,), 0.5), "rates": rates}

    def log_joint(params, x):
        return jnp.log(params["weights"]) + jax.scipy.stats.poisson.logpmf(x[0], params["rates"])

    model = jem.Model(init=init, log_joint=log_joint,
                      constraints={"weights": jem.constraints.simplex,
                                   "rates": jem.constraints.positive})
    result = jem.fit(model, X, key=jax.random.key(0), n_restarts=4, max_iter=300)
    assert_non_decreasing(result)
    order = np.argsort(result.params["rates"])
    # With N=3000 the MLE's standard errors are about 0.05 (rate 2) and 0.1 (rate 12).
    np.testing.assert_allclose(np.asarray(result.params["rates"])[order], true_rates, rtol=0.05)
    np.testing.assert_allclose(np.asarray(result.params["weights"])[order], true_weights, atol=0.03)


def test_bernoulli_mixture_recovers_simulated_parameters():
    X, true_weights, true_probs, _ = binary_data(n=4000, d=12, seed=1)
    result = jem.fit(jem.bernoulli_mixture(3), X, key=jax.random.key(0), n_restarts=8,
                     max_iter=300)
    assert_non_decreasing(result)
    probs = np.asarray(result.params["probs"])
    # Match components to the truth by their probability vectors (labels are arbitrary).
    order = [int(np.argmin(np.abs(probs - p).sum(axis=1))) for p in true_probs]
    assert sorted(order) == [0, 1, 2]
    # Standard errors with >= 800 rows per component are <= 0.018; allow about 3 of them.
    np.testing.assert_allclose(probs[order], true_probs, atol=0.06)
    np.testing.assert_allclose(np.asarray(result.params["weights"])[order], true_weights,
                               atol=0.03)


@pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")  # a fixed number of iterations
def test_failed_restarts_are_never_chosen_and_all_failing_raises():
    X = three_blobs()

    def init(key, X):
        # Restart 0 starts with a NaN mean; the others are fine.
        means = jax.random.choice(key, X, (3,), replace=False)
        bad = jax.random.bits(key) % 2 == 0
        return {"weights": jnp.full((3,), 1 / 3), "means": jnp.where(bad, jnp.nan, means)}

    def log_joint(params, x):
        return jnp.log(params["weights"]) - 0.5 * jnp.sum((x - params["means"]) ** 2, axis=1)

    model = jem.Model(init=init, log_joint=log_joint)
    result = jem.fit(model, X, key=jax.random.key(0), n_restarts=6, max_iter=5)
    assert result.failed.any() and not result.failed.all()
    assert not result.failed[result.best_restart]
    assert np.isfinite(result.log_likelihood)

    def init_nan(key, X):
        return {"weights": jnp.full((3,), 1 / 3), "means": jnp.full((3, 2), jnp.nan)}

    with pytest.raises(jem.FitError, match="all 2 restarts failed"):
        jem.fit(jem.Model(init=init_nan, log_joint=log_joint), X, key=jax.random.key(0),
                n_restarts=2, max_iter=5)


def test_programs_are_traced_with_full_float32_products():
    """Accelerators may compute float32 products in TF32 or bfloat16 by default; every product in
    a compiled fit (E-step, statistics, k-means initialisation) asks for full precision."""
    from jaxem.core import programs
    X = three_blobs(n=300)
    jem.fit(jem.gaussian_mixture(3, "full"), X, key=jax.random.key(0), max_iter=2)
    text = next(reversed(programs._EXECUTABLES.values())).as_text()
    # The optimised HLO prints a non-default precision config on each dot it keeps.
    dots = [line for line in text.splitlines() if " dot(" in line]
    assert dots and all("operand_precision={highest,highest}" in line for line in dots)


@pytest.mark.parametrize("n_rows, n_shards", [(1_000_000, 1), (100_000, 1), (999_983, 1),
                                              (70_000, 1), (1_000_000, 4), (300, 4), (1000, 1)])
def test_blocks_cover_the_rows_and_tile_them_exactly_when_they_can(n_rows, n_shards):
    """Row blocks cover every row with less than one block of padding, split evenly over the
    devices; where blocks of at least 4/5 the planned length divide the rows (by a multiple of
    8), they tile them exactly, so that no padded copy of the data is made."""
    from jaxem.core import blocks

    n_blocks, rows = blocks.plan_blocks(n_rows, None, n_shards)
    assert n_blocks * rows >= n_rows > (n_blocks - 1) * rows
    assert n_blocks % n_shards == 0
    exact = [b for b in range(n_blocks, n_blocks + n_blocks // 4 + 1)
             if n_rows % b == 0 and (n_rows // b) % 8 == 0 and b % n_shards == 0]
    if exact:
        assert n_blocks * rows == n_rows
    if n_rows == 1_000_000 and n_shards == 1:
        assert (n_blocks, rows) == (125, 8000)


@pytest.mark.parametrize("make", [
    lambda rng: rng.standard_normal((50, 3)),                                  # float64
    lambda rng: np.asfortranarray(rng.standard_normal((50, 3)).astype(np.float32)),
    lambda rng: rng.standard_normal((50, 6)).astype(np.float32)[:, ::2],       # strided view
    lambda rng: rng.integers(0, 5, (50, 3)).astype(np.float64),
])
def test_data_reach_the_device_with_their_values(make):
    from jaxem.validation import to_device

    X = make(np.random.default_rng(0))
    on_device = to_device(X)
    assert on_device.dtype == jem.em.default_float_dtype() and on_device.shape == X.shape
    np.testing.assert_array_equal(np.asarray(on_device), X.astype(on_device.dtype))


def test_aligned_data_of_the_right_dtype_are_not_copied_on_a_cpu():
    """``jnp.asarray`` copies host data even when nothing needs converting (0.1 s per 128 MB);
    data already C-contiguous, of the default dtype and 64-byte aligned go to a CPU as they
    are, and any other data are converted into an aligned buffer once."""
    from jaxem.validation import to_device

    dtype = np.dtype(jem.em.default_float_dtype())
    raw = np.empty(1000 * dtype.itemsize + 64, np.uint8)
    start = -raw.ctypes.data % 64
    X = raw[start:start + 1000 * dtype.itemsize].view(dtype).reshape(250, 4)
    X[...] = np.arange(1000).reshape(250, 4)
    on_device = to_device(X)
    if jax.default_backend() == "cpu":
        assert on_device.unsafe_buffer_pointer() == X.ctypes.data
    misaligned = raw[start + dtype.itemsize:start + 997 * dtype.itemsize].view(dtype)
    converted = to_device(misaligned)
    assert converted.unsafe_buffer_pointer() % 64 == 0
    np.testing.assert_array_equal(np.asarray(converted), misaligned)


def test_posteriors_of_many_rows_are_computed_block_by_block_and_match_all_at_once():
    """predict_proba / e_step run a block of rows at a time (padded last block included) and
    give the all-rows computation's responsibilities and log-likelihood."""
    from jaxem import em as em_module
    from jaxem.core import estep

    X = np.random.default_rng(4).normal(size=(9001, 3)).astype(np.float32)
    model = jem.gaussian_mixture(3, "full")
    params = start_params(model, jax.random.key(0), X)
    resp, row_ll = em_module.posterior_rows(model, params, jnp.asarray(X))
    whole_ll, whole_resp = estep.posterior(model.log_joint_matrix(params, jnp.asarray(X)), exact=True)
    assert resp.shape == (9001, 3) and row_ll.shape == (9001,)
    np.testing.assert_allclose(resp, whole_resp, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(row_ll, whole_ll, rtol=1e-6)
    e_resp, total = jem.e_step(model, params, X)
    np.testing.assert_allclose(e_resp, whole_resp, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(total, np.sum(np.asarray(whole_ll), dtype=np.float64), rtol=1e-5)
