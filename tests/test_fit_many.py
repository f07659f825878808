"""Many data sets as one program (issue 22): fit_many's padding is exact, restarts per data set,
Wald coverage in a simulation study, and the bootstrap (weights on the same rows, parametric
draws, component matching)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem as jem
from jaxem.datasets import load_old_faithful
from jaxem.uncertainty import assignment, match_components


def _mixture_1d(n, rng, weights=(0.4, 0.6), means=(-2.0, 2.0), sd=1.0):
    z = rng.uniform(size=n) < weights[0]
    return np.where(z, means[0], means[1])[:, None] + sd * rng.normal(size=(n, 1))


def test_fit_many_equals_one_fit_per_data_set(x64):
    rng = np.random.default_rng(0)
    Xs = [_mixture_1d(n, rng) for n in (60, 150, 97)]
    model = jem.gaussian_mixture(2)
    start = {"weights": jnp.array([0.5, 0.5]), "means": jnp.array([[-1.0], [1.0]]),
             "prec_chol": jnp.ones((2, 1, 1))}
    many = jem.fit_many(model, Xs, init_params=start, tol=None, max_iter=25)
    assert many.n_datasets == 3 and many.history.shape == (3, 1, 25)
    for b, X in enumerate(Xs):
        one = jem.fit(model, X, init_params=start, tol=None, max_iter=25)
        for name in ("weights", "means", "prec_chol"):
            np.testing.assert_allclose(many.params[name][b], one.params[name], rtol=1e-10)
        np.testing.assert_allclose(many.log_likelihood[b], one.log_likelihood, rtol=1e-12)


def test_zero_weight_rows_are_exactly_absent(x64):
    rng = np.random.default_rng(1)
    X = np.stack([_mixture_1d(80, rng) for _ in range(2)])   # [B, N, 1]
    weights = np.ones((2, 80))
    weights[0, 50:] = 0.0
    weights[1, ::3] = 0.0
    model = jem.gaussian_mixture(2)
    start = {"weights": jnp.array([0.5, 0.5]), "means": jnp.array([[-1.0], [1.0]]),
             "prec_chol": jnp.ones((2, 1, 1))}
    padded = jem.fit_many(model, X, sample_weight=weights, init_params=start, tol=None, max_iter=20)
    dropped = jem.fit_many(model, [X[b][weights[b] > 0] for b in range(2)], init_params=start,
                           tol=None, max_iter=20)
    np.testing.assert_allclose(padded.params["means"], dropped.params["means"], rtol=1e-10)
    np.testing.assert_allclose(padded.log_likelihood, dropped.log_likelihood, rtol=1e-12)


def test_fit_many_refuses_bad_input_before_compute():
    model = jem.gaussian_mixture(2)
    with pytest.raises(ValueError, match=r"Xs\[1\] has rows of shape"):
        jem.fit_many(model, [np.zeros((10, 2)), np.zeros((10, 3))], key=jax.random.key(0))
    with pytest.raises(ValueError, match="sample_weight has 1 entries for 2 data sets"):
        jem.fit_many(model, [np.zeros((10, 2)), np.zeros((10, 2))], sample_weight=[np.ones(10)],
                     key=jax.random.key(0))
    with pytest.raises(ValueError, match="no data set"):
        jem.fit_many(model, [], key=jax.random.key(0))


def test_wald_intervals_cover_the_truth_in_a_simulation_study(x64):
    """500 data sets of 500 rows, fitted as one program: the 95% Wald intervals of the means
    cover the truth in 92-98% of data sets (a binomial band for 500 trials)."""
    rng = np.random.default_rng(3)
    truth = np.array([-2.0, 2.0])
    X = np.stack([_mixture_1d(500, rng, means=tuple(truth)) for _ in range(500)])
    model = jem.gaussian_mixture(2)
    result = jem.fit_many(model, X, key=jax.random.key(0), n_restarts=2, tol=1e-10, max_iter=300)
    # Every data set runs its own restarts, from its own keys, and keeps its best.
    assert result.all_params["means"].shape == (500, 2, 2, 1)
    np.testing.assert_array_equal(result.best_restart, np.argmax(result.all_log_likelihoods, axis=1))
    assert not np.allclose(result.initial_log_likelihood[0], result.initial_log_likelihood[1])
    lower, upper = result.confidence_intervals(X)
    order = np.argsort(np.asarray(result.params["means"])[:, :, 0], axis=1)  # label by position
    lo = np.take_along_axis(np.asarray(lower["means"])[:, :, 0], order, 1)
    hi = np.take_along_axis(np.asarray(upper["means"])[:, :, 0], order, 1)
    coverage = np.mean((lo <= truth) & (truth <= hi), axis=0)
    assert np.all((0.92 <= coverage) & (coverage <= 0.98)), coverage


def test_assignment_is_optimal():
    rng = np.random.default_rng(4)
    for n in (1, 2, 3, 5, 7):
        for _ in range(20):
            cost = rng.normal(size=(n, n)) if n > 3 else rng.integers(0, 3, (n, n)).astype(float)
            columns = assignment(cost)
            best = min(sum(cost[i, p[i]] for i in range(n))
                       for p in itertools.permutations(range(n)))
            assert sorted(columns) == list(range(n))
            assert np.isclose(cost[np.arange(n), columns].sum(), best)


def test_match_components_undoes_a_relabelling():
    rng = np.random.default_rng(5)
    reference = {"weights": np.array([0.2, 0.3, 0.5]), "means": rng.normal(size=(3, 2)) * 5,
                 "tied": rng.normal(size=(2, 2))}
    orders = np.array([rng.permutation(3) for _ in range(6)])
    replicates = {"weights": reference["weights"][orders] + 0.01 * rng.normal(size=(6, 3)),
                  "means": reference["means"][orders] + 0.1 * rng.normal(size=(6, 3, 2)),
                  "tied": np.broadcast_to(reference["tied"], (6, 2, 2))}
    matched, order = match_components(replicates, reference, 3)
    np.testing.assert_allclose(matched["means"], np.broadcast_to(reference["means"], (6, 3, 2)),
                               atol=0.5)
    np.testing.assert_array_equal(np.take_along_axis(orders, order, 1), np.tile(np.arange(3), (6, 1)))
    np.testing.assert_array_equal(matched["tied"], replicates["tied"])   # not per component


def test_bootstrap_on_old_faithful_agrees_with_wald():
    X, _ = load_old_faithful()
    model = jem.gaussian_mixture(2)
    result = jem.fit(model, X, key=jax.random.key(0), n_restarts=4)
    wald = np.asarray(result.standard_errors(X)["means"])
    for kind in ("nonparametric", "parametric"):
        boot = jem.bootstrap(model, X, 60, key=jax.random.key(1), kind=kind, result=result)
        assert boot.fit.n_datasets == 60 and boot.replicates["means"].shape == (60, 2, 2)
        ratio = boot.standard_errors["means"] / wald
        assert np.all((0.7 < ratio) & (ratio < 1.4)), (kind, ratio)
        lower, upper = boot.intervals(0.95)
        means = np.asarray(result.params["means"])
        assert np.all((lower["means"] < means) & (means < upper["means"]))


def test_bootstrap_checks_its_arguments():
    X, _ = load_old_faithful()
    model = jem.gaussian_mixture(2)
    with pytest.raises(ValueError, match="kind must be"):
        jem.bootstrap(model, X, 10, key=jax.random.key(0), kind="jackknife")
    with pytest.raises(ValueError, match="n_boot"):
        jem.bootstrap(model, X, 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="no built-in sampler"):
        jem.bootstrap(jem.exponential_mixture(2), np.abs(X), 10, key=jax.random.key(0),
                      kind="parametric")


def test_samplers_draw_from_the_fitted_mixture(x64):
    """The parametric bootstrap's draws have the fitted moments, for every covariance type (a
    tied model with D = K included: its shared leaf is not mistaken for a per-component one)."""
    from jaxem.models.gaussian import covariances_from_prec_chol
    from jaxem.uncertainty import mixture_sampler

    rng = np.random.default_rng(6)
    X = np.concatenate([rng.normal([0, 0], [1.0, 0.5], (300, 2)),
                        rng.normal([5, 2], [0.5, 1.5], (200, 2))])
    for ct in ("full", "tied", "diag", "spherical"):
        model = jem.gaussian_mixture(2, ct)
        result = jem.fit(model, X, key=jax.random.key(0))
        params = result.params
        draws = np.asarray(mixture_sampler(model)(jax.random.key(1), params, 50_000))
        cov = np.asarray(covariances_from_prec_chol(params["prec_chol"], ct))
        if ct == "tied":
            cov = np.stack([cov, cov])
        elif ct == "diag":
            cov = cov[:, :, None] * np.eye(2)
        elif ct == "spherical":
            cov = cov[:, None, None] * np.eye(2)
        w, mu = np.asarray(params["weights"]), np.asarray(params["means"])
        mean = w @ mu
        second = np.einsum("k,kij->ij", w, cov + mu[:, :, None] * mu[:, None, :])
        np.testing.assert_allclose(draws.mean(0), mean, atol=0.05)
        np.testing.assert_allclose(np.cov(draws.T), second - np.outer(mean, mean), atol=0.15)
        if ct == "tied":
            with pytest.raises(ValueError, match="match=False"):
                jem.bootstrap(model, X, 5, key=jax.random.key(0), result=result)
