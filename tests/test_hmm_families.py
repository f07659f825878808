"""GMMHMM, MultinomialHMM and the linear autoregressive HMM (issue 25, part 2), in float64:

- GMMHMM and MultinomialHMM follow hmmlearn's Baum-Welch from the same start (10 iterations);
- the autoregressive HMM follows a direct NumPy implementation of the same EM on ragged
  sequences (dynamax's model and lag convention; dynamax itself is not a test dependency);
- gradient and closed-form M-steps agree; any mixture Model is an HMM emission, a custom one
  fitted by the gradient M-step alone; histories never decrease;
- chunked = in memory; the estimators' API, free-parameter counts and input checks.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_non_decreasing
from hmmlearn import hmm as hl
from scipy.special import logsumexp

import jaxem as jem
from jaxem import hmm as jhmm
from jaxem.app.selection import count_free_parameters

pytestmark = pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")  # fixed iterations

S, M, D = 3, 2, 2
LENGTHS = [60, 1, 90, 45]
N_ITER = 10
CENTRES = np.array([[0.0, 0.0], [3.0, 3.0], [0.0, 6.0]])


def _assign(model, **attributes):
    for name, value in attributes.items():
        setattr(model, name, value)
    return model


def _max_difference(a, b):
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _sticky_states(rng, n, n_states=S, stay=0.85):
    states = np.zeros(n, int)
    for t in range(1, n):
        states[t] = states[t - 1] if rng.random() < stay else rng.integers(n_states)
    return states


@pytest.fixture(scope="module")
def gmm_data():
    rng = np.random.default_rng(0)
    n = sum(LENGTHS)
    states = _sticky_states(rng, n)
    offsets = np.where(rng.random(n) < 0.5, -1.0, 1.0)[:, None] * np.array([1.0, -0.5])
    return rng.normal(size=(n, D)) * 0.6 + CENTRES[states] + offsets


# -- GMMHMM against hmmlearn -----------------------------------------------------------------------
class _ExactGMMHMM(hl.GMMHMM):
    """hmmlearn's GMMHMM with its covariance update centred on the new means.

    hmmlearn accumulates ``Σ_t w_tsm (x_t - μ_old)(x_t - μ_old)^T`` before the M-step moves the
    means, so its covariance is the exact one plus ``(μ_new - μ_old)(μ_new - μ_old)^T`` (a
    conditional maximisation, not the M-step). Since ``μ_new`` is the weighted mean, subtracting
    that term gives the exact update: the scatter about ``μ_new``."""

    def _do_mstep(self, stats):
        old = self.means_.copy()
        super()._do_mstep(stats)
        shift = self.means_ - old                                           # [S, M, D]
        n = stats["post_mix_sum"]                                           # [S, M]
        ct = self.covariance_type
        if ct == "full":
            self.covars_ = self.covars_ - shift[..., :, None] * shift[..., None, :]
        elif ct == "diag":
            self.covars_ = self.covars_ - shift ** 2
        elif ct == "spherical":
            self.covars_ = self.covars_ - np.sum(shift ** 2, axis=-1) / D
        else:
            self.covars_ = self.covars_ - np.einsum("sm,smd,sme->sde", n, shift, shift) \
                / stats["post_sum"][:, None, None]


GMM_COVARS = {"full": np.broadcast_to([[1.0, 0.2], [0.2, 1.5]], (S, M, D, D)),
              "diag": np.broadcast_to([1.0, 1.5], (S, M, D)),
              "spherical": np.full((S, M), 1.2),
              "tied": np.broadcast_to([[1.0, 0.2], [0.2, 1.5]], (S, D, D))}


def _gmm_start(covariance_type):
    rng = np.random.default_rng(1)
    return dict(startprob_=np.full(S, 1 / S), transmat_=np.full((S, S), 1 / S),
                weights_=np.array([[0.5, 0.5], [0.3, 0.7], [0.6, 0.4]]),
                means_=CENTRES[:, None, :] + rng.normal(size=(S, M, D)),
                covars_=np.array(GMM_COVARS[covariance_type]))


def _gmm_params(start, covariance_type):
    full = covariance_type in ("full", "tied")
    return {"initial": start["startprob_"], "transition": start["transmat_"],
            "emission": {"weights": start["weights_"], "means": start["means_"],
                         "prec_chol": np.linalg.inv(np.linalg.cholesky(start["covars_"])) if full
                         else 1 / np.sqrt(start["covars_"])}}


@pytest.mark.parametrize("covariance_type", list(GMM_COVARS))
def test_gmmhmm_follows_hmmlearn_from_the_same_start(x64, gmm_data, covariance_type):
    X, start = gmm_data, _gmm_start(covariance_type)
    # hmmlearn's defaults are flat priors except the spherical covars_prior, -(n_mix + 2) / 2,
    # which is flat only when n_mix == n_features; -(D + 2) / 2 makes it flat here. It adds no
    # min_covar in the M-step.
    prior = {"covars_prior": -(D + 2) / 2} if covariance_type == "spherical" else {}
    ref = _assign(_ExactGMMHMM(S, M, covariance_type=covariance_type, n_iter=N_ITER, tol=-np.inf,
                               init_params="", **prior), **start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit(X, LENGTHS)
    ours = _assign(jem.GMMHMM(S, M, covariance_type=covariance_type, min_covar=0.0, n_iter=N_ITER,
                              tol=0.0, init_params="", accelerate=None), **start).fit(X, LENGTHS)
    # hmmlearn's history is the log-likelihood before each M-step; ours after it.
    np.testing.assert_allclose(ours.history_[:N_ITER - 1], np.array(ref.monitor_.history)[1:], rtol=1e-10)
    for name in ("startprob_", "transmat_", "weights_", "means_", "covars_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), atol=1e-8, err_msg=name)
    assert_non_decreasing(ours.fit_result_, rel=1e-12)
    assert ref.monitor_.history[-1] > ref.monitor_.history[0] + 10.0     # the fit moved
    # Free parameters: the estimator's count is the emission's constraint count. hmmlearn counts
    # the mixing weights as n_mix - 1 in all, not per state; the others agree.
    assert ours._n_emission_parameters() == count_free_parameters(ours._hmm().emission,
                                                                  ours._params()["emission"])
    assert ours._n_parameters() == sum(ref._get_n_fit_scalars_per_param().values()) \
        + (S - 1) * (M - 1)
    if covariance_type == "full":
        # Chunks of two sequences give the same trajectory.
        chunked = jem.fit_chunked(jhmm.gmm_hmm(S, M, "full", 0.0), X, lengths=LENGTHS,
                                  chunk_size=2, init_params=_gmm_params(start, "full"),
                                  max_iter=N_ITER, tol=None, accelerate=None)
        np.testing.assert_allclose(chunked.history, ours.fit_result_.history, rtol=1e-10)
        assert _max_difference(chunked.params, ours.fit_result_.params) < 1e-8
        sample, states = ours.sample(20, random_state=0)
        assert sample.shape == (20, D) and states.shape == (20,)


# -- MultinomialHMM against hmmlearn -----------------------------------------------------------------
def _counts(n_trials=6, seed=2):
    rng = np.random.default_rng(seed)
    probs = np.array([[0.6, 0.2, 0.1, 0.1], [0.1, 0.1, 0.3, 0.5], [0.25, 0.25, 0.25, 0.25]])
    states = _sticky_states(rng, sum(LENGTHS))
    return np.array([rng.multinomial(n_trials, probs[s]) for s in states])


def test_multinomial_hmm_follows_hmmlearn_from_the_same_start(x64):
    X = _counts()
    start = dict(startprob_=np.array([0.5, 0.3, 0.2]), transmat_=np.full((S, S), 1 / S),
                 emissionprob_=np.random.default_rng(3).dirichlet(np.ones(4), S))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _assign(hl.MultinomialHMM(S, n_trials=6, n_iter=N_ITER, tol=-np.inf, init_params=""),
                      **start).fit(X, LENGTHS)
    ours = _assign(jem.MultinomialHMM(S, n_trials=6, n_iter=N_ITER, tol=0.0, init_params="",
                                      accelerate=None),
                   **start).fit(X, LENGTHS)
    np.testing.assert_allclose(ours.history_[:N_ITER - 1], np.array(ref.monitor_.history)[1:], rtol=1e-10)
    for name in ("startprob_", "transmat_", "emissionprob_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), atol=1e-9, err_msg=name)
    assert ours._n_parameters() == sum(ref._get_n_fit_scalars_per_param().values())
    assert_non_decreasing(ours.fit_result_, rel=1e-12)
    sample, states = ours.sample(50, random_state=0)
    assert sample.dtype == np.int64 and (sample.sum(axis=1) == 6).all() and states.shape == (50,)


def test_multinomial_gradient_m_step_and_chunked_fit_equal_the_closed_form(x64):
    """The multinomial emission's closed form maximises its Q exactly, so L-BFGS on that Q lands
    on the same step (1e-4); reading the sequences in chunks of 3 rows changes nothing."""
    X = _counts()
    start = dict(startprob_=np.array([0.5, 0.3, 0.2]), transmat_=np.full((S, S), 1 / S),
                 emissionprob_=np.random.default_rng(3).dirichlet(np.ones(4), S))
    est = _assign(jem.MultinomialHMM(S, n_trials=6, n_iter=0, init_params=""), **start)
    hmm, params = est.fit(X, LENGTHS)._hmm(), est._params()
    one = dict(init_params=params, max_iter=1, tol=None)
    closed = jhmm.fit(hmm, X, LENGTHS, **one)
    grad = jhmm.fit(hmm, X, LENGTHS, m_step="gradient", m_step_iters=100,
                    optimizer=optax.lbfgs(), **one)
    assert _max_difference(grad.params, closed.params) < 1e-4
    memory = jhmm.fit(hmm, X, LENGTHS, init_params=params, max_iter=5, tol=None)
    chunked = jem.fit_chunked(hmm, X, lengths=LENGTHS, chunk_size=3, init_params=params,
                              max_iter=5, tol=None)
    np.testing.assert_allclose(chunked.history, memory.history, rtol=1e-10)
    assert_non_decreasing(memory, rel=1e-12)


# -- the autoregressive HMM against NumPy ------------------------------------------------------------
L_AR = 2
AR_LENGTHS = [250, 3, 150]


@pytest.fixture(scope="module")
def ar_data():
    """Two regimes of a 2-lag VAR; each sequence starts from zero lags, as the model assumes."""
    rng = np.random.default_rng(4)
    coefs = np.array([np.hstack([0.6 * np.eye(D), -0.2 * np.eye(D)]),
                      np.hstack([-0.5 * np.eye(D), 0.1 * np.ones((D, D))])])
    intercepts = np.array([[1.0, 0.0], [-1.0, 0.5]])
    rows = []
    for T in AR_LENGTHS:
        lags, s = np.zeros(L_AR * D), 0
        for t in range(T):
            s = s if t and rng.random() < 0.93 else rng.integers(2)
            x = coefs[s] @ lags + intercepts[s] + 0.3 * rng.normal(size=D)
            rows.append(x)
            lags = np.concatenate([x, lags[:-D]])
    start = {"initial": np.array([0.5, 0.5]), "transition": np.array([[0.8, 0.2], [0.3, 0.7]]),
             "emission": {"coef": 0.1 * rng.normal(size=(2, D, L_AR * D)),
                          "intercept": rng.normal(size=(2, D)),
                          "prec_chol": np.stack([np.eye(D), np.eye(D) / np.sqrt(2.0)])}}
    return np.array(rows), start, coefs, intercepts


def _numpy_ar_em(X, lengths, start, n_iter):
    """Baum-Welch for the AR-HMM written directly: lagged inputs per sequence (zeros before its
    start), log-space forward-backward, and the regression M-step as normal equations on
    ``[u, 1]``. Returns the log-likelihood after each M-step and the final parameters."""
    pi, A = start["initial"].copy(), start["transition"].copy()
    em = start["emission"]
    B = np.concatenate([em["coef"], em["intercept"][..., None]], axis=-1)          # [K, D, P+1]
    covs = np.linalg.inv(np.swapaxes(em["prec_chol"], -1, -2) @ em["prec_chol"])
    K = len(pi)
    bounds = np.cumsum([0] + list(lengths))
    designs = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        seq = X[a:b]
        padded = np.vstack([np.zeros((L_AR, D)), seq])
        lagged = [padded[L_AR - lag:L_AR - lag + len(seq)] for lag in range(1, L_AR + 1)]
        designs.append((np.hstack(lagged + [np.ones((len(seq), 1))]), seq))

    def log_density(phi, y):
        out = np.empty((len(y), K))
        for k in range(K):
            r = y - phi @ B[k].T
            _, logdet = np.linalg.slogdet(covs[k])
            out[:, k] = -0.5 * (np.sum(r @ np.linalg.inv(covs[k]) * r, 1) + logdet
                                + D * np.log(2 * np.pi))
        return out

    def e_step():
        total, posts, pair_sum, first = 0.0, [], np.zeros((K, K)), np.zeros(K)
        for phi, y in designs:
            logb = log_density(phi, y)
            T = len(y)
            fwd, bwd = np.empty((T, K)), np.zeros((T, K))
            fwd[0] = np.log(pi) + logb[0]
            for t in range(1, T):
                fwd[t] = logsumexp(fwd[t - 1][:, None] + np.log(A), axis=0) + logb[t]
            for t in range(T - 2, -1, -1):
                bwd[t] = logsumexp(np.log(A) + (logb[t + 1] + bwd[t + 1])[None], axis=1)
            ll = logsumexp(fwd[-1])
            total += ll
            gamma = np.exp(fwd + bwd - ll)
            pair_sum += np.exp(fwd[:-1, :, None] + np.log(A) + (logb[1:] + bwd[1:])[:, None, :]
                               - ll).sum(axis=0)
            posts.append(gamma)
            first += gamma[0]
        return total, posts, pair_sum, first

    history = []
    for _ in range(n_iter):
        _, posts, pair_sum, first = e_step()
        pi = first / first.sum()
        A = pair_sum / pair_sum.sum(1, keepdims=True)
        for k in range(K):
            w = np.concatenate([g[:, k] for g in posts])
            phi = np.vstack([p for p, _ in designs])
            y = np.vstack([v for _, v in designs])
            B[k] = np.linalg.solve(phi.T @ (w[:, None] * phi), phi.T @ (w[:, None] * y)).T
            r = y - phi @ B[k].T
            covs[k] = (w[:, None] * r).T @ r / w.sum()
        history.append(e_step()[0])
    return np.array(history), {"initial": pi, "transition": A, "coef": B[..., :-1],
                               "intercept": B[..., -1], "covs": covs}


def test_autoregressive_hmm_follows_a_numpy_em(x64, ar_data):
    X, start, _, _ = ar_data
    hmm = jhmm.autoregressive_hmm(2, D, L_AR, reg_covar=0.0)
    Z = jhmm.lagged_rows(X, AR_LENGTHS, L_AR)
    ours = jhmm.fit(hmm, Z, AR_LENGTHS, init_params=start, max_iter=N_ITER, tol=None,
                    accelerate=None)
    history, ref = _numpy_ar_em(X, AR_LENGTHS, start, N_ITER)
    # Chunks of two sequences give the same trajectory.
    chunked = jem.fit_chunked(hmm, Z, lengths=AR_LENGTHS, chunk_size=2, init_params=start,
                              max_iter=N_ITER, tol=None, accelerate=None)
    np.testing.assert_allclose(chunked.history, ours.history, rtol=1e-10)
    assert _max_difference(chunked.params, ours.params) < 1e-8
    np.testing.assert_allclose(ours.history[0], history, rtol=1e-10)
    p = ours.params
    for name in ("initial", "transition"):
        np.testing.assert_allclose(p[name], ref[name], atol=1e-9)
    for name in ("coef", "intercept"):
        np.testing.assert_allclose(p["emission"][name], ref[name], atol=1e-8)
    A = np.asarray(p["emission"]["prec_chol"])
    np.testing.assert_allclose(np.linalg.inv(np.swapaxes(A, -1, -2) @ A), ref["covs"], atol=1e-9)
    assert_non_decreasing(ours, rel=1e-12)
    assert history[-1] > history[0] + 10.0


def test_autoregressive_estimator_recovers_the_regimes(ar_data):
    X, _, coefs, intercepts = ar_data
    est = jem.LinearAutoregressiveHMM(2, num_lags=L_AR, n_restarts=4, random_state=0, n_iter=200,
                                      init="random_from_data").fit(X, AR_LENGTHS)
    order = np.argsort(est.intercepts_[:, 0])[::-1]                  # regime 0 has b = (1, 0)
    np.testing.assert_allclose(est.coefs_[order], coefs, atol=0.15)
    np.testing.assert_allclose(est.intercepts_[order], intercepts, atol=0.25)
    assert est.covars_.shape == (2, D, D)
    assert_non_decreasing(est.fit_result_)
    sample, states = est.sample(30, random_state=1)
    assert sample.shape == (30, D) and np.isfinite(sample).all() and states.shape == (30,)
    # Free parameters: the estimator's count is the emission model's constraint count.
    hmm = est._hmm()
    assert est._n_emission_parameters() == count_free_parameters(
        hmm.emission, est._params()["emission"]) == 2 * (D * L_AR * D + D + D * (D + 1) // 2)


# -- gradient M-steps and the generic mixture emission -----------------------------------------------
def test_gradient_m_step_matches_closed_form_on_one_step(x64, ar_data):
    """The autoregressive emission's gradient M-step (L-BFGS on its expected log-density) lands
    on the weighted least-squares solution of the NumPy EM."""
    X, start, _, _ = ar_data
    hmm = jhmm.autoregressive_hmm(2, D, L_AR, reg_covar=0.0)
    grad = jhmm.fit(hmm, jhmm.lagged_rows(X, AR_LENGTHS, L_AR), AR_LENGTHS, init_params=start,
                    max_iter=1, tol=None, m_step="gradient", m_step_iters=100,
                    optimizer=optax.lbfgs()).params
    history, ref = _numpy_ar_em(X, AR_LENGTHS, start, 1)
    for name in ("coef", "intercept"):
        np.testing.assert_allclose(grad["emission"][name], ref[name], atol=1e-4)
    A = np.asarray(grad["emission"]["prec_chol"])
    np.testing.assert_allclose(np.linalg.inv(np.swapaxes(A, -1, -2) @ A), ref["covs"], atol=1e-4)
    np.testing.assert_allclose(grad["transition"], ref["transition"], atol=1e-9)


def _diag_gaussian_mixture_log_joint(params, x):
    """A researcher's diagonal Gaussian mixture: one observation ``x [D]`` -> ``[M]``."""
    z = (x - params["means"]) * params["prec_chol"]
    return (jnp.log(params["weights"]) + jnp.sum(jnp.log(params["prec_chol"]), axis=-1)
            - 0.5 * D * jnp.log(2 * jnp.pi) - 0.5 * jnp.sum(z * z, axis=-1))


