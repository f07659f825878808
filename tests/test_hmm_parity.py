"""hmmlearn parity of the HMM estimators: structural zeros, writable attributes, ``params`` and
``init_params`` letters, ``n_iter=0``, ``decode(algorithm="map")``, ``sample(currstate=)``,
``get_stationary_distribution``, ``monitor_``, ``random_state`` as a ``RandomState``."""

import numpy as np
import pytest

import jaxem as jem


def _left_right(n=600, seed=0):
    """Sequences from a 3-state left-right chain: start in 0, never go back, 2 absorbing."""
    truth = jem.GaussianHMM(3, covariance_type="diag", random_state=seed)
    truth.startprob_ = np.array([1.0, 0.0, 0.0])
    truth.transmat_ = np.array([[0.9, 0.1, 0.0], [0.0, 0.9, 0.1], [0.0, 0.0, 1.0]])
    truth.means_ = np.array([[0.0], [5.0], [10.0]])
    truth.covars_ = np.ones((3, 1))
    parts = [truth.sample(60, random_state=seed + i)[0] for i in range(n // 60)]
    return truth, np.concatenate(parts), [60] * (n // 60)


def test_a_left_right_hmm_keeps_its_exact_zeros():
    truth, X, lengths = _left_right()
    model = jem.GaussianHMM(3, covariance_type="diag", init_params="mc", n_iter=30,
                            random_state=0)
    model.startprob_ = truth.startprob_.copy()
    model.transmat_ = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    model.fit(X, lengths)
    assert model.startprob_.tolist() == [1.0, 0.0, 0.0]
    zeros = truth.transmat_ == 0
    assert (model.transmat_[zeros] == 0).all()
    assert model.transmat_[2].tolist() == [0.0, 0.0, 1.0]
    np.testing.assert_allclose(model.transmat_.sum(axis=1), 1.0, rtol=1e-6)


def test_a_state_never_left_keeps_its_row():
    """State 2 is entered only at the last step of each sequence: no outgoing counts, so its
    row stays as given instead of becoming uniform."""
    rng = np.random.default_rng(0)
    seq = np.r_[rng.normal(0, 0.3, 20), rng.normal(5, 0.3, 19), [10.0]][:, None]
    X, lengths = np.tile(seq, (5, 1)), [40] * 5
    model = jem.GaussianHMM(3, covariance_type="diag", init_params="", n_iter=5)
    model.startprob_ = np.array([1.0, 0.0, 0.0])
    model.transmat_ = np.array([[0.9, 0.1, 0.0], [0.0, 0.9, 0.1], [0.2, 0.3, 0.5]])
    model.means_ = np.array([[0.0], [5.0], [10.0]])
    model.covars_ = np.full((3, 1), 0.1)
    model.fit(X, lengths)
    given = np.array([0.2, 0.3, 0.5]).astype(model.transmat_.dtype)  # in the fit's float type
    np.testing.assert_array_equal(model.transmat_[2], given)  # as given


def test_fitted_attributes_are_writable_copies():
    _, X, lengths = _left_right(240)
    model = jem.GaussianHMM(2, n_iter=3, random_state=0).fit(X, lengths)
    for name in ("startprob_", "transmat_", "means_", "covars_"):
        assert getattr(model, name).flags.writeable, name
    model.transmat_[0, 1] = 0.0
    model.transmat_[0, 0] = 1.0
    assert model.transmat_[0].tolist() == [1.0, 0.0]


def test_malformed_emissionprob_is_a_value_error():
    model = jem.CategoricalHMM(2)
    model.startprob_, model.transmat_ = np.array([0.5, 0.5]), np.full((2, 2), 0.5)
    for bad in ([], [0.5, 0.5], np.ones((3, 2)) / 2):
        model.emissionprob_ = np.asarray(bad)
        with pytest.raises(ValueError, match="emissionprob_ must have shape"):
            model.score(np.array([[0], [1]]))


def test_params_letters_hold_what_they_leave_out():
    _, X, lengths = _left_right(240)
    start = jem.GaussianHMM(2, n_iter=2, random_state=0).fit(X, lengths)
    model = jem.GaussianHMM(2, n_iter=10, random_state=0, params="tc", init_params="")
    for name in ("startprob_", "transmat_", "means_"):
        setattr(model, name, getattr(start, name).copy())
    model.covars_ = start._covars_.copy()
    model.fit(X, lengths)
    np.testing.assert_array_equal(model.startprob_, start.startprob_)
    np.testing.assert_allclose(model.means_, start.means_, rtol=1e-6)
    assert not np.allclose(model.transmat_, start.transmat_)


def test_n_iter_zero_initialises_only_and_init_params_logs(caplog):
    _, X, lengths = _left_right(240)
    model = jem.GaussianHMM(2, n_iter=0, random_state=0).fit(X, lengths)
    assert model.n_iter_ == 0 and model.monitor_.iter == 0 and not model.converged_
    np.testing.assert_allclose(model.transmat_, 0.5)
    model.fit(X, lengths)  # logged, as hmmlearn does
    assert "'transmat_' attribute is set, it will be overwritten" in caplog.text
    caplog.clear()
    model.transmat_ = np.array([[0.9, 0.1], [0.2, 0.8]])
    model.set_params(init_params="").fit(X, lengths)  # no letter: nothing is overwritten
    assert "overwritten" not in caplog.text
    np.testing.assert_allclose(model.transmat_, [[0.9, 0.1], [0.2, 0.8]], rtol=1e-7)
    # a letter left out whose attribute was never set is initialised (hmmlearn's rule)
    fresh = jem.GaussianHMM(2, n_iter=0, init_params="", random_state=0).fit(X, lengths)
    assert fresh.means_.shape == (2, 1)


def test_decode_map_sample_currstate_stationary_and_monitor():
    truth, X, lengths = _left_right(240)
    model = jem.GaussianHMM(3, covariance_type="diag", n_iter=20, random_state=0).fit(X, lengths)
    log_prob, states = model.decode(X, lengths, algorithm="map")
    log_p, posteriors = model.score_samples(X, lengths)
    assert log_prob == pytest.approx(log_p)
    np.testing.assert_array_equal(states, posteriors.argmax(axis=1))
    assert model.monitor_.converged == model.converged_
    assert model.monitor_.iter == model.n_iter_ and len(model.monitor_.history) == 2

    A = np.array([[0.9, 0.1], [0.3, 0.7]])
    chain = jem.PoissonHMM(2, random_state=np.random.RandomState(0))
    chain.startprob_, chain.transmat_ = np.array([0.5, 0.5]), A
    chain.lambdas_ = np.array([[1.0], [20.0]])
    pi = chain.get_stationary_distribution()
    np.testing.assert_allclose(pi @ A, pi, atol=1e-12)
    np.testing.assert_allclose(pi, [0.75, 0.25], atol=1e-12)
    _, path = chain.sample(50, currstate=1)
    assert path[0] == 1
    seeded = jem.PoissonHMM(2, random_state=3)
    seeded.startprob_, seeded.transmat_, seeded.lambdas_ = chain.startprob_, A, chain.lambdas_
    np.testing.assert_array_equal(seeded.sample(30)[1], seeded.sample(30)[1])


def test_implementation_and_priors_as_arrays():
    _, X, lengths = _left_right(240)
    for implementation in ("log", "scaling"):
        jem.GaussianHMM(2, n_iter=2, implementation=implementation, random_state=0).fit(X, lengths)
    with pytest.raises(ValueError, match="implementation must be 'log' or 'scaling'"):
        jem.GaussianHMM(2, implementation="fast").fit(X, lengths)
    prior = np.array([[5.0, 1.0], [1.0, 5.0]])
    model = jem.GaussianHMM(2, n_iter=5, transmat_prior=prior, random_state=0).fit(X, lengths)
    np.testing.assert_allclose(model.transmat_.sum(axis=1), 1.0, rtol=1e-6)
