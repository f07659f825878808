"""Exact inference in a hidden Markov chain: forward-backward and Viterbi, for ONE sequence.

Conventions (``T`` steps, ``K`` states):
    ``initial [K]``      ``p(z_0 = k)``.
    ``transition [K, K]`` ``A[i, j] = p(z_{t+1} = j | z_t = i)`` (rows sum to 1).
    ``log_obs [T, K]``   ``log p(x_t | z_t = k)``, the emission log-densities.
    ``mask [T]``         bool, ``True`` on the sequence's steps; padding comes after them.

Numerics. The emission densities stay in log space until each step is shifted by its own maximum,
``B[t] = exp(log_obs[t] - max_k log_obs[t])`` (every entry in ``[0, 1]``, the largest exactly 1),
and every message is normalised as it is formed; the log-likelihood is the sum of the logs of the
normalisers plus the shifts. Nothing is carried across steps unnormalised, so a sequence of any
length neither underflows nor overflows, in float32 as in float64, while each step is a
vector-matrix product rather than a ``[K, K]`` log-sum-exp. A padded step has ``B = 1``; because
rows of ``A`` sum to 1 it leaves the forward message's normaliser at 1 and the backward message
unchanged, and its terms are masked out besides.

Two ways to the same messages: ``lax.scan`` (``T`` sequential steps, ``O(T K^2)``) and
``lax.associative_scan`` (``O(log T)`` depth, ``O(T K^3)`` work, for long sequences on parallel
hardware). Posteriors, expected transition counts and the log-likelihood are then computed the same
way from either, by vectorised matrix products.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

METHODS = ("auto", "scan", "associative")

# "auto" takes the associative scan from this many steps on when an accelerator is present; on a
# CPU the sequential scan does K times less work and wins at every length we measured.
PARALLEL_MIN_STEPS = 512


class Posterior(NamedTuple):
    """What the forward-backward pass returns for one sequence.

    Attributes:
        marginals: ``[T, K]`` smoothed ``p(z_t = k | x_{0:T})`` (0 on padded steps).
        transitions: ``[K, K]`` expected transition counts ``Σ_t p(z_t = i, z_{t+1} = j | x)``.
        log_likelihood: scalar ``log p(x_{0:T})``.
    """

    marginals: Array
    transitions: Array
    log_likelihood: Array


def choose_method(method: str, n_steps: int) -> str:
    """Resolve ``"auto"`` to ``"scan"`` or ``"associative"`` for sequences of ``n_steps``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "auto":
        return method
    accelerated = jax.default_backend() != "cpu"
    return "associative" if accelerated and n_steps >= PARALLEL_MIN_STEPS else "scan"


def scaled_emissions(log_obs: Array, mask: Array) -> tuple[Array, Array]:
    """``(B [T, K], shift [T])`` with ``log_obs = log B + shift`` on real steps, ``B = 1`` on
    padding. A step where every state has density 0 keeps ``B = 0`` and shift 0 (log-likelihood
    ``-inf``, never NaN)."""
    log_obs = jnp.where(mask[:, None], log_obs, 0.0)
    shift = jnp.max(log_obs, axis=1)
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    return jnp.exp(log_obs - shift[:, None]), shift


def _normalise(u: Array) -> Array:
    # An all-zero message (an impossible observation) stays zero instead of becoming NaN.
    total = jnp.sum(u, axis=-1, keepdims=True)
    return u / jnp.where(total > 0, total, 1.0)


def _safe(total: Array) -> Array:
    return jnp.where(total > 0, total, 1.0)


def _scan_messages(initial: Array, A: Array, B: Array) -> tuple[Array, Array]:
    """``(alpha [T, K], beta [T, K])``, both normalised per step, from ONE sequential scan: the
    backward recursion does not depend on the forward one, so step ``t`` of the scan advances the
    forward message to ``t`` and the backward message to ``T-1-t`` (half the sequential trips of
    a forward scan followed by a backward one)."""
    def step(carry, inputs):
        alpha, beta = carry
        b_next, b_back = inputs                   # B[t], B[T - t]
        u = (alpha @ A) * b_next
        alpha = u / _safe(jnp.sum(u))
        v = A @ (b_back * beta)                   # beta_{T-1-t}, unnormalised
        beta = v / _safe(jnp.sum(v))
        return (alpha, beta), (alpha, beta)

    u0 = initial * B[0]
    alpha0 = u0 / _safe(jnp.sum(u0))
    beta_last = jnp.ones_like(alpha0)
    _, (alphas, betas) = jax.lax.scan(step, (alpha0, beta_last), (B[1:], B[1:][::-1]))
    return (jnp.concatenate([alpha0[None], alphas]),
            jnp.concatenate([betas[::-1], beta_last[None]]))