def test_any_mixture_model_is_an_emission_fitted_by_the_gradient_m_step(x64, gmm_data):
    """A mixture given only by its log-joint (no statistics) becomes an HMM emission with no
    extra code, and its gradient M-step agrees with GMMHMM's closed form.

    One step of each does not give the same parameters, and should not: the gradient M-step
    ascends ``Σ_t γ_t(s) log Σ_m w_sm N(x_t | θ_sm)`` with the within-state mixture
    marginalised, while the closed form maximises the expected complete-data log-likelihood
    with the within-state posteriors held. Both raise the likelihood, and they share fixed
    points: from the closed form's converged parameters, a gradient M-step stays there."""
    X = gmm_data
    custom = jem.Model(init=lambda key, X: None, log_joint=_diag_gaussian_mixture_log_joint,
                       constraints={"weights": jem.constraints.simplex, "means": jem.constraints.real,
                                    "prec_chol": jem.constraints.positive})
    hmm = jhmm.HMM(emission=jhmm.mixture_emission(custom, S), n_states=S)
    params = _gmm_params(_gmm_start("diag"), "diag")
    fit = dict(max_iter=10, tol=None, m_step_iters=50)
    grad = jhmm.fit(hmm, X, LENGTHS, init_params=params, **fit)
    assert_non_decreasing(grad, rel=1e-12)
    assert grad.history[0, -1] > grad.initial_log_likelihood[0] + 10.0
    gmm = jhmm.gmm_hmm(S, M, "diag", 0.0)
    exact = jhmm.fit(gmm, X, LENGTHS, init_params=params, max_iter=400, tol=1e-14)
    assert exact.converged.all()
    assert_non_decreasing(exact, rel=1e-12)
    # Free parameters counted from the constraints: S (M - 1) weights, S M D means and variances.
    assert count_free_parameters(gmm.emission, exact.params["emission"]) == S * (M - 1) + S * M * 2 * D
    stays = jhmm.fit(hmm, X, LENGTHS, init_params=exact.params, **fit)
    assert _max_difference(stays.params, exact.params) < 1e-4


