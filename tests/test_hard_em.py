"""Hard (classification) EM, k-means as its limit, deterministic annealing, the bound picture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_non_decreasing, start_params, three_blobs
from sklearn.cluster import KMeans as SklearnKMeans

import jaxem as jem
from jaxem import teaching


def _blobs4(seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0, 0], [3, 3, 0], [0, 4, 4], [5, 0, 2]], float)
    return np.vstack([rng.normal(c, 1.0, size=(300, 3)) for c in centres])


def test_kmeans_matches_sklearn_from_the_same_centres(x64):
    X = _blobs4()
    init = X[np.random.default_rng(1).choice(len(X), 4, replace=False)]
    ours = jem.KMeans(4, init=init, tol=0.0).fit(X)
    ref = SklearnKMeans(4, init=init, n_init=1, tol=0.0, algorithm="lloyd").fit(X)
    np.testing.assert_allclose(ours.inertia_, ref.inertia_, rtol=1e-6)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-9, atol=1e-9)
    assert ours.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(ours.transform(X[:5]), ref.transform(X[:5]), rtol=1e-9)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    np.testing.assert_allclose(-ours.score(X), ref.inertia_, rtol=1e-6)


def test_kmeans_restarts_do_at_least_as_well_as_sklearn(x64):
    X = _blobs4(seed=2)
    ours = jem.KMeans(4, n_restarts=10, random_state=0).fit(X)
    ref = SklearnKMeans(4, n_init=10, random_state=0).fit(X)
    assert ours.inertia_ <= ref.inertia_ * (1 + 1e-6)
    # The restarts ran as one batch: one inertia per restart, the best one kept.
    assert ours.fit_result_.all_log_likelihoods.shape == (10,)


def test_hard_em_on_isotropic_model_is_kmeans(x64):
    """Functional API: hard EM on the equal-weight shared-variance mixture gives k-means' labels."""
    X = three_blobs(dtype=np.float64)
    centres = X[[0, 350, 550]]
    model = jem.isotropic_mixture(3)
    start = jem.models.kmeans.params_from_centers(jnp.asarray(X), jnp.asarray(centres))
    result = jem.fit(model, X, init_params=start, e_step="hard", tol=0.0, max_iter=100)
    ref = SklearnKMeans(3, init=centres, n_init=1, tol=0.0, algorithm="lloyd").fit(X)
    resp, _ = jem.e_step(model, result.params, X)
    np.testing.assert_array_equal(np.argmax(resp, axis=1), ref.labels_)
    # The objective it climbed is the classification log-likelihood at the fitted variance.
    n, d = X.shape
    var = ref.inertia_ / (n * d)
    expected = -ref.inertia_ / (2 * var) - 0.5 * n * d * np.log(2 * np.pi * var) - n * np.log(3)
    np.testing.assert_allclose(result.log_likelihood, expected, rtol=1e-9)
    assert_non_decreasing(result)


def test_hard_em_never_decreases_the_classification_likelihood():
    X = three_blobs()
    model = jem.gaussian_mixture(3, "full", init="k-means++")
    result = jem.fit(model, X, key=jax.random.key(0), n_restarts=4, e_step="hard", max_iter=50)
    assert_non_decreasing(result)
    # The reported objective is Σ_n max_k log p(x_n, z=k) at the final parameters.
    lj = model.log_joint_matrix(result.params, jnp.asarray(X))
    np.testing.assert_allclose(result.log_likelihood, float(jnp.sum(jnp.max(lj, axis=1))),
                               rtol=1e-5)
    # Classification EM's objective is below the log-likelihood at the same parameters.
    assert result.log_likelihood <= float(jem.log_likelihood(model, result.params, X))


def _unbalanced_pair():
    """A broad cluster of 950 rows and a tight one of 50 inside its shoulder: from k-means++
    starts, plain EM often splits the broad cluster in two and misses the tight one."""
    rng = np.random.default_rng(0)
    return np.vstack([rng.normal(0.0, 1.0, size=(950, 2)),
                      rng.normal([1.5, 0.0], 0.2, size=(50, 2))]).astype(np.float32)


def test_annealing_reaches_the_better_optimum_more_often():
    X = _unbalanced_pair()
    model = jem.gaussian_mixture(2, "full", init="k-means++")
    keys = jax.random.split(jax.random.key(3), 20)
    # Measured in float32 (the counts below); float64 changes which optimum some restarts reach.
    soft = jem.fit(model, X, key=keys, e_step="soft", max_iter=300,
                   dtype="float32").all_log_likelihoods
    annealed = jem.fit(model, X, key=keys, e_step="anneal", max_iter=300,
                       dtype="float32").all_log_likelihoods
    best = max(soft.max(), annealed.max())
    n_soft = int(np.sum(soft > best - 0.1))
    n_annealed = int(np.sum(annealed > best - 0.1))
    # Measured: soft EM 10 of 20 restarts, annealed EM 19 of 20 (same keys).
    assert n_annealed > n_soft
    assert n_annealed >= 17 and n_soft <= 12


