"""The chain model contract, and the two data layouts it accepts.

An :class:`HMM` is an emission, written like a mixture's log-joint for ONE observation,
``log_emission(params, x) -> [K]`` = ``log p(x | z = k)``, plus the chain around it. Its parameters
are a dict::

    {"initial": [K], "transition": [K, K], "emission": <the emission's pytree>}

Data come as many sequences of different lengths, either hmmlearn's way (rows ``X [N, ...]`` of
all sequences one after another plus ``lengths``) or padded (``X [B, T, ...]`` plus a ``mask
[B, T]`` whose ``True`` entries come first in each row). Both become the padded form inside;
padded steps hold a copy of their sequence's first observation, so every emission stays finite.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..core.model import Model
from ..core.validation import check_data, check_positive_int

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False, init=False)
class HMM:
    """A hidden Markov model: an emission :class:`jaxem.Model` and a Markov chain around it
    (compares and hashes by identity, like :class:`jaxem.Model`, so build it once and reuse it).

    Build it from the emission's functions (``HMM(init=..., log_emission=..., n_states=...)``)
    or from an emission model (``HMM(emission=model, n_states=...)``); either way the emission is
    held as a mixture-shaped :class:`jaxem.Model` whose log-joint is the log-emission, so the
    mixture engine's gradient M-step, kernels and checks apply to it unchanged.

    Attributes:
        emission: the emission model. Its ``init(key, X) -> emission params`` sees all
            observations ``X [N, ...]`` of all sequences (padding excluded); its
            ``log_joint(emission_params, x) -> [K]`` is ``log p(x | z = k)`` for ONE observation;
            its optional ``suff_stats`` / ``maximize`` give the closed-form emission M-step and
            its ``constraints`` the gradient one. The chain starts uniform: ``initial = 1/K``,
            ``transition = 1/K`` (as hmmlearn).
        n_states: number of hidden states ``K``.
        sample_emission: optional ``(key, emission_params, state) -> x``, one draw from state
            ``state``; needed only by :func:`jaxem.hmm.sample`.
        initial_concentration: ``α > 0`` of a Dirichlet prior on ``initial`` (a number, or
            ``[K]`` values as hmmlearn's ``startprob_prior``).
        transition_concentration: ``α > 0`` of a Dirichlet prior on each row of ``transition``
            (a number or ``[K, K]``). With either not 1 the fit is MAP-EM (hmmlearn's update,
            ``p ∝ max(counts + α - 1, 0)``; probabilities that are exactly 0 stay 0) and its
            history is the log-likelihood plus the log prior.
        name: a short name for messages.
        log_prior: optional ``log_prior(emission params) -> scalar``, a prior on the emission (its
            maximize must then be the MAP update); it joins the chain's in :meth:`log_prior`.
        frozen: paths of parameters the M-step leaves as they are, e.g. ``(("initial",),
            ("emission", "means"))`` (hmmlearn's ``params`` letters left out).

    The emission's functions are also readable by their HMM names: ``init``, ``log_emission``,
    ``batch_log_emission``, ``suff_stats``, ``maximize``, ``constraints``.
    """

    emission: Model
    n_states: int
    sample_emission: Callable[[Array, Any, Array], Array] | None = None
    initial_concentration: float = 1.0
    transition_concentration: float = 1.0
    name: str = "custom_hmm"
    frozen: tuple = ()

    def __init__(self, init: Callable | None = None, log_emission: Callable | None = None,
                 n_states: int | None = None, batch_log_emission: Callable | None = None,
                 suff_stats: Callable | None = None, maximize: Callable | None = None,
                 constraints: Any = None, sample_emission: Callable | None = None,
                 initial_concentration: float = 1.0, transition_concentration: float = 1.0,
                 name: str = "custom_hmm", emission: Model | None = None, frozen: tuple = (),
                 log_prior: Callable | None = None):
        check_positive_int(n_states, "n_states")
        for field, value in (("initial_concentration", initial_concentration),
                             ("transition_concentration", transition_concentration)):
            arr = np.asarray(value, dtype=np.float64)
            if arr.ndim > 2 or not np.all(np.isfinite(arr)) or not np.all(arr > 0):
                raise ValueError(f"{field} must be a positive number (or one per probability), "
                                 f"got {value!r}")
        given = (init, log_emission, batch_log_emission, suff_stats, maximize, constraints,
                 log_prior)
        if emission is None:
            if init is None or log_emission is None:
                raise TypeError("HMM needs init and log_emission, or an emission model")
            emission = Model(init=init, log_joint=log_emission, batch_log_joint=batch_log_emission,
                             suff_stats=suff_stats, maximize=maximize, constraints=constraints,
                             n_components=n_states, name=f"{name} emission", log_prior=log_prior)
        elif any(f is not None for f in given):
            raise TypeError("give the emission either as a model or as functions, not both")
        for field, value in (("emission", emission), ("n_states", n_states),
                             ("sample_emission", sample_emission),
                             ("initial_concentration", initial_concentration),
                             ("transition_concentration", transition_concentration),
                             ("name", name), ("frozen", tuple(tuple(p) for p in frozen))):
            object.__setattr__(self, field, value)

    @property
    def has_closed_form(self) -> bool:
        """True when the emission supplies ``suff_stats`` and ``maximize``."""
        return self.suff_stats is not None

    def log_prior(self, params) -> Array:
        """Log density (up to a constant) of the Dirichlet priors on the chain, plus the
        emission's prior when it has one (scalar)."""
        total = jnp.zeros((), params["transition"].dtype)
        if self.emission.log_prior is not None:
            total = total + self.emission.log_prior(params["emission"])
        # Only nonzero probabilities are summed: a structural zero stays 0 through every M-step,
        # so it is a constraint of the model, not a point the prior can score.
        for alpha, probs in ((self.initial_concentration, params["initial"]),
                             (self.transition_concentration, params["transition"])):
            if np.any(np.asarray(alpha) != 1.0):
                logs = jnp.where(probs > 0, jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0)
                total = total + jnp.sum((jnp.asarray(alpha, probs.dtype) - 1.0) * logs)
        return total

    def uniform_chain(self, dtype) -> dict:
        """The chain's starting point: ``{"initial": [K] = 1/K, "transition": [K, K] = 1/K}``."""
        K = self.n_states
        return {"initial": jnp.full((K,), 1.0 / K, dtype),
                "transition": jnp.full((K, K), 1.0 / K, dtype)}


# The emission's functions under their HMM names (read-only), as before the emission was a field.
_EMISSION_NAMES = {"init": "init", "log_emission": "log_joint",
                   "batch_log_emission": "batch_log_joint", "suff_stats": "suff_stats",
                   "maximize": "maximize", "constraints": "constraints"}


def _emission_field(field: str) -> property:
    return property(lambda self: getattr(self.emission, field),
                    doc=f"The emission model's ``{field}``.")


for _name, _field in _EMISSION_NAMES.items():
    setattr(HMM, _name, _emission_field(_field))
HMM.emission_model = property(lambda self: self.emission,
                              doc="The emission model (its name before it was a field).")


class Sequences(NamedTuple):
    """Sequences in the padded layout (NumPy, host side).

    Attributes:
        X: ``[B, T, ...]`` observations; padded steps copy the sequence's first observation.
        mask: ``[B, T]`` bool, ``True`` on real steps (a prefix of each row).
        lengths: ``[B]`` int, real steps per sequence.
        flat: whether the caller gave hmmlearn's ``[N, ...]`` rows (so results go back that way).
    """

    X: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    flat: bool

    @property
    def rows(self) -> np.ndarray:
        """``[N, ...]`` the real observations, sequence after sequence."""
        return self.X[self.mask]

    def unpad(self, values: np.ndarray) -> np.ndarray:
        """Per-step ``values [B, T, ...]`` back to the caller's layout (``[N, ...]`` if flat)."""
        return values[self.mask] if self.flat else values


def check_lengths(lengths, n_rows: int) -> np.ndarray:
    arr = np.asarray(lengths)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"lengths must be a non-empty 1-D sequence of integers, got shape "
                         f"{arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
            raise ValueError(f"lengths must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if (arr < 1).any():
        i = int(np.argmax(arr < 1))
        raise ValueError(f"every sequence needs at least one step; lengths[{i}] = {arr[i]}")
    if arr.sum() != n_rows:
        raise ValueError(f"lengths sum to {arr.sum()} but X has {n_rows} rows")
    return arr


def as_sequences(X, lengths=None, mask=None, obs_ndim: int | None = None) -> Sequences:
    """Validate data and lay it out as padded sequences.

    Args:
        X: ``[N, ...]`` rows of one sequence or, with ``lengths``, of several one after another;
            or padded ``[B, T, ...]`` with ``mask``.
        lengths: optional ``[B]`` positive ints summing to ``N`` (hmmlearn's convention).
        mask: optional ``[B, T]`` bool, ``True`` on real steps, which must come first in each row.
            Values of ``X`` under ``False`` are ignored (they may be NaN).
        obs_ndim: dimensions of one observation (1 for vectors), when the emission fixes it.

    Returns:
        :class:`Sequences`.
    """
    if lengths is not None and mask is not None:
        raise ValueError("give either lengths (rows one after another) or mask (padded), not both")
    if mask is None:
        X = check_data(X)
        if obs_ndim is not None and X.ndim != obs_ndim + 1:
            raise ValueError(f"X must be {obs_ndim + 1}-dimensional [n_samples, ...] rows, got shape "
                             f"{X.shape}" + ("; use X.reshape(-1, 1) for one feature"
                                             if X.ndim == obs_ndim else ""))
        lengths = (np.array([X.shape[0]]) if lengths is None
                   else check_lengths(lengths, X.shape[0]))
        T = int(lengths.max())
        steps = np.arange(T)
        mask = steps[None, :] < lengths[:, None]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        # Padded steps read the sequence's first row: finite under any emission.
        index = np.where(mask, starts[:, None] + steps[None, :], starts[:, None])
        return Sequences(X[index], mask, lengths, True)
    m = np.asarray(mask)
    Xa = np.asarray(X)
    if m.dtype != bool or m.ndim != 2 or Xa.shape[:2] != m.shape:
        raise ValueError(f"mask must be a bool array [B, T] matching X's first two axes "
                         f"{Xa.shape[:2]}, got {m.dtype} {m.shape}")
    lengths = m.sum(axis=1)
    if (lengths < 1).any():
        raise ValueError(f"sequence {int(np.argmax(lengths < 1))} has no steps (its mask is all "
                         "False)")
    prefix = np.arange(m.shape[1])[None, :] < lengths[:, None]
    if (prefix != m).any():
        b = int(np.argmax((prefix != m).any(axis=1)))
        raise ValueError(f"mask row {b} has a gap: real steps must come first, then padding")
    rows = check_data(Xa[m], name="X (unmasked steps)")
    if obs_ndim is not None and rows.ndim != obs_ndim + 1:
        raise ValueError(f"padded X must be [B, T] + an observation of {obs_ndim} dimension(s), "
                         f"got shape {Xa.shape}")
    Xp = np.where(m.reshape(m.shape + (1,) * (Xa.ndim - 2)), Xa, Xa[:, :1]).astype(rows.dtype)
    return Sequences(Xp, m, lengths.astype(np.int64), False)
