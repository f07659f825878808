"""Baum-Welch for an :class:`HMM`: every sequence and every restart in one compiled program.

One pass at parameters θ evaluates every emission density in row blocks, runs forward-backward on
all sequences at once (``vmap``), and sums what the M-step needs: expected initial-state and
transition counts, and either the emission's sufficient statistics (closed form) or the per-step
posteriors (gradient M-step). All of it is additive over sequences. The EM loop is a
``lax.while_loop``, vmapped over restarts, and returns :class:`jaxem.FitResult`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import _loop, _passes, _precision, distributed
from .._result import FitResult, result_from_loop
from ..em import _diagnose_rows, _restart_keys
from ..estep import Annealing, EStepRule, resolve_e_step
from ..models._common import mixing_weights
from ..mstep import DEFAULT_M_STEP_ITERS, default_optimizer, gradient_m_step
from ..validation import (
    check_positive_int,
    check_tolerance,
    default_float_dtype,
    tolerance_value,
)
from . import inference
from .model import HMM, Sequences, as_sequences

Array = jax.Array

# Posteriors below exp(-80) become exactly 0: float32 subnormals slow the statistics' products
# many times on CPUs and are below the resolution of any sum they enter.
_FLUSH = float(np.exp(-80.0))


class _Layout:
    """Static shape of the padded data, hashable for ``jit``: ``B`` sequences of ``T`` steps,
    flattened to ``B * T`` rows in ``n_blocks`` blocks of ``rows`` (the last block padded)."""

    def __init__(self, n_seq: int, n_steps: int, block_size: int | None = None):
        self.n_seq, self.n_steps = n_seq, n_steps
        self.n_blocks, self.rows = _passes.plan_blocks(n_seq * n_steps, block_size)

    def _key(self):
        return (self.n_seq, self.n_steps, self.n_blocks, self.rows)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, _Layout) and self._key() == other._key()

    def observation_blocks(self, X: Array) -> Array:
        """``[B, T, ...]`` observations as ``[n_blocks, rows, ...]`` (padding copies a real row)."""
        flat = X.reshape((self.n_seq * self.n_steps,) + X.shape[2:])
        return _passes.to_blocks(flat, jnp.zeros(flat.shape[:1], X.dtype), self.n_blocks,
                                 self.rows)[0]

    def step_blocks(self, values: Array) -> Array:
        """Per-step ``values [B, T, ...]`` as ``[n_blocks, rows, ...]``, zero on the padding."""
        flat = values.reshape((self.n_seq * self.n_steps,) + values.shape[2:])
        pad = self.n_blocks * self.rows - flat.shape[0]
        if pad:
            flat = jnp.concatenate([flat, jnp.zeros((pad,) + flat.shape[1:], flat.dtype)])
        return flat.reshape((self.n_blocks, self.rows) + flat.shape[1:])

    def unblock(self, values: Array) -> Array:
        """``[n_blocks, rows, ...]`` back to ``[B, T, ...]``."""
        flat = values.reshape((-1,) + values.shape[2:])[: self.n_seq * self.n_steps]
        return flat.reshape((self.n_seq, self.n_steps) + values.shape[2:])


_SOFT = EStepRule()


def _emission_densities(hmm: HMM, params, Xb: Array, layout: _Layout) -> Array:
    """``[B, T, K]`` emission log-densities, evaluated one row block at a time (a block's
    temporaries stay in cache)."""
    dens = jax.lax.map(lambda xb: hmm.emission_model.log_joint_matrix(params["emission"], xb), Xb)
    return layout.unblock(dens)


def _posteriors(hmm: HMM, params, Xb: Array, mask: Array, layout: _Layout, method: str,
                temperature: Array | None = None):
    """Forward-backward on every sequence: a :class:`inference.Posterior` with a leading ``[B]``.

    With a ``temperature`` T the posterior is that of ``p(z, x)^(1/T)`` (deterministic annealing:
    every log-potential divided by T; the recursions normalise each step, so the tempered chain
    need not be stochastic) and its ``log_likelihood`` is that of the tempered potentials.
    """
    return _chain_posteriors(params, _emission_densities(hmm, params, Xb, layout), mask, method,
                             temperature)


def _chain_posteriors(params, dens: Array, mask: Array, method: str,
                      temperature: Array | None = None):
    """:func:`_posteriors` from the emission log-densities ``dens [B, T, K]``."""
    initial, transition = params["initial"], params["transition"]
    if temperature is not None:
        initial, transition = initial ** (1 / temperature), transition ** (1 / temperature)
        dens = dens / temperature
    fb = functools.partial(inference.forward_backward, method=method)
    return jax.vmap(fb, in_axes=(None, None, 0, 0))(initial, transition, dens, mask)


def _e_pass(hmm: HMM, params, Xb: Array, mask: Array, layout: _Layout, method: str,
            use_gradient: bool, rule: EStepRule = _SOFT, iteration: Array = 0):
    """``(objective, (chain counts, emission statistics | blocked posteriors))`` at ``params``;
    the objective is the total log-likelihood (hard EM: the best paths' log-joint) plus the
    chain's log prior. Hard EM wraps the sums in :class:`jaxem._passes.HardStats`."""
    if rule.hard:
        return _viterbi_pass(hmm, params, Xb, mask, layout, use_gradient)
    temperature = rule.temperature(iteration, Xb.dtype)
    dens = _emission_densities(hmm, params, Xb, layout)
    post = _chain_posteriors(params, dens, mask, method, temperature)
    log_likelihood = jnp.sum(post.log_likelihood)
    if temperature is not None:
        # While cooling, the tempered pass's normaliser is not the likelihood: one forward pass
        # at T = 1 gives it (skipped once T has reached 1).
        log_likelihood = jax.lax.cond(
            temperature == 1, lambda: log_likelihood,
            lambda: jnp.sum(jax.vmap(inference.log_likelihood, in_axes=(None, None, 0, 0))(
                params["initial"], params["transition"], dens, mask)))
    objective = log_likelihood + hmm.log_prior(params)
    chain = {"initial": jnp.sum(post.marginals[:, 0], axis=0),
             "transition": jnp.sum(post.transitions, axis=0)}
    marginals = jnp.where(post.marginals > _FLUSH, post.marginals, 0.0)
    return objective, (chain, _emission_aux(hmm, params, Xb, layout, marginals, use_gradient))


def _emission_aux(hmm: HMM, params, Xb: Array, layout: _Layout, marginals: Array,
                  use_gradient: bool):
    """What the emission's M-step needs from per-step state weights ``marginals [B, T, K]``:
    blocked posteriors (gradient M-step) or summed sufficient statistics (closed form)."""
    Rb = layout.step_blocks(marginals)
    if use_gradient:
        return Rb
    return _passes._sum_over_blocks(functools.partial(hmm.suff_stats, params["emission"]),
                                    (Xb, Rb))


def _viterbi_pass(hmm: HMM, params, Xb: Array, mask: Array, layout: _Layout, use_gradient: bool):
    """Hard EM for a chain (Viterbi training): every sequence's most probable path stands in for
    the posterior, and the objective is the paths' total log-joint ``Σ log p(x, z*)``."""
    dens = _emission_densities(hmm, params, Xb, layout)
    paths, scores = jax.vmap(inference.viterbi, in_axes=(None, None, 0, 0))(
        params["initial"], params["transition"], dens, mask)
    onehot = jax.nn.one_hot(paths, hmm.n_states, dtype=dens.dtype) * mask[..., None]
    chain = {"initial": jnp.sum(onehot[:, 0], axis=0),
             # Padded steps are zero rows, so only real consecutive steps count as transitions.
             "transition": jnp.einsum("btk,btl->kl", onehot[:, :-1], onehot[:, 1:])}
    n_seq, n_steps = mask.shape
    fingerprint = _passes.assignment_fingerprint(
        layout.unblock(Xb).reshape(n_seq * n_steps, -1), paths.reshape(-1),
        mask.reshape(-1).astype(dens.dtype), hmm.n_states)
    aux = (chain, _emission_aux(hmm, params, Xb, layout, onehot, use_gradient))
    return jnp.sum(scores) + hmm.log_prior(params), _passes.HardStats(aux, fingerprint)


def _m_step(hmm: HMM, params, aux, Xb: Array, use_gradient: bool, optimizer, m_step_iters: int):
    """Closed-form chain update (Dirichlet MAP) and the emission's closed-form or gradient one."""
    chain, emission_aux = _passes.statistics(aux)
    initial = mixing_weights(chain["initial"], hmm.initial_concentration)
    transition = jax.vmap(mixing_weights, in_axes=(0, None))(chain["transition"],
                                                             hmm.transition_concentration)
    if use_gradient:
        emission = gradient_m_step(hmm.emission_model, params["emission"], Xb, emission_aux,
                                   optimizer, m_step_iters)
    else:
        emission = hmm.maximize(emission_aux, params["emission"])
    return {"initial": initial, "transition": transition, "emission": emission}


def _program(keys, init_params, X, mask, rows, tol, *, hmm, layout, method, max_iter,
             use_gradient, optimizer, m_step_iters, rule, report, in_sequence=False):
    if init_params is None:
        emission = jax.vmap(hmm.init, in_axes=(0, None))(keys, rows)
        chain = hmm.uniform_chain(X.dtype)
        init_params = {**jax.tree.map(lambda a: jnp.broadcast_to(a, (keys.shape[0],) + a.shape),
                                      chain), "emission": emission}
    Xb = layout.observation_blocks(X)
    one_pass = functools.partial(_e_pass, hmm, Xb=Xb, mask=mask, layout=layout, method=method,
                                 use_gradient=use_gradient, rule=rule)
    m_step = functools.partial(_m_step, hmm, Xb=Xb, use_gradient=use_gradient,
                               optimizer=optimizer, m_step_iters=m_step_iters)
    return _loop.iterate(lambda p, iteration: _loop.map_restarts(
                             lambda q: one_pass(q, iteration=iteration), p,
                             in_sequence=in_sequence),
                         m_step, init_params, tol, max_iter=max_iter, may_stop=rule.may_stop,
                         report=report)


_STATIC = ("hmm", "layout", "method", "max_iter", "use_gradient", "optimizer", "m_step_iters",
           "rule", "report", "in_sequence")
_jitted = _precision.jit(_program, static_argnames=_STATIC)


def _as_float(seqs: Sequences):
    dtype = default_float_dtype()
    return (jnp.asarray(seqs.X, dtype), jnp.asarray(seqs.mask),
            jnp.asarray(seqs.rows, dtype))


def fit(hmm: HMM, X, lengths=None, *, mask=None, key=None, n_restarts: int | None = None,
        max_iter: int = 100, tol: float = 1e-6, init_params: Any = None, m_step: str = "auto",
        method: str = "auto", optimizer: optax.GradientTransformation | None = None,
        m_step_iters: int = DEFAULT_M_STEP_ITERS, block_size: int | None = None,
        e_step: str | Annealing = "soft", progress=None) -> FitResult:
    """Fit ``hmm`` by Baum-Welch (EM) from several starts at once.

    Args:
        hmm: an :class:`HMM`.
        X: ``[N, ...]`` rows (one sequence, or several with ``lengths``), or padded
            ``[B, T, ...]`` with ``mask``.
        lengths: optional ``[B]`` sequence lengths summing to ``N`` (hmmlearn's convention).
        mask: optional ``[B, T]`` bool for padded ``X`` (real steps first in each row).
        key: PRNG key (split per restart) or ``[R]`` keys, as in :func:`jaxem.fit`; optional
            with ``init_params``.
        n_restarts: random starts, vmapped into one program (default 1 or the number of keys).
        max_iter: most EM iterations per restart.
        tol: stop when the relative change of the objective is ``<= tol``.
        init_params: optional starting parameters ``{"initial", "transition", "emission"}`` used
            by every restart instead of ``hmm.init`` and the uniform chain.
        m_step: ``"auto"`` (closed form when the emission has one), ``"closed_form"`` or
            ``"gradient"`` (optax on the emission's expected log-density).
        method: forward-backward by ``"scan"``, ``"associative"`` or ``"auto"``.
        optimizer, m_step_iters: the gradient M-step's optimiser (default L-BFGS) and steps.
        block_size: rows per block when evaluating emissions and statistics.
        e_step: ``"soft"`` (Baum-Welch: forward-backward posteriors), ``"hard"`` (Viterbi
            training: each sequence's most probable path stands in for the posterior, and the
            history is the paths' log-joint ``Σ log p(x, z*)``, which never decreases),
            ``"anneal"`` or a :class:`jaxem.Annealing` (posteriors of ``p(z, x)^(1/T)`` with
            ``T`` cooled to 1; the history stays the log-likelihood).
        progress: optional ``progress(iteration, log_likelihood [R], converged [R], running [R])``
            called once per iteration, as in :func:`jaxem.fit`.

    Returns:
        :class:`jaxem.FitResult`; ``history`` and ``log_likelihood`` are the total log-likelihood
        over all sequences (plus the chain's log prior when a Dirichlet concentration exceeds 1).

    Raises:
        ValueError: bad data or arguments, before any compute.
        FitError: every restart's log-likelihood became NaN or infinite.
    """
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_tolerance(tol)
    m_step_iters = check_positive_int(m_step_iters, "m_step_iters")
    if n_restarts is not None:
        n_restarts = check_positive_int(n_restarts, "n_restarts")
    if block_size is not None:
        block_size = check_positive_int(block_size, "block_size")
    if m_step not in ("auto", "closed_form", "gradient"):
        raise ValueError(f"m_step must be 'auto', 'closed_form' or 'gradient', got {m_step!r}")
    if m_step == "closed_form" and not hmm.has_closed_form:
        raise ValueError(f"{hmm.name!r} has no closed-form emission M-step; use m_step='gradient'")
    use_gradient = m_step == "gradient" or not hmm.has_closed_form
    rule = resolve_e_step(e_step)
    seqs = as_sequences(X, lengths, mask)
    method = inference.choose_method(method, seqs.X.shape[1])
    if seqs.rows.shape[0] < hmm.n_states:
        raise ValueError(f"n_states={hmm.n_states} but only {seqs.rows.shape[0]} observations")
    if key is None and init_params is not None:
        key = jax.random.key(0)    # never used: every restart starts from init_params
    keys = _restart_keys(key, n_restarts)
    Xp, maskp, rows = _as_float(seqs)
    if init_params is not None:
        init_params = jax.tree.map(
            lambda p: jnp.broadcast_to(jnp.asarray(p, Xp.dtype), (keys.shape[0],) + jnp.shape(p)),
            init_params)
    layout = _Layout(*seqs.mask.shape, block_size)
    # The chains' blocks do not depend on the number of restarts; only their order does (4
    # restarts of the 200 x 1000, K=8 benchmark on a CPU: 1.09x one restart's time per restart
    # vmapped, 1.01x in sequence).
    in_sequence = _passes.plan_restarts(keys.shape[0], distributed.platform(Xp, None)).in_sequence
    static = dict(hmm=hmm, layout=layout, method=method, max_iter=max_iter,
                  use_gradient=use_gradient, m_step_iters=m_step_iters, rule=rule,
                  in_sequence=in_sequence,
                  optimizer=(optimizer or _DEFAULT_OPTIMIZER) if use_gradient else None)
    try:
        out, compile_s, run_s = _loop.run_compiled(
            (keys, init_params, Xp, maskp, rows, jnp.asarray(tolerance_value(tol), Xp.dtype)),
            static, progress, program=_jitted)
    except (TypeError, ValueError, IndexError) as err:
        # Say so when the emission cannot even score these observations (say a padded [B, T, D]
        # array given without its mask, read as one sequence of [T, D] observations).
        padded = mask is None and lengths is None and np.ndim(X) >= 3
        _diagnose_rows(hmm.emission_model, keys[0], rows,
                       None if init_params is None else init_params["emission"], err,
                       hint="; padded sequences [B, T, ...] need mask=[B, T]" if padded else "")
        raise
    return result_from_loop(out, keys, max_iter=max_iter, tol=tol, compile_time=compile_s,
                            fit_time=run_s)


@functools.partial(_precision.jit, static_argnames=("hmm", "layout", "method"))
def _posterior_compiled(params, X, mask, *, hmm, layout, method):
    post = _posteriors(hmm, params, layout.observation_blocks(X), mask, layout, method)
    return post.marginals, post.log_likelihood


def posterior(hmm: HMM, params, X, lengths=None, *, mask=None,
              method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Smoothed state marginals and per-sequence log-likelihoods (the E-step).

    Args:
        hmm, params: the model and its parameters.
        X, lengths, mask: data as in :func:`fit`.
        method: ``"scan"``, ``"associative"`` or ``"auto"``.

    Returns:
        ``(marginals, log_likelihoods [B])``: marginals ``[N, K]`` for rows (``lengths`` or one
        sequence), ``[B, T, K]`` for padded input (0 on padding).
    """
    seqs = as_sequences(X, lengths, mask)
    Xp, maskp, _ = _as_float(seqs)
    marginals, ll = _posterior_compiled(
        jax.tree.map(lambda a: jnp.asarray(a, Xp.dtype), params), Xp, maskp, hmm=hmm,
        layout=_Layout(*seqs.mask.shape), method=inference.choose_method(method, Xp.shape[1]))
    return seqs.unpad(np.asarray(marginals)), np.asarray(ll)


@functools.partial(_precision.jit, static_argnames=("hmm", "layout"))
def _viterbi_compiled(params, X, mask, *, hmm, layout):
    Xb = layout.observation_blocks(X)
    dens = jax.lax.map(lambda xb: hmm.emission_model.log_joint_matrix(params["emission"], xb), Xb)
    return jax.vmap(inference.viterbi, in_axes=(None, None, 0, 0))(
        params["initial"], params["transition"], layout.unblock(dens), mask)


def decode(hmm: HMM, params, X, lengths=None, *, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Viterbi: the most probable state path of every sequence.

    Returns:
        ``(states, log_probs [B])``: states ``[N]`` for rows, ``[B, T]`` for padded input (padding
        repeats the last state); ``log_probs[b] = log p(x_b, path_b)``.
    """
    seqs = as_sequences(X, lengths, mask)
    Xp, maskp, _ = _as_float(seqs)
    states, log_probs = _viterbi_compiled(jax.tree.map(lambda a: jnp.asarray(a, Xp.dtype), params),
                                          Xp, maskp, hmm=hmm, layout=_Layout(*seqs.mask.shape))
    return seqs.unpad(np.asarray(states)), np.asarray(log_probs)


@functools.partial(_precision.jit, static_argnames=("hmm", "n_steps"))
def _sample_compiled(key, params, *, hmm, n_steps):
    k_states, k_obs = jax.random.split(key)
    states = inference.sample_states(k_states, params["initial"], params["transition"], n_steps)
    draw = jax.vmap(hmm.sample_emission, in_axes=(0, None, 0))
    return draw(jax.random.split(k_obs, n_steps), params["emission"], states), states


def sample(hmm: HMM, params, key, n_steps: int) -> tuple[Array, Array]:
    """Draw one sequence: ``(X [n_steps, ...], states [n_steps])``. Needs ``hmm.sample_emission``."""
    n_steps = check_positive_int(n_steps, "n_steps")
    if hmm.sample_emission is None:
        raise ValueError(f"{hmm.name!r} has no sample_emission, so it cannot be sampled")
    return _sample_compiled(key, params, hmm=hmm, n_steps=n_steps)


# One object, so repeated fits with the default hit the compilation cache.
_DEFAULT_OPTIMIZER = default_optimizer()