def test_annealing_tests_convergence_only_after_cooling():
    X = three_blobs()
    schedule = jem.Annealing(start=1.5, n_iters=12)
    result = jem.fit(jem.gaussian_mixture(3, "full"), X, key=jax.random.key(0), e_step=schedule,
                     max_iter=200)
    assert result.n_iter[0] >= 12 and result.converged[0]


@pytest.mark.parametrize("bad", ["annealed", 3, None])
def test_unknown_e_step_is_refused(bad):
    with pytest.raises(ValueError, match="e_step must be one of"):
        jem.fit(jem.gaussian_mixture(2, "diag"), three_blobs(), key=jax.random.key(0), e_step=bad)


@pytest.mark.parametrize("start, n_iters", [(0.5, 10), (2.0, 0)])
def test_bad_annealing_schedule_is_refused(start, n_iters):
    with pytest.raises(ValueError, match="Annealing"):
        jem.Annealing(start=start, n_iters=n_iters)


def test_bound_touches_the_likelihood_at_each_iterate(x64):
    """The seed's two coins: the bound of each E-step equals log p(X|θ) at its iterate, lies below
    it everywhere else, and its maximiser is the next iterate, which does not lower the
    likelihood."""
    X = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], float)[:, None]

    def params_of(p_a):
        return {"weights": jnp.array([0.3, 0.7]),
                "probs": jnp.stack([jnp.atleast_1d(p_a), jnp.array([0.8])])}

    trace = teaching.bound_trace(jem.bernoulli_mixture(2), X, params_of, start=0.6,
                                 interval=(0.01, 0.99), n_steps=4)
    np.testing.assert_allclose(trace.iterate_log_likelihood[0], -9.28686, atol=5e-6)
    np.testing.assert_allclose(trace.bound_at_iterate, trace.iterate_log_likelihood[:-1],
                               rtol=1e-10)
    assert np.all(trace.bounds <= trace.log_likelihood[None] + 1e-10)
    assert np.all(np.diff(trace.iterate_log_likelihood) > 0)
    for t in range(4):  # the next iterate maximises this bound (up to the grid's spacing)
        on_grid = trace.grid[np.argmax(trace.bounds[t])]
        assert abs(on_grid - trace.iterates[t + 1]) <= trace.grid[1] - trace.grid[0]


def test_bound_plot_renders_a_png(tmp_path, x64):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image

    X = three_blobs(dtype=np.float64)
    fitted = jem.fit(jem.gaussian_mixture(3, "full"), X, key=jax.random.key(0)).params

    def params_of(shift):
        return {**fitted, "means": fitted["means"].at[0, 0].add(shift)}

    trace = teaching.bound_trace(jem.gaussian_mixture(3, "full"), X, params_of, start=1.5,
                                 interval=(-3.0, 3.0), n_steps=3, n_grid=80)
    path = tmp_path / "bound.png"
    teaching.plot_bound(trace, parameter_name="shift of mean 0").savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).shape[0] > 100


@pytest.mark.parametrize("make", [
    lambda: jem.GaussianMixture(3, covariance_type="diag", e_step="hard", random_state=0),
    lambda: jem.PoissonMixture(2, e_step="hard", random_state=0),
])
def test_estimators_take_the_e_step_option(make):
    rng = np.random.default_rng(0)
    X = (three_blobs() if make().__class__ is jem.GaussianMixture
         else rng.poisson([[2.0]] * 150 + [[20.0]] * 150).astype(float))
    est = make().fit(X)
    assert est.get_params()["e_step"] == "hard"
    assert_non_decreasing(est.fit_result_)
    # The objective is the classification log-likelihood: Σ_n max_k log p(x_n, z=k).
    lj = est._model().log_joint_matrix(est._params(), jnp.asarray(est._transform(X), jnp.float32))
    np.testing.assert_allclose(est.fit_result_.log_likelihood, float(jnp.sum(jnp.max(lj, axis=1))),
                               rtol=1e-5)


