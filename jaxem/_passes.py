"""One pass over the data, in row blocks: the E-step fused with whatever the M-step needs.

Everything here runs inside ``jit``. The data are laid out as ``[n_blocks, block, ...]`` with a
weight per row; padded rows carry weight 0 and are copies of a real row, so any model evaluates them
to finite numbers and they add nothing.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from .model import Model

Array = jax.Array

# Responsibilities below exp(-80) are set to exactly 0: float32 subnormals make the products of
# the M-step many times slower on CPUs, and such weights are below float32 resolution of any sum.
_FLUSH_LOG = -80.0

# Rows per block when the caller does not choose: large enough that per-block overhead is
# negligible, small enough that a block's [block, K*D] temporaries stay in cache.
DEFAULT_BLOCK_ROWS = 4096


def plan_blocks(n_rows: int, block_size: int | None) -> tuple[int, int]:
    """Choose ``(n_blocks, rows_per_block)`` covering ``n_rows`` with little padding."""
    target = DEFAULT_BLOCK_ROWS if block_size is None else block_size
    n_blocks = max(1, math.ceil(n_rows / target))
    rows = math.ceil(n_rows / n_blocks)
    if n_blocks > 1:
        rows = 8 * math.ceil(rows / 8)
        n_blocks = math.ceil(n_rows / rows)
    return n_blocks, rows


def to_blocks(X: Array, weights: Array, n_blocks: int, rows: int) -> tuple[Array, Array]:
    """Pad ``X [N, ...]`` and row weights ``[N, ...]`` (per-row weights or weighted
    responsibilities) to ``n_blocks * rows`` rows and reshape both into blocks. Padded rows copy
    the first row of ``X`` and get weight 0."""
    pad = n_blocks * rows - X.shape[0]
    if pad:
        X = jnp.concatenate([X, jnp.broadcast_to(X[:1], (pad,) + X.shape[1:])])
        weights = jnp.concatenate([weights, jnp.zeros((pad,) + weights.shape[1:], weights.dtype)])
    return (X.reshape((n_blocks, rows) + X.shape[1:]),
            weights.reshape((n_blocks, rows) + weights.shape[1:]))


def _sum_over_blocks(block_fn, blocks) -> Any:
    """``Σ_b block_fn(*blocks[b])`` leaf by leaf, as a ``lax.scan`` (one block live at a time)."""
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                        jax.eval_shape(block_fn, *(b[0] for b in blocks)))

    def body(total, block):
        return jax.tree.map(jnp.add, total, block_fn(*block)), None

    total, _ = jax.lax.scan(body, zero, blocks)
    return total


def blocked_suff_stats(suff_stats, params: Any, X: Array, resp: Array) -> Any:
    """``suff_stats(params, X, resp)`` (a model's additive statistics) summed over row blocks, so
    its temporaries (``[K, block, D]`` for Gaussians) never span all ``N`` rows. For initialisers,
    which see the whole data set ``X [N, ...]`` and responsibilities ``resp [N, K]`` at once."""
    n_blocks, rows = plan_blocks(X.shape[0], None)
    return _sum_over_blocks(functools.partial(suff_stats, params),
                            to_blocks(X, resp, n_blocks, rows))


def posterior(log_joint: Array) -> tuple[Array, Array]:
    """Per-row log-likelihood ``[N]`` and responsibilities ``[N, K]`` (tiny ones flushed to 0)."""
    row_ll = jax.nn.logsumexp(log_joint, axis=-1)
    log_r = log_joint - row_ll[:, None]
    resp = jnp.where(log_r > _FLUSH_LOG, jnp.exp(jnp.maximum(log_r, _FLUSH_LOG)), 0.0)
    return row_ll, resp


def fixed_responsibility_sum(log_joint: Array, resp: Array) -> Array:
    """``Σ resp * log_joint`` where entries with ``resp == 0`` add 0 even if the log-joint is
    ``-inf`` (the summand of Q with the responsibilities held fixed)."""
    return jnp.sum(jnp.where(resp > 0, resp * log_joint, 0.0))


def weighted_sum(row_values: Array, weights: Array) -> Array:
    """``sum_n w_n v_n`` where rows of weight 0 contribute 0 even if their value is not finite."""
    return jnp.sum(jnp.where(weights > 0, weights * row_values, 0.0))


def stats_pass(model: Model, params: Any, Xb: Array, wb: Array) -> tuple[Array, Any]:
    """E-step at ``params`` fused with the sufficient statistics the closed-form M-step needs.

    Returns:
        ``(log_likelihood, stats)``: the weighted total log-likelihood (scalar) and the summed
        expected sufficient statistics (the model's pytree).
    """

    def block_stats(xb, w):
        row_ll, resp = posterior(model.log_joint_matrix(params, xb))
        stats = model.suff_stats(params, xb, resp * w[:, None])
        return weighted_sum(row_ll, w), stats

    return _sum_over_blocks(block_stats, (Xb, wb))


def responsibility_pass(model: Model, params: Any, Xb: Array, wb: Array) -> tuple[Array, Array]:
    """E-step at ``params`` keeping the weighted responsibilities ``[n_blocks, block, K]``."""

    def body(total, block):
        xb, w = block
        row_ll, resp = posterior(model.log_joint_matrix(params, xb))
        return total + weighted_sum(row_ll, w), resp * w[:, None]

    return jax.lax.scan(body, jnp.zeros((), wb.dtype), (Xb, wb))


def expected_log_joint_blocks(model: Model, params: Any, Xb: Array, Rb: Array) -> Array:
    """``Q(params) = sum_n sum_k R_nk log p(x_n, z_n=k | params)`` over blocked data.

    ``Rb [n_blocks, block, K]`` are weighted responsibilities held fixed; entries equal to 0 add 0
    even where a log-joint is ``-inf``.
    """
    return _sum_over_blocks(
        lambda xb, rb: fixed_responsibility_sum(model.log_joint_matrix(params, xb), rb), (Xb, Rb))
