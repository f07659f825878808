"""The E-step rules: soft (the posterior), hard (classification EM) and deterministic annealing.

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
