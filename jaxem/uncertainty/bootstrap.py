"""The bootstrap as one batched fit (Efron and Tibshirani 1993, "An Introduction to the Bootstrap").

Nonparametric replicates resample the rows: replicate ``b`` is the original rows with multinomial
counts as ``sample_weight`` (a row drawn twice has weight 2), so ``X`` is never copied. Parametric
replicates are fresh data sets drawn from the fitted model. Either way all replicates are one
:func:`jaxem.core.many.fit_batch` program, started from the original fit's parameters, and each
replicate's components are renumbered to the original's labels
(:func:`jaxem.uncertainty.match_components`) before any summary.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ..core.driver import as_data, n_components
from ..core.many import fit_batch
from ..core.result import FitResult
from ..core.runner import fit
from ..core.standard_errors import normal_quantile
from ..core.validation import check_positive_int, check_sample_weight, to_device
from .matching import check_component_leaves, match_components
from .sampling import mixture_sampler

KINDS = ("nonparametric", "parametric")


@functools.cache
def _draws(sampler: Callable, n_boot: int, n_rows: int) -> Callable:
    """``draws(key, params) -> [n_boot, n_rows, ...]``, compiled once per sampler and sizes."""
    return jax.jit(lambda key, params: jax.vmap(lambda k: sampler(k, params, n_rows))(
        jax.random.split(key, n_boot)))


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    """What :func:`bootstrap` returns.

    Attributes:
        estimate: the original fit's parameters.
        replicates: every replicate's parameters, components matched to ``estimate``'s labels,
            with a leading ``[n_boot]`` axis.
        standard_errors: the replicates' standard deviation, shaped like ``estimate``.
        kind: ``"nonparametric"`` or ``"parametric"``.
        fit: the replicates' batched :class:`jaxem.FitResult` (components as found, unmatched).
        original: the original fit's :class:`jaxem.FitResult`.
    """

    estimate: Any
    replicates: Any
    standard_errors: Any
    kind: str
    fit: FitResult
    original: FitResult

    def intervals(self, level: float = 0.95) -> tuple[Any, Any]:
        """``(lower, upper)`` percentile intervals at ``level``, each shaped like ``estimate``."""
        normal_quantile(level)
        tail = 50 * (1 - level)
        return (jax.tree.map(lambda r: np.percentile(r, tail, axis=0), self.replicates),
                jax.tree.map(lambda r: np.percentile(r, 100 - tail, axis=0), self.replicates))


def bootstrap(model, X, n_boot: int = 200, *, key, kind: str = "nonparametric",
              result: FitResult | None = None, sample_weight=None, sampler: Callable | None = None,
              match: bool = True, max_iter: int = 100, tol: float | None = 1e-6,
              **fit_options) -> BootstrapResult:
    """Bootstrap a mixture fit: ``n_boot`` refits, all one compiled program.

    Args:
        model: a mixture :class:`jaxem.Model`.
        X: ``[N, ...]`` the data.
        n_boot: replicates.
        key: a PRNG key (resampling; and the original fit's restarts when ``result`` is ``None``).
        kind: ``"nonparametric"`` (rows resampled with replacement, as multinomial weights on the
            same rows) or ``"parametric"`` (``N`` rows drawn from the fit per replicate).
        result: the original fit (default: ``jaxem.fit(model, X, n_restarts=4)``).
        sample_weight: optional ``[N]`` frequency weights (nonparametric: rows are drawn with
            probability proportional to them, ``round(Σ w)`` draws).
        sampler: for ``"parametric"``, ``sampler(key, params, n_rows) -> X [n_rows, ...]``
            (traceable); built in for Gaussian, Poisson and Bernoulli mixtures
            (:func:`jaxem.uncertainty.mixture_sampler`).
        match: renumber each replicate's components to the original's (leaves whose leading
            axis has length K are per component).
        max_iter, tol, fit_options: the replicates' fit settings (see :func:`jaxem.fit_many`).

    Returns:
        A :class:`BootstrapResult`; ``.intervals(level)`` gives percentile intervals.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be 'nonparametric' or 'parametric', got {kind!r}")
    n_boot = check_positive_int(n_boot, "n_boot", minimum=2)
    if kind == "parametric":
        sampler = sampler or mixture_sampler(model)
        if sample_weight is not None:
            raise ValueError("a parametric bootstrap draws new rows; sample_weight applies only to "
                             "kind='nonparametric'")
    rows = to_device(as_data(X, model))
    weights = check_sample_weight(sample_weight, rows.shape[0])
    k_fit, k_boot = jax.random.split(key)
    if result is None:
        # In the float type the replicates are fitted in (fit_batch's: JAX's default).
        result = fit(model, rows, key=k_fit, n_restarts=4, max_iter=max_iter, tol=tol,
                     sample_weight=weights, dtype=None)
    if match:   # before any refit: the matching must be possible
        check_component_leaves(model, result.params, rows, n_components(model, k_fit, rows))
    options = dict(fit_options, max_iter=max_iter, tol=tol, init_params=result.params)
    if kind == "nonparametric":
        p = np.full(rows.shape[0], 1.0 / rows.shape[0]) if weights is None else weights / weights.sum()
        n_draws = rows.shape[0] if weights is None else max(1, int(round(weights.sum())))
        # Counts drawn on the host (a NumPy generator seeded from the key): no program to compile.
        rng = np.random.default_rng(np.asarray(jax.random.key_data(k_boot)).ravel().tolist())
        counts = rng.multinomial(n_draws, p, size=n_boot)
        replicates = fit_batch(model, rows, counts.astype(rows.dtype), shared_rows=True,
                               **options)
    else:
        data = _draws(sampler, n_boot, rows.shape[0])(k_boot, result.params)
        replicates = fit_batch(model, data.astype(rows.dtype),
                               np.ones((n_boot, rows.shape[0]), rows.dtype), **options)
    params = replicates.params
    if match:
        params, _ = match_components(params, result.params, n_components(model, k_fit, rows))
    errors = jax.tree.map(lambda r: np.std(np.asarray(r), axis=0, ddof=1), params)
    return BootstrapResult(result.params, params, errors, kind, replicates, result)
