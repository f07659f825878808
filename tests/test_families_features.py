"""Zoo features, each with a test that fails if the feature is removed: frequency weights (weight 2
equals the row duplicated, exactly), the Dirichlet prior (MAP weights), partial labels, missing
values (errors for rows with nothing observed), the shared initialisers and user-given starts, and
input checks that name the problem."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_non_decreasing
from test_families_math import ALL_FEATURES, mixed_data

import jaxem as jem


@pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")  # a fixed number of iterations
def test_sample_weight_two_equals_the_row_duplicated(x64):
    """Every feature family at once (NaN entries included): weights 2 and 0 against the data
    with those rows duplicated and dropped, at the same N so one program serves both."""
    X, _ = mixed_data(n=300, seed=2)
    weights = np.ones(len(X))
    weights[::10], weights[5::10] = 2.0, 0.0
    duplicated = np.concatenate([X[weights > 0], X[weights == 2]])
    assert duplicated.shape == X.shape
    model = jem.independent_mixture(2, ALL_FEATURES, init="random")
    start = jax.jit(model.init)(jax.random.key(0), jnp.asarray(X))
    runs = [jem.fit(model, data, key=jax.random.key(0), init_params=start, sample_weight=w,
                    max_iter=6, tol=0.0) for data, w in ((X, weights), (duplicated, None))]
    np.testing.assert_allclose(runs[0].history, runs[1].history, rtol=1e-11)
    for a, b in zip(jax.tree.leaves(runs[0].params), jax.tree.leaves(runs[1].params), strict=True):
        # Rows are summed in a different order: float64 round-off on O(1) parameters.
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def _two_poisson(n=400, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.choice(2, n, p=[0.85, 0.15])
    return rng.poisson(np.where(z == 1, 9.0, 3.0))[:, None].astype(float), z


def test_dirichlet_prior_gives_the_map_weights_and_a_monotone_penalised_history(x64):
    X, _ = _two_poisson()
    alpha = 60.0
    plain = jem.PoissonMixture(2, random_state=0, tol=1e-12, max_iter=3000).fit(X)
    est = jem.PoissonMixture(2, dirichlet_alpha=alpha, random_state=0, tol=1e-12,
                             max_iter=3000).fit(X)
    assert_non_decreasing(est.fit_result_)
    assert est.converged_
    # At convergence the weights are the posterior mode given the responsibilities:
    # w_k = (N_k + α - 1) / (N + K (α - 1)).
    nk = est.predict_proba(X).sum(axis=0)
    np.testing.assert_allclose(est.weights_, (nk + alpha - 1) / (len(X) + 2 * (alpha - 1)),
                               atol=1e-6)
    # The prior pulls the small component's weight towards 1/2.
    assert min(est.weights_) > min(plain.weights_) + 0.02
    # The history is the penalised log-likelihood: the log-likelihood plus (α-1) Σ log w.
    penalty = (alpha - 1) * np.sum(np.log(est.weights_))
    assert est.fit_result_.log_likelihood == pytest.approx(
        est.score(X) * len(X) + penalty, rel=1e-10)


def test_partial_labels_pin_components():
    """The start puts component 0 on the high-rate cluster; labels say the opposite. Unlabelled
    EM keeps the start's order, labelled EM must follow the labels (same compiled program:
    all -1 versus some rows known)."""
    X, z = _two_poisson(seed=1)
    model = jem.poisson_mixture(2)
    start = {"weights": jnp.array([0.2, 0.8]), "rates": jnp.array([[8.0], [2.5]])}
    labels = np.full(len(X), -1)
    known = np.arange(len(X)) % 4 == 0
    labels[known] = z[known]
    free, pinned = (jem.fit(model, X, key=jax.random.key(0), init_params=start, max_iter=200,
                            labels=lab) for lab in (np.full(len(X), -1), labels))
    assert free.params["rates"][0, 0] > 7 and free.params["rates"][1, 0] < 4
    assert pinned.params["rates"][0, 0] < 4 and pinned.params["rates"][1, 0] > 7
    assert_non_decreasing(pinned)
    # Through the estimator: labels= carries the partial labels (y is ignored, as in scikit-learn).
    est = jem.PoissonMixture(2, rates_init=[[8.0], [2.5]], weights_init=[0.2, 0.8],
                             max_iter=200, dtype="float32").fit(X, z, labels=labels)  # as jem.fit's
    np.testing.assert_allclose(est.rates_, pinned.params["rates"], rtol=1e-4)


def test_rows_or_columns_with_nothing_observed_are_errors():
    X, _ = mixed_data(n=50)
    features = [g[:2] for g in ALL_FEATURES]
    bad = X.copy()
    bad[7] = np.nan
    with pytest.raises(ValueError, match="row 7 has no observed value"):
        jem.IndependentMixture(2, features=features).fit(bad)
    bad = X.copy()
    bad[:, 3] = np.nan
    with pytest.raises(ValueError, match="column 3 has no observed value"):
        jem.IndependentMixture(2, features=features).fit(bad)
    with pytest.raises(ValueError, match="contains inf at row 2, column 1"):
        X2 = X.copy()
        X2[2, 1] = np.inf
        jem.IndependentMixture(2, features=features).fit(X2)
    with pytest.raises(ValueError, match=r"columns \[7\] are not covered"):
        jem.IndependentMixture(2, features=features[:-1]).fit(X)
    with pytest.raises(ValueError, match="column 2 is in feature groups 0 and 1"):
        jem.IndependentMixture(2, features=[("gaussian", [0, 1, 2]), ("poisson", [2])]).fit(X)
    with pytest.raises(ValueError, match="unknown family 'normal'"):
        jem.independent_mixture(2, [("normal", [0])])


@pytest.mark.parametrize("estimator, X, message", [
    (jem.PoissonMixture(2), [[1.0], [2.5], [3.0]], "non-negative integers; got 2.5 at row 1"),
    (jem.ExponentialMixture(2), [[1.0], [-2.0], [3.0]], "non-negative values; got -2.0 at row 1"),
    (jem.GammaMixture(2), [[1.0], [2.0], [0.0]], "positive values; got 0.0 at row 2"),
    (jem.CategoricalMixture(2, n_categories=3), [[0, 1], [2, 3], [1, 1]],
     "integer codes 0 .. 2 in column 1; got 3.0 at row 1"),
    (jem.CategoricalMixture(2), [[0, 1], [2, -1], [1, 1]], "non-negative integer codes; got -1"),
    (jem.PoissonMixture(2, dirichlet_alpha=0.5), [[1.0], [2.0]], "dirichlet_alpha must be"),
    (jem.GammaMixture(2, init_params="pca"), [[1.0], [2.0]], "init_params must be one of"),
    (jem.StudentTMixture(2, dof=-1.0), [[1.0], [2.0]], "dof must be a positive number"),
    (jem.StudentTMixture(2, covariance_type="tied"), [[1.0], [2.0]], "covariance_type must be"),
    (jem.PoissonMixture(2, rates_init=[1.0, 2.0]), [[1.0], [2.0]],
     r"rates_init must have shape \(2, 1\)"),
    (jem.IndependentMixture(2, features=[("categorical", [0], {"n_categories": [2]})]),
     [[0.0], [1.0], [2.0]], "integer codes 0 .. n_categories - 1; got 2.0 at row 2, column 0"),
])
def test_bad_input_is_named_before_any_compute(estimator, X, message):
    with pytest.raises(ValueError, match=message):
        estimator.fit(np.asarray(X, dtype=float))


@pytest.mark.parametrize("method", jem.init.INIT_METHODS)
def test_initialisers_shared_by_every_family(method):
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    z = np.repeat(np.arange(3), 60)
    X = jnp.asarray(centres[z] + rng.normal(size=(180, 2)), jnp.float32)
    resp = jax.jit(jem.init.initial_responsibilities, static_argnums=(2, 3))(
        jax.random.key(1), X, 3, method)
    assert resp.shape == (180, 3)
    np.testing.assert_allclose(resp.sum(axis=1), 1.0, rtol=1e-6)
    if method == "kmeans":
        # Well-separated blobs: k-means finds them exactly (up to the label order).
        labels = np.asarray(resp.argmax(axis=1))
        assert all(len(set(labels[z == k])) == 1 for k in range(3))
        assert len(set(labels)) == 3
    if method != "random":
        assert set(np.unique(np.asarray(resp))) == {0.0, 1.0}


def test_user_given_starting_parameters_are_where_the_fit_starts():
    X, _ = _two_poisson(seed=2)
    rates, weights = np.array([[1.0], [20.0]]), np.array([0.5, 0.5])
    est = jem.PoissonMixture(2, rates_init=rates, weights_init=weights, max_iter=200).fit(X)
    start = {"weights": jnp.asarray(weights, jnp.float32), "rates": jnp.asarray(rates, jnp.float32)}
    expected = jem.log_likelihood(jem.poisson_mixture(2), start, jnp.asarray(X, jnp.float32))
    assert est.fit_result_.initial_log_likelihood[0] == pytest.approx(float(expected), rel=1e-6)
    assert est.fit_result_.all_log_likelihoods.shape == (1,)
