"""The Baum-Welch pass: what one sweep over a batch of sequences computes, for any runner.

One sweep at parameters θ evaluates every emission density in row blocks, runs forward-backward on
all sequences at once (``vmap``), and sums what the M-step needs: expected initial-state and
transition counts, and either the emission's sufficient statistics (closed form) or the per-step
posteriors (gradient M-step). All of it is additive over sequences, so the same
:class:`jaxem.core.passes.Pass` runs in memory (:func:`jaxem.hmm.fit`) and in chunks of sequences
(:func:`jaxem.fit_chunked`, through :func:`chunk_parts`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..core import blocks, precision, sharding
from ..core import constraints as C
from ..core.ascent import gradient_m_step
from ..core.loop import Ascent
from ..core.passes import ChunkParts, Pass, register_chunk_parts
from . import inference
from .model import HMM, check_lengths

Array = jax.Array

# Posteriors below exp(-80) become exactly 0: float32 subnormals slow the statistics' products
# many times on CPUs and are below the resolution of any sum they enter.
_FLUSH = float(np.exp(-80.0))


class SequenceLayout:
    """Static shape of the padded data, hashable for ``jit``: ``B`` sequences of ``T`` steps,
    flattened to ``B * T`` rows in ``n_blocks`` blocks of ``rows_per_block`` (the last block padded)."""

    def __init__(self, n_seq: int, n_steps: int, block_size: int | None = None):
        self.n_seq, self.n_steps = n_seq, n_steps
        self.n_blocks, self.rows_per_block = blocks.plan_blocks(n_seq * n_steps, block_size)

    def _key(self):
        return (self.n_seq, self.n_steps, self.n_blocks, self.rows_per_block)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, SequenceLayout) and self._key() == other._key()

    def observation_blocks(self, X: Array) -> Array:
        """``[B, T, ...]`` observations as ``[n_blocks, rows, ...]`` (padding copies a real row)."""
        flat = X.reshape((self.n_seq * self.n_steps,) + X.shape[2:])
        return blocks.to_blocks(flat, jnp.zeros(flat.shape[:1], X.dtype), self.n_blocks,
                                 self.rows_per_block)[0]

    def step_blocks(self, values: Array) -> Array:
        """Per-step ``values [B, T, ...]`` as ``[n_blocks, rows, ...]``, zero on the padding."""
        flat = values.reshape((self.n_seq * self.n_steps,) + values.shape[2:])
        pad = self.n_blocks * self.rows_per_block - flat.shape[0]
        if pad:
            flat = jnp.concatenate([flat, jnp.zeros((pad,) + flat.shape[1:], flat.dtype)])
        return flat.reshape((self.n_blocks, self.rows_per_block) + flat.shape[1:])

    def unblock(self, values: Array) -> Array:
        """``[n_blocks, rows, ...]`` back to ``[B, T, ...]``."""
        flat = values.reshape((-1,) + values.shape[2:])[: self.n_seq * self.n_steps]
        return flat.reshape((self.n_seq, self.n_steps) + values.shape[2:])


def _emission_densities(hmm: HMM, params, Xb: Array, layout: SequenceLayout) -> Array:
    """``[B, T, K]`` emission log-densities, evaluated one row block at a time (a block's
    temporaries stay in cache)."""
    dens = jax.lax.map(lambda xb: hmm.emission.log_joint_matrix(params["emission"], xb), Xb)
    return layout.unblock(dens)


def posteriors(hmm: HMM, params, Xb: Array, mask: Array, layout: SequenceLayout, method: str,
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
    """:func:`posteriors` from the emission log-densities ``dens [B, T, K]``."""
    initial, transition = params["initial"], params["transition"]
    if temperature is not None:
        initial, transition = initial ** (1 / temperature), transition ** (1 / temperature)
        dens = dens / temperature
    fb = functools.partial(inference.forward_backward, method=method)
    return jax.vmap(fb, in_axes=(None, None, 0, 0))(initial, transition, dens, mask)


def _sweep(hmm: HMM, params, data, temperature, *, layout: SequenceLayout, method: str,
           use_gradient: bool, hard: bool):
    """``(log-likelihood, (chain counts, emission statistics | blocked posteriors))`` at
    ``params`` over ``data = (Xb [n_blocks, rows, ...], mask [B, T])``; hard EM: the best paths'
    log-joint, the sums wrapped in :class:`jaxem.core.blocks.HardStats`."""
    Xb, mask = data
    if hard:
        return _viterbi_pass(hmm, params, Xb, mask, layout, use_gradient)
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
    chain = {"initial": jnp.sum(post.marginals[:, 0], axis=0),
             "transition": jnp.sum(post.transitions, axis=0)}
    marginals = jnp.where(post.marginals > _FLUSH, post.marginals, 0.0)
    return log_likelihood, (chain, _emission_aux(hmm, params, Xb, layout, marginals, use_gradient))


def _emission_aux(hmm: HMM, params, Xb: Array, layout: SequenceLayout, marginals: Array,
                  use_gradient: bool):
    """What the emission's M-step needs from per-step state weights ``marginals [B, T, K]``:
    blocked posteriors (gradient M-step) or summed sufficient statistics (closed form)."""
    Rb = layout.step_blocks(marginals)
    if use_gradient:
        return Rb
    return blocks.sum_over_blocks(functools.partial(hmm.emission.suff_stats, params["emission"]),
                                    (Xb, Rb))


def _viterbi_pass(hmm: HMM, params, Xb: Array, mask: Array, layout: SequenceLayout, use_gradient: bool):
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
    fingerprint = blocks.assignment_fingerprint(
        layout.unblock(Xb).reshape(n_seq * n_steps, -1), paths.reshape(-1),
        mask.reshape(-1).astype(dens.dtype), hmm.n_states)
    aux = (chain, _emission_aux(hmm, params, Xb, layout, onehot, use_gradient))
    return jnp.sum(scores), blocks.HardStats(aux, fingerprint)


def _m_step(hmm: HMM, params, aux, *, Xb: Array | None, use_gradient: bool, optimizer,
            m_step_iters: int):
    """Closed-form chain update (Dirichlet MAP) and the emission's closed-form or gradient one."""
    chain, emission_aux = blocks.statistics(aux)
    initial = chain_probabilities(chain["initial"], params["initial"], hmm.initial_concentration)
    transition = chain_probabilities(chain["transition"], params["transition"],
                                     hmm.transition_concentration)
    if use_gradient:
        # The chain's update is exact, so the emission's gap is the whole M-step's.
        ascent = gradient_m_step(hmm.emission, params["emission"], Xb, emission_aux,
                                 optimizer, m_step_iters)
        emission, gap = ascent.params, ascent.gap
    else:
        emission, gap = hmm.emission.maximize(emission_aux, params["emission"]), None
    new = {"initial": initial, "transition": transition, "emission": emission}
    for path in hmm.frozen:
        new = _replaced(new, path, functools.reduce(lambda tree, key: tree[key], path, params))
    return new if gap is None else Ascent(new, gap)


