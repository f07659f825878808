"""The picture of EM: the log-likelihood, the lower bounds of successive E-steps, the iterates.

Along a one-parameter family ``θ(s)`` (for example the heads probability of one coin, everything
else fixed), EM is: at the iterate ``s_t`` take the posterior ``q_t = p(Z | X, θ(s_t))``; the bound
``L(q_t, θ(s)) = log p(X | θ(s)) - KL(q_t ‖ p(Z | X, θ(s)))`` lies below the log-likelihood
everywhere and touches it at ``s_t``; the next iterate ``s_{t+1}`` maximises that bound.
:func:`bound_trace` computes those curves (the numbers) and :func:`plot_bound` draws them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..core import inference as em
from ..core import precision
from ..core.model import Model


class BoundTrace(NamedTuple):
    """Curves of EM along a one-parameter family (all NumPy arrays).

    Attributes:
        grid: ``[G]`` parameter values ``s`` the curves are evaluated at.
        log_likelihood: ``[G]`` ``log p(X | θ(s))``.
        bounds: ``[T, G]`` ``L(q_t, θ(s))`` for the E-step at each iterate ``s_0 .. s_{T-1}``.
        iterates: ``[T + 1]`` the EM iterates ``s_0 .. s_T``.
        iterate_log_likelihood: ``[T + 1]`` ``log p(X | θ(s_t))``.
        bound_at_iterate: ``[T]`` ``L(q_t, θ(s_t))``, equal to ``iterate_log_likelihood[:T]``.
    """

    grid: np.ndarray
    log_likelihood: np.ndarray
    bounds: np.ndarray
    iterates: np.ndarray
    iterate_log_likelihood: np.ndarray
    bound_at_iterate: np.ndarray


def _argmax_1d(f: Callable, lo: float, hi: float, n_grid: int = 257, n_golden: int = 60) -> float:
    """Maximise a scalar function on ``[lo, hi]``: a dense grid, then golden-section refinement
    around the best grid point (the bound is concave in the parameters of the usual families, so
    this finds the M-step to round-off)."""
    xs = np.linspace(lo, hi, n_grid)
    values = np.asarray(jax.vmap(f)(jnp.asarray(xs)))
    i = int(np.nanargmax(values))
    a, b = xs[max(i - 1, 0)], xs[min(i + 1, n_grid - 1)]
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(n_golden):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if float(f(c)) >= float(f(d)):
            b = d
        else:
            a = c
    return 0.5 * (a + b)


def bound_trace(model: Model, X, params_of: Callable[[Any], Any], start: float,
                interval: tuple[float, float], n_steps: int = 4, n_grid: int = 200) -> BoundTrace:
    """Run EM along the family ``θ(s) = params_of(s)`` and record the curves of its picture.

    Args:
        model: a :class:`jaxem.Model`.
        X: data ``[N, ...]``.
        params_of: maps a scalar ``s`` (traced) to the model's parameter pytree.
        start: the first iterate ``s_0``.
        interval: ``(lo, hi)`` the range of ``s`` to draw and to search for each M-step.
        n_steps: EM iterations ``T``.
        n_grid: points ``G`` on which the curves are evaluated.

    Returns:
        A :class:`BoundTrace`.
    """
    lo, hi = (float(v) for v in interval)
    if not lo < start < hi:
        raise ValueError(f"start={start} must lie inside interval=({lo}, {hi})")
    X = jnp.asarray(X, em.default_float_dtype())

    def loglik(s):
        return em.log_likelihood(model, params_of(s), X)

    def bound(s, q):
        return em.elbo(model, params_of(s), X, q)

    grid = np.linspace(lo, hi, n_grid)
    iterates, bounds, at_iterate = [float(start)], [], []
    for _ in range(n_steps):
        s_t = iterates[-1]
        q_t, _ = em.posterior_rows(model, params_of(jnp.asarray(s_t, X.dtype)), X)
        bound_t = precision.jit(lambda s, q=q_t: bound(s, q))
        bounds.append(np.asarray(jax.vmap(bound_t)(jnp.asarray(grid, X.dtype))))
        at_iterate.append(float(bound_t(jnp.asarray(s_t, X.dtype))))
        iterates.append(_argmax_1d(bound_t, lo, hi))
    curve = np.asarray(jax.vmap(loglik)(jnp.asarray(grid, X.dtype)))
    iterate_ll = np.asarray([float(loglik(jnp.asarray(s, X.dtype))) for s in iterates])
    return BoundTrace(grid, curve, np.stack(bounds), np.asarray(iterates), iterate_ll,
                      np.asarray(at_iterate))


def plot_bound(trace: BoundTrace, ax=None, parameter_name: str = "θ"):
    """Draw a :class:`BoundTrace`: the log-likelihood, each E-step's bound, the iterates.

    Needs matplotlib (``pip install 'jaxem[plot]'``).

    Returns:
        The matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(7, 4.5)) if ax is None else ax.figure
    ax = fig.add_subplot(1, 1, 1) if ax is None else ax
    ax.plot(trace.grid, trace.log_likelihood, color="black", lw=2, label="log p(X | θ)")
    colors = plt.cm.viridis(np.linspace(0.15, 0.85, len(trace.bounds)))
    for t, (curve, color) in enumerate(zip(trace.bounds, colors, strict=True)):
        ax.plot(trace.grid, curve, color=color, lw=1.2,
                label=f"L(q_{t}, θ)")
        ax.plot([trace.iterates[t]], [trace.bound_at_iterate[t]], "o", color=color)
        ax.annotate("", xy=(trace.iterates[t + 1], np.interp(trace.iterates[t + 1], trace.grid,
                                                              curve)),
                    xytext=(trace.iterates[t], trace.bound_at_iterate[t]),
                    arrowprops=dict(arrowstyle="->", color=color, lw=0.8))
    ax.plot(trace.iterates, trace.iterate_log_likelihood, "k|", ms=14, label="EM iterates")
    # The bounds dive towards -inf away from their iterate; frame the likelihood curve instead.
    low, high = np.nanmin(trace.log_likelihood), np.nanmax(trace.log_likelihood)
    ax.set_ylim(low - 0.15 * (high - low), high + 0.1 * (high - low))
    ax.set_xlabel(parameter_name)
    ax.set_ylabel("log-likelihood and lower bounds")
    ax.set_title("EM climbs the likelihood through its lower bound")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig
