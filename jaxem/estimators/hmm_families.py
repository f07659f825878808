"""More hmmlearn-style HMM estimators: Gaussian-mixture emissions (hmmlearn's ``GMMHMM``),
multinomial counts (hmmlearn's ``MultinomialHMM``) and the linear autoregressive Gaussian HMM
(dynamax's ``LinearAutoregressiveHMM``). They share :class:`jaxem.estimators.hmm_base._BaseHMM`
with :class:`jaxem.GaussianHMM`: fitted attributes are read afresh by every call and may be
assigned by hand, and ``score`` is the total log-likelihood over all sequences.
"""

from __future__ import annotations

import numpy as np

from ..core.validation import check_data, check_nonnegative_float, check_positive_int
from ..hmm import autoregressive as ar
from ..hmm.emissions import multinomial_hmm
from ..hmm.mixture_emission import gmm_hmm
from ..models.gaussian import COVARIANCE_TYPES, covariances_from_prec_chol
from .checks import bad_integers, one_of
from .hmm_base import _BaseHMM, _check_probabilities
from .params import _as_key


def _prec_chol(cov: np.ndarray, full: bool, name: str = "covars_") -> np.ndarray:
    """``A = L^{-1}`` (full and tied, ``cov = L L^T``) or ``1/σ`` from covariances as assigned."""
    if full:
        if not np.allclose(cov, np.swapaxes(cov, -1, -2)) or (np.linalg.eigvalsh(cov) <= 0).any():
            raise ValueError(f"{name} must be symmetric positive definite")
        return np.linalg.inv(np.linalg.cholesky(cov))
    if not np.all(np.isfinite(cov)) or (cov <= 0).any():
        raise ValueError(f"{name} must be positive")
    return 1.0 / np.sqrt(cov)