def _replaced(tree: dict, path: tuple, value) -> dict:
    """``tree`` with the entry at ``path`` (dict keys) set to ``value``."""
    if not path:
        return value
    return {**tree, path[0]: _replaced(tree[path[0]], path[1:], value)}


def chain_probabilities(counts: Array, previous: Array, concentration) -> Array:
    """The chain's M-step, row by row, as hmmlearn's: ``p ∝ max(counts + α - 1, 0)``.

    A probability that is exactly 0 stays 0 (a structural zero: a left-right chain keeps its
    shape, and no floor is added), and a row with nothing to normalise (a state never left, or
    only left by a sequence's end: counts within round-off of the total) keeps its previous
    values, since the data say nothing of it (hmmlearn leaves such a row all zero, with a
    warning).

    Args:
        counts: ``[K]`` expected initial-state counts or ``[K, K]`` transition counts.
        previous: the current probabilities, same shape.
        concentration: Dirichlet ``α`` (a float, or an array broadcasting to ``counts``).

    Returns:
        The new probabilities, rows on the simplex.
    """
    pseudo = jnp.maximum(counts + (jnp.asarray(concentration, counts.dtype) - 1.0), 0.0)
    pseudo = jnp.where(previous == 0, 0.0, pseudo)
    total = jnp.sum(pseudo, axis=-1, keepdims=True)
    # A row whose counts are within round-off of all the counts is a row with no evidence (in
    # float64 a state entered only at sequence ends still gets ~1e-50 of outgoing counts).
    evidence = total > jnp.finfo(counts.dtype).eps * jnp.sum(pseudo)
    return jnp.where(evidence, pseudo / jnp.where(evidence, total, 1.0), previous)


def hmm_pass(hmm: HMM, layout: SequenceLayout, method: str, *, hard: bool = False,
             use_gradient: bool = False, optimizer=None, m_step_iters: int = 1,
             Xb: Array | None = None) -> Pass:
    """The :class:`jaxem.core.passes.Pass` of ``hmm`` over sequences laid out by ``layout``; its
    data are ``(Xb [n_blocks, rows, ...], mask [B, T])``. A gradient M-step needs the
    observation blocks ``Xb`` (in memory)."""
    if not use_gradient:
        return _closed_form_pass(hmm, layout, method, hard)
    sweep = functools.partial(_sweep, hmm, layout=layout, method=method, use_gradient=True,
                              hard=hard)
    m_step = functools.partial(_m_step, hmm, Xb=Xb, use_gradient=True, optimizer=optimizer,
                               m_step_iters=m_step_iters)
    # XLA partitions the vmapped forward-backward by sequences; its scans' carries are not
    # written for shard_map.
    return Pass(sweep, m_step, hmm.log_prior, additive=False, shard_map=False)