# -- input checks ------------------------------------------------------------------------------------
def test_input_checks():
    with pytest.raises(ValueError, match="non-negative integer counts"):
        jem.MultinomialHMM(2).fit(np.array([[1.0, 2.5], [3.0, 0.0]]))
    with pytest.raises(ValueError, match="row 1 sums to 4 counts but n_trials is 3"):
        jem.MultinomialHMM(2, n_trials=3).fit(np.array([[1, 2], [3, 1]]))
    with pytest.raises(ValueError, match="single n_trials"):
        _assign(jem.MultinomialHMM(1), startprob_=[1.0], transmat_=[[1.0]],
                emissionprob_=[[0.5, 0.5]]).sample(3)
    with pytest.raises(ValueError, match="2-dimensional"):
        jem.LinearAutoregressiveHMM(2).fit(np.zeros(10))
    with pytest.raises(ValueError, match="n_mix must be an integer >= 1"):
        jem.GMMHMM(2, n_mix=0).fit(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="covars_ for covariance_type='diag' must have shape"):
        _assign(jem.GMMHMM(1, 2), startprob_=[1.0], transmat_=[[1.0]], weights_=[[0.5, 0.5]],
                means_=np.zeros((1, 2, 2)), covars_=np.ones((1, 2))).score(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="log_prior"):
        rows = np.random.default_rng(0).normal(size=(20, 2))
        prior = jem.models.gaussian_prior(rows, 2, "full", weight_concentration=2.0)
        jhmm.mixture_emission(jem.gaussian_mixture(2, prior=prior), 2)
