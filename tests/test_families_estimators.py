"""Each zoo estimator recovers the parameters of data simulated from its own family (tolerances
stated per family: a few standard errors of the MLE at the sample sizes used), with a
never-decreasing history, working inference methods, sampling and BIC/AIC parameter counts."""

import numpy as np
import pytest
import scipy.stats as st
from conftest import assert_non_decreasing
from test_families_math import ALL_FEATURES, mixed_data

import jaxem as jem

N = 2000


def _poisson(rng):
    truth = {"weights": np.array([0.4, 0.6]), "rates": np.array([[2.0, 10.0], [12.0, 3.0]])}
    z = rng.choice(2, N, p=truth["weights"])
    return rng.poisson(truth["rates"][z]).astype(float), truth


def _exponential(rng):
    truth = {"weights": np.array([0.5, 0.5]), "rates": 1 / np.array([[1.0, 20.0], [15.0, 1.5]])}
    z = rng.choice(2, N, p=truth["weights"])
    return rng.exponential(1 / truth["rates"][z]), truth


def _gamma(rng):
    truth = {"weights": np.array([0.35, 0.65]), "shapes": np.array([[2.0, 9.0], [12.0, 1.5]]),
             "rates": np.array([[1.0, 3.0], [2.0, 0.5]])}
    z = rng.choice(2, N, p=truth["weights"])
    return rng.gamma(truth["shapes"][z], 1 / truth["rates"][z]), truth


def _categorical(rng):
    probs = np.array([[[0.7, 0.2, 0.1, 0.0], [0.1, 0.1, 0.4, 0.4], [0.8, 0.2, 0.0, 0.0]],
                      [[0.1, 0.2, 0.7, 0.0], [0.5, 0.3, 0.1, 0.1], [0.3, 0.7, 0.0, 0.0]]])
    truth = {"weights": np.array([0.45, 0.55]), "probs": probs}
    z = rng.choice(2, N, p=truth["weights"])
    u = rng.random((N, 3, 1))
    return (u > np.cumsum(probs[z], -1)).sum(-1).astype(float), truth


CASES = {
    # name: (make estimator, simulate, tolerances {attribute: (rtol, atol)})
    # Poisson: SE of a rate ~ sqrt(λ / (w N)) <= 0.1; 3 SE.
    "poisson": (lambda: jem.PoissonMixture(2, n_restarts=2, random_state=0), _poisson,
                {"rates": (0.06, 0.0), "weights": (0.0, 0.03)}),
    # Exponential: relative SE of a rate 1/sqrt(w N) ~ 3%, plus overlap between components.
    "exponential": (lambda: jem.ExponentialMixture(2, n_restarts=2, max_iter=300, random_state=0),
                    _exponential, {"rates": (0.15, 0.0), "weights": (0.0, 0.05)}),
    # Gamma: the shape's relative SE is about sqrt(2 / (w N)) ~ 5%; 3-4 SE.
    "gamma": (lambda: jem.GammaMixture(2, n_restarts=2, max_iter=300, random_state=0), _gamma,
              {"shapes": (0.2, 0.0), "rates": (0.2, 0.0), "weights": (0.0, 0.03)}),
    # Categorical: SE of a probability <= sqrt(0.25 / 900) ~ 0.017; 3-4 SE.
    "categorical": (lambda: jem.CategoricalMixture(2, n_restarts=2, max_iter=300, random_state=0),
                    _categorical, {"probs": (0.0, 0.06), "weights": (0.0, 0.04)}),
}


def _match(estimated, truth_rows):
    """Component order of ``estimated [K, ...]`` matching ``truth_rows`` (labels are arbitrary)."""
    flat = estimated.reshape(len(estimated), -1)
    order = [int(np.argmin(np.abs(flat - t.ravel()).sum(axis=1))) for t in truth_rows]
    assert sorted(order) == list(range(len(truth_rows)))
    return order