# One Pass object per (model, layout, method, rule), so runners that compile per pass reuse their
# programs.
@functools.cache
def _closed_form_pass(hmm: HMM, layout: SequenceLayout, method: str, hard: bool) -> Pass:
    sweep = functools.partial(_sweep, hmm, layout=layout, method=method, use_gradient=False,
                              hard=hard)
    m_step = functools.partial(_m_step, hmm, Xb=None, use_gradient=False, optimizer=None,
                               m_step_iters=1)
    return Pass(sweep, m_step, hmm.log_prior, shard_map=False)


def chain_constraints(hmm: HMM) -> dict:
    """The constraint pytree of an HMM's parameters: the chain's probability vectors (each row of
    ``transition`` one simplex) and the emission's own constraints."""
    return {"initial": C.simplex, "transition": C.simplex, "emission": hmm.emission.constraints}


@functools.cache
def _chunk_pass(hmm: HMM, layout: SequenceLayout, method: str) -> Pass:
    """The pass over chunks that arrive as ``[B, T, ...]`` sequences (split by sequence over the
    devices), cut into row blocks on the device."""
    em_pass = hmm_pass(hmm, layout, method)

    def sweep(params, data, temperature):
        return em_pass.sweep(params, (layout.observation_blocks(data[0]), data[1]), temperature)

    return em_pass._replace(sweep=sweep)


def uniform_start(hmm: HMM, emission, dtype):
    """``[R]`` restarts' parameters from ``[R]`` emission parameters and the uniform chain."""
    n = jax.tree.leaves(emission)[0].shape[0]
    chain = hmm.uniform_chain(dtype)
    return {**jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), chain),
            "emission": emission}


@functools.partial(precision.jit, static_argnames=("hmm",))
def _initialise(keys, sample, *, hmm):
    return uniform_start(hmm, jax.vmap(hmm.init, in_axes=(0, None))(keys, sample), sample.dtype)


def chunk_parts(hmm: HMM, source, *, lengths, chunk_size, block_size, mesh, dtype, rule,
                use_gradient, sample_weight, labels, method, default_chunk_rows: int) -> ChunkParts:
    """How a chunked fit reads ``source`` for ``hmm``: sequences (``lengths``, default one) in
    chunks of ``chunk_size`` sequences, each padded to the longest."""
    if use_gradient:
        raise ValueError("chunked HMM fits need a closed-form emission M-step")
    if sample_weight is not None or labels is not None or rule.hard or rule.annealing is not None:
        raise ValueError("chunked HMM fits take no sample_weight or labels and only "
                         "e_step='soft'")
    if not source.indexable:
        raise ValueError("a chunked HMM fit reads sequences by row range: give an array, a memmap "
                         "or a .npy path")
    n_rows = source.n_rows
    lengths = np.array([n_rows]) if lengths is None else check_lengths(lengths, n_rows)
    if n_rows < hmm.n_states:
        raise ValueError(f"n_states={hmm.n_states} but only {n_rows} observations")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    T, B = int(lengths.max()), lengths.shape[0]
    per_chunk = chunk_size or max(1, min(B, default_chunk_rows // T))
    shards = sharding.n_shards(mesh)
    per_chunk = shards * -(-per_chunk // shards)
    layout = SequenceLayout(per_chunk, T, block_size)
    steps = np.arange(T)

    def read():
        for b0 in range(0, B, per_chunk):
            b1 = min(b0 + per_chunk, B)
            lo, hi = starts[b0], starts[b1 - 1] + lengths[b1 - 1]
            X = source.rows(int(lo), int(hi), dtype=dtype)
            # Padded steps, and the empty sequences that fill a short last chunk, read their
            # chunk's first rows: finite under any emission, and masked out.
            local = blocks.pad_rows(starts[b0:b1] - lo, per_chunk, 0)
            n = blocks.pad_rows(lengths[b0:b1], per_chunk, 0)
            mask = steps[None, :] < n[:, None]
            index = np.where(mask, local[:, None] + steps[None, :], local[:, None])
            yield sharding.put_blocks(X[index], mesh), sharding.put_blocks(mask, mesh)

    def initialise(keys, rng, init_size):
        _, sample = source.sample(init_size, rng, dtype)
        return _initialise(keys, jnp.asarray(sample), hmm=hmm)

    return ChunkParts(_chunk_pass(hmm, layout, inference.choose_method(method, T)), read,
                      initialise, constraints=chain_constraints(hmm))


register_chunk_parts(HMM, chunk_parts)
