"""The shared part of the hmmlearn-style HMM estimators (see :mod:`jaxem.estimators.hmm`):
hyperparameters, the chain's fitted attributes, fitting, scoring, decoding and sampling. A
subclass supplies its emission: the chain model, how its parameters map to fitted attributes,
and its data checks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ..core import precision
from ..core.progress import progress_bar
from ..core.validation import check_positive_int, default_float_dtype
from ..hmm.baum_welch import decode, fit, posterior, sample
from ..hmm.model import as_sequences
from .compat import NotFittedError
from .params import EMEstimator, _as_key


def _check_probabilities(value, name: str, shape: tuple) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)) or (arr < 0).any():
        raise ValueError(f"{name} must hold finite non-negative probabilities")
    if not np.allclose(arr.sum(axis=-1), 1.0, rtol=0, atol=1e-6):
        raise ValueError(f"{name} rows must sum to 1, got sums {arr.sum(axis=-1)}")
    return arr


class _BaseHMM(EMEstimator):
    """Shared machinery: the chain's hyperparameters, fit, and inference; families add their
    emission."""

    _emission_letters = ""
    # The attributes each init_params letter stands for; fit re-initialises those it names.
    _attributes = {"s": ("startprob_",), "t": ("transmat_",)}

    _parameters = {"n_components": ..., "startprob_prior": 1.0, "transmat_prior": 1.0,
                   "n_iter": 100, "random_state": ..., "method": "auto"}
    _constraints = {"n_iter": check_positive_int}

    # -- family hooks ----------------------------------------------------------------------------
    def _hmm(self):
        raise NotImplementedError

    def _emission_params(self) -> dict:
        raise NotImplementedError

    def _set_emission(self, emission) -> None:
        raise NotImplementedError

    def _check_values(self, X: np.ndarray) -> None:
        """Family checks on validated rows ``X [N, D]``; may record data-dependent sizes."""

    def _n_emission_parameters(self) -> int:
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------------
    def _letters(self) -> str:
        return "st" + self._emission_letters if self.init_params is None else self.init_params

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
        hmm = self._hmm()
        start = hmm.uniform_chain(default_float_dtype())
        if "s" not in letters:
            start["initial"] = self._piece("initial")
        if "t" not in letters:
            start["transition"] = self._piece("transition")
        # The emission's parameters start together: all from the model's initialiser, or all
        # from the attributes when init_params leaves out any of the emission's letters.
        if set(self._emission_letters) <= set(letters):
            rows = jnp.asarray(seqs.rows, default_float_dtype())
            start["emission"] = precision.jit(hmm.init)(jax.random.split(key, 1)[0], rows)
        else:
            start["emission"] = self._piece("emission")
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
        names = [n for letter in self._letters() for n in self._attributes.get(letter, ())]
        dropped = {n: self.__dict__.pop(n) for n in names if n in self.__dict__}
        try:
            seqs = self._sequences(X, lengths)
        except ValueError:
            self.__dict__.update(dropped)
            raise
        key = _as_key(self.random_state)
        start = self._start(seqs, key)
        with progress_bar(self.verbose, self.n_iter, desc=type(self).__name__) as bar:
            result = fit(self._hmm(), seqs.X, mask=seqs.mask, key=key,
                         n_restarts=self._restarts(start), max_iter=self.n_iter, tol=self.tol,
                         init_params=start, m_step=self.m_step, method=self.method,
                         optimizer=self.optimizer, e_step=self.e_step, progress=bar)
        return self._record_fit(result)

    def _record_fit(self, result):
        """Set the fitted attributes from a :class:`jaxem.FitResult` (in-memory or chunked
        Baum-Welch). Returns ``self``."""
        p = result.params
        self.startprob_ = np.asarray(p["initial"])
        self.transmat_ = np.asarray(p["transition"])
        self._set_emission(p["emission"])
        self._record_run(result)
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
        return float(np.sum(ll)), marginals[seqs.mask]

    def score(self, X, lengths=None) -> float:
        """Total log-likelihood ``Σ_b log p(x_b)`` over the sequences (hmmlearn's ``score``)."""
        return self.score_samples(X, lengths)[0]

    def predict_proba(self, X, lengths=None) -> np.ndarray:
        """Smoothed posterior ``p(z_t = k | x)`` of every row, ``[N, K]``."""
        return self.score_samples(X, lengths)[1]

    def decode(self, X, lengths=None) -> tuple[float, np.ndarray]:
        """Viterbi: ``(log p(X, path), path [N])``."""
        params = self._params()
        seqs = self._sequences(X, lengths)
        states, log_probs = decode(self._hmm(), params, seqs.X, mask=seqs.mask)
        return float(np.sum(log_probs)), states[seqs.mask]

    def predict(self, X, lengths=None) -> np.ndarray:
        """Most probable state path (Viterbi), ``[N]`` ints."""
        return self.decode(X, lengths)[1]

    def sample(self, n_samples: int = 1, random_state=None) -> tuple[np.ndarray, np.ndarray]:
        """Draw one sequence: ``(X [n_samples, D], states [n_samples])``."""
        n_samples = check_positive_int(n_samples, "n_samples")
        X, states = sample(self._hmm(), self._params(), _as_key(random_state), n_samples)
        return np.asarray(X, np.float64), np.asarray(states)

    def _n_parameters(self) -> int:
        K = self.n_components
        return (K - 1) + K * (K - 1) + self._n_emission_parameters()

    def aic(self, X, lengths=None) -> float:
        """Akaike information criterion, ``-2 log p(X) + 2 n_parameters`` (lower is better)."""
        return -2 * self.score(X, lengths) + 2 * self._n_parameters()

    def bic(self, X, lengths=None) -> float:
        """Bayesian information criterion, ``-2 log p(X) + n_parameters log N``."""
        return -2 * self.score(X, lengths) + self._n_parameters() * math.log(len(X))
