"""Baum-Welch for an :class:`HMM`: every sequence and every restart in one compiled program, and
the E-step, Viterbi and sampling at given parameters.

The fit lays the sequences out (:class:`jaxem.hmm.passes.SequenceLayout`), builds the Baum-Welch
pass (:func:`jaxem.hmm.passes.hmm_pass`) and runs it with the same compiled runner as a mixture's
fit (:func:`jaxem.core.runner.run_in_memory`); it returns :class:`jaxem.FitResult`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..core import driver, loop, precision, programs, sharding
from ..core.accelerate import squarem
from ..core.ascent import DEFAULT_M_STEP_ITERS
from ..core.blocks import plan_restarts
from ..core.estep import Annealing
from ..core.result import FitResult
from ..core.runner import run_in_memory
from ..core.validation import check_positive_int, default_float_dtype
from . import inference
from .model import HMM, Sequences, as_sequences
from .passes import SequenceLayout, chain_constraints, hmm_pass, posteriors, uniform_start

Array = jax.Array


def _program(keys, init_params, X, mask, rows, tol, state, stop_at, *, hmm, layout, method,
             max_iter, use_gradient, optimizer, m_step_iters, rule, report, in_sequence=False,
             accelerate=False):
    # Segmented as the mixture's program is (jaxem.core.programs.run_segmented).
    if init_params is None and state is None:
        init_params = uniform_start(hmm, jax.vmap(hmm.init, in_axes=(0, None))(keys, rows),
                                    X.dtype)
    Xb = layout.observation_blocks(X)
    em_pass = hmm_pass(hmm, layout, method, hard=rule.hard, use_gradient=use_gradient,
                       optimizer=optimizer, m_step_iters=m_step_iters, Xb=Xb)
    settings = loop.Settings(tol, max_iter, rule.may_stop, squarem(accelerate, chain_constraints(hmm)))
    return run_in_memory(em_pass, init_params, (Xb, mask), settings, rule, X.dtype,
                         in_sequence=in_sequence, report=report, state=state, stop_at=stop_at)


_STATIC = ("hmm", "layout", "method", "max_iter", "use_gradient", "optimizer", "m_step_iters",
           "rule", "report", "in_sequence", "accelerate")
_program_jit = precision.jit(_program, static_argnames=_STATIC, donate_argnames=("state",))


def _as_float(seqs: Sequences):
    dtype = default_float_dtype()
    return (jnp.asarray(seqs.X, dtype), jnp.asarray(seqs.mask),
            jnp.asarray(seqs.rows, dtype))


def fit(hmm: HMM, X, lengths=None, *, mask=None, key=None, n_restarts: int | None = None,
        max_iter: int = 100, tol: float = 1e-6, init_params: Any = None, m_step: str = "auto",
        method: str = "auto", optimizer: optax.GradientTransformation | None = None,
        m_step_iters: int = DEFAULT_M_STEP_ITERS, block_size: int | None = None,
        e_step: str | Annealing = "soft", progress=None, dtype="auto", checkpoint=None,
        resume: bool = False, accelerate="auto") -> FitResult:
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
        optimizer, m_step_iters: the emission's gradient M-step and optax steps, as in
            :func:`jaxem.fit` (default :class:`jaxem.EMGradient`).
        block_size: rows per block when evaluating emissions and statistics.
        e_step: ``"soft"`` (Baum-Welch: forward-backward posteriors), ``"hard"`` (Viterbi
            training: each sequence's most probable path stands in for the posterior, and the
            history is the paths' log-joint ``Σ log p(x, z*)``, which never decreases),
            ``"anneal"`` or a :class:`jaxem.Annealing` (posteriors of ``p(z, x)^(1/T)`` with
            ``T`` cooled to 1; the history stays the log-likelihood).
        progress: optional ``progress(iteration, log_likelihood [R], converged [R], running [R])``
            called once per iteration, as in :func:`jaxem.fit`.
        checkpoint, resume: save the loop state to a file and continue from it, as in
            :func:`jaxem.fit`.
        dtype: the float type to compute in, ``"auto"`` (the default), ``"float32"``,
            ``"float64"`` or ``None`` (JAX's default), as in :func:`jaxem.fit`.
        accelerate: ``"auto"`` (the default: SQUAREM with the soft E-step when the emission declares
            ``constraints``; the chain's probabilities are extrapolated as softmax logits),
            ``"squarem"``/``True`` or ``None``/``False`` (plain Baum-Welch), as in
            :func:`jaxem.fit`.

    Returns:
        :class:`jaxem.FitResult`; ``history`` and ``log_likelihood`` are the total log-likelihood
        over all sequences (plus the chain's log prior when a Dirichlet concentration exceeds 1).

    Raises:
        ValueError: bad data or arguments, before any compute.
        FitError: every restart's log-likelihood became NaN or infinite.
    """
    width = precision.resolve(dtype, n_values=precision.data_values(X), tol=tol)
    if precision.differs(width):
        return precision.run_in(width, fit, hmm, X, lengths, mask=mask, key=key,
                                n_restarts=n_restarts, max_iter=max_iter, tol=tol,
                                init_params=init_params, m_step=m_step, method=method,
                                optimizer=optimizer, m_step_iters=m_step_iters,
                                block_size=block_size, e_step=e_step, progress=progress,
                                checkpoint=checkpoint, resume=resume, accelerate=accelerate,
                                dtype=width.name)
    setup = driver.setup_fit(hmm, key=key, n_restarts=n_restarts, max_iter=max_iter, tol=tol,
                             e_step=e_step, m_step=m_step, optimizer=optimizer,
                             m_step_iters=m_step_iters, block_size=block_size, progress=progress,
                             init_params=init_params, dtype=default_float_dtype(),
                             checkpoint=checkpoint, resume=resume, accelerate=accelerate,
                             caller="jaxem.hmm.fit")
    seqs = as_sequences(X, lengths, mask)
    method = inference.choose_method(method, seqs.X.shape[1])
    if seqs.rows.shape[0] < hmm.n_states:
        raise ValueError(f"n_states={hmm.n_states} but only {seqs.rows.shape[0]} observations")
    Xp, maskp, rows = _as_float(seqs)
    layout = SequenceLayout(*seqs.mask.shape, setup.block_size)
    # The chains' blocks do not depend on the number of restarts; only their order does.
    in_sequence = plan_restarts(setup.n_restarts, sharding.platform(Xp, None)).in_sequence
    static = dict(hmm=hmm, layout=layout, method=method, max_iter=setup.max_iter,
                  use_gradient=setup.use_gradient, m_step_iters=setup.m_step_iters,
                  rule=setup.rule, in_sequence=in_sequence, optimizer=setup.optimizer,
                  accelerate=setup.accelerate)
    saver, restore = setup.checkpointing(hmm, (seqs.X, seqs.mask),
                                         (layout.n_blocks, layout.rows_per_block, method))
    try:
        out, compile_s, run_s = programs.run_segmented(
            _program_jit, (setup.keys, setup.init_params, Xp, maskp, rows,
                           setup.loop_settings(Xp.dtype).tol), static, setup.progress,
            saver=saver, restore=restore, repeats=setup.n_restarts if in_sequence else 1,
            small_ops=True)  # a forward-backward scan: see compile_effort.compile_options
    except (TypeError, ValueError, IndexError) as err:
        # Say so when the emission cannot even score these observations (say a padded [B, T, D]
        # array given without its mask, read as one sequence of [T, D] observations).
        padded = mask is None and lengths is None and np.ndim(X) >= 3
        driver.diagnose_rows(hmm.emission, setup.keys[0], rows,
                             None if setup.init_params is None else setup.init_params["emission"],
                             err, hint="; padded sequences [B, T, ...] need mask=[B, T]"
                             if padded else "")
        raise
    except loop.Interrupted as stop:
        raise driver.interrupted(stop, setup) from None
    return driver.finish(out, setup, compile_time=compile_s, fit_time=run_s)


@functools.partial(precision.jit, static_argnames=("hmm", "layout", "method"))
def _posterior_compiled(params, X, mask, *, hmm, layout, method):
    post = posteriors(hmm, params, layout.observation_blocks(X), mask, layout, method)
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
        layout=SequenceLayout(*seqs.mask.shape), method=inference.choose_method(method, Xp.shape[1]))
    return seqs.unpad(np.asarray(marginals)), np.asarray(ll)


@functools.partial(precision.jit, static_argnames=("hmm", "layout"))
def _viterbi_compiled(params, X, mask, *, hmm, layout):
    Xb = layout.observation_blocks(X)
    dens = jax.lax.map(lambda xb: hmm.emission.log_joint_matrix(params["emission"], xb), Xb)
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
                                          Xp, maskp, hmm=hmm, layout=SequenceLayout(*seqs.mask.shape))
    return seqs.unpad(np.asarray(states)), np.asarray(log_probs)


@functools.partial(precision.jit, static_argnames=("hmm", "n_steps"))
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
