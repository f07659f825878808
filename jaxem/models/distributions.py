"""Per-feature component families: the pieces product-form mixtures are assembled from.

A :class:`Feature` describes how ``D`` columns behave *independently* inside one component: their
log-density, their additive expected sufficient statistics and the closed-form (or generalized)
M-step. ``poisson_mixture``, ``gamma_mixture``, ... are one feature over all columns;
``independent_mixture`` is several side by side. Parameters are dicts of ``[K, D]`` arrays
(``[K, D, C]`` for categorical probabilities).

Missing values: ``log_prob`` and ``stats`` take an observed mask ``M [N, D]`` (1 observed, 0
missing; ``None`` when nothing is missing) and data whose missing entries hold ``fill_value``. A
missing entry's term is dropped from the log-density, which marginalises it exactly because the
columns are independent given the component, and it adds nothing to the statistics.

Log-densities are written as exponential-family matrix products (``T(X) @ η^T - M @ A(η)^T``): the
same numbers as ``jax.scipy.stats`` (the tests check this) without an ``[N, K, D]`` temporary. The
Gaussian feature whitens first instead, so that float32 stays accurate far from the origin.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma, gammaln, polygamma

from ..core import constraints as C
from .common import empty_components

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class Feature:
    """A family of independent per-column densities, the contract product mixtures share.

    Compares and hashes by identity (the constructors below are memoised), so models built from
    the same features are the same compiled-cache key.

    Attributes:
        name: short name (``"poisson"``, ...).
        default_params: ``(K, D, dtype) -> params``: neutral starting values, also what a column
            with no observed data keeps.
        log_prob: ``(params, X [N, D], M [N, D] | None) -> [N, K]``: ``Σ_d M_nd log p(x_nd | k)``.
        stats: ``(params, X, M, resp [N, K]) -> stats``: additive statistics (``[K, D, ...]``).
        maximize: ``(stats, params) -> params``: M-step; a ``(k, d)`` with no data keeps ``params``.
        constraints: constraint dict matching ``params`` (for the gradient M-step).
        fill_value: a valid value to put in missing entries before ``log_prob``/``stats``.
        n_free: ``D -> `` free parameters of one component over ``D`` columns.
        check: ``values [N, D] (NaN = missing) -> (bad [N, D] bool, requirement str)``.
        sample: ``(rng, params with leading [n]) -> [n, D]`` draws (NumPy).
    """

    name: str
    default_params: Callable
    log_prob: Callable
    stats: Callable
    maximize: Callable
    constraints: Any
    fill_value: float
    n_free: Callable[[int], int]
    check: Callable
    sample: Callable


# -- shared pieces ---------------------------------------------------------------------------------
def _row_terms(M: Array | None, V: Array) -> Array:
    """``[N, K]`` (or ``[1, K]``) ``Σ_d M_nd V_kd``: a per-(component, column) term kept only where
    the entry is observed."""
    return jnp.sum(V, axis=1)[None] if M is None else M @ V.T


def _counts(M: Array | None, resp: Array, n_cols: int) -> Array:
    """``[K, D]`` observed responsibility mass per column, ``Σ_n r_nk M_nd``."""
    if M is None:
        return jnp.broadcast_to(jnp.sum(resp, axis=0)[:, None], (resp.shape[1], n_cols))
    return resp.T @ M


def _masked(M: Array | None, X: Array) -> Array:
    return X if M is None else M * X


def _ratio(num: Array, count: Array, old: Array) -> Array:
    """``num / count`` per ``(k, d)``; a ``(k, d)`` that saw (numerically) no data keeps ``old``."""
    empty, safe = jax.vmap(empty_components, in_axes=1, out_axes=1)(count)
    extra = num.ndim - count.ndim
    empty = empty.reshape(empty.shape + (1,) * extra)
    return jnp.where(empty, old, num / safe.reshape(safe.shape + (1,) * extra))


def _safe_log(p: Array) -> Array:
    # A parameter of exactly 0 gives log(tiny) instead of -inf so that 0 * log p stays 0 in the
    # products; the entry then has (numerically) zero probability, as it should.
    return jnp.log(jnp.maximum(p, jnp.finfo(p.dtype).tiny))


def bernoulli_log_prob(probs: Array, X: Array, trials) -> Array:
    """``[N, K]`` ``Σ_d x_nd log p_kd + (t_nd - x_nd) log(1 - p_kd)`` for counts ``X [N, D]`` of
    ``trials`` (a number of trials for every entry, or ``[N, D]`` per entry, 0 where missing),
    without the binomial coefficient: the one Bernoulli kernel of the Bernoulli mixture and of
    Bernoulli columns in a product mixture.

    Written as ``x.(log p - log q) + t.log q``: one product over the rows instead of two, and no
    ``[N, D]`` temporary for ``t - x``, the costs that dominate a wide E-step.
    """
    log_p, log_q = _safe_log(probs), _safe_log(1.0 - probs)
    per_trial = (trials * jnp.sum(log_q, axis=-1) if jnp.ndim(trials) == 0
                 else trials @ log_q.T)
    return X @ (log_p - log_q).T + per_trial


def _bad_integers(values: np.ndarray, high: np.ndarray | float) -> np.ndarray:
    observed = ~np.isnan(values)
    v = np.where(observed, values, 0.0)
    return observed & ((v < 0) | (v >= high) | (v != np.round(v)))


def log_minus_digamma(a: Array) -> tuple[Array, Array]:
    """``g(a) = log a - ψ(a)`` and ``g'(a)`` (decreasing, convex, ``g(a) ~ 1/(2a)``).

    For ``a >= 8`` the asymptotic series is used: the direct difference of two nearly equal numbers
    loses every digit in float32 at large ``a``.
    """
    large = a >= 8.0
    a_small = jnp.where(large, 1.0, a)
    inv = 1.0 / jnp.where(large, a, 8.0)
    inv2 = inv * inv
    inv4 = inv2 * inv2
    series = (inv / 2 + inv2 / 12 - inv4 / 120 + inv4 * inv2 / 252 - inv4 * inv4 / 240
              + inv4 * inv4 * inv2 / 132)
    d_series = -(inv2 / 2 + inv2 * inv / 6 - inv4 * inv / 30 + inv4 * inv2 * inv / 42
                 - inv4 * inv4 * inv / 30 + 5 * inv4 * inv4 * inv2 * inv / 66)
    direct = jnp.log(a_small) - digamma(a_small)
    d_direct = 1.0 / a_small - polygamma(1, a_small)
    return jnp.where(large, series, direct), jnp.where(large, d_series, d_direct)


def solve_log_minus_digamma(target: Array, n_newton: int = 6) -> Array:
    """Solve ``log a - ψ(a) = target`` (elementwise, ``target > 0``) for ``a > 0``.

    The stationarity condition of both the gamma shape (``target = log mean(x) - mean(log x)``) and
    the Student-t degrees of freedom (``a = ν/2``). Starts from Minka's closed-form approximation
    (within 1.5%) and takes Newton steps, each kept above half the previous iterate.
    """
    target = jnp.maximum(target, 1e-12)
    a = (3.0 - target + jnp.sqrt((target - 3.0) ** 2 + 24.0 * target)) / (12.0 * target)

    def newton(_, a):
        g, dg = log_minus_digamma(a)
        return jnp.maximum(a - (g - target) / dg, 0.5 * a)

    return jax.lax.fori_loop(0, n_newton, newton, a)


# -- families --------------------------------------------------------------------------------------
@functools.cache
def poisson() -> Feature:
    """Poisson counts: ``params = {"rates": [K, D]}``; data non-negative integers."""

    def log_prob(params, X, M):
        rates = params["rates"]
        return (X @ _safe_log(rates).T - _row_terms(M, rates)
                - jnp.sum(_masked(M, gammaln(X + 1.0)), axis=1)[:, None])

    def stats(params, X, M, resp):
        return {"count": _counts(M, resp, X.shape[1]), "sum": resp.T @ X}

    def maximize(s, params):
        return {"rates": _ratio(s["sum"], s["count"], params["rates"])}

    return Feature(
        "poisson", lambda k, d, dt: {"rates": jnp.ones((k, d), dt)}, log_prob, stats, maximize,
        {"rates": C.positive}, 0.0, lambda d: d,
        lambda v: (_bad_integers(v, np.inf), "non-negative integers"),
        lambda rng, p: rng.poisson(p["rates"]).astype(np.float64))


@functools.cache
def exponential() -> Feature:
    """Exponential durations: ``params = {"rates": [K, D]}`` (mean ``1 / rate``); data ``>= 0``.

    A component whose rows are all 0 would have an infinite rate (an unbounded likelihood); its
    mean is kept at least ``1e-6`` times the column's overall mean, the exact maximiser of Q over
    that feasible set.
    """

    def log_prob(params, X, M):
        rates = params["rates"]
        return _row_terms(M, jnp.log(rates)) - X @ rates.T

    def stats(params, X, M, resp):
        return {"count": _counts(M, resp, X.shape[1]), "sum": resp.T @ X}

    def maximize(s, params):
        overall = jnp.sum(s["sum"], axis=0) / jnp.maximum(jnp.sum(s["count"], axis=0), 1e-30)
        floor = 1e-6 * overall + jnp.finfo(overall.dtype).tiny
        mean = jnp.maximum(_ratio(s["sum"], s["count"], 1.0 / params["rates"]), floor)
        return {"rates": 1.0 / mean}

    return Feature(
        "exponential", lambda k, d, dt: {"rates": jnp.ones((k, d), dt)}, log_prob, stats,
        maximize, {"rates": C.positive}, 0.0, lambda d: d,
        lambda v: (~np.isnan(v) & (np.nan_to_num(v) < 0), "non-negative values"),
        lambda rng, p: rng.exponential(1.0 / p["rates"]))


def _gamma_profile(shape: Array, mean: Array, mean_log: Array) -> Array:
    """Per-row Q of a gamma at ``shape`` with the rate maximised (``rate = shape / mean``)."""
    return shape * jnp.log(shape / mean) - gammaln(shape) + (shape - 1.0) * mean_log - shape


@functools.cache
def gamma() -> Feature:
    """Gamma magnitudes: ``params = {"shapes": [K, D], "rates": [K, D]}``; data ``> 0``.

    The shape has no closed form: the M-step solves ``log a - ψ(a) = log mean(x) - mean(log x)``
    (the profile likelihood is concave in ``a``) by Newton's method from the additive statistics
    ``Σr, Σr x, Σr log x``. It keeps the new shape when Newton converged (the exact maximiser) or
    when its profile Q is no lower than the old shape's (a generalized M-step that never
    decreases Q), then sets ``rate = shape / mean``.
    Shapes are capped at ``1e6`` (a component of identical values).
    """

    def log_prob(params, X, M):
        # Missing entries hold 1, so log x = 0 there; x itself is masked.
        a, b = params["shapes"], params["rates"]
        return (jnp.log(X) @ (a - 1.0).T - _masked(M, X) @ b.T
                + _row_terms(M, a * jnp.log(b) - gammaln(a)))

    def stats(params, X, M, resp):
        return {"count": _counts(M, resp, X.shape[1]), "sum": resp.T @ _masked(M, X),
                "sum_log": resp.T @ jnp.log(X)}

    def maximize(s, params):
        old_a, old_b = params["shapes"], params["rates"]
        mean = _ratio(s["sum"], s["count"], old_a / old_b)
        mean_log = _ratio(s["sum_log"], s["count"], digamma(old_a) - jnp.log(old_b))
        target = jnp.log(mean) - mean_log
        new_a = jnp.minimum(solve_log_minus_digamma(target), 1e6)
        # A converged Newton root is the exact maximiser (the profile is concave); otherwise keep
        # the step only if it does not lower Q. Deciding by the residual rather than by comparing
        # two nearly equal Q values keeps the update a smooth function of the statistics.
        residual = jnp.abs(log_minus_digamma(new_a)[0] - target)
        better = _gamma_profile(new_a, mean, mean_log) >= _gamma_profile(old_a, mean, mean_log)
        ok = jnp.isfinite(new_a) & ((residual <= 1e-4 * target) | better)
        a = jnp.where(ok, new_a, old_a)
        return {"shapes": a, "rates": a / mean}

    return Feature(
        "gamma", lambda k, d, dt: {"shapes": jnp.ones((k, d), dt), "rates": jnp.ones((k, d), dt)},
        log_prob, stats, maximize, {"shapes": C.positive, "rates": C.positive}, 1.0,
        lambda d: 2 * d, lambda v: (~np.isnan(v) & (np.nan_to_num(v, nan=1.0) <= 0),
                                    "positive values"),
        lambda rng, p: rng.gamma(p["shapes"], 1.0 / p["rates"]))


@functools.cache
def bernoulli() -> Feature:
    """Binary features: ``params = {"probs": [K, D]}``; data 0 or 1."""

    def log_prob(params, X, M):
        return bernoulli_log_prob(params["probs"], X, 1.0 if M is None else M)

    def stats(params, X, M, resp):
        return {"count": _counts(M, resp, X.shape[1]), "sum": resp.T @ X}

    def maximize(s, params):
        return {"probs": jnp.clip(_ratio(s["sum"], s["count"], params["probs"]), 0.0, 1.0)}

    return Feature(
        "bernoulli", lambda k, d, dt: {"probs": jnp.full((k, d), 0.5, dt)}, log_prob, stats,
        maximize, {"probs": C.unit_interval}, 0.0, lambda d: d,
        lambda v: (_bad_integers(v, 2.0), "0 or 1"),
        lambda rng, p: rng.binomial(1, p["probs"]).astype(np.float64))


@functools.cache
def gaussian(min_variance: float = 1e-6) -> Feature:
    """Independent normal columns: ``params = {"means": [K, D], "variances": [K, D]}``.

    Variances are kept at least ``min_variance``: the maximiser of Q over that set (Q is unimodal in
    the variance), so the M-step stays exact and a component cannot collapse onto one point.
    Statistics are moments about each component's previous mean (accurate in float32).
    """

    def log_prob(params, X, M):
        inv_sd = jax.lax.rsqrt(params["variances"])
        y = X[:, None, :] * inv_sd[None] - (params["means"] * inv_sd)[None]
        sq = jnp.sum(y * y, axis=-1) if M is None else jnp.einsum("nd,nkd->nk", M, y * y)
        return -0.5 * sq + _row_terms(M, jnp.log(inv_sd) - 0.5 * math.log(2 * math.pi))

    def stats(params, X, M, resp):
        centred = X[None] - params["means"][:, None]                    # [K, N, D]
        weight = resp.T[:, :, None] if M is None else resp.T[:, :, None] * M[None]
        first = jnp.sum(weight * centred, axis=1)
        return {"count": _counts(M, resp, X.shape[1]), "first": first,
                "second": jnp.sum(weight * centred * centred, axis=1)}

    def maximize(s, params):
        offset = _ratio(s["first"], s["count"], 0.0)
        var = _ratio(s["second"], s["count"], params["variances"] + offset ** 2) - offset ** 2
        return {"means": params["means"] + offset, "variances": jnp.maximum(var, min_variance)}

    return Feature(
        "gaussian",
        lambda k, d, dt: {"means": jnp.zeros((k, d), dt), "variances": jnp.ones((k, d), dt)},
        log_prob, stats, maximize, {"means": C.real, "variances": C.positive}, 0.0,
        lambda d: 2 * d, lambda v: (np.zeros(v.shape, bool), "finite numbers"),
        lambda rng, p: rng.normal(p["means"], np.sqrt(p["variances"])))


@functools.cache
def categorical(n_categories: tuple[int, ...]) -> Feature:
    """Categorical columns coded ``0 .. C_d - 1``: ``params = {"probs": [K, D, C]}`` with
    ``C = max_d C_d``; entries ``c >= C_d`` are padding with probability 0.

    Args:
        n_categories: ``(C_1, ..., C_D)``, one count per column.
    """
    n_categories = tuple(int(c) for c in n_categories)
    n_cols, width = len(n_categories), max(n_categories)
    valid = np.arange(width)[None, :] < np.asarray(n_categories)[:, None]        # [D, C]

    def one_hot(X):
        if X.shape[1] != n_cols:
            raise ValueError(f"categorical feature has n_categories for {n_cols} columns but the "
                             f"data have {X.shape[1]}")
        # Missing entries hold -1, whose one-hot row is all zeros: their term drops out.
        return jax.nn.one_hot(X.astype(jnp.int32), width, dtype=X.dtype).reshape(X.shape[0], -1)

    def log_prob(params, X, M):
        log_p = _safe_log(params["probs"]).reshape(params["probs"].shape[0], -1)
        return one_hot(X) @ log_p.T

    def stats(params, X, M, resp):
        k = resp.shape[1]
        return {"counts": (resp.T @ one_hot(X)).reshape(k, n_cols, width)}

    def maximize(s, params):
        counts = s["counts"]
        return {"probs": _ratio(counts, jnp.sum(counts, axis=-1), params["probs"])}

    def default_params(k, d, dt):
        uniform = valid / np.asarray(n_categories)[:, None]
        return {"probs": jnp.broadcast_to(jnp.asarray(uniform, dt), (k, n_cols, width))}

    def sample(rng, p):
        cdf = np.cumsum(p["probs"], axis=-1)
        u = rng.random(cdf.shape[:-1] + (1,)) * cdf[..., -1:]
        return np.minimum(np.sum(cdf <= u, axis=-1), np.asarray(n_categories) - 1).astype(float)

    return Feature(
        "categorical", default_params, log_prob, stats, maximize, {"probs": C.simplex}, -1.0,
        lambda d: sum(c - 1 for c in n_categories),
        lambda v: (_bad_integers(v, np.asarray(n_categories, float)[None, :]),
                   "integer codes 0 .. n_categories - 1"),
        sample)


FEATURES = {"poisson": poisson, "exponential": exponential, "gamma": gamma,
            "bernoulli": bernoulli, "gaussian": gaussian}
"""Families that need no per-column configuration, by name (``categorical`` needs counts)."""
