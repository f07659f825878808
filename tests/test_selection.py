"""Model selection: select_components against the estimators' bic/aic."""

import jax
import numpy as np
import pytest
from conftest import binary_data, three_blobs

import jaxem as jem
from jaxem.selection import count_free_parameters, select_components


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_free_parameters_counted_from_constraints_match_the_estimator(covariance_type):
    X = three_blobs(n=60)
    model = jem.gaussian_mixture(4, covariance_type)
    shapes = jax.eval_shape(model.init, jax.random.key(0), X)
    gm = jem.GaussianMixture(4, covariance_type=covariance_type)
    gm.n_features_in_ = 2
    assert count_free_parameters(model, shapes) == gm._n_parameters()


def test_bernoulli_count_and_a_model_without_constraints():
    B, *_ = binary_data(n=50, d=6)
    model = jem.bernoulli_mixture(3)
    assert count_free_parameters(model, jax.eval_shape(model.init, jax.random.key(0), B)) == 3 * 6 + 2
    bare = jem.Model(init=lambda k, X: {"w": X[:2]}, log_joint=lambda p, x: p["w"] @ x)
    with pytest.raises(ValueError, match="declares no constraints.*pass n_parameters"):
        count_free_parameters(bare, {"w": B[:2]})


def test_sweep_picks_three_blobs_and_agrees_with_gaussian_mixture_bic():
    X = three_blobs(n=400)
    # The estimator fits in float64 coordinates centred on the data mean from one restart; so does
    # this sweep (and the estimator's fits then reuse the sweep's compiled programs).
    Xc = X - np.mean(X, axis=0, dtype=np.float64)
    fit_kw = dict(key=jax.random.key(0), n_restarts=1, dtype="float64")
    sweep = select_components(lambda k: jem.gaussian_mixture(k), Xc, ks=range(1, 5), **fit_kw)
    assert sweep.best_k == 3 and sweep.criterion == "bic"
    assert list(sweep.column("k")) == [1, 2, 3, 4]
    assert sweep.best is sweep.fits[3]
    assert "<-" in str(sweep).splitlines()[3]
    for row in sweep.table:
        gm = jem.GaussianMixture(row["k"], random_state=0).fit(X)
        assert row["n_parameters"] == gm._n_parameters()
        assert row["bic"] == pytest.approx(gm.bic(X), rel=1e-5)
        assert row["aic"] == pytest.approx(gm.aic(X), rel=1e-5)
    # Frequency weights count as rows: N in the BIC penalty is the total weight.
    w = np.full(len(X), 2.0)
    doubled = select_components(lambda k: jem.gaussian_mixture(k), Xc, ks=[3], sample_weight=w,
                                **fit_kw)
    row = doubled.table[0]
    assert row["bic"] == pytest.approx(-2 * row["log_likelihood"] + row["n_parameters"]
                                       * np.log(2 * len(X)))
    assert row["log_likelihood"] == pytest.approx(2 * sweep.table[2]["log_likelihood"], rel=1e-5)


def test_bad_arguments_are_named():
    X = three_blobs(n=30)
    with pytest.raises(ValueError, match="criterion must be 'bic' or 'aic'"):
        select_components(jem.gaussian_mixture, X, criterion="dic", key=jax.random.key(0))
    with pytest.raises(ValueError, match="ks is empty"):
        select_components(jem.gaussian_mixture, X, ks=[], key=jax.random.key(0))
    with pytest.raises(ValueError, match="every k in ks must be an integer >= 1"):
        select_components(jem.gaussian_mixture, X, ks=[0, 1], key=jax.random.key(0))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        select_components(jem.gaussian_mixture, X)