def _n_covariance_parameters(n_blocks: int, d: int, covariance_type: str) -> int:
    return n_blocks * {"spherical": 1, "diag": d, "full": d * (d + 1) // 2,
                       "tied": d * (d + 1) // 2}[covariance_type]


class GMMHMM(_BaseHMM):
    """HMM whose states emit from Gaussian mixtures (hmmlearn's ``GMMHMM``).

    Each state ``s`` has its own mixture of ``n_mix`` Gaussians; the M-step is the exact
    closed form (the state's mixture fitted to steps weighted by ``γ_t(s) q_t(m | s)``, see
    :func:`jaxem.hmm.mixture_emission`).

    Args:
        n_components: hidden states ``S``; n_mix: Gaussians per state ``M``.
        covariance_type: ``"diag"`` (default, as hmmlearn), ``"full"``, ``"spherical"`` or
            ``"tied"`` (one full covariance shared by the components of each state, as hmmlearn).
        min_covar: added to every covariance's diagonal in the M-step.
        init: how each state's mixture starts (k-means splits the rows among the states, then
            :func:`jaxem.gaussian_mixture`'s ``init`` runs within each state's rows).
        Others as in :class:`jaxem.GaussianHMM`; init_params letters ``"s"``, ``"t"``, ``"m"``,
        ``"c"``, ``"w"``.

    Fitted attributes:
        ``startprob_ [S]``, ``transmat_ [S, S]``, ``weights_ [S, M]``, ``means_ [S, M, D]``,
        ``covars_`` (hmmlearn's shapes: full ``[S, M, D, D]``, diag ``[S, M, D]``, spherical
        ``[S, M]``, tied ``[S, D, D]``), ``converged_``, ``n_iter_``, ``history_``, ``fit_result_``.

    hmmlearn differs in one place: it centres the covariance statistics on the previous means,
    so its update is ``Σ_old-centred = Σ + (μ_new - μ_old)(μ_new - μ_old)^T`` (a conditional
    step that still raises the likelihood, but less); jaxem's is the exact M-step. hmmlearn adds
    no ``min_covar`` in its M-step, and its default spherical ``covars_prior`` is not flat
    unless ``n_mix == n_features``.
    """

    _emission_letters = "mcw"
    _attributes = {**_BaseHMM._attributes, "m": ("means_",), "c": ("covars_",),
                   "w": ("weights_",)}

    _parameters = {"n_components": ..., "n_mix": 1, "covariance_type": "diag", "min_covar": 1e-3,
                   "init": "kmeans"}
    _positional = 2
    _constraints = {"n_mix": check_positive_int, "min_covar": check_nonnegative_float,
                    "covariance_type": one_of(COVARIANCE_TYPES)}

    def _hmm(self):
        return gmm_hmm(self.n_components, int(self.n_mix), self.covariance_type,
                       float(self.min_covar), self.init, float(self.startprob_prior),
                       float(self.transmat_prior))

    @property
    def n_features(self) -> int:
        """Dimension ``D`` of an observation."""
        return np.shape(self.means_)[2]

    def _check_values(self, X: np.ndarray) -> None:
        if hasattr(self, "means_") and X.shape[1] != self.n_features:
            raise ValueError(f"X has {X.shape[1]} features, but the model's means_ have "
                             f"{self.n_features}")

    def _emission_params(self) -> dict:
        S, M, ct = self.n_components, self.n_mix, self.covariance_type
        means = np.asarray(self.means_, np.float64)
        if means.ndim != 3 or means.shape[:2] != (S, M):
            raise ValueError(f"means_ must have shape ({S}, {M}, D), got {means.shape}")
        D = means.shape[2]
        shape = {"full": (S, M, D, D), "tied": (S, D, D), "diag": (S, M, D), "spherical": (S, M)}[ct]
        cov = np.asarray(self.covars_, np.float64)
        if cov.shape != shape:
            raise ValueError(f"covars_ for covariance_type={ct!r} must have shape {shape}, got "
                             f"{cov.shape}")
        return {"weights": _check_probabilities(self.weights_, "weights_", (S, M)), "means": means,
                "prec_chol": _prec_chol(cov, ct in ("full", "tied"))}

    def _set_emission(self, emission) -> None:
        self.weights_ = np.asarray(emission["weights"])
        self.means_ = np.asarray(emission["means"])
        self.covars_ = np.asarray(covariances_from_prec_chol(emission["prec_chol"],
                                                             self.covariance_type))

    def _n_emission_parameters(self) -> int:
        S, M, D, ct = self.n_components, self.n_mix, self.n_features, self.covariance_type
        return S * (M - 1) + S * M * D + _n_covariance_parameters(S if ct == "tied" else S * M,
                                                                  D, ct)


class MultinomialHMM(_BaseHMM):
    """HMM emitting a vector of symbol counts per step (hmmlearn's ``MultinomialHMM``): row
    ``x [V]`` holds how often each of ``V`` symbols came up in the step's ``Σ_v x_v`` trials.

    Args:
        n_components: hidden states ``S``.
        n_trials: trials per step: ``None`` (each row's own total, as hmmlearn infers), an int
            every row must sum to (needed by ``sample``), or ``[N]`` ints.
        Others as in :class:`jaxem.GaussianHMM`; init_params letters ``"s"``, ``"t"``, ``"e"``.

    Fitted attributes:
        ``startprob_ [S]``, ``transmat_ [S, S]``, ``emissionprob_ [S, V]``, ``converged_``,
        ``n_iter_``, ``history_``, ``fit_result_``.
    """

    _emission_letters = "e"
    _attributes = {**_BaseHMM._attributes, "e": ("emissionprob_",)}

    _parameters = {"n_components": ..., "n_trials": None}

    def _n_symbols(self) -> int:
        if hasattr(self, "emissionprob_"):
            return np.shape(self.emissionprob_)[1]
        return self.n_features_seen_

    def _single_trials(self) -> int | None:
        trials = np.unique(np.asarray(self.n_trials)) if self.n_trials is not None else ()
        return int(trials[0]) if len(trials) == 1 else None

    def _hmm(self):
        return multinomial_hmm(self.n_components, int(self._n_symbols()), self._single_trials(),
                               float(self.startprob_prior), float(self.transmat_prior))

    def _check_values(self, X: np.ndarray) -> None:
        bad = bad_integers(X)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"MultinomialHMM needs non-negative integer counts; got {X[row, col]} "
                             f"at row {row}, column {col}")
        if hasattr(self, "emissionprob_") and X.shape[1] != self._n_symbols():
            raise ValueError(f"X has {X.shape[1]} symbols per row, but emissionprob_ has "
                             f"{self._n_symbols()}")
        if self.n_trials is not None:
            totals = X.sum(axis=1)
            trials = np.broadcast_to(np.asarray(self.n_trials), totals.shape) \
                if np.ndim(self.n_trials) == 0 or np.shape(self.n_trials) == totals.shape else None
            if trials is None:
                raise ValueError(f"n_trials must be an int or one per row ({totals.shape[0]}), got "
                                 f"shape {np.shape(self.n_trials)}")
            if (totals != trials).any():
                row = int(np.argmax(totals != trials))
                raise ValueError(f"row {row} sums to {totals[row]:g} counts but n_trials is "
                                 f"{trials[row]}; every row must hold n_trials counts")
        self.n_features_seen_ = X.shape[1]

    def _emission_params(self) -> dict:
        return {"probs": _check_probabilities(self.emissionprob_, "emissionprob_",
                                              (self.n_components, self._n_symbols()))}

    def _set_emission(self, emission) -> None:
        self.emissionprob_ = np.asarray(emission["probs"])

    def _n_emission_parameters(self) -> int:
        return self.n_components * (self._n_symbols() - 1)

    def sample(self, n_samples: int = 1, random_state=None) -> tuple[np.ndarray, np.ndarray]:
        """Draw one sequence: ``(X [n_samples, V] counts, states [n_samples])``; needs one
        ``n_trials`` for every step."""
        if self._single_trials() is None:
            raise ValueError("sampling needs a single n_trials (an int); set n_trials")
        X, states = super().sample(n_samples, random_state)
        return X.astype(np.int64), states


