"""One pass over the data, in row blocks: the E-step fused with whatever the M-step needs.

Everything here runs inside ``jit``. The data are laid out as ``[n_blocks, block, ...]`` with a
weight per row; padded rows carry weight 0 and are copies of a real row, so any model evaluates them
to finite numbers and they add nothing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .model import Model

Array = jax.Array

# Responsibilities below exp(-80) are set to exactly 0: float32 subnormals make the products of
# the M-step many times slower on CPUs, and such weights are below float32 resolution of any sum.
_FLUSH_LOG = -80.0

# How many components' comparisons the hard E-step unrolls into one straight-line kernel.
_UNROLL_COMPONENTS = 32

# Rows per block when the caller does not choose. Each block costs XLA:CPU a fixed ~0.1 ms of
# dispatch (2048-row blocks made a 1M-row k-means pass 1.8x slower than 4096), and 8192 rows
# still beat 4096 with a full GMM's [block, K*D] temporaries (K=D=16: 0.030 vs 0.038 s/iter)
# and k-means (0.025 vs 0.029); the diagonal and Bernoulli passes measured level.
DEFAULT_BLOCK_ROWS = 8192
# Rows times vmapped restarts per block when several restarts share a pass: their temporaries are
# R times wider, and for 8 restarts 512 rows beat 256, 1024 and 2048 (full GMM, K=D=16).
RESTART_BLOCK_WORK = 4096
# The fewest rows per block the engine picks by itself (for many vmapped restarts): below this the
# per-block overhead of the scan starts to show.
MIN_BLOCK_ROWS = 256
# Platforms whose compiler runs one restart's pass at least as fast per restart as a vmapped
# batch's, so a batch of restarts passes over the data one restart after another (``lax.map``,
# inside the same program; the loop and the M-steps stay vmapped). On XLA:CPU the batched
# products of 8 restarts (128 weighted Gram matrices per block for a full GMM with K=16) ran
# 1.48x slower per restart than one restart's pass, and the same pass mapped 1.02x; one restart's
# pass there already runs near the cores' peak, so a batch has nothing to gain. Accelerators
# need the batch to fill the device.
SEQUENTIAL_RESTART_PLATFORMS = ("cpu",)


class RestartPlan(NamedTuple):
    """How a batch of restarts passes over the data: ``in_sequence`` (one restart after another)
    or vmapped, and the rows per block."""

    in_sequence: bool
    block_size: int


def plan_restarts(n_restarts: int, platform: str, block_size: int | None = None) -> RestartPlan:
    """The pass plan for ``n_restarts`` restarts on ``platform`` (``"cpu"``, ``"gpu"``, ...).

    ``block_size`` ``None`` picks one: :data:`DEFAULT_BLOCK_ROWS` for one restart or a sequence;
    for vmapped restarts about ``RESTART_BLOCK_WORK / R`` rows (at least :data:`MIN_BLOCK_ROWS`),
    so the batch's temporaries stay as large as one restart's.
    """
    in_sequence = n_restarts > 1 and platform in SEQUENTIAL_RESTART_PLATFORMS
    if block_size is None:
        block_size = (DEFAULT_BLOCK_ROWS if n_restarts == 1 or in_sequence else
                      max(MIN_BLOCK_ROWS, RESTART_BLOCK_WORK // n_restarts))
    return RestartPlan(in_sequence, block_size)


def plan_blocks(n_rows: int, block_size: int | None, n_shards: int = 1) -> tuple[int, int]:
    """Choose ``(n_blocks, rows_per_block)`` covering ``n_rows`` with little padding; ``n_blocks``
    is a multiple of ``n_shards`` (the devices the blocks are split over)."""
    target = DEFAULT_BLOCK_ROWS if block_size is None else block_size
    n_blocks = max(1, math.ceil(n_rows / target))
    rows = math.ceil(n_rows / n_blocks)
    if n_blocks > 1:
        rows = 8 * math.ceil(rows / 8)
        n_blocks = math.ceil(n_rows / rows)
    if n_blocks % n_shards:
        n_blocks = n_shards * math.ceil(n_blocks / n_shards)
        rows = math.ceil(n_rows / n_blocks)
    if n_blocks * rows != n_rows:
        # Blocks up to a fifth smaller that tile the rows exactly spare the program a padded copy
        # of the whole data set (the reshape into blocks is then free).
        for exact in range(n_blocks, n_blocks + min(n_blocks // 4, 10_000) + 1):
            if n_rows % exact == 0 and (n_rows // exact) % 8 == 0 and exact % n_shards == 0:
                return exact, n_rows // exact
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


def map_row_blocks(fn: Callable, X: Array, block_size: int | None = None) -> Any:
    """``fn(X)`` for a row-wise ``fn`` (``[n, ...]`` rows to a pytree of ``[n, ...]`` arrays),
    computed one block of rows at a time, so that its temporaries (``[K, block]`` scores, say)
    stay in cache instead of spanning all ``N`` rows of ``X [N, ...]``."""
    n_rows = X.shape[0]
    n_blocks, rows = plan_blocks(n_rows, block_size)
    if n_blocks == 1:
        return fn(X)
    Xb, _ = to_blocks(X, jnp.zeros((n_rows,), X.dtype), n_blocks, rows)
    out = jax.lax.map(fn, Xb)
    return jax.tree.map(lambda a: a.reshape((n_blocks * rows,) + a.shape[2:])[:n_rows], out)


class Rows(NamedTuple):
    """Blocked data: ``X [n_blocks, block, ...]``, row ``weights [n_blocks, block]`` (0 on padding),
    optional partial ``labels [n_blocks, block]`` (-1 unknown, ``None`` when there are none) and
    optional :func:`row_hashes` ``[n_blocks, block]`` (hard EM's fingerprint needs them every
    pass; computed once with the blocks, XLA drops them from programs that do not use them)."""

    X: Array
    weights: Array
    labels: Array | None = None
    hashes: Array | None = None


def block_rows(X: Array, weights: Array, labels: Array | None, n_blocks: int, rows: int) -> Rows:
    """Lay ``X [N, ...]``, ``weights [N]`` and ``labels [N]`` (or ``None``) out in row blocks."""
    Xb, wb = to_blocks(X, weights, n_blocks, rows)
    if labels is not None:
        labels = to_blocks(X, labels, n_blocks, rows)[1]
    # Hashed as one [n_blocks * rows] array: vmapped, row_hashes' cond would run both branches.
    return Rows(Xb, wb, labels, row_hashes(Xb.reshape((-1,) + Xb.shape[2:])).reshape(Xb.shape[:2]))


def _carry_zeros(shapes, like: Array) -> Any:
    """Zeros of ``shapes`` (a pytree of shape/dtype structs) to start a sum over the blocks of
    ``like``. Inside ``shard_map`` (see :mod:`jaxem.distributed`) each device sums its own blocks,
    so the zeros must vary over the same device axes as the data do."""
    # full_like takes only the type of ``like`` (its device-axis variance), never its values.
    return jax.tree.map(lambda s: jax.lax.full_like(like, 0, s.dtype, s.shape), shapes)


def _sum_over_blocks(block_fn, blocks) -> Any:
    """``Σ_b block_fn(*blocks[b])`` leaf by leaf, as a ``lax.scan`` (one block live at a time)."""
    blocks = tuple(blocks)
    zero = _carry_zeros(jax.eval_shape(block_fn, *jax.tree.map(lambda b: b[0], blocks)),
                        blocks[0])

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


class HardStats(NamedTuple):
    """What a hard-EM pass adds up: the model's statistics and a fingerprint of the assignment.

    ``fingerprint [K]`` (uint32) holds, for each component ``k``, the wrapping sum of ``h_n``
    over its rows of weight > 0, with ``h_n`` an odd hash of the row's values. It adds up over
    blocks, chunks and devices like the statistics (one sum by index, exact and in any order, so
    on any device), does not depend on the parameters, and is unchanged from one pass to the next
    when no row changed component; a change goes unseen only if every component's wrapped sum
    comes out the same (for a row moving alone, never; otherwise about one chance in 2^32). That
    is the fixed point where hard EM, k-means included, stops.
    """

    stats: Any
    fingerprint: Array


def row_hashes(X: Array) -> Array:
    """``[N]`` odd uint32 hashes of the rows of ``X [N, ...]`` (a fingerprint's ``h_n``)."""
    flat = X.reshape(X.shape[0], -1).astype(jnp.float32)
    mix = jnp.cos(1.0 + jnp.arange(flat.shape[1], dtype=jnp.float32))
    signature = flat @ mix
    # Rows with missing (NaN) values hash their observed entries; the cleaned copy of the data
    # is made only when there are any (it costs XLA:CPU ten times the product).
    signature = jax.lax.cond(jnp.all(jnp.isfinite(signature)), lambda: signature,
                             lambda: jnp.nan_to_num(flat) @ mix)
    return jax.lax.bitcast_convert_type(signature, jnp.uint32) | jnp.uint32(1)


def assignment_fingerprint(X: Array, component: Array, weights: Array, n_components: int,
                           hashes: Array | None = None) -> Array:
    """``[n_components]`` uint32 fingerprint (see :class:`HardStats`) of rows ``X [N, ...]``
    assigned to ``component [N]``, counting only rows of positive ``weights [N]``; ``hashes [N]``
    are the rows' :func:`row_hashes` when already known."""
    row_hash = row_hashes(X) if hashes is None else hashes
    counted = jnp.where(weights > 0, row_hash, jnp.uint32(0))
    return jax.ops.segment_sum(counted, component, n_components)


def statistics(aux: Any) -> Any:
    """The model's statistics from a pass's auxiliary output (hard or soft)."""
    return aux.stats if isinstance(aux, HardStats) else aux


def posterior(log_joint: Array, hard: bool = False,
              temperature: Array | None = None) -> tuple[Array, Array]:
    """Per-row objective ``[N]`` and responsibilities ``[N, K]`` (tiny ones flushed to 0).

    Args:
        log_joint: ``[N, K]`` log-joints (already masked by labels).
        hard: classification EM: the responsibility is the one-hot of the most probable component
            and the row's objective is its log-joint ``max_k ℓ_nk``.
        temperature: deterministic annealing: responsibilities ``softmax(ℓ / T)``; the row's
            objective stays the log-likelihood ``logsumexp_k ℓ_nk``. ``None`` means ``T = 1``.
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
    resp = jnp.where(log_r > _FLUSH_LOG, jnp.exp(jnp.maximum(log_r, _FLUSH_LOG)), 0.0)
    return row_ll, resp


def fixed_responsibility_sum(log_joint: Array, resp: Array) -> Array:
    """``Σ resp * log_joint`` where entries with ``resp == 0`` add 0 even if the log-joint is
    ``-inf`` (the summand of Q with the responsibilities held fixed)."""
    return jnp.sum(jnp.where(resp > 0, resp * log_joint, 0.0))


def weighted_sum(row_values: Array, weights: Array) -> Array:
    """``sum_n w_n v_n`` where rows of weight 0 contribute 0 even if their value is not finite."""
    return jnp.sum(jnp.where(weights > 0, weights * row_values, 0.0))


def stats_pass(model: Model, params: Any, rows: Rows, hard: bool = False,
               temperature: Array | None = None, centre: Any = None) -> tuple[Array, Any]:
    """E-step at ``params`` fused with the sufficient statistics the closed-form M-step needs.

    Args:
        model: the model.
        params: its parameters.
        rows: the blocked data (see :func:`block_rows`).
        hard, temperature: the E-step rule (see :func:`posterior`).
        centre: the parameters handed to ``model.suff_stats`` (the point its statistics are taken
            about); ``None`` means ``params``. Online EM keeps one fixed centre so that statistics
            from different steps can be averaged.

    Returns:
        ``(objective, stats)``: the weighted total of the rows' objectives (the log-likelihood,
        or the classification log-likelihood for hard EM) and the summed expected sufficient
        statistics (the model's pytree; for hard EM a :class:`HardStats` holding them).
    """
    stats_params = params if centre is None else centre

    def block_stats(xb, w, labels, hashes):
        if hard and model.hard_block_stats is not None and labels is None and centre is None:
            objective, component, stats = model.hard_block_stats(params, xb, w)
            return objective, HardStats(stats, assignment_fingerprint(
                xb, component, w, model.n_components, hashes))
        lj = mask_labels(model.log_joint_matrix(params, xb), labels)
        if hard:
            best, component = hard_assignment(lj)
            one_hot = jax.nn.one_hot(component, lj.shape[-1], dtype=w.dtype) * w[:, None]
            return weighted_sum(best, w), HardStats(model.suff_stats(stats_params, xb, one_hot),
                                                    assignment_fingerprint(xb, component, w,
                                                                           lj.shape[-1], hashes))
        row_ll, resp = posterior(lj, hard, temperature)
        return weighted_sum(row_ll, w), model.suff_stats(stats_params, xb, resp * w[:, None])

    def fused_block_stats(xb, w, labels, _hashes):
        def respond(log_joint):
            row_ll, resp = posterior(mask_labels(log_joint, labels), False, temperature)
            return row_ll, resp * w[:, None]

        row_ll, stats = model.block_stats(params, xb, respond)
        return weighted_sum(row_ll, w), stats

    fused = model.block_stats is not None and not hard and centre is None
    return _sum_over_blocks(fused_block_stats if fused else block_stats, rows)


def _greedy_matching(score: Array) -> Array:
    """A one-to-one map ``match [K]`` from rows to columns of ``score [K, K]``, taking the largest
    remaining entry each time (exact enough to line initial components up with labels)."""
    k = score.shape[0]

    def take(_, state):
        match, score = state
        row, col = jnp.divmod(jnp.argmax(score), k)
        return (match.at[row].set(col.astype(match.dtype)),
                score.at[row, :].set(-jnp.inf).at[:, col].set(-jnp.inf))

    match, _ = jax.lax.fori_loop(0, k, take, (jnp.zeros((k,), jnp.int32), score))
    return match


def align_to_labels(model: Model, params: Any, rows: Rows) -> Any:
    """Renumber initial components so that component ``j`` starts where labelled class ``j`` is.

    An initialiser knows nothing of partial labels, so its component ``j`` may sit on another
    class's rows, and a few labels cannot pull it across the data. This matches each class to the
    initial component that holds most of its labelled rows, then takes one closed-form M-step
    with the responsibilities renumbered accordingly (labelled rows one-hot at their label).

    Args:
        model: a model with a closed-form M-step.
        params: initial parameters.
        rows: blocked data with ``labels``.

    Returns:
        Parameters whose components follow the labels' numbering.
    """

    def block_overlap(xb, w, labels, _hashes):
        _, resp = posterior(model.log_joint_matrix(params, xb))
        onehot = jax.nn.one_hot(labels, resp.shape[-1], dtype=resp.dtype) * w[:, None]
        return onehot.T @ resp

    match = _greedy_matching(_sum_over_blocks(block_overlap, rows))

    def block_stats(xb, w, labels, _hashes):
        lj = mask_labels(model.log_joint_matrix(params, xb)[:, match], labels)
        _, resp = posterior(lj)
        return model.suff_stats(params, xb, resp * w[:, None])

    return model.maximize(_sum_over_blocks(block_stats, rows), params)


def responsibility_pass(model: Model, params: Any, rows: Rows, hard: bool = False,
                        temperature: Array | None = None) -> tuple[Array, Array]:
    """E-step at ``params`` keeping the weighted responsibilities ``[n_blocks, block, K]``."""

    def body(total, block):
        xb, w, labels, _ = block
        lj = mask_labels(model.log_joint_matrix(params, xb), labels)
        row_ll, resp = posterior(lj, hard, temperature)
        return total + weighted_sum(row_ll, w), resp * w[:, None]

    zero = _carry_zeros(jax.ShapeDtypeStruct((), rows.weights.dtype), rows.weights)
    return jax.lax.scan(body, zero, rows)


def expected_log_joint_blocks(model: Model, params: Any, Xb: Array, Rb: Array) -> Array:
    """``Q(params) = sum_n sum_k R_nk log p(x_n, z_n=k | params)`` over blocked data.

    ``Rb [n_blocks, block, K]`` are weighted responsibilities held fixed; entries equal to 0 add 0
    even where a log-joint is ``-inf``.
    """
    return _sum_over_blocks(
        lambda xb, rb: fixed_responsibility_sum(model.log_joint_matrix(params, xb), rb), (Xb, Rb))
