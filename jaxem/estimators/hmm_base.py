"""The shared part of the hmmlearn-style HMM estimators (see :mod:`jaxem.estimators.hmm`):
hyperparameters, the chain's fitted attributes, fitting, scoring, decoding and sampling. A
subclass supplies its emission: the chain model, how its parameters map to fitted attributes,
and its data checks."""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np

from ..core import precision
from ..core.progress import progress_bar
from ..core.validation import check_data, check_positive_int, default_float_dtype
from ..hmm.baum_welch import decode, fit, posterior, sample
from ..hmm.model import as_sequences
from . import uncertainty
from .checks import one_of
from .compat import NotFittedError
from .params import EMEstimator, _as_key, recording_interrupted


def _check_probabilities(value, name: str, shape: tuple) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)) or (arr < 0).any():
        raise ValueError(f"{name} must hold finite non-negative probabilities")
    if not np.allclose(arr.sum(axis=-1), 1.0, rtol=0, atol=1e-6):
        raise ValueError(f"{name} rows must sum to 1, got sums {arr.sum(axis=-1)}")
    return arr


class ConvergenceMonitor:
    """hmmlearn's ``monitor_``: how the last fit ended.

    Attributes:
        tol, n_iter, verbose: the fit's settings; iter: iterations run; converged: whether the
        tolerance stopped it; history: the last two log-likelihoods (a ``deque``, as hmmlearn).
    """

    def __init__(self, tol, n_iter: int, verbose, history, converged: bool):
        self.tol, self.n_iter, self.verbose = tol, n_iter, verbose
        values = [float(v) for v in np.asarray(history) if np.isfinite(v)]
        self.history = collections.deque(values[-2:], maxlen=2)
        self.iter = len(values)
        self.converged = bool(converged)

    def __repr__(self) -> str:
        return (f"ConvergenceMonitor(iter={self.iter}, converged={self.converged}, "
                f"history={list(self.history)})")


_LOG = logging.getLogger("jaxem")


def _check_implementation(value, name: str) -> None:
    if value not in ("log", "scaling"):
        raise ValueError(f"{name} must be 'log' or 'scaling' (both run jaxem's log-space "
                         f"recursions), got {value!r}")


def _check_letters(value, name: str) -> None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a string of parameter letters (e.g. 'stmc'), got "
                         f"{value!r}")


