"""The front end every fit goes through: check the arguments, make the restart keys, settle the
E- and M-step, and turn the loop's output into a :class:`jaxem.FitResult`.

:func:`jaxem.fit`, :func:`jaxem.hmm.fit`, :func:`jaxem.fit_chunked` and :func:`jaxem.fit_online`
differ only in how they read the data (their runner); what they accept and what they return is
decided here, once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import loop
from .ascent import DEFAULT_M_STEP_ITERS, DEFAULT_OPTIMIZER
from .estep import EStepRule, resolve_e_step
from .result import FitResult, result_from_loop
from .validation import check_data, check_positive_int, check_tolerance, tolerance_value

Array = jax.Array

M_STEPS = ("auto", "closed_form", "gradient")


class FitSetup(NamedTuple):
    """A fit's checked settings.

    Attributes:
        keys: ``[R]`` restart keys.
        rule: the E-step rule.
        use_gradient: whether the M-step is gradient ascent (else closed form).
        optimizer: the gradient M-step's optax transformation (``None`` for closed form).
        m_step_iters: optimiser steps per gradient M-step.
        max_iter, tol: the loop's limits (``tol`` ``None``: no objective test).
        block_size: rows per block, ``None`` to let the runner choose.
        init_params: starting parameters broadcast to ``[R]``, or ``None`` (the model's ``init``).
        progress: the progress callback, or ``None``.
    """

    keys: Any
    rule: EStepRule
    use_gradient: bool
    optimizer: Any
    m_step_iters: int
    max_iter: int
    tol: float | None
    block_size: int | None
    init_params: Any
    progress: Callable | None

    @property
    def n_restarts(self) -> int:
        return int(self.keys.shape[0])

    def loop_settings(self, dtype) -> loop.Settings:
        """The loop's settings, the tolerance as a ``dtype`` scalar (traced, not static)."""
        return loop.Settings(jnp.asarray(tolerance_value(self.tol), dtype), self.max_iter,
                             self.rule.may_stop)


def restart_keys(key, n_restarts: int | None, caller: str = "fit"):
    """``[R]`` keys: ``key`` split into ``n_restarts`` (default 1), or ``[R]`` keys as given.

    ``key`` is a ``jax.random.key`` (or a raw ``PRNGKey``), ``[R]`` of them, or an int seed
    (``key=0`` means ``jax.random.key(0)``, as ``random_state=0`` does for the estimators);
    ``caller`` names the function in the messages.
    """
    if key is None:
        raise ValueError(f"{caller} needs a PRNG key: pass key=jax.random.key(0) (or an int seed, "
                         "key=0)")
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.split(jax.random.key(int(key)), 1 if n_restarts is None else n_restarts)
    given = key
    try:
        key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
        is_typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        valid = is_typed or (key.dtype == jnp.uint32 and key.ndim in (1, 2) and key.shape[-1] == 2)
    except TypeError:
        valid = False
    if not valid:
        raise ValueError(f"{caller}: key must be jax.random.key(seed), a PRNGKey, [R] of them, or "
                         f"an int seed; got {_describe(given)} (pass key=jax.random.key(0))")
    single = key.ndim == 0 if is_typed else key.shape == (2,)
    if single:
        return jax.random.split(key, 1 if n_restarts is None else n_restarts)
    if n_restarts is not None and key.shape[0] != n_restarts:
        raise ValueError(f"got {key.shape[0]} keys but n_restarts={n_restarts}")
    return key


def _describe(value) -> str:
    shape = getattr(value, "shape", None)
    kind = type(value).__name__
    return f"{kind} of shape {shape} and dtype {value.dtype}" if shape is not None else (
        f"{kind} {value!r:.40}")


def setup_fit(target, *, key=None, n_restarts: int | None = None, max_iter: int = 100,
              tol: float | None = 1e-6, e_step="soft", m_step: str = "auto", optimizer=None,
              m_step_iters: int = DEFAULT_M_STEP_ITERS, block_size: int | None = None,
              progress: Callable | None = None, init_params: Any = None, dtype=None,
              default_optimizer=DEFAULT_OPTIMIZER, caller: str = "fit") -> FitSetup:
    """Check a fit's common arguments, before any compute.

    Args:
        target: the model (a :class:`jaxem.Model` or :class:`jaxem.hmm.HMM`): its
            ``has_closed_form`` and ``name`` are read.
        key, n_restarts, max_iter, tol, e_step, m_step, optimizer, m_step_iters, block_size,
            progress, init_params: as in :func:`jaxem.fit`.
        dtype: cast ``init_params`` to this float type (``None``: keep theirs).
        default_optimizer: the optimiser when ``optimizer`` is ``None`` and the M-step is by
            gradient (one object, so repeated fits hit the compilation cache).
        caller: the user's function (``"fit_online"``, ...), named in the messages.

    Returns:
        A :class:`FitSetup`.
    """
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_tolerance(tol)
    m_step_iters = check_positive_int(m_step_iters, "m_step_iters")
    if n_restarts is not None:
        n_restarts = check_positive_int(n_restarts, "n_restarts")
    if block_size is not None:
        block_size = check_positive_int(block_size, "block_size")
    rule = resolve_e_step(e_step)
    if m_step not in M_STEPS:
        raise ValueError(f"m_step must be 'auto', 'closed_form' or 'gradient', got {m_step!r}")
    if m_step == "closed_form" and not target.has_closed_form:
        raise ValueError(f"model {target.name!r} has no closed-form M-step; use m_step='gradient'")
    use_gradient = m_step == "gradient" or not target.has_closed_form
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be callable or None, got {type(progress).__name__}")
    if key is None and init_params is not None:
        key = jax.random.key(0)  # the model's initialiser is not called; any key will do
    keys = restart_keys(key, n_restarts, caller)
    if init_params is not None:
        init_params = jax.tree.map(
            lambda p: jnp.broadcast_to(jnp.asarray(p, dtype), (keys.shape[0],) + jnp.shape(p)),
            init_params)
    return FitSetup(keys, rule, use_gradient, (optimizer or default_optimizer) if use_gradient
                    else None, m_step_iters, max_iter, tol, block_size, init_params, progress)


def finish(out: loop.LoopOutput, setup: FitSetup, *, compile_time: float = 0.0,
           fit_time: float = 0.0, hint: str = "") -> FitResult:
    """The :class:`FitResult` of a finished loop (see :func:`jaxem.core.result.result_from_loop`);
    its warning points at the user's call of the fit."""
    return result_from_loop(out, setup.keys, max_iter=setup.max_iter, tol=setup.tol,
                            compile_time=compile_time, fit_time=fit_time, hint=hint, stacklevel=4)


def as_data(X, model) -> np.ndarray:
    """``X`` checked as a model's data (NaN only where the model handles missing values, then
    the model's own ``check_data``), as a NumPy array."""
    arr = check_data(X, allow_nan=model.handles_missing)
    if model.check_data is not None:
        model.check_data(arr)
    return arr


def shape_error(X, err: Exception) -> ValueError:
    """The error for rows ``X`` a model cannot score, naming their shape and JAX's reason."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ValueError(f"X has shape {tuple(X.shape)}, which does not fit the model (rows of shape "
                      f"{tuple(X.shape[1:])}): {reason}")


def check_rows_fit(model, params: Any, X) -> None:
    """Refuse rows that ``params`` cannot score (wrong rank or feature count), before compute."""
    try:
        jax.eval_shape(model.log_joint_matrix, params, X[:1])
    except (TypeError, ValueError, IndexError) as err:
        raise shape_error(X, err) from None


def diagnose_rows(model, key, X, init_params: Any, err: Exception, hint: str = "") -> None:
    """After a failed trace: raise a ValueError naming ``X``'s shape when the model cannot
    initialise on or score it (``hint``, if any, is appended); return otherwise."""
    def score(k, x, p):
        p = model.init(k, x) if p is None else jax.tree.map(lambda a: a[0], p)
        return model.log_joint_matrix(p, x[:1]), model.log_joint(p, x[0])

    try:
        _, one = jax.eval_shape(score, key, X, init_params)
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"{shape_error(X, err)}{hint}") from None
    if len(one.shape) != 1:
        raise ValueError(f"log_joint(params, x) must return [K] values, log p(x, z=k) for each "
                         f"component k of ONE observation x; it returned shape {one.shape} (a "
                         "sum over components or over rows?)")


def n_components(model, key, X) -> int:
    """``K`` from the model, or from the shape of its log-joint when it does not say."""
    if model.n_components is not None:
        return model.n_components
    shape = jax.eval_shape(lambda k, x: model.log_joint_matrix(model.init(k, x), x[:1]), key, X)
    return int(shape.shape[-1])