def test_tol_none_runs_until_max_iter_or_an_exact_fixed_point():
    """``tol=None`` switches the objective test off: a soft fit runs on after its steps are
    round-off (where ``tol=0`` stops), without a convergence warning, and stops early only where
    an iteration leaves the parameters bit-identical, so that every further one would too."""
    X = three_blobs(n=300)
    model = jem.gaussian_mixture(3, "diag")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", jem.ConvergenceWarning)
        short = jem.fit(model, X, key=jax.random.key(0), max_iter=30, tol=None, dtype="float32")
        result = jem.fit(model, X, key=jax.random.key(0), max_iter=500, tol=None, dtype="float32")
    stopped = jem.fit(model, X, key=jax.random.key(0), max_iter=500, tol=0.0, dtype="float32")
    assert stopped.n_iter[0] < 30  # with the objective test, round-off steps stop the fit
    assert short.n_iter[0] == 30 and np.all(np.isfinite(short.history))
    assert result.n_iter[0] > 30
    # Whether float32 round-off settles on an exact fixed point or cycles (seen on one CPU: a
    # cycle of five iterates a few ulps apart) depends on the machine's arithmetic; either way the
    # fit must stop exactly when, and only when, an iteration changes nothing.
    again = jem.fit(model, X, init_params=result.params, max_iter=1, tol=None, dtype="float32")
    changed = [not np.array_equal(np.asarray(again.params[name]), np.asarray(value))
               for name, value in result.params.items()]
    if result.n_iter[0] < 500:
        assert result.converged[0] and not any(changed)
    else:
        assert not result.converged[0] and any(changed)


def test_tol_none_stops_hard_em_at_its_fixed_point(x64):
    """k-means stops when its assignments no longer change (the parameters repeat exactly), the
    same point scikit-learn stops at, even with the objective test off."""
    X = _blobs4()
    init = X[np.random.default_rng(1).choice(len(X), 4, replace=False)]
    ours = jem.KMeans(4, init=init, tol=None, max_iter=300).fit(X)
    ref = SklearnKMeans(4, init=init, n_init=1, tol=0.0, algorithm="lloyd").fit(X)
    assert ours.n_iter_ == ref.n_iter_ < 300
    assert ours.fit_result_.converged[0]
    np.testing.assert_allclose(ours.inertia_, ref.inertia_, rtol=1e-9)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "1e-3"])
def test_bad_tolerance_is_refused(bad):
    with pytest.raises(ValueError, match="tol must be"):
        jem.fit(jem.gaussian_mixture(2), np.zeros((10, 2)), key=jax.random.key(0), tol=bad)


