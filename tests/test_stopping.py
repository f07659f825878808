"""The stop tests of the EM loop (jaxem.core.stopping) on objective sequences written out here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxem.core import loop, stopping

# A Laplace restart's last 20 relative changes before the old rule stopped it (benchmarks/custom.py,
# restart 5 of 8, session 17): each below tol = 1e-7, not shrinking; 100 more iterations gained
# 1.0e-7 (relative) more.
CRAWL = [6.1e-8, 8.1e-8, 9.3e-8, 6.8e-8, 4.5e-8, 5.7e-8, 5.4e-8, 4.2e-8, 3.4e-8, 2.7e-8,
         2.8e-8, 2.3e-8, 8.5e-8, 2.3e-8, 9.5e-9, 3.6e-8, 5.6e-8, 3.8e-8, 2.8e-8, 8.0e-9]


def _gain_ahead(changes, start=-19155.0, max_iter=500):
    """``remaining_gain`` after a restart whose objective rose from ``start`` by ``changes`` (one
    per trip, relative to ``|start|``), the last being this trip's."""
    objectives = start + abs(start) * np.concatenate([[0.0], np.cumsum(changes)])
    t = len(changes)
    history = np.full((1, max_iter), np.nan)
    history[0, :t - 1] = objectives[1:t]
    s = {"history": jnp.asarray(history), "objective": jnp.asarray(objectives[t - 1:t]),
         "initial": jnp.asarray(objectives[:1])}
    return float(stopping.remaining_gain(s, jnp.asarray(objectives[t:]), jnp.asarray(t))[0]) / abs(start)


@pytest.mark.parametrize("rate", [0.3, 0.6, 0.9])
def test_a_geometric_sequence_has_its_exact_remainder_ahead(rate, x64):
    changes = 1e-3 * rate ** np.arange(40)
    exact = changes[-1] * rate / (1 - rate)
    assert _gain_ahead(changes) == pytest.approx(exact, rel=1e-6)


def test_a_crawl_below_the_tolerance_is_not_near_its_end(x64):
    """The last three ratios of the crawl (0.29, 0.74, 0.68) promise about 2e-8 more; the last
    ten trips gained as much as the ten before them, so the gain ahead is not bounded by tol."""
    changes = np.concatenate([1e-5 * 0.5 ** np.arange(20), CRAWL])
    assert all(c < 1e-7 for c in CRAWL)
    assert _gain_ahead(changes) > 1e-7
    # Once the crawl ends (changes shrink by half a trip for a block), the blocks agree again.
    ended = np.concatenate([changes, CRAWL[-1] * 0.5 ** np.arange(1, 25)])
    assert _gain_ahead(ended) == pytest.approx(ended[-1], rel=1e-6)


def test_a_held_trip_has_nothing_ahead_and_a_stalled_block_has_no_bound(x64):
    changes = np.concatenate([1e-4 * 0.5 ** np.arange(30), [0.0]])
    assert _gain_ahead(changes) == 0.0
    # A block that gained nothing, then gains that shrink: the ratios read 0.5, but no rate can
    # be read off the blocks.
    revived = np.concatenate([1e-4 * 0.5 ** np.arange(10), np.zeros(15), 8e-9 * 0.5 ** np.arange(5)])
    assert _gain_ahead(revived) == np.inf


def test_small_change_is_relative_with_a_round_off_floor(x64):
    previous = jnp.asarray([-1000.0, -1000.0, -1000.0])
    moved = jnp.asarray([-999.9999, -999.0, -1000.0])
    np.testing.assert_array_equal(stopping.small_change(moved, previous, jnp.asarray(1e-6)),
                                  [True, False, True])
    np.testing.assert_array_equal(stopping.small_change(moved, previous, jnp.asarray(0.0)),
                                  [False, False, True])


@pytest.mark.parametrize("n_masks", [1, 4, 31])
def test_masks_computed_once_come_back_unchanged(n_masks):
    """The loop's stop masks pass through one packed integer (so XLA computes them once): every
    mask comes back bit for bit, compiled or not; 32 would not fit an int32."""
    masks = tuple(jnp.asarray(np.random.default_rng(n_masks + i).random(8) < 0.5)
                  for i in range(n_masks))
    for out in (loop.computed_once(*masks), jax.jit(loop.computed_once)(*masks)):
        assert len(out) == n_masks
        for got, want in zip(out, masks, strict=True):
            assert got.dtype == jnp.bool_
            np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="at most 31"):
        loop.computed_once(*(masks[0],) * 32)
