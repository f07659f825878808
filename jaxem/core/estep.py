"""The E-step over a block of rows, and its rules: soft (the posterior), hard (classification EM)
and deterministic annealing.

Soft EM uses the exact posterior ``r_nk = softmax_k ℓ_nk`` and climbs the log-likelihood. Hard EM
assigns each row to its most probable component (``r_nk`` one-hot at ``argmax_k ℓ_nk``) and climbs
the classification log-likelihood ``Σ_n max_k ℓ_nk``; k-means is hard EM on an isotropic,
equal-weight Gaussian mixture. Deterministic annealing uses ``softmax_k(ℓ_nk / T)`` with the
temperature ``T`` lowered to 1 over the first iterations: at high ``T`` every row is shared by all
components, which smooths away poor local optima before plain EM takes over.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Annealing:
    """A geometric cooling schedule ``T_t = start ** (1 - t / n_iters)`` for ``t < n_iters``, then 1.

    Start warm, not hot: with covariances that are learned, the components of a Gaussian mixture
    merge into one at temperatures well above 1 and, being identical, never split again (the
    merged state is a fixed point of EM at every ``T >= 1``). A start of 1.5 smooths the first
    iterations without merging on the data sets we tried, but annealing can also absorb a small
    component into a large neighbour; compare against plain restarts on your data.

    Attributes:
        start: the first temperature (``>= 1``).
        n_iters: EM iterations until the temperature reaches 1; convergence is only tested after.
    """

    start: float = 1.5
    n_iters: int = 20

    def __post_init__(self):
        if not (isinstance(self.start, (int, float)) and self.start >= 1.0):
            raise ValueError(f"Annealing start temperature must be a number >= 1, got {self.start!r}")
        if not (isinstance(self.n_iters, int) and self.n_iters >= 1):
            raise ValueError(f"Annealing n_iters must be a positive integer, got {self.n_iters!r}")

    def temperature(self, iteration: Array) -> Array:
        """Temperature for the E-step that follows ``iteration`` M-steps (traced scalar)."""
        fraction = jnp.clip(1.0 - iteration / self.n_iters, 0.0, 1.0)
        return jnp.asarray(self.start, jnp.float32) ** fraction


@dataclasses.dataclass(frozen=True)
class EStepRule:
    """The E-step a fit uses (hashable: a static argument of the compiled fit)."""

    hard: bool = False
    annealing: Annealing | None = None

    def temperature(self, iteration: Array, dtype) -> Array | None:
        """``None`` (T = 1) or the annealing temperature for the E-step after ``iteration``."""
        if self.annealing is None:
            return None
        return self.annealing.temperature(iteration).astype(dtype)

    def may_stop(self, iteration: Array) -> Array:
        """Whether convergence may be declared after ``iteration`` M-steps (not while cooling)."""
        if self.annealing is None:
            return jnp.ones((), bool)
        return iteration >= self.annealing.n_iters


E_STEPS = ("soft", "hard", "anneal")


def resolve_e_step(e_step) -> EStepRule:
    """Turn the user's ``e_step`` (``"soft"``, ``"hard"``, ``"anneal"`` or an :class:`Annealing`)
    into an :class:`EStepRule`, with a clear error for anything else."""
    if isinstance(e_step, Annealing):
        return EStepRule(annealing=e_step)
    if e_step == "soft":
        return EStepRule()
    if e_step == "hard":
        return EStepRule(hard=True)
    if e_step == "anneal":
        return EStepRule(annealing=Annealing())
    raise ValueError(f"e_step must be one of {E_STEPS} or a jaxem.Annealing schedule, got {e_step!r}")


# Responsibilities below exp(-80) are set to exactly 0: float32 subnormals make the products of
# the M-step many times slower on CPUs, and such weights are below float32 resolution of any sum.
_FLUSH_LOG = -80.0


# How many components' comparisons the hard E-step unrolls into one straight-line kernel.
_UNROLL_COMPONENTS = 32


def mask_labels(log_joint: Array, labels: Array | None) -> Array:
    """Restrict rows with a known component to it: ``labels [N]`` ints, ``-1`` for unknown.

    The other log-joints of a labelled row become ``-inf``, so its responsibility is the one-hot of
    its label and its log-likelihood term is ``log p(x, z=label)`` (semi-supervised EM).
    """
    if labels is None:
        return log_joint
    components = jnp.arange(log_joint.shape[-1])
    keep = (labels[:, None] < 0) | (labels[:, None] == components)
    return jnp.where(keep, log_joint, -jnp.inf)


def best_of_rows(table: Array, unroll: int = _UNROLL_COMPONENTS) -> tuple[Array, Array]:
    """``(max_k table[k, n] [N], first k attaining it [N])`` for ``table [K, N]``.

    Computed as a running comparison over the ``K`` rows, each an elementwise step over all
    ``N`` entries: on CPUs XLA's reductions along a short minor axis (and its ``argmax``, a
    reduction over value-index pairs) cost several times more. A column whose first entry is NaN
    gets index 0. ``unroll`` comparisons run as one straight-line kernel; a caller whose result
    feeds several fusions rolls them (XLA copies a straight-line chain into each consumer).
    """

    def compare(k, state):
        best, index = state
        better = table[k] > best
        return jnp.where(better, table[k], best), jnp.where(better, k, index)

    # full_like keeps the device-axis variance of the data inside shard_map (see _carry_zeros).
    start = (table[0], jax.lax.full_like(table[0], 0, jnp.int32))
    return jax.lax.fori_loop(1, table.shape[0], compare, start,
                             unroll=min(table.shape[0], unroll))


def hard_assignment(log_joint: Array) -> tuple[Array, Array]:
    """``(max_k ℓ_nk [N], first k attaining it [N])`` for ``log_joint [N, K]`` (see
    :func:`best_of_rows`; a row whose first log-joint is NaN gets component 0 and a NaN
    objective, failing the fit)."""
    return best_of_rows(log_joint.T)


def posterior(log_joint: Array, hard: bool = False, temperature: Array | None = None,
              exact: bool = False) -> tuple[Array, Array]:
    """Per-row objective ``[N]`` and responsibilities ``[N, K]`` (tiny ones flushed to 0).

    Args:
        log_joint: ``[N, K]`` log-joints (already masked by labels).
        hard: classification EM: the responsibility is the one-hot of the most probable component
            and the row's objective is its log-joint ``max_k ℓ_nk``.
        temperature: deterministic annealing: responsibilities ``softmax(ℓ / T)``; the row's
            objective stays the log-likelihood ``logsumexp_k ℓ_nk``. ``None`` means ``T = 1``.
        exact: responsibilities for the user (``predict_proba``): nothing flushed, and each row
            renormalised so it sums to 1 to float round-off (``exp(ℓ - logsumexp ℓ)`` sums to 1
            only to about ``eps * |ℓ|``, 1e-5 in float32 when log-joints are in the hundreds).

    This is the E-step over a block of independent rows; every pass and every prediction calls it.
    """
    if hard:
        best, component = hard_assignment(log_joint)
        return best, jax.nn.one_hot(component, log_joint.shape[-1], dtype=log_joint.dtype)
    row_ll = jax.nn.logsumexp(log_joint, axis=-1)
    if temperature is None:
        log_r = log_joint - row_ll[:, None]
    else:
        scaled = log_joint / temperature
        log_r = scaled - jax.nn.logsumexp(scaled, axis=-1, keepdims=True)
    if exact:
        resp = jnp.exp(log_r)
        return row_ll, resp / jnp.sum(resp, axis=-1, keepdims=True)
    resp = jnp.where(log_r > _FLUSH_LOG, jnp.exp(jnp.maximum(log_r, _FLUSH_LOG)), 0.0)
    return row_ll, resp


def fixed_responsibility_sum(log_joint: Array, resp: Array) -> Array:
    """``Σ resp * log_joint`` where entries with ``resp == 0`` add 0 even if the log-joint is
    ``-inf`` (the summand of Q with the responsibilities held fixed)."""
    return jnp.sum(jnp.where(resp > 0, resp * log_joint, 0.0))


def weighted_sum(row_values: Array, weights: Array) -> Array:
    """``sum_n w_n v_n`` where rows of weight 0 contribute 0 even if their value is not finite."""
    return jnp.sum(jnp.where(weights > 0, weights * row_values, 0.0))
