"""When a restart's objective has stopped rising: the tests :func:`jaxem.core.loop.advance` applies
after every iteration, kept apart from the loop's bookkeeping.

:func:`small_change` is plain EM's relative-change test; :func:`remaining_gain` is the gain a
linearly converging objective has still to come, which a gradient M-step's restart must also
have within the tolerance before it counts as converged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def small_change(objective: Array, previous: Array, tol: Array) -> Array:
    """``[R]`` whether the objective moved by at most ``tol`` relative to ``previous``; a change
    within float round-off (4 eps) always counts, so ``tol=0`` means "until nothing changes"."""
    rel_tol = jnp.maximum(tol, 4 * jnp.finfo(objective.dtype).eps)
    return jnp.abs(objective - previous) <= rel_tol * jnp.abs(previous)


# Trips per block of :func:`remaining_gain`'s block estimate (measured: benchmarks/README.md,
# "Session 18"; blocks of 3 trips let one accepted extrapolation outweigh a block).
BLOCK_TRIPS = 10


def remaining_gain(s: dict, objective: Array, iteration: Array) -> Array:
    """``[R]`` the objective's gain still to come if it keeps converging at the slowest rate its
    recent changes show (``inf`` when they do not shrink; 0 when the last one was no gain).
    Two estimates, the larger kept: one from the slowest of the last three ratios of consecutive
    changes (a sequence that shrinks irregularly, as EM steps between extrapolations do, shows a
    small ratio by chance), and one from the gain of the last :data:`BLOCK_TRIPS` trips against
    the block before it. The blocks see a crawl that the ratios miss: a Laplace location that
    steps from data point to data point gains about the same amount each trip, each below the
    tolerance, until it reaches its weighted median; stopped there, 100 more iterations gained
    more than the tolerance."""
    def value(lag):   # the objective ``lag`` iterations before this one, or the initial one
        return jnp.where(iteration >= lag + 1, s["history"][:, jnp.maximum(iteration - lag - 1, 0)],
                         s["initial"])

    def ratio(new, old):
        return jnp.where(old > 0, new / jnp.where(old > 0, old, 1.0), jnp.inf)

    def ahead(gain, rate):   # gain * (rate + rate^2 + ...)
        return jnp.where(rate < 1, gain * rate / jnp.where(rate < 1, 1 - rate, 1.0), jnp.inf)

    change = objective - s["objective"]
    previous, earlier, oldest = s["objective"] - value(2), value(2) - value(3), value(3) - value(4)
    rate = jnp.maximum(ratio(change, previous), jnp.where(iteration >= 3, ratio(previous, earlier), 0.0))
    rate = jnp.maximum(rate, jnp.where(iteration >= 4, ratio(earlier, oldest), 0.0))
    block_start = value(BLOCK_TRIPS)
    recent = objective - block_start
    by_blocks = ahead(recent, ratio(recent, block_start - value(2 * BLOCK_TRIPS)))
    return jnp.where(change <= 0, 0.0, jnp.maximum(ahead(change, rate), by_blocks))
