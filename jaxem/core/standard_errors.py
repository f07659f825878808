"""Standard errors and Wald intervals of a fit, from its observed information by the delta method.

The covariance of the minimal coordinates ``u`` (see :mod:`jaxem.core.information`) is the inverse
observed information; a quantity ``g(θ(u))`` (the parameters themselves, or an estimator's fitted
attributes such as covariances) gets ``Var g = J I^{-1} J^T`` with ``J = ∂g/∂u`` by ``jax.jacfwd``.
Before inverting, the information is scaled to unit diagonal and its condition number checked: a
matrix the data barely determine (a component with almost no weight, K too large, a fit that is
not at a maximum) is reported by the coordinate it fails on, never returned as NaN or huge numbers
without a word.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .blocks import map_row_blocks
from .information import (
    evaluate,
    hessian_block_rows,
    information_from,
    likelihood,
    model_coordinates,
    prepare,
)
from .model import Model


class IllConditionedWarning(UserWarning):
    """The observed information is ill-conditioned: standard errors lose accuracy."""


# Condition number (of the information scaled to unit diagonal) times the float epsilon above
# which the standard errors are refused, and above which a warning says they lose accuracy.
SINGULAR_LIMIT = 0.1
WARN_LIMIT = 1e-3


def diagnose(info: np.ndarray, names: list, dtype) -> tuple[str, str | None]:
    """Check an information matrix ``[P, P]``: ``("ok" | "warn" | "singular", message)``."""
    eps = float(np.finfo(dtype).eps)
    info = np.asarray(info, np.float64)
    info = 0.5 * (info + info.T)
    diag = np.diag(info)
    if not np.all(np.isfinite(info)):
        return "singular", "the observed information holds NaN or infinite values"
    if np.any(diag <= 0):
        i = int(np.argmin(diag))
        why = ("the data carry no information on" if diag[i] == 0 else
               "the log-likelihood curves upwards along, so the fit is not at a maximum in")
        return "singular", (f"the observed information is singular (condition number inf): {why} "
                            f"parameter {names[i]} (its diagonal entry is {diag[i]:.3g})" + _ADVICE)
    scale = 1.0 / np.sqrt(diag)
    values, vectors = np.linalg.eigh(info * scale[:, None] * scale[None, :])
    cond = np.inf if values[0] <= 0 else values[-1] / values[0]
    worst = names[int(np.argmax(np.abs(vectors[:, 0])))]
    if values[0] <= 0 or cond * eps > SINGULAR_LIMIT:
        what = ("not positive definite (is the fit at a maximum? did it converge?)"
                if values[0] <= 0 else "singular to working precision")
        return "singular", (f"the observed information is {what}: condition number {cond:.3g}, "
                            f"worst determined parameter {worst}" + _ADVICE)
    if cond * eps > WARN_LIMIT:
        return "warn", (f"the observed information is ill-conditioned (condition number "
                        f"{cond:.3g}; worst determined parameter {worst}): standard errors keep "
                        f"about {max(0, int(-np.log10(cond * eps)))} correct digits" + _ADVICE)
    return "ok", None


_ADVICE = ("; a component with almost no weight (or collapsed onto a few rows), too many components "
           "or an unconverged fit does this: refit with fewer components, to convergence, or in "
           "float64 (jax.config.update('jax_enable_x64', True))")


def _delta(coords, transform: Callable, u, cov):
    """Standard errors of ``transform(decode(u))`` for ``cov [P, P]`` of ``u [P]``."""
    jac = jax.jacfwd(lambda v: transform(coords.decode(v)))(u)
    return jax.tree.map(
        lambda J: jnp.sqrt(jnp.maximum(jnp.einsum("...i,ij,...j->...", J, cov, J), 0.0)), jac)


def _identity(params):
    return params


def standard_errors(model, params, X, sample_weight=None, *, transform: Callable | None = None,
                    block_size: int | None = None, **data_options) -> Any:
    """Standard errors of ``params`` (or of ``transform(params)``) from the observed information.

    Args:
        model: a :class:`jaxem.Model` (or :class:`jaxem.hmm.HMM`).
        params: the fitted parameters (a maximum of the log-likelihood plus prior).
        X: ``[N, ...]`` the data the fit saw (for an HMM, pass ``lengths=`` too).
        sample_weight: optional ``[N]`` frequency weights the fit used.
        transform: optional traceable ``transform(params) -> pytree`` of derived quantities.
        block_size: rows per Hessian block.

    Returns:
        A pytree shaped like ``transform(params)`` (default ``params``) of standard errors.

    Raises:
        ValueError: the information is singular or not positive definite (names the parameter).

    Warns:
        IllConditionedWarning: the information is ill-conditioned (names the parameter).
    """
    transform = transform or _identity
    lik, coords, u = prepare(model, params, X, sample_weight, block_size, **data_options)
    info = np.asarray(evaluate(information_from, lik, coords, u))
    status, message = diagnose(info, coords.names, u.dtype)
    if status == "singular":
        raise ValueError(message)
    if status == "warn":
        warnings.warn(message, IllConditionedWarning, stacklevel=2)
    if isinstance(model, Model) and not data_options:
        _check_components(model, params, X, sample_weight, info)
    cov = jnp.asarray(np.linalg.inv(np.asarray(info, np.float64)), u.dtype)
    return _delta(coords, transform, u, cov)


# A mixture component with less than this much responsibility (in rows) is reported: its
# parameters rest on less than one observation, whatever the information's condition number.
MIN_COMPONENT_ROWS = 1.0


def _check_components(model: Model, params, X, sample_weight, info: np.ndarray) -> None:
    resp = map_row_blocks(lambda x: jax.nn.softmax(model.log_joint_matrix(params, x), axis=-1),
                          jnp.asarray(X))
    weights = 1.0 if sample_weight is None else np.asarray(sample_weight)[:, None]
    counts = np.sum(np.asarray(resp) * weights, axis=0)
    k = int(np.argmin(counts))
    if counts[k] < MIN_COMPONENT_ROWS:
        warnings.warn(f"component {k} carries {counts[k]:.3g} rows of responsibility (condition "
                      f"number of the observed information {np.linalg.cond(info):.3g}): its "
                      f"standard errors rest on less than one observation" + _ADVICE,
                      IllConditionedWarning, stacklevel=3)


def batched_standard_errors(model, params, X, sample_weight, *, transform: Callable | None = None,
                            block_size: int | None = None) -> Any:
    """Standard errors for a batch of fits of a mixture: ``params`` with a leading ``[B]`` axis,
    ``X [B, N, ...]`` and ``sample_weight [B, N]`` (zero on padded rows), all data sets in one
    vmapped program. A data set whose information is singular gets NaN and is named in one
    warning (:class:`IllConditionedWarning`), as is one whose information is ill-conditioned.

    Returns:
        A pytree shaped like ``transform(params)`` with a leading ``[B]`` axis.
    """
    transform = transform or _identity
    coords = model_coordinates(model, jax.tree.map(lambda a: a[0], params))
    size = hessian_block_rows(len(coords.names)) if block_size is None else block_size

    @jax.jit
    def information(p, x, w):
        u = coords.encode(p)
        return u, information_from(likelihood(model, x, w, size), coords, u)

    u, info = jax.vmap(information)(params, jnp.asarray(X), jnp.asarray(sample_weight))
    info = np.asarray(info, np.float64)
    verdicts = [diagnose(matrix, coords.names, u.dtype) for matrix in info]
    cov = np.full_like(info, np.nan)
    for b, (status, _) in enumerate(verdicts):
        if status != "singular":
            cov[b] = np.linalg.inv(info[b])
    for kind in ("singular", "warn"):
        bad = [b for b, (status, _) in enumerate(verdicts) if status == kind]
        if bad:
            first = verdicts[bad[0]][1]
            warnings.warn(f"{len(bad)} of {len(verdicts)} data sets ({_listing(bad)}): "
                          + ("standard errors are NaN; " if kind == "singular" else "")
                          + f"data set {bad[0]}: {first}", IllConditionedWarning, stacklevel=2)
    return jax.vmap(lambda v, c: _delta(coords, transform, v, c))(u, jnp.asarray(cov, u.dtype))


def _listing(indices: list) -> str:
    shown = ", ".join(str(i) for i in indices[:10])
    return shown + (", ..." if len(indices) > 10 else "")


def normal_quantile(level: float) -> float:
    """The two-sided standard normal quantile ``z`` of a confidence ``level`` in (0, 1)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {level!r}")
    return float(jax.scipy.special.ndtri(0.5 + level / 2))


def wald_intervals(estimate: Any, errors: Any, level: float = 0.95) -> tuple[Any, Any]:
    """``(lower, upper)`` pytrees ``estimate ∓ z · errors`` for a two-sided ``level``."""
    z = normal_quantile(level)
    return (jax.tree.map(lambda e, s: e - z * s, estimate, errors),
            jax.tree.map(lambda e, s: e + z * s, estimate, errors))


def confidence_intervals(model, params, X, sample_weight=None, *, level: float = 0.95,
                         transform: Callable | None = None, **options) -> tuple[Any, Any]:
    """95% (or ``level``) Wald intervals ``θ ∓ z · SE`` of ``params`` (or ``transform(params)``),
    with :func:`standard_errors`' arguments.

    Returns:
        ``(lower, upper)``, each a pytree shaped like ``transform(params)``.
    """
    normal_quantile(level)
    errors = standard_errors(model, params, X, sample_weight, transform=transform, **options)
    return wald_intervals((transform or _identity)(params), errors, level)
