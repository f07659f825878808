"""Choosing the number of components: fit every ``K``, compare BIC and AIC.

``BIC = -2 log p(X | θ̂) + p log N`` and ``AIC = -2 log p(X | θ̂) + 2 p``, with ``p`` the number of
free parameters and ``N`` the (weighted) number of rows. ``p`` is counted from the model's
constraints: a parameter on the simplex of size ``K`` has ``K - 1`` free values, a Cholesky factor
``D (D + 1) / 2``, a constraint with an ``n_free(shape)`` method that many (factor loadings,
identified only up to a rotation: :class:`jaxem.models.factor_analysers.Loadings`), every other
leaf one per entry.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from ..core import constraints as C
from ..core.inference import FitResult, fit
from ..core.model import Model
from ..core.validation import check_positive_int, check_sample_weight


def count_free_parameters(model: Model, params: Any) -> int:
    """Free parameters of ``params`` (one restart's pytree) under ``model.constraints``.

    Raises:
        ValueError: the model declares no constraints, so the count is unknown (a simplex or a
            fixed leaf would be miscounted): pass ``n_parameters`` to :func:`select_components`.
    """
    if model.constraints is None:
        raise ValueError(f"model {model.name!r} declares no constraints, so its number of free "
                         "parameters is unknown; pass n_parameters=callable(params) -> int")

    def count(constraint, leaf):
        shape = tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)
        if hasattr(constraint, "n_free"):
            return constraint.n_free(shape)
        if constraint is C.simplex:
            return math.prod(shape[:-1]) * (shape[-1] - 1)
        if constraint is C.cholesky:
            return math.prod(shape[:-2]) * shape[-1] * (shape[-1] + 1) // 2
        return math.prod(shape)

    counts = jax.tree.map(lambda c, sub: sum(count(c, leaf) for leaf in jax.tree.leaves(sub)),
                          model.constraints, params, is_leaf=lambda n: isinstance(n, C.Constraint)
                          or n is None)
    return int(sum(jax.tree.leaves(counts)))


@dataclasses.dataclass(frozen=True)
class ComponentSelection:
    """What :func:`select_components` returns.

    Attributes:
        table: one dict per ``K`` with ``k``, ``log_likelihood`` (total, of the best restart;
            the penalised one when the model has a ``log_prior``),
            ``bic``, ``aic``, ``n_parameters``, ``best_restart``, ``compile_s`` (seconds compiling
            that fit's program; 0 when a program for its shapes was already compiled) and
            ``fit_s`` (seconds it ran).
        best_k: the ``K`` with the lowest value of ``criterion``.
        criterion: ``"bic"`` or ``"aic"``.
        fits: ``{k: FitResult}`` for every ``K`` tried.
    """

    table: list
    best_k: int
    criterion: str
    fits: dict

    @property
    def best(self) -> FitResult:
        """The fit at ``best_k``."""
        return self.fits[self.best_k]

    def column(self, name: str) -> np.ndarray:
        """One column of :attr:`table` as an array ``[len(ks)]``."""
        return np.array([row[name] for row in self.table])

    def __str__(self) -> str:
        lines = [f"{'K':>3} {'log-likelihood':>15} {'BIC':>12} {'AIC':>12} {'params':>7} {'best':>5} "
                 f"{'compile s':>9} {'fit s':>7}"]
        for row in self.table:
            mark = "  <-" if row["k"] == self.best_k else ""
            lines.append(f"{row['k']:>3} {row['log_likelihood']:>15.4f} {row['bic']:>12.4f} "
                         f"{row['aic']:>12.4f} {row['n_parameters']:>7} {row['best_restart']:>5} "
                         f"{row['compile_s']:>9.2f} {row['fit_s']:>7.2f}{mark}")
        return "\n".join(lines)


def select_components(model_factory: Callable[[int], Model], X, ks: Iterable[int] = range(1, 11),
                      *, criterion: str = "bic",
                      n_parameters: Callable[[Any], int] | None = None,
                      **fit_kwargs) -> ComponentSelection:
    """Fit ``model_factory(k)`` for every ``k`` in ``ks`` and rank them by BIC (or AIC).

    Args:
        model_factory: ``k -> Model``, e.g. ``lambda k: jem.gaussian_mixture(k, "diag")``.
        X: data ``[N, ...]``.
        ks: the numbers of components to try.
        criterion: ``"bic"`` (default) or ``"aic"``, which picks ``best_k``.
        n_parameters: optional ``params -> int`` free-parameter count; by default counted from
            the model's constraints (:func:`count_free_parameters`).
        **fit_kwargs: passed to :func:`jaxem.fit` for every ``k`` (``key`` is required;
            ``n_restarts``, ``max_iter``, ``sample_weight``, ...).

    Returns:
        A :class:`ComponentSelection`; ``print`` it for the table.
    """
    if criterion not in ("bic", "aic"):
        raise ValueError(f"criterion must be 'bic' or 'aic', got {criterion!r}")
    ks = [check_positive_int(k, "every k in ks") for k in ks]
    if not ks:
        raise ValueError("ks is empty; give at least one number of components")
    if "key" not in fit_kwargs:
        raise ValueError("select_components needs a PRNG key, e.g. key=jax.random.key(0)")
    n_rows = np.shape(X)[0]
    weights = check_sample_weight(fit_kwargs.get("sample_weight"), n_rows)
    n_eff = float(n_rows if weights is None else weights.sum())
    table, fits = [], {}
    for k in ks:
        model = model_factory(k)
        result = fit(model, X, **fit_kwargs)
        p = (count_free_parameters(model, result.params) if n_parameters is None
             else int(n_parameters(result.params)))
        ll = result.log_likelihood
        table.append({"k": k, "log_likelihood": ll, "bic": -2 * ll + p * math.log(n_eff),
                      "aic": -2 * ll + 2 * p, "n_parameters": p,
                      "best_restart": result.best_restart, "compile_s": result.compile_time,
                      "fit_s": result.fit_time})
        fits[k] = result
    best = min(table, key=lambda row: row[criterion])["k"]
    return ComponentSelection(table=table, best_k=best, criterion=criterion, fits=fits)