def test_hard_assignment_is_max_and_first_argmax():
    """The running comparison equals max/argmax, ties going to the first component, also with
    -inf (label-masked) entries and more components than one unrolled kernel holds."""
    from jaxem.core.estep import hard_assignment
    rng = np.random.default_rng(0)
    for k in (1, 3, 32, 70):
        lj = np.round(rng.normal(size=(500, k)), 1).astype(np.float32)  # rounding makes ties
        lj[::7, : k // 2] = -np.inf
        best, component = hard_assignment(jnp.asarray(lj))
        np.testing.assert_array_equal(np.asarray(best), lj.max(axis=1))
        np.testing.assert_array_equal(np.asarray(component), lj.argmax(axis=1))


def test_kmeans_hard_block_stats_equal_the_generic_hard_pass(x64):
    """k-means' one-function hard E-step (``hard_block_stats``: scores, running comparison, sums
    by index, totals only) gives the objective, statistics and fingerprint of the generic hard
    pass (full log-joint, one-hot statistics), with weights, on data far from the origin."""
    import dataclasses

    from jaxem.core import blocks, passes

    X = _blobs4() + 1e3
    model = jem.models.isotropic_mixture(4)
    assert model.hard_block_stats is not None
    generic = dataclasses.replace(model, hard_block_stats=None)
    params = start_params(model, jax.random.key(0), X)
    weights = np.random.default_rng(1).uniform(0.5, 2.0, len(X))
    rows = blocks.block_rows(jnp.asarray(X), jnp.asarray(weights), None, 4, 300)
    fast_objective, fast = passes.stats_pass(model, params, rows, hard=True)
    slow_objective, slow = passes.stats_pass(generic, params, rows, hard=True)
    np.testing.assert_allclose(fast_objective, slow_objective, rtol=1e-12)
    np.testing.assert_array_equal(fast.fingerprint, slow.fingerprint)
    for name in ("nk", "sum_x", "within"):
        np.testing.assert_allclose(fast.stats[name], slow.stats[name], rtol=1e-12, atol=1e-9)
    # The hashes laid out once with the blocks are those the fingerprint would compute per pass.
    no_hashes = rows._replace(hashes=None)
    np.testing.assert_array_equal(passes.stats_pass(model, params, no_hashes, hard=True)[1]
                                  .fingerprint, fast.fingerprint)
    labels, distances = jem.models.kmeans.nearest_centres(params, jnp.asarray(X))
    exact = ((X[:, None, :] - np.asarray(params["means"])[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, exact.argmin(1))
    np.testing.assert_allclose(distances, exact.min(1), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("hard", [True, False])
def test_kmeans_m_step_variance_is_the_scatter_about_the_new_means(hard):
    """The shared variance after one M-step is Σ_nk r_nk |x_n - m_k|² / (N D) about the new
    means m_k, in float32 on data far from the origin, whether the statistics come from the
    one-function hard pass or the soft statistics (both carry the scatter about the old means)."""
    from jaxem.core import blocks, passes

    X = (_blobs4() + 1e3).astype(np.float32)
    model = jem.models.isotropic_mixture(4)
    params = jem.models.kmeans.params_from_centers(jnp.asarray(X), jnp.asarray(X[[0, 1, 2, 3]]))
    weights = np.random.default_rng(2).uniform(0.5, 2.0, len(X)).astype(np.float32)
    rows = blocks.block_rows(jnp.asarray(X), jnp.asarray(weights), None, 4, 300)
    _, stats = passes.stats_pass(model, params, rows, hard=hard)
    new = model.maximize(blocks.statistics(stats), params)

    x = X.astype(np.float64)
    sq = ((x[:, None, :] - np.asarray(params["means"], np.float64)[None]) ** 2).sum(-1)
    if hard:
        resp = np.eye(4)[sq.argmin(1)]
    else:
        log_r = -sq / (2 * float(params["variance"]))
        resp = np.exp(log_r - log_r.max(1, keepdims=True))
        resp /= resp.sum(1, keepdims=True)
    resp *= weights[:, None]
    means = resp.T @ x / resp.sum(0)[:, None]
    scatter = (resp * ((x[:, None, :] - means[None]) ** 2).sum(-1)).sum()
    np.testing.assert_allclose(new["means"], means, rtol=1e-6)
    np.testing.assert_allclose(new["variance"], scatter / (resp.sum() * X.shape[1]), rtol=1e-5)


def test_fingerprint_sees_rows_trading_components_and_ignores_weightless_rows():
    """Hard EM's fixed-point test: per component, the wrapped sum of its rows' hashes. Two rows
    trading components (the same count in each) change it; reordering or zero-weight rows do
    not. Rows with a missing value hash their observed entries."""
    from jaxem.core import blocks

    X = jnp.asarray(_blobs4()[:8], jnp.float32)
    weights = jnp.ones(8)
    component = jnp.array([0, 0, 1, 1, 2, 2, 3, 3])
    base = blocks.assignment_fingerprint(X, component, weights, 4)
    assert base.shape == (4,) and base.dtype == jnp.uint32
    traded = component.at[0].set(1).at[2].set(0)
    assert not np.array_equal(blocks.assignment_fingerprint(X, traded, weights, 4), base)
    order = jnp.array([7, 3, 5, 1, 0, 6, 2, 4])
    np.testing.assert_array_equal(
        blocks.assignment_fingerprint(X[order], component[order], weights[order], 4), base)
    moved_weightless = component.at[0].set(3)
    np.testing.assert_array_equal(
        blocks.assignment_fingerprint(X, moved_weightless, weights.at[0].set(0.0), 4),
        blocks.assignment_fingerprint(X, component, weights.at[0].set(0.0), 4))
    with_nan = X.at[1, 2].set(jnp.nan)
    np.testing.assert_array_equal(blocks.row_hashes(with_nan),
                                  blocks.row_hashes(jnp.nan_to_num(with_nan)))
    assert np.all(np.asarray(blocks.row_hashes(X)) % 2 == 1)


def test_kmeans_predicts_and_transforms_many_rows_block_by_block():
    """predict, transform and score run a block of rows at a time (padded last block included)
    and agree with the whole-array computation."""
    rng = np.random.default_rng(3)
    X = np.vstack([_blobs4(), rng.normal(size=(9001 - 1200, 3))])
    est = jem.KMeans(4, random_state=0, max_iter=5, tol=None).fit(X[:1200])
    params = est._params()
    Xj = jnp.asarray(X, jnp.float32)
    labels, distances = jem.models.kmeans.nearest_centres(params, Xj)
    np.testing.assert_array_equal(est.predict(X), labels)
    np.testing.assert_allclose(est.transform(X) ** 2,
                               jem.models.kmeans.squared_distances(params, Xj), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(est.score(X), -float(jnp.sum(distances)), rtol=1e-6)
