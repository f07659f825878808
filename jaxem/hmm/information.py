"""An HMM's log-likelihood for information matrices (see :mod:`jaxem.core.information`): summed
over blocks of whole sequences (sequences are the independent units), each by the forward pass;
registered for :class:`HMM` when :mod:`jaxem.hmm` is imported."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ..core import constraints as C
from ..core.blocks import plan_blocks, to_blocks
from ..core.information import Likelihood, register_likelihood
from . import inference
from .model import HMM, as_sequences


def constraints_of(hmm: HMM) -> dict:
    """The constraint pytree of an HMM's parameters, chain and emission."""
    return {"initial": C.simplex, "transition": C.simplex, "emission": hmm.emission.constraints}


def hmm_likelihood(hmm: HMM, X, sample_weight, block_size, lengths=None, mask=None) -> Likelihood:
    """The :class:`jaxem.core.information.Likelihood` of ``hmm`` on rows ``X`` with ``lengths``
    (or padded ``X [B, T, ...]`` with ``mask``); ``sample_weight`` is per sequence."""
    seqs = as_sequences(X, lengths, mask)
    n_seq, n_steps = seqs.mask.shape
    weights = jnp.ones((n_seq,)) if sample_weight is None else jnp.asarray(sample_weight)
    if weights.shape != (n_seq,):
        raise ValueError(f"an HMM's sample_weight is one weight per sequence, shape ({n_seq},); got "
                         f"{weights.shape}")
    n_blocks, per_block = plan_blocks(n_seq, max(1, (block_size or 8192) // n_steps))
    Xb, wb = to_blocks(jnp.asarray(seqs.X, jnp.result_type(float)), weights, n_blocks, per_block)
    maskb, _ = to_blocks(jnp.asarray(seqs.mask), weights, n_blocks, per_block)
    units, block_ll = _functions(hmm)
    return Likelihood((Xb, maskb, wb.astype(Xb.dtype)), block_ll, units, constraints_of(hmm),
                      hmm.log_prior)


@functools.cache
def _functions(hmm: HMM):
    # One pair per HMM, so the compiled information programs are reused.
    def units(params, block):
        X_seq, mask_seq, w = block
        log_obs = jax.vmap(lambda x: hmm.emission.log_joint_matrix(params["emission"], x))(X_seq)
        ll = jax.vmap(inference.log_likelihood, in_axes=(None, None, 0, 0))(
            params["initial"], params["transition"], log_obs, mask_seq)
        return ll, w

    def block_ll(params, block):
        ll, w = units(params, block)
        return jnp.sum(jnp.where(w > 0, w * ll, 0.0))

    return units, block_ll


register_likelihood(HMM, hmm_likelihood, constraints_of)