class LinearAutoregressiveHMM(_BaseHMM):
    """The linear autoregressive Gaussian HMM (dynamax's ``LinearAutoregressiveHMM``):
    ``x_t | z_t = s ~ N(W_s [x_{t-1}, ..., x_{t-L}] + b_s, Σ_s)``, lags before each sequence's
    start taken as 0 (dynamax's convention), full covariances, and an exact M-step (weighted
    least squares per state).

    Args:
        n_components: hidden states ``S``; num_lags: ``L``.
        min_covar: added to every covariance's diagonal in the M-step.
        init: starting responsibilities on the rows ``[lags, x]`` (``"kmeans"``, ``"k-means++"``,
            ``"random_from_data"``, ``"random"``), from which each state's regression is fitted.
        Others as in :class:`jaxem.GaussianHMM`; init_params letters ``"s"``, ``"t"``, ``"a"``
            (coefficients and intercepts), ``"c"`` (covariances).

    Fitted attributes:
        ``startprob_ [S]``, ``transmat_ [S, S]``, ``coefs_ [S, D, L D]`` (``W_s``, lag 1's block
        first, dynamax's ``weights``), ``intercepts_ [S, D]``, ``covars_ [S, D, D]``,
        ``converged_``, ``n_iter_``, ``history_``, ``fit_result_``.
    """

    _emission_letters = "ac"
    _attributes = {**_BaseHMM._attributes, "a": ("coefs_", "intercepts_"), "c": ("covars_",)}

    _parameters = {"n_components": ..., "num_lags": 1, "min_covar": 1e-6, "init": "kmeans"}
    _positional = 2
    _constraints = {"num_lags": check_positive_int, "min_covar": check_nonnegative_float}

    @property
    def n_features(self) -> int:
        """Dimension ``D`` of an observation."""
        return np.shape(self.coefs_)[1] if hasattr(self, "coefs_") else self.n_features_seen_

    def _hmm(self):
        return ar.autoregressive_hmm(self.n_components, self.n_features, int(self.num_lags),
                                     float(self.min_covar), self.init,
                                     float(self.startprob_prior), float(self.transmat_prior))

    def _sequences(self, X, lengths):
        X = check_data(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-dimensional [n_samples, n_features], got shape {X.shape}")
        return super()._sequences(ar.lagged_rows(X, lengths, int(self.num_lags)), lengths)

    def _check_values(self, Z: np.ndarray) -> None:
        """``Z [N, (L + 1) D]``: the rows :func:`jaxem.hmm.lagged_rows` laid out."""
        D = Z.shape[1] // (int(self.num_lags) + 1)
        if hasattr(self, "coefs_") and D != self.n_features:
            raise ValueError(f"X has {D} features, but the model's coefs_ have {self.n_features}")
        self.n_features_seen_ = D

    def _emission_params(self) -> dict:
        S, L = self.n_components, int(self.num_lags)
        coefs = np.asarray(self.coefs_, np.float64)
        if coefs.ndim != 3 or coefs.shape[0] != S or coefs.shape[2] != L * coefs.shape[1]:
            raise ValueError(f"coefs_ must have shape ({S}, D, {L} * D), got {coefs.shape}")
        D = coefs.shape[1]
        intercepts = np.asarray(self.intercepts_, np.float64)
        cov = np.asarray(self.covars_, np.float64)
        for name, value, shape in (("intercepts_", intercepts, (S, D)), ("covars_", cov, (S, D, D))):
            if value.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
        return {"coef": coefs, "intercept": intercepts, "prec_chol": _prec_chol(cov, True)}

    def _set_emission(self, emission) -> None:
        self.coefs_ = np.asarray(emission["coef"])
        self.intercepts_ = np.asarray(emission["intercept"])
        self.covars_ = np.asarray(covariances_from_prec_chol(emission["prec_chol"], "full"))

    def _n_emission_parameters(self) -> int:
        S, D, L = self.n_components, self.n_features, int(self.num_lags)
        return S * D * L * D + S * D + _n_covariance_parameters(S, D, "full")

    def fit_chunked(self, source, lengths=None, *, chunk_size=None, init_size: int = 65536,
                    devices=None):
        """Chunked Baum-Welch over the lagged rows (built in memory, ``(L + 1)`` times the
        data); arguments as :meth:`jaxem.GaussianHMM.fit_chunked`."""
        from ..scale.data import as_source
        from .chunked import fit_hmm

        src = as_source(source)
        X = src.rows(0, src.n_rows, dtype=np.float64)
        return fit_hmm(self, ar.lagged_rows(X, lengths, int(self.num_lags)), lengths,
                       chunk_size=chunk_size, init_size=init_size, devices=devices)

    def sample(self, n_samples: int = 1, random_state=None) -> tuple[np.ndarray, np.ndarray]:
        """Draw one sequence from zero lags: ``(X [n_samples, D], states [n_samples])``."""
        n_samples = check_positive_int(n_samples, "n_samples")
        X, states = ar.sample_autoregressive(_as_key(random_state), self._params(), n_samples)
        return np.asarray(X, np.float64), np.asarray(states)
