"""Pieces every mixture family's closed-form M-step shares."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# Up to this many features, :func:`centred_moments` lays the rows along the minor axis.
ROW_MINOR_MAX_FEATURES = 5


def empty_components(nk: Array) -> tuple[Array, Array]:
    """Which components received (numerically) no data, and counts safe to divide by.

    Args:
        nk: ``[K]`` summed (weighted) responsibilities of each component.

    Returns:
        ``(empty [K] bool, safe_nk [K])``. An empty component should keep its previous parameters
        (its weight then goes to about 0); ``safe_nk`` is ``nk`` plus a few ulps so divisions stay
        finite.
    """
    eps = jnp.finfo(nk.dtype).eps
    return nk <= 10 * eps * jnp.sum(nk), nk + 10 * eps


def mixing_weights(nk: Array, dirichlet_alpha: float = 1.0) -> Array:
    """M-step for the mixing weights: the mode of their posterior under a symmetric Dirichlet prior.

    ``w_k = (N_k + α - 1) / (Σ_j N_j + K (α - 1))``; ``α = 1`` (the default, a flat prior) gives the
    maximum-likelihood ``N_k / N``. ``α > 1`` keeps every weight away from 0.

    Args:
        nk: ``[K]`` summed (weighted) responsibilities.
        dirichlet_alpha: the prior's concentration ``α >= 1`` (a Python float, checked by callers).

    Returns:
        ``[K]`` weights on the simplex, each strictly positive.
    """
    _, safe_nk = empty_components(nk)
    pseudo = safe_nk + (dirichlet_alpha - 1.0)
    return pseudo / jnp.sum(pseudo)


def dirichlet_log_prior(weights: Array, dirichlet_alpha: float = 1.0) -> Array:
    """Unnormalised log density ``(α - 1) Σ_k log w_k`` of the symmetric Dirichlet prior (scalar);
    added to the log-likelihood so a MAP fit's history is monotone."""
    return (dirichlet_alpha - 1.0) * jnp.sum(jnp.log(weights))


def centred_moments(X: Array, means: Array | None, weights: Array,
                    full: bool = True) -> tuple[Array, Array]:
    """Weighted moments of rows about each component's own centre, without float32 cancellation.

    Args:
        X: ``[B, D]`` rows.
        means: ``[K, D]`` centres ``m_k`` (fixed during a pass, so the moments add over blocks);
            ``None``: moments about the origin (a weighted Gram, as least squares needs).
        weights: ``[B, K]`` non-negative weights ``w_nk`` (responsibilities, times any scale; a
            negative one gives NaN moments, which fail the fit rather than pass unseen).
        full: the full second moment, else its diagonal.

    Returns:
        ``(first [K, D], second)``: ``Σ_n w_nk (x_n - m_k)`` and ``Σ_n w_nk (x_n - m_k)(x_n - m_k)^T``
        (``[K, D, D]``) or its diagonal (``[K, D]``).
    """
    # One array, sqrt(w) (x - m_k), serves both moments: its Gram is the second and sqrt(w)
    # times it the first. Weighting one of two centred copies by w instead made XLA keep both and
    # recompute the posterior inside the loop over rows, a slower pass. sqrt(w)² is w to a few
    # ulps.
    root = jnp.sqrt(weights).T                                   # [K, B]
    if X.shape[1] <= ROW_MINOR_MAX_FEATURES:
        # Rows along the minor axis, [K, D, B]: up to 5 features XLA:CPU runs these batched
        # products faster that way (most at 2-3 features, level at 1); from 6 on it loses for
        # some K.
        centred = X.T[None] if means is None else X.T[None] - means[:, :, None]
        weighted, rows, other = root[:, None, :] * centred, "kdb", "keb"
    else:
        centred = X[None, :, :] if means is None else X[None, :, :] - means[:, None, :]
        weighted, rows, other = root[:, :, None] * centred, "kbd", "kbe"
    first = jnp.einsum(f"kb,{rows}->kd", root, weighted)
    if full:
        return first, jnp.einsum(f"{rows},{other}->kde", weighted, weighted)
    return first, jnp.einsum(f"{rows},{rows}->kd", weighted, weighted)
