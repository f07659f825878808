"""What the ``jaxem`` command line prints about a fit: the summary and aligned tables."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Right-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]


def total_log_likelihood(est, X, fit_kwargs) -> float:
    """Total log-likelihood of ``X``: HMMs' ``score`` is a total already, mixtures' a mean."""
    score = est.score(X, **fit_kwargs)
    return score if "lengths" in inspect.signature(est.fit).parameters else score * X.shape[0]


def summary(est, X, names: Sequence[str], title: str, shown: dict, elapsed: float,
            fit_kwargs: dict | None = None, compiled: bool = False) -> list[str]:
    """The lines ``jaxem demo`` and ``jaxem fit`` print about a fitted estimator.

    Args:
        est: the fitted estimator; X: its data ``[N, D]``; names: the ``D`` column names.
        title: the first line; shown: the hyperparameters to show in the model line.
        elapsed: wall seconds of the fit; fit_kwargs: extra arguments of ``fit`` (HMM lengths).
        compiled: whether the fit compiled a program (said, since the time then includes it).
    """
    fit_kwargs = fit_kwargs or {}
    n, d = X.shape
    total = total_log_likelihood(est, X, fit_kwargs)
    model = ", ".join(f"{k}={v!r}" for k, v in shown.items()
                      if k not in ("n_restarts", "random_state", "verbose"))
    result = getattr(est, "fit_result_", None)
    lines = [title,
             f"  data            {n} samples x {d} features ({', '.join(names[:8])}"
             f"{', ...' if d > 8 else ''})",
             f"  model           {type(est).__name__}({model})"]
    if result is not None:
        r = len(result.converged)
        lines.append(f"  restarts        {r}, run as one vmapped program (seed {shown.get('random_state')}); "
                     f"best is #{result.best_restart}, {int(np.sum(result.converged))}/{r} converged")
    if getattr(est, "weight_concentration_", None) is not None:
        # A variational fit: its score is each row's part of the bound, and it has no BIC.
        lines += [f"  lower bound     {est.lower_bound_ * n:.4f} total (ELBO), "
                  f"{est.lower_bound_:.6f} per sample"]
    else:
        lines += [f"  log-likelihood  {total:.4f} total, {total / n:.6f} per sample",
                  f"  BIC             {est.bic(X, **fit_kwargs):.4f}",
                  f"  AIC             {est.aic(X, **fit_kwargs):.4f}"]
    lines += [f"  converged       {'yes' if est.converged_ else 'no (iteration limit reached)'}, "
              f"after {est.n_iter_} iterations"]
    timing = f"  fit time        {elapsed:.3f} s wall"
    if result is not None and getattr(result, "compile_time", None) is not None:
        preparing = "compiling" if compiled else "loading the compiled program"
        timing += f" ({result.compile_time:.3f} s {preparing}, {result.fit_time:.3f} s running EM)"
    if compiled:
        timing += "; compiling happens once per model and data shape"
    lines += [timing, ""]
    proba = np.asarray(est.predict_proba(X, **fit_kwargs), np.float64)
    weights = getattr(est, "weights_", None)
    if weights is None or np.shape(weights) != (est.n_components,):
        # e.g. GMMHMM's weights_ are per state and mixture component: the states' occupancy
        weights = proba.mean(axis=0)
    weights = np.asarray(weights, np.float64)
    means = getattr(est, "means_", None)
    if means is None or np.shape(means) != (est.n_components, d):
        # families without means_: the mean of the data under each component's responsibilities
        means = (proba.T @ X) / np.maximum(proba.sum(axis=0), 1e-300)[:, None]
    shown_d = min(d, 8)
    header = ["component", "weight", *(f"mean {name}" for name in names[:shown_d])]
    rows = [[str(c), f"{w:.4f}", *(f"{m:.4f}" for m in np.asarray(means)[c, :shown_d])]
            for c, w in enumerate(weights)]
    return lines + ["  " + line for line in format_table(header, rows)]