def _check_n_iter(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0 (0: initialise only), got {value!r}")


def _prior(value):
    """A prior's hyperparameter as the (memoised) model factories take it: a float, or nested
    tuples for an array (hmmlearn's per-probability or per-state priors)."""
    arr = np.asarray(value, dtype=np.float64)
    return float(arr) if arr.ndim == 0 else _tuples(arr.tolist())


def _tuples(nested):
    return tuple(_tuples(v) for v in nested) if isinstance(nested, list) else nested


class _BaseHMM(EMEstimator):
    """Shared machinery: the chain's hyperparameters, fit, and inference; families add their
    emission."""

    _emission_letters = ""
    _fitted_attribute = "transmat_"
    # The attributes each init_params letter stands for; fit re-initialises those it names.
    _attributes = {"s": ("startprob_",), "t": ("transmat_",)}
    # The engine's parameter each ``params`` letter updates (emission letters: the families').
    _pieces = {"s": (("initial",),), "t": (("transition",),)}

    _parameters = {"n_components": ..., "startprob_prior": 1.0, "transmat_prior": 1.0,
                   "algorithm": "viterbi", "n_iter": 100, "random_state": ..., "params": None,
                   "init_params": ..., "implementation": "log", "method": "auto"}
    _constraints = {"n_iter": _check_n_iter, "implementation": _check_implementation,
                    "params": _check_letters, "init_params": _check_letters,
                    "algorithm": one_of(("viterbi", "map"))}

    # -- family hooks ----------------------------------------------------------------------------
    def _hmm(self): raise NotImplementedError

    def _emission_params(self) -> dict: raise NotImplementedError

    def _set_emission(self, emission) -> None: raise NotImplementedError

    def _check_values(self, X: np.ndarray) -> None:
        """Family checks on validated rows ``X [N, D]``; may record data-dependent sizes."""

    def _n_emission_parameters(self) -> int: raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------------
    def _letters(self) -> str:
        """What to initialise: the ``init_params`` letters, and (as hmmlearn) every letter
        whose attributes were never set."""
        given = "st" + self._emission_letters if self.init_params is None else self.init_params
        unset = [letter for letter, names in self._attributes.items()
                 if not all(name in self.__dict__ for name in names)]
        return given + "".join(letter for letter in unset if letter not in given)

    def _fit_model(self):
        """The model ``fit`` runs: the family's, with the parameters whose letters ``params``
        leaves out held fixed by the M-step."""
        letters = "st" + self._emission_letters
        updated = letters if self.params is None else self.params
        frozen = tuple(path for letter in letters if letter not in updated
                       for path in self._pieces[letter])
        return _holding(self._hmm(), frozen)

    def _sequences(self, X, lengths):
        seqs = as_sequences(X, lengths, obs_ndim=1)
        self._check_values(seqs.rows)
        return seqs

    def _piece(self, name: str):
        """One part of the engine's parameters from the (possibly user-assigned) attributes."""
        K, dtype = self.n_components, default_float_dtype()
        try:
            if name == "initial":
                value = _check_probabilities(self.startprob_, "startprob_", (K,))
            elif name == "transition":
                value = _check_probabilities(self.transmat_, "transmat_", (K, K))
            else:
                value = self._emission_params()
        except AttributeError as err:
            raise NotFittedError(f"this {type(self).__name__} has no {err.name or 'parameters'} "
                                 "yet; call fit(X) or assign it") from None
        return jax.tree.map(lambda a: jnp.asarray(a, dtype), value)

    def _params(self) -> dict:
        return {name: self._piece(name) for name in ("initial", "transition", "emission")}

    def _start(self, seqs, key):
        """Starting parameters when ``init_params`` leaves some letters to the user, else None."""
        letters = self._letters()
        if set("st" + self._emission_letters) <= set(letters):
            return None
        # The emission's parameters start together: all from the model's initialiser, or all
        # from the attributes (its initialiser then need not run, nor compile) when init_params
        # leaves out any of the emission's letters.
        own = set(self._emission_letters) <= set(letters)
        start = (self._initial(seqs, key) if own else
                 dict(self._hmm().uniform_chain(default_float_dtype()), emission=self._piece("emission")))
        for letter, name in (("s", "initial"), ("t", "transition")):
            if letter not in letters:
                start[name] = self._piece(name)
        return start

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, X, lengths=None):
        """Fit by Baum-Welch with ``n_restarts`` vmapped starts; keep the best.

        Args:
            X: ``[N, D]`` rows of all sequences one after another.
            lengths: optional ``[B]`` sequence lengths summing to ``N`` (default: one sequence).

        Returns:
            ``self``.
        """
        self._check_hyperparameters()
        # What init_params names is re-initialised, so old values must not constrain the data
        # check (a refit may change D); they come back if the data are refused.
        letters = self._letters()
        named = {n: letter for letter in letters for n in self._attributes.get(letter, ())}
        dropped = {n: self.__dict__.pop(n) for n in named if n in self.__dict__}
        try:
            seqs = self._sequences(X, lengths)
        except ValueError:
            self.__dict__.update(dropped)
            raise
        for name in dropped:  # logged, as hmmlearn does
            _LOG.warning("Even though the %r attribute is set, it will be overwritten during "
                         "initialization because 'init_params' contains %r", name.strip("_") + "_",
                         named[name])
        key = _as_key(self.random_state)
        start = self._start(seqs, key)
        if self.n_iter == 0:  # hmmlearn's n_iter=0: initialise, do not iterate
            return self._record_start(start if start is not None else self._initial(seqs, key))
        with (progress_bar(self.verbose, self.n_iter, desc=type(self).__name__) as bar,
              recording_interrupted(self._record_fit)):
            result = fit(self._fit_model(), seqs.X, mask=seqs.mask, key=key,
                         n_restarts=self._restarts(start), max_iter=self.n_iter, tol=self.tol,
                         init_params=start, m_step=self.m_step, method=self.method,
                         optimizer=self.optimizer, e_step=self.e_step, progress=bar,
                         checkpoint=self.checkpoint, resume=self.resume,
                         accelerate=self.accelerate, dtype=None)  # the estimator's scope
        return self._record_fit(result)

    def _init(self, X, lengths=None) -> None:
        """hmmlearn's initialisation hook: set what ``init_params`` names from ``X`` (the others
        from the attributes), as ``fit`` does before iterating."""
        if lengths is not None and np.ndim(lengths) == 0:  # hmmlearn's scripts pass len(X)
            lengths = [int(lengths)]
        seqs = self._sequences(X, lengths)
        key = _as_key(self.random_state)
        start = self._start(seqs, key)
        self._set_chain(start if start is not None else self._initial(seqs, key))
        if self._n_parameters() > seqs.rows.size:
            _LOG.warning("Fitting a model with %d free scalar parameters with only %d data "
                         "points will result in a degenerate solution.", self._n_parameters(),
                         seqs.rows.size)

    def _check_and_set_n_features(self, X) -> None:
        """hmmlearn's data check: a ValueError for values this family cannot take."""
        self._check_values(check_data(X, ndim=2))

    def _check(self) -> None:
        """hmmlearn's check of the assigned attributes: a ValueError naming a malformed one."""
        self._params()

    def _initial(self, seqs, key) -> dict:
        """The parameters every letter initialises (uniform chain, the emission's initialiser)."""
        start = self._hmm().uniform_chain(default_float_dtype())
        rows = jnp.asarray(seqs.rows, default_float_dtype())
        start["emission"] = precision.jit_once(self._hmm().init)(jax.random.split(key, 1)[0], rows)
        return start

    def _record_start(self, params):
        """The fitted attributes of ``n_iter=0``: the starting parameters, no iteration."""
        self._set_chain(params)
        self.converged_, self.n_iter_ = False, 0
        self.history_ = np.zeros(0)
        self.monitor_ = ConvergenceMonitor(self.tol, 0, self.verbose, [], False)
        return self

    def _set_chain(self, params) -> None:
        # Writable NumPy copies, so that users may edit them in place (as in hmmlearn).
        self.startprob_ = np.array(params["initial"], dtype=np.float64)
        self.transmat_ = np.array(params["transition"], dtype=np.float64)
        self._set_emission(jax.tree.map(lambda a: np.array(a, dtype=np.float64),
                                        params["emission"]))

    def _record_fit(self, result):
        """Set the fitted attributes from a :class:`jaxem.FitResult` (in-memory or chunked
        Baum-Welch). Returns ``self``."""
        self._set_chain(result.params)
        self._record_run(result)
        self.monitor_ = ConvergenceMonitor(self.tol, self.n_iter, self.verbose, self.history_,
                                           self.converged_)
        return self

    def fit_chunked(self, source, lengths=None, *, chunk_size=None, init_size: int = 65536,
                    devices=None):
        """Baum-Welch reading whole sequences in chunks, for data larger than memory.

        Args:
            source: ``[N, D]`` rows of all sequences one after another: an array, ``np.memmap``
                or ``.npy`` path.
            lengths: optional ``[B]`` sequence lengths summing to ``N``.
            chunk_size: sequences per chunk; init_size: rows the initialiser sees;
            devices: ``None``, ``"all"`` or a list of devices.

        Returns:
            ``self`` (see :func:`jaxem.estimators.chunked.fit_hmm`).
        """
        from .chunked import fit_hmm

        return fit_hmm(self, source, lengths, chunk_size=chunk_size, init_size=init_size,
                       devices=devices)

    # -- inference -------------------------------------------------------------------------------
    def score_samples(self, X, lengths=None) -> tuple[float, np.ndarray]:
        """``(log p(X), posteriors [N, K])``: total log-likelihood and smoothed state marginals."""
        params = self._params()
        seqs = self._sequences(X, lengths)
        marginals, ll = posterior(self._hmm(), params, seqs.X, mask=seqs.mask, method=self.method)
        # Renormalised in float64: rows sum to 1 to double precision even from a float32 pass.
        marginals = np.asarray(marginals[seqs.mask], np.float64)
        return float(np.sum(ll)), marginals / marginals.sum(axis=1, keepdims=True)

    def score(self, X, lengths=None) -> float:
        """Total log-likelihood ``Σ_b log p(x_b)`` over the sequences (hmmlearn's ``score``)."""
        return self.score_samples(X, lengths)[0]

    def predict_proba(self, X, lengths=None) -> np.ndarray:
        """Smoothed posterior ``p(z_t = k | x)`` of every row, ``[N, K]``."""
        return self.score_samples(X, lengths)[1]

    def decode(self, X, lengths=None, algorithm=None) -> tuple[float, np.ndarray]:
        """The most probable states: ``(log probability, states [N])``.

        ``algorithm`` (default: the ``algorithm`` hyperparameter): ``"viterbi"``, the most
        probable path, with ``log p(X, path)``; or ``"map"``, each step's most probable state
        under the smoothed posterior, with ``log p(X)`` (as hmmlearn).
        """
        algorithm = self.algorithm if algorithm is None else algorithm
        one_of(("viterbi", "map"))(algorithm, "algorithm")
        if algorithm == "map":
            log_prob, marginals = self.score_samples(X, lengths)
            return log_prob, np.argmax(marginals, axis=1)
        params = self._params()
        seqs = self._sequences(X, lengths)
        states, log_probs = decode(self._hmm(), params, seqs.X, mask=seqs.mask)
        return float(np.sum(log_probs)), states[seqs.mask]

    def predict(self, X, lengths=None) -> np.ndarray:
        """Most probable states (``algorithm``: Viterbi path by default), ``[N]`` ints."""
        return self.decode(X, lengths)[1]

    def _fitted_arrays(self, params) -> dict:
        """The fitted attributes as a traceable function of the engine's parameters."""
        return {"startprob_": params["initial"], "transmat_": params["transition"],
                **self._emission_arrays(params["emission"])}

    def _emission_arrays(self, emission) -> dict:
        raise NotImplementedError

    def standard_errors(self, X, lengths=None) -> dict:
        """Standard errors of the fitted attributes (``startprob_``, ``transmat_`` and the
        emission's) from the observed information on the sequences ``X`` split by ``lengths``.

        Returns:
            ``{attribute name: array}`` (see :func:`jaxem.standard_errors`).
        """
        return uncertainty.hmm_standard_errors(self, X, lengths)

    def confidence_intervals(self, X, lengths=None, level: float = 0.95) -> dict:
        """Wald intervals ``{attribute name: (lower, upper)}`` at ``level``."""
        return uncertainty.intervals(self, self.standard_errors(X, lengths), level)

    def sample(self, n_samples: int = 1, random_state=None,
               currstate=None) -> tuple[np.ndarray, np.ndarray]:
        """Draw one sequence: ``(X [n_samples, D], states [n_samples])``.

        Args:
            n_samples: steps to draw.
            random_state: an int, ``np.random.RandomState``/``Generator`` or JAX key (default:
                the ``random_state`` hyperparameter, so a seeded model draws the same sequence).
            currstate: optional state the sequence starts in (instead of ``startprob_``).
        """
        n_samples = check_positive_int(n_samples, "n_samples")
        params = self._params()
        if currstate is not None:
            if not (isinstance(currstate, (int, np.integer)) and 0 <= currstate < self.n_components):
                raise ValueError(f"currstate must be a state in [0, {self.n_components}), got "
                                 f"{currstate!r}")
            params["initial"] = jax.nn.one_hot(int(currstate), self.n_components,
                                               dtype=params["initial"].dtype)
        key = _as_key(self.random_state if random_state is None else random_state)
        X, states = sample(self._hmm(), params, key, n_samples)
        return np.asarray(X, np.float64), np.asarray(states)

    def get_stationary_distribution(self) -> np.ndarray:
        """The stationary distribution ``π [K]`` of ``transmat_`` (``π A = π``, summing to 1)."""
        A = np.asarray(self._piece("transition"), np.float64)
        values, vectors = np.linalg.eig(A.T)
        pi = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
        return pi / pi.sum()

    def _n_parameters(self) -> int:
        K = self.n_components
        return (K - 1) + K * (K - 1) + self._n_emission_parameters()

    def aic(self, X, lengths=None) -> float:
        """Akaike information criterion, ``-2 log p(X) + 2 n_parameters`` (lower is better)."""
        return -2 * self.score(X, lengths) + 2 * self._n_parameters()

    def bic(self, X, lengths=None) -> float:
        """Bayesian information criterion, ``-2 log p(X) + n_parameters log N``."""
        return -2 * self.score(X, lengths) + self._n_parameters() * math.log(len(X))


@functools.cache
def _holding(hmm, frozen: tuple):
    """``hmm`` with the parameters at ``frozen`` held by the M-step (memoised: refits reuse)."""
    return hmm if not frozen else dataclasses.replace(hmm, frozen=frozen)