@pytest.mark.parametrize("name", list(CASES))
def test_single_family_estimators_recover_simulated_parameters(name):
    estimator, simulate, tolerances = CASES[name]
    X, truth = simulate(np.random.default_rng(7))
    est = estimator().fit(X)
    assert_non_decreasing(est.fit_result_)
    key = [k for k in truth if k != "weights"][0]
    order = _match(getattr(est, key + "_"), truth[key])
    for attr, (rtol, atol) in tolerances.items():
        np.testing.assert_allclose(getattr(est, attr + "_")[order], truth[attr], rtol=rtol,
                                   atol=atol, err_msg=f"{name}.{attr}_")
    # Inference, sampling and the information criteria.
    proba = est.predict_proba(X[:50])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert est.score(X) == pytest.approx(est.lower_bound_, rel=1e-4)
    Xs, labels = est.sample(300, random_state=1)
    assert Xs.shape == (300, X.shape[1]) and labels.shape == (300,)
    est._check_values(Xs)          # samples are valid data of the family
    n_params = {"poisson": 2 * 2, "exponential": 2 * 2, "gamma": 2 * 4,
                "categorical": 2 * (2 + 3 + 1)}[name] + 1
    assert est.bic(X) - est.aic(X) == pytest.approx(n_params * (np.log(N) - 2), rel=1e-9)


def test_student_t_mixture_recovers_simulated_parameters():
    rng = np.random.default_rng(3)
    scales = np.array([[[1.0, 0.5], [0.5, 1.0]], [[0.5, 0.0], [0.0, 2.0]]])
    means, dofs = np.array([[0.0, 0.0], [6.0, 2.0]]), np.array([3.0, 8.0])
    X = np.concatenate([st.multivariate_t.rvs(means[k], scales[k], df=dofs[k], size=n,
                                              random_state=rng) for k, n in ((0, 1200), (1, 800))])
    est = jem.StudentTMixture(2, n_restarts=2, max_iter=300, random_state=0).fit(X)
    assert_non_decreasing(est.fit_result_)
    order = _match(est.means_, means)
    # Location and scale SEs are ~0.05 at these sizes; ν is weakly identified (SE ~20-30%).
    np.testing.assert_allclose(est.means_[order], means, atol=0.15)
    np.testing.assert_allclose(est.covariances_[order], scales, atol=0.25)
    np.testing.assert_allclose(est.dofs_[order], dofs, rtol=0.5)
    np.testing.assert_allclose(est.weights_[order], [0.6, 0.4], atol=0.03)
    n_params = 2 * 3 + 2 * 2 + 1 + 2
    assert est.bic(X) - est.aic(X) == pytest.approx(n_params * (np.log(len(X)) - 2), rel=1e-9)
    Xs, _ = est.sample(50, random_state=0)
    assert np.isfinite(Xs).all()


def test_independent_mixture_recovers_simulated_parameters_with_missing_values():
    X, z = mixed_data(n=N, seed=4)
    est = jem.IndependentMixture(2, features=[g[:2] for g in ALL_FEATURES], n_restarts=2,
                                 random_state=0).fit(X)
    assert_non_decreasing(est.fit_result_)
    assert est.feature_params_[3]["probs"].shape == (2, 1, 3)   # categories inferred: 3
    gauss, pois, bern, cat, gam, expo = est.feature_params_
    order = _match(gauss["means"], np.array([[0.0, 1.0], [3.0, -1.0]]))
    # Components are well separated, so posterior labels equal the simulated ones (up to the
    # label order) for nearly every row, NaN rows included.
    assert np.mean(np.asarray(order)[z] == est.predict(X)) > 0.97
    np.testing.assert_allclose(gauss["means"][order], [[0.0, 1.0], [3.0, -1.0]], atol=0.1)
    np.testing.assert_allclose(gauss["variances"][order], [[1.0, 0.25], [1.0, 0.25]], rtol=0.15)
    np.testing.assert_allclose(pois["rates"][order, 0], [2.0, 9.0], rtol=0.06)
    np.testing.assert_allclose(bern["probs"][order], [[0.2, 0.6], [0.8, 0.3]], atol=0.05)
    np.testing.assert_allclose(cat["probs"][order, 0], [[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]],
                               atol=0.05)
    np.testing.assert_allclose(gam["shapes"][order, 0], [2.0, 8.0], rtol=0.2)
    np.testing.assert_allclose(expo["rates"][order, 0], [1.0, 0.2], rtol=0.15)
    np.testing.assert_allclose(est.weights_[order], [0.6, 0.4], atol=0.03)
    Xs, _ = est.sample(200, random_state=0)
    est._check_values(Xs)
