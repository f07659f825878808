"""Diagonal-precision distances and moments as a few matrix products, accurate in float32.

Expanding ``Σ_d p_kd (x_d - μ_kd)²`` into ``x²·p - 2 x·(μp) + μ²·p`` turns the E-step into matrix
products but loses ``eps · (|x| / σ)²`` to cancellation, which for clusters far apart (in units of
their spread) ruins float32. Taking every row about its *nearest* centre first, ``x' = x - μ_j``,
keeps the products: with ``Δ_kj = μ_k - μ_j``,

    Σ_d p_kd (x_d - μ_kd)² = x'²·p_k - 2 x'·(p_k Δ_kj) + Σ_d p_kd Δ_kjd²

and ``x'·(p_k Δ_kj) = x'·(p_k μ_k) - (x' μ_j)·p_k``: three row-by-``[D, K]`` products on ``[x'², x' μ_j,
x']`` plus a ``[K, K]`` table. The error is now ``eps · |x'| · |Δ| / σ²``, small for every component
that matters to the row (those near it). The M-step's moments about each component's previous
mean follow from the same shifted rows, as products ``Rᵀ x'``, ``Rᵀ x'²``, ``Rᵀ onehot(j)`` and two
more over the rows whose nearest centre is not the component's.
Everything is also taken about the centres' mean, so data far from the origin lose nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..core.estep import best_of_rows

Array = jax.Array


class Shifted(NamedTuple):
    """Rows taken about their nearest centre (in coordinates centred on the centres' mean)."""

    nearest: Array   # [B] index j of each row's nearest centre
    rows: Array      # [B, D] x' = x - μ_j
    centre: Array    # [B, D] μ_j - c, the nearest centre about the centres' mean c


def shift_to_nearest(X: Array, means: Array) -> Shifted:
    """Pick each row's nearest centre (Euclidean) and shift the row to it.

    Args:
        X: ``[B, D]`` rows.
        means: ``[K, D]`` centres.

    Any nearby centre keeps the products accurate (their error is ``eps·|x'|·|Δ|/σ²`` with
    ``x' = x - μ_j``), and the Euclidean-nearest one makes ``|x'|`` smallest; its expanded
    distances cost one ``[B, D] x [D, K]`` product, half the precision-weighted ones.
    """
    c = jnp.mean(means, axis=0)
    Mc = means - c
    expanded = jnp.sum(Mc * Mc, axis=1) - 2.0 * ((X - c) @ Mc.T)
    # Four comparisons per loop step: the index feeds five fusions (two picks, the own-component
    # mask, the moments' one-hot and its complement), and XLA copied a fully unrolled chain of K
    # comparisons into each of them; a loop computes it once, which makes the pass clearly
    # faster.
    nearest = best_of_rows(-expanded.T, unroll=4)[1]
    # x - μ_j in one subtraction: going through x - c would round x to the scale of c, which
    # is far from the data when some centre sits on a distant outlier. μ_j - c is then the
    # same subtraction as Mc's, so the one pick serves both.
    picked = _pick(means, nearest)
    return Shifted(nearest, X - picked, picked - c)


def _pick(table: Array, index: Array) -> Array:
    """``table[index]`` for ``table [K, ...]`` and ``index [B]``, as a one-hot product: exact for
    finite tables, and on CPUs faster than XLA's gather (it speeds up the diagonal pass). HIGHEST
    precision, because a GPU's default float32 product rounds its inputs to TF32."""
    onehot = jax.nn.one_hot(index, table.shape[0], dtype=table.dtype)
    picked = jnp.matmul(onehot, table.reshape(table.shape[0], -1),
                        precision=jax.lax.Precision.HIGHEST)
    return picked.reshape(index.shape + table.shape[1:])


def _pair_offsets(means: Array) -> Array:
    """``[K, K, D]`` ``Δ_kj = μ_k - μ_j``."""
    return means[:, None, :] - means[None, :, :]


def squared_distances(shifted: Shifted, means: Array, precision: Array) -> Array:
    """``[B, K]`` ``Σ_d p_kd (x_d - μ_kd)²`` from rows shifted by :func:`shift_to_nearest`."""
    Mc = means - jnp.mean(means, axis=0)
    xs, mj = shifted.rows, shifted.centre
    table = jnp.einsum("kd,kjd->jk", precision, jnp.square(_pair_offsets(means)))
    # x'²·p_k for every k; at the row's own (nearest) centre j it is the whole distance, exact,
    # without the two large cross terms that cancel only up to eps·|x'|·|μ|.
    squares = (xs * xs) @ precision.T
    cross = (jnp.concatenate([xs * mj, xs], axis=1)
             @ jnp.concatenate([2.0 * precision.T, -2.0 * (Mc * precision).T], axis=0))
    is_own = shifted.nearest[:, None] == jnp.arange(means.shape[0])
    return jnp.where(is_own, squares,
                     jnp.maximum(squares + cross + _pick(table, shifted.nearest), 0.0))


def moments(shifted: Shifted, means: Array, resp: Array) -> tuple[Array, Array, Array]:
    """Moments of the rows about each component's mean ``μ_k`` under ``resp [B, K]``.

    Returns:
        ``(total [K], first [K, D], second [K, D])``: ``Σ_n r_nk``, ``Σ_n r_nk (x_n - μ_k)`` and
        ``Σ_n r_nk (x_n - μ_k)²``.
    """
    k = means.shape[0]
    Mc = means - jnp.mean(means, axis=0)
    xs, mj = shifted.rows, shifted.centre
    onehot = jax.nn.one_hot(shifted.nearest, k, dtype=xs.dtype)
    # One product per operand, on arrays the E-step made already: concatenating the operands
    # into one [B, 2D + K] product copied them, and the copies cost more than the one product
    # saved.
    r_x, r_xx, counts = resp.T @ xs, resp.T @ (xs * xs), resp.T @ onehot
    # Σ_n r_nk x'_n Δ_{k j(n)} = μ_k Σ r x' - Σ r x' μ_j over rows whose nearest centre j is not
    # k (for j = k, Δ = 0): leaving those rows out keeps their large, cancelling terms out.
    off = (resp * (1.0 - onehot)).T
    cross = Mc * (off @ xs) - off @ (xs * mj)
    delta = _pair_offsets(means)                       # μ_k - μ_j
    first = r_x - jnp.einsum("kj,kjd->kd", counts, delta)
    second = r_xx - 2.0 * cross + jnp.einsum("kj,kjd->kd", counts, jnp.square(delta))
    # The total from the counts' rows, rather than one more reduction over resp's rows.
    return jnp.sum(counts, axis=1), first, second