def _message_posterior(initial: Array, A: Array, B: Array, mask: Array, alpha: Array,
                       beta: Array):
    """``(marginals [T, K], transitions [K, K], norms [T])`` from whole message arrays
    ``alpha [T, K]`` (normalised filter) and ``beta [T, K]`` (any positive scale per step);
    ``norms[t] = p(x_t | x_{0:t-1})`` divided by ``exp(shift[t])``. The transition counts are
    one ``[K, T] x [T, K]`` product."""
    valid = mask.astype(B.dtype)
    # One-step predictions p(z_t | x_{0:t-1}); their overlap with B[t] is step t's normaliser.
    predicted = jnp.concatenate([initial[None], alpha[:-1] @ A])
    norms = jnp.sum(predicted * B, axis=1)
    marginals = _normalise(alpha * beta)
    # xi_t(i, j) = alpha_t(i) A_ij B_{t+1}(j) beta_{t+1}(j) / z_t, summed over t as one product.
    ahead = B[1:] * beta[1:]
    weight = valid[1:] / _safe(jnp.sum(predicted[1:] * ahead, axis=1))
    return marginals, A * (alpha[:-1].T @ (ahead * weight[:, None])), norms


def _compose(first, second):
    """Associative product of chain segments, batched over leading axes.

    A segment from step ``a`` to step ``b`` is ``(P [..., K, K], s [..., K])``: ``P[i, j] =
    p(z_b = j | z_a = i, x_{a+1:b})`` (rows sum to 1) and ``s[i] = log p(x_{a+1:b} | z_a = i)``
    up to a constant shared by all ``i`` (the log-likelihood itself comes from the forward
    messages, not from here)."""
    P1, s1 = first
    P2, s2 = second
    # Weight each middle state by how well it explains the second segment; renormalise rows.
    top = jnp.max(s2, axis=-1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    W = P1 * jnp.exp(s2 - top)[..., None, :]
    total = jnp.sum(W, axis=-1)
    P = (W @ P2) / jnp.where(total > 0, total, 1.0)[..., None]
    # Scores are kept relative to their maximum: only differences between states matter, and a
    # segment's absolute log-likelihood (O(length)) would cost them float32 precision.
    score = s1 + jnp.log(total)
    peak = jnp.max(score, axis=-1, keepdims=True)
    return P, score - jnp.where(jnp.isfinite(peak), peak, 0.0)


def _segments(initial: Array, A: Array, B: Array) -> tuple[Array, Array]:
    """One segment per step: step 0 from the initial distribution (all rows alike), step ``t >= 1``
    the transition conditioned on ``x_t``."""
    K = A.shape[0]
    s0 = jnp.log(initial @ B[0])
    P0 = initial * B[0] / jnp.exp(s0)
    st = jnp.log(B[1:] @ A.T)
    Pt = A[None] * B[1:, None, :] / jnp.exp(st)[:, :, None]
    P = jnp.concatenate([jnp.broadcast_to(P0, (1, K, K)), Pt])
    s = jnp.concatenate([jnp.broadcast_to(s0, (1, K)), st])
    return jnp.nan_to_num(P), s


def _filter_smooth_associative(initial: Array, A: Array, B: Array) -> tuple[Array, Array]:
    """``(alpha [T, K], beta [T, K])`` from ONE associative scan that forms the prefix products of
    the step segments (forward messages) and, side by side, the suffix products (backward)."""
    T, K = B.shape
    P, s = _segments(initial, A, B)
    # beta_t comes from the segments of steps t+1..T-1, then the identity (beta_{T-1} = 1).
    Q = jnp.concatenate([P[1:], jnp.eye(K, dtype=P.dtype)[None]])[::-1]
    r = jnp.concatenate([s[1:], jnp.zeros((1, K), s.dtype)])[::-1]

    def combine(earlier, later):
        # Forward: earlier then later. Backward runs on reversed time, so its order flips.
        (Pa, sa, Qa, ra), (Pb, sb, Qb, rb) = earlier, later
        both, scores = _compose((jnp.stack([Pa, Qb]), jnp.stack([sa, rb])),
                                (jnp.stack([Pb, Qa]), jnp.stack([sb, ra])))
        return both[0], scores[0], both[1], scores[1]

    prefix_P, _, _, suffix_s = jax.lax.associative_scan(combine, (P, s, Q, r))
    log_beta = suffix_s[::-1]
    top = jnp.max(log_beta, axis=1, keepdims=True)
    return prefix_P[:, 0, :], jnp.exp(log_beta - jnp.where(jnp.isfinite(top), top, 0.0))


def forward_backward(initial: Array, transition: Array, log_obs: Array, mask: Array | None = None,
                     method: str = "auto") -> Posterior:
    """Smoothed marginals, expected transition counts and log-likelihood of one sequence.

    Args:
        initial: ``[K]`` initial state distribution.
        transition: ``[K, K]`` transition matrix, rows summing to 1.
        log_obs: ``[T, K]`` emission log-densities ``log p(x_t | z_t = k)``.
        mask: optional ``[T]`` bool, ``True`` on real steps (a prefix); padding contributes nothing.
        method: ``"scan"``, ``"associative"`` or ``"auto"`` (see :func:`choose_method`); both give
            the same posterior up to round-off.

    Returns:
        A :class:`Posterior`.
    """
    T = log_obs.shape[0]
    if mask is None:
        mask = jnp.ones((T,), bool)
    B, shift = scaled_emissions(log_obs, mask)
    messages = (_scan_messages if choose_method(method, T) == "scan"
                else _filter_smooth_associative)
    alpha, beta = messages(initial, transition, B)
    marginals, transitions, norms = _message_posterior(initial, transition, B, mask, alpha, beta)
    log_likelihood = jnp.sum(jnp.where(mask, jnp.log(norms) + shift, 0.0))
    return Posterior(marginals * mask[:, None].astype(marginals.dtype), transitions,
                     log_likelihood)


def log_likelihood(initial: Array, transition: Array, log_obs: Array,
                   mask: Array | None = None) -> Array:
    """``log p(x_{0:T})`` of one sequence by the forward pass alone (scalar; differentiable)."""
    T = log_obs.shape[0]
    if mask is None:
        mask = jnp.ones((T,), bool)
    B, shift = scaled_emissions(log_obs, mask)

    def step(alpha, inputs):
        b, keep = inputs
        u = (alpha @ transition) * b
        norm = jnp.sum(u)
        return jnp.where(keep, _normalise(u), alpha), jnp.where(keep, jnp.log(norm), 0.0)

    u0 = initial * B[0]
    _, logs = jax.lax.scan(step, _normalise(u0), (B[1:], mask[1:]))
    return jnp.log(jnp.sum(u0)) + jnp.sum(logs) + jnp.sum(jnp.where(mask, shift, 0.0))


def viterbi(initial: Array, transition: Array, log_obs: Array,
            mask: Array | None = None) -> tuple[Array, Array]:
    """Most probable state path by max-product in log space.

    Args:
        initial, transition, log_obs, mask: as in :func:`forward_backward`.

    Returns:
        ``(path [T] int32, log p(x, path))``. Padded steps repeat the last real state.
    """
    T, K = log_obs.shape
    if mask is None:
        mask = jnp.ones((T,), bool)
    log_A = jnp.log(transition)
    states = jnp.arange(K)

    def step(delta, inputs):
        lo, keep = inputs
        scores = delta[:, None] + log_A
        best = jnp.argmax(scores, axis=0)
        new = jnp.max(scores, axis=0) + lo
        # A padded step is the identity: the path's end stays at the last real step.
        return jnp.where(keep, new, delta), jnp.where(keep, best, states).astype(jnp.int32)

    delta0 = jnp.log(initial) + log_obs[0]
    delta, back = jax.lax.scan(step, delta0, (log_obs[1:], mask[1:]))
    last = jnp.argmax(delta).astype(jnp.int32)

    def trace(state, pointers):
        prev = pointers[state]
        return prev, prev

    _, earlier = jax.lax.scan(trace, last, back, reverse=True)
    return jnp.concatenate([earlier, last[None]]), jnp.max(delta)


def sample_states(key: Array, initial: Array, transition: Array, n_steps: int) -> Array:
    """Draw a state path ``[n_steps]`` (int32) from the chain."""
    k0, k_rest = jax.random.split(key)
    first = jax.random.categorical(k0, jnp.log(initial))
    log_A = jnp.log(transition)

    def step(state, k):
        nxt = jax.random.categorical(k, log_A[state])
        return nxt, nxt

    _, rest = jax.lax.scan(step, first, jax.random.split(k_rest, n_steps - 1))
    return jnp.concatenate([first[None], rest]).astype(jnp.int32)
