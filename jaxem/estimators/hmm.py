"""hmmlearn-style HMM estimators over :func:`jaxem.hmm.fit`.

The fitted attributes carry hmmlearn's names and shapes (``startprob_ [K]``, ``transmat_ [K, K]``,
``means_ [K, D]``, ``covars_``, ``emissionprob_ [K, M]``, ``lambdas_ [K, D]``) and are read afresh
by every ``score``, ``predict``, ``predict_proba``, ``decode`` and ``sample`` call, so they may be
assigned by hand before any of them (or before ``fit`` with ``init_params`` lacking their letter),
as in hmmlearn. ``score`` is hmmlearn's total log-likelihood over all sequences, not a mean.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..core.validation import check_nonnegative_float
from ..hmm import emissions
from ..models.gaussian import covariances_from_prec_chol
from .checks import bad_integers
from .hmm_base import _BaseHMM, _check_probabilities, _prior


def _check_nonnegative(value, name: str) -> None:
    arr = np.asarray(value, dtype=np.float64) if not isinstance(value, str) else np.nan
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be finite and >= 0 (a number or an array in hmmlearn's "
                         f"shape), got {value!r}")


class GaussianHMM(_BaseHMM):
    """HMM with Gaussian emissions (hmmlearn's ``GaussianHMM``).

    Args:
        n_components: hidden states ``K``.
        covariance_type: ``"diag"`` (default, as hmmlearn), ``"full"``, ``"spherical"``, ``"tied"``.
        min_covar: added to the starting covariances' diagonal (hmmlearn's meaning).
        startprob_prior, transmat_prior: Dirichlet concentrations on the chain, a number or one
            per probability (``[K]``, ``[K, K]``), as hmmlearn: ``p ∝ max(counts + prior - 1, 0)``.
        means_prior, means_weight, covars_prior, covars_weight: hmmlearn's M-step
            regularisation (a Normal-Wishart mode; the default ``covars_prior=0.01`` keeps
            covariances positive definite); ``history_`` is then the log-likelihood plus its log
            density, which never decreases.
        algorithm: ``"viterbi"`` or ``"map"``, what ``predict`` and ``decode`` return.
        n_iter: most EM iterations (0: initialise only); tol: relative change of the
            log-likelihood that stops a start.
        params: letters of what the M-step updates (default all; the others stay as they are).
        implementation: ``"log"`` or ``"scaling"`` (accepted for hmmlearn's scripts; both run
            jaxem's log-space recursions).
        n_restarts: random starts, vmapped; init_params: letters of what ``fit`` initialises
            (``"s"`` start, ``"t"`` transitions, ``"m"`` means, ``"c"`` covariances; default all);
            the others come from the attributes the user assigned.
        init: emission start, as in :func:`jaxem.hmm.gaussian_hmm` (default k-means).
        random_state, method (forward-backward ``"auto"|"scan"|"associative"``), m_step,
            optimizer: as elsewhere in jaxem.
        e_step: ``"soft"`` (Baum-Welch), ``"hard"`` (Viterbi training) or ``"anneal"`` /
            :class:`jaxem.Annealing`, as in :func:`jaxem.hmm.fit`.
        accelerate: ``"auto"`` (the default: SQUAREM with the soft E-step), ``"squarem"``/``True``
            or ``None``/``False`` (plain Baum-Welch); see
            :func:`jaxem.hmm.fit`.
        verbose: ``0`` no progress bar, ``1`` one on a terminal for long fits, ``2`` always.
        checkpoint, resume: save the fit's loop state to a file and continue from it, as in
            :func:`jaxem.fit`.

    Fitted attributes:
        ``startprob_ [K]``, ``transmat_ [K, K]``, ``means_ [K, D]``, ``covars_`` (read as full
        ``[K, D, D]``, assigned in the covariance type's own shape, as in hmmlearn),
        ``converged_``, ``n_iter_``, ``history_``, ``fit_result_``.
    """

    _emission_letters = "mc"
    _attributes = {**_BaseHMM._attributes, "m": ("means_",), "c": ("_covars_",)}
    _pieces = {**_BaseHMM._pieces, "m": (("emission", "means"),),
               "c": (("emission", "prec_chol"),)}

    _parameters = {"n_components": ..., "covariance_type": "diag", "min_covar": 1e-3,
                   "transmat_prior": ..., "means_prior": 0.0, "means_weight": 0.0,
                   "covars_prior": 1e-2, "covars_weight": 1.0, "init": "kmeans"}
    _positional = 3
    _constraints = {"min_covar": check_nonnegative_float, "means_weight": _check_nonnegative,
                    "covars_prior": _check_nonnegative, "covars_weight": _check_nonnegative}

    def _hmm(self):
        # min_covar only at the start, as hmmlearn; the M-step's regularisation is hmmlearn's
        # covars_prior / covars_weight (and means_prior / means_weight), a MAP update.
        regularisation = tuple(_prior(v) for v in (self.means_prior, self.means_weight,
                                                   self.covars_prior, self.covars_weight))
        return emissions.gaussian_hmm(self.n_components, self.covariance_type, 0.0, self.init,
                                      _prior(self.startprob_prior), _prior(self.transmat_prior),
                                      init_reg_covar=float(self.min_covar),
                                      regularisation=regularisation)

    @property
    def n_features(self) -> int:
        """Dimension ``D`` of an observation (from ``means_``, or as assigned, as hmmlearn)."""
        return np.shape(self.means_)[1] if hasattr(self, "means_") else self._n_features

    @n_features.setter
    def n_features(self, value) -> None:
        self._n_features = int(value)

    @property
    def covars_(self) -> np.ndarray:
        """Covariances as full matrices ``[K, D, D]`` (hmmlearn's getter)."""
        c, K, D = self._covars_, self.n_components, self.n_features
        ct = self.covariance_type
        if ct == "full":
            return c
        if ct == "tied":
            return np.broadcast_to(c, (K, D, D)).copy()
        diag = np.broadcast_to(np.asarray(c).reshape(K, -1), (K, D))
        return diag[:, :, None] * np.eye(D)[None]

    @covars_.setter
    def covars_(self, value) -> None:
        self._covars_ = np.array(value, dtype=np.float64)

    def _check_values(self, X: np.ndarray) -> None:
        if hasattr(self, "means_") and X.shape[1] != self.n_features:
            raise ValueError(f"X has {X.shape[1]} features, but the model's means_ have "
                             f"{self.n_features}")

    def _emission_params(self) -> dict:
        K, D = np.shape(self.means_)
        if K != self.n_components:
            raise ValueError(f"means_ must have shape ({self.n_components}, D), got {(K, D)}")
        ct = self.covariance_type
        shape = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[ct]
        cov = np.asarray(self._covars_, np.float64)
        if ct == "spherical" and cov.size == K:  # hmmlearn takes any shape of K variances
            cov = cov.reshape(K)
        if cov.shape != shape:
            raise ValueError(f"covars_ for covariance_type={ct!r} must be assigned with shape "
                             f"{shape}, got {cov.shape}")
        return {"means": np.asarray(self.means_, np.float64), "prec_chol": _prec_chol(cov, ct)}

    def _initial(self, seqs, key) -> dict:
        """hmmlearn's start: means from the initialiser (k-means by default), and every state's
        covariance the data's (``np.cov``) plus ``min_covar`` on the diagonal, in the covariance
        type's shape (spherical: the mean of that matrix's entries, as hmmlearn)."""
        start = super()._initial(seqs, key)
        rows = np.asarray(seqs.rows, np.float64)
        cv = np.atleast_2d(np.cov(rows.T)) + self.min_covar * np.eye(rows.shape[1])
        K = self.n_components
        cov = {"spherical": np.full(K, cv.mean()), "tied": cv,
               "diag": np.tile(np.diag(cv), (K, 1)), "full": np.tile(cv, (K, 1, 1))}
        dtype = start["emission"]["means"].dtype
        prec_chol = _prec_chol(cov[self.covariance_type], self.covariance_type)
        start["emission"] = dict(start["emission"], prec_chol=jnp.asarray(prec_chol, dtype))
        return start

    def _emission_arrays(self, emission) -> dict:
        # covars_ in the covariance type's own shape (as assigned), not the full getter's.
        return {"means_": emission["means"],
                "covars_": covariances_from_prec_chol(emission["prec_chol"], self.covariance_type)}

    def _set_emission(self, emission) -> None:
        self.means_ = np.array(emission["means"], dtype=np.float64)
        self._covars_ = np.array(covariances_from_prec_chol(emission["prec_chol"],
                                                            self.covariance_type), dtype=np.float64)

    def _n_emission_parameters(self) -> int:
        K, D = self.n_components, self.n_features
        cov = {"spherical": K, "diag": K * D, "full": K * D * (D + 1) // 2,
               "tied": D * (D + 1) // 2}[self.covariance_type]
        return K * D + cov


def _prec_chol(cov: np.ndarray, covariance_type: str) -> np.ndarray:
    """The precision Cholesky factors of covariances in the covariance type's shape; a
    ValueError when they are not positive (definite)."""
    if covariance_type in ("full", "tied"):
        if (np.linalg.eigvalsh(cov) <= 0).any():
            raise ValueError("covars_ must be symmetric positive definite")
        return np.linalg.inv(np.linalg.cholesky(cov))
    if (cov <= 0).any():
        raise ValueError("covars_ must be positive")
    return 1.0 / np.sqrt(cov)


class CategoricalHMM(_BaseHMM):
    """HMM emitting one symbol in ``{0, ..., n_features - 1}`` per step (hmmlearn's
    ``CategoricalHMM``); data are integer rows ``X [N, 1]``.

    Args:
        n_components: hidden states ``K``.
        emissionprob_prior: Dirichlet concentration on each state's symbol probabilities (a
            number or ``[K, M]``), hmmlearn's update ``p ∝ max(counts + prior - 1, 0)``.
        n_features: number of symbols ``M`` (default: the largest symbol in the data + 1).
        Others as in :class:`GaussianHMM`; init_params letters ``"s"``, ``"t"``, ``"e"``.

    Fitted attributes:
        ``startprob_ [K]``, ``transmat_ [K, K]``, ``emissionprob_ [K, M]``, ``converged_``,
        ``n_iter_``, ``history_``, ``fit_result_``.
    """

    _emission_letters = "e"
    _attributes = {**_BaseHMM._attributes, "e": ("emissionprob_",)}
    _pieces = {**_BaseHMM._pieces, "e": (("emission", "probs"),)}

    _parameters = {"n_components": ..., "transmat_prior": ..., "emissionprob_prior": 1.0,
                   "n_features": None}
    _constraints = {"emissionprob_prior": _check_nonnegative}

    def _n_symbols(self) -> int:
        if hasattr(self, "emissionprob_"):
            shape = np.shape(self.emissionprob_)
            if len(shape) != 2 or shape[0] != self.n_components or shape[1] < 1:
                raise ValueError(f"emissionprob_ must have shape (n_components, n_features) = "
                                 f"({self.n_components}, M), got {shape}")
            return shape[1]
        return self.n_features if self.n_features is not None else self.n_features_seen_

    def _hmm(self):
        return emissions.categorical_hmm(self.n_components, int(self._n_symbols()),
                                         _prior(self.startprob_prior), _prior(self.transmat_prior),
                                         _prior(self.emissionprob_prior))

    def _check_values(self, X: np.ndarray) -> None:
        if X.shape[1] != 1:
            raise ValueError(f"CategoricalHMM expects one symbol per row, X [n_samples, 1]; got "
                             f"shape {X.shape}")
        limit = self.n_features if self.n_features is not None else (
            self._n_symbols() if hasattr(self, "emissionprob_") else None)
        bad = bad_integers(X, np.inf if limit is None else limit)
        if bad.any():
            row = int(np.argmax(bad[:, 0]))
            allowed = "non-negative integers" + (f" below {limit}" if limit is not None else "")
            raise ValueError(f"CategoricalHMM needs symbols that are {allowed}; got {X[row, 0]} "
                             f"at row {row}")
        self.n_features_seen_ = int(X.max()) + 1

    def _check_and_set_n_features(self, X) -> None:
        """hmmlearn's check of symbols: integer dtype, non-negative, below ``n_features`` when it
        is set (ValueError otherwise); records the count seen."""
        X = np.asarray(X)
        if not np.issubdtype(X.dtype, np.integer):
            raise ValueError(f"CategoricalHMM symbols must have an integer dtype, got {X.dtype}")
        if X.size and X.min() < 0:
            raise ValueError(f"CategoricalHMM symbols must be non-negative, got {X.min()}")
        if self.n_features is not None and X.size and X.max() >= self.n_features:
            raise ValueError(f"CategoricalHMM symbols must be below n_features={self.n_features}"
                             f", got {X.max()}")
        self.n_features_seen_ = int(X.max()) + 1 if X.size else 0

    def _emission_params(self) -> dict:
        M = self._n_symbols()
        return {"probs": _check_probabilities(self.emissionprob_, "emissionprob_",
                                              (self.n_components, M))}

    def _emission_arrays(self, emission) -> dict:
        return {"emissionprob_": emission["probs"]}

    def _set_emission(self, emission) -> None:
        self.emissionprob_ = np.array(emission["probs"], dtype=np.float64)

    def _n_emission_parameters(self) -> int:
        return self.n_components * (self._n_symbols() - 1)

    def sample(self, n_samples: int = 1, random_state=None) -> tuple[np.ndarray, np.ndarray]:
        """Draw one sequence: ``(X [n_samples, 1] ints, states [n_samples])``."""
        X, states = super().sample(n_samples, random_state)
        return X.astype(np.int64), states


class PoissonHMM(_BaseHMM):
    """HMM emitting ``D`` independent Poisson counts per step (hmmlearn's ``PoissonHMM``).

    Args:
        n_components: hidden states ``K``.
        lambdas_prior, lambdas_weight: hmmlearn's Gamma prior on the rates, the update
            ``λ = (prior + Σ r x) / (weight + Σ r)`` (0, 0: maximum likelihood).
        Others as in :class:`GaussianHMM`; init_params letters ``"s"``, ``"t"``, ``"l"``.

    Fitted attributes:
        ``startprob_ [K]``, ``transmat_ [K, K]``, ``lambdas_ [K, D]``, ``converged_``, ``n_iter_``,
        ``history_``, ``fit_result_``.
    """

    _emission_letters = "l"
    _attributes = {**_BaseHMM._attributes, "l": ("lambdas_",)}
    _pieces = {**_BaseHMM._pieces, "l": (("emission", "rates"),)}
    _parameters = {"n_components": ..., "transmat_prior": ..., "lambdas_prior": 0.0,
                   "lambdas_weight": 0.0}
    _constraints = {"lambdas_prior": _check_nonnegative, "lambdas_weight": _check_nonnegative}

    def _hmm(self):
        regularisation = (None if np.all(np.asarray(self.lambdas_prior) == 0)
                          and np.all(np.asarray(self.lambdas_weight) == 0)
                          else (_prior(self.lambdas_prior), _prior(self.lambdas_weight)))
        return emissions.poisson_hmm(self.n_components, _prior(self.startprob_prior),
                                     _prior(self.transmat_prior), regularisation)

    def _check_values(self, X: np.ndarray) -> None:
        bad = bad_integers(X)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"PoissonHMM needs non-negative integer counts; got {X[row, col]} at "
                             f"row {row}, column {col}")
        if hasattr(self, "lambdas_") and X.shape[1] != np.shape(self.lambdas_)[1]:
            raise ValueError(f"X has {X.shape[1]} features, but lambdas_ has "
                             f"{np.shape(self.lambdas_)[1]}")

    def _emission_params(self) -> dict:
        rates = np.asarray(self.lambdas_, np.float64)
        if rates.ndim != 2 or rates.shape[0] != self.n_components or (rates <= 0).any():
            raise ValueError(f"lambdas_ must be positive with shape ({self.n_components}, D), got "
                             f"shape {rates.shape}")
        return {"rates": rates}

    def _emission_arrays(self, emission) -> dict:
        return {"lambdas_": emission["rates"]}

    def _set_emission(self, emission) -> None:
        self.lambdas_ = np.array(emission["rates"], dtype=np.float64)

    def _n_emission_parameters(self) -> int:
        return int(np.size(self.lambdas_))
