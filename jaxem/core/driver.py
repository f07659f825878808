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

from . import accelerate as acceleration
from . import checkpoint as checkpoints
from . import loop, precision
from .ascent import DEFAULT_M_STEP_ITERS, DEFAULT_OPTIMIZER
from .checkpoint import Checkpoint, as_checkpoint
from .estep import EStepRule, resolve_e_step
from .model import factory_cache_key, stable_repr
from .result import FitInterrupted, FitResult, result_from_loop
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
        checkpoint: where to save the loop state (:class:`jaxem.core.checkpoint.Checkpoint`),
            or ``None``; resume: continue from it.
        model: the model being fitted (kept on the result, for its standard errors).
        accelerate: whether the loop runs SQUAREM (see :mod:`jaxem.core.accelerate`).
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
    checkpoint: Checkpoint | None = None
    resume: bool = False
    model: Any = None
    accelerate: bool = False

    @property
    def n_restarts(self) -> int:
        return int(self.keys.shape[0])

    def fingerprints(self, model, data: tuple | None = None, layout: tuple = ()) -> dict:
        """SHA-256 fingerprints of the ``model`` (its factory call, else its name), the settings
        (these, with the runner's ``layout``) and, when given, the ``data`` (arrays, hashed):
        what a resumed fit, or every process of one fit, must share."""
        name = factory_cache_key(model) or getattr(model, "cache_key", None) or model.name
        settings = (self.max_iter, self.tol, stable_repr(self.rule) or repr(self.rule.hard),
                    self.use_gradient, self.m_step_iters, type(self.optimizer).__name__,
                    self.block_size, self.keys, self.accelerate,
                    None if self.init_params is None else jax.tree.leaves(self.init_params), layout)
        prints = {"model": checkpoints.fingerprint(name),
                  "settings": checkpoints.fingerprint(*settings)}
        if data is not None:
            prints["data"] = checkpoints.fingerprint(*data)
        return prints

    def checkpointing(self, model, data: tuple, layout: tuple = ()) -> tuple:
        """``(saver, restore)`` for a fit with ``checkpoint=``, else ``(None, None)``: the
        :class:`jaxem.core.checkpoint.Saver` and the restore function, under
        :meth:`fingerprints`, so a resume with another model, data or settings is refused."""
        if self.checkpoint is None:
            return None, None
        prints = self.fingerprints(model, data, layout)
        return (checkpoints.Saver(self.checkpoint, prints),
                checkpoints.restorer(self.checkpoint, self.resume, prints))

    def loop_settings(self, dtype, constraints=None) -> loop.Settings:
        """The loop's settings, the tolerance as a ``dtype`` scalar (traced, not static);
        an accelerated loop extrapolates in the unconstrained space of ``constraints``."""
        # Cast on the host: jnp.asarray(python_float, dtype) compiles a conversion program.
        tol = jax.device_put(np.asarray(tolerance_value(self.tol), np.dtype(dtype)))
        return loop.Settings(tol, self.max_iter,
                             self.rule.may_stop, acceleration.squarem(self.accelerate, constraints))


def key_from_seed(seed: int):
    """``jax.random.key(seed)``, built on the host where that is the same key (threefry, a seed
    in ``[0, 2^32)``: its data is ``[0, seed]``): creating it on the device compiles two small
    programs, about 0.1 s of a small first fit."""
    seed = int(seed)
    if jax.config.jax_default_prng_impl == "threefry2x32" and 0 <= seed < 2**32:
        return jax.random.wrap_key_data(np.array([0, seed], np.uint32))
    return jax.random.key(seed)


_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(k1, k2, x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Threefry-2x32 hash (20 rounds) of uint32 counts ``(x1, x2)`` under the key
    ``(k1, k2)``, in NumPy: JAX's ``threefry2x32``, bit for bit."""
    ks = (np.uint32(k1), np.uint32(k2), np.uint32(k1) ^ np.uint32(k2) ^ np.uint32(0x1BD11BDA))
    x0, x1 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _THREEFRY_ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = (x1 + ks[(i + 2) % 3]) + np.uint32(i + 1)   # arrays: wrap around, no warning
    return x0, x1


def split_key(key, n: int):
    """``jax.random.split(key, n)`` for one typed key: computed on the host where that is the
    same split (threefry, JAX's default partitionable form), since on the device it compiles a
    program (about 0.06 s of a small first fit); ``jax.random.split`` otherwise."""
    if (not jax.config.jax_threefry_partitionable
            or str(jax.random.key_impl(key)) != "threefry2x32"):
        return jax.random.split(key, n)
    k1, k2 = np.asarray(jax.random.key_data(key), np.uint32)
    # The counts are a uint64 iota split into its high and low words.
    counts = np.arange(n, dtype=np.uint64)
    bits = _threefry2x32(k1, k2, (counts >> np.uint64(32)).astype(np.uint32),
                         counts.astype(np.uint32))
    return jax.random.wrap_key_data(np.stack(bits, axis=-1))


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
        return split_key(key_from_seed(key), 1 if n_restarts is None else n_restarts)
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
        n = 1 if n_restarts is None else n_restarts
        return split_key(key, n) if is_typed else jax.random.split(key, n)
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
              default_optimizer=DEFAULT_OPTIMIZER, checkpoint=None, resume: bool = False,
              accelerate=None, caller: str = "fit") -> FitSetup:
    """Check a fit's common arguments, before any compute.

    Args:
        target: the model (a :class:`jaxem.Model` or :class:`jaxem.hmm.HMM`): its
            ``has_closed_form`` and ``name`` are read.
        key, n_restarts, max_iter, tol, e_step, m_step, optimizer, m_step_iters, block_size,
            progress, init_params, checkpoint, resume: as in :func:`jaxem.fit`.
        dtype: cast the floating leaves of ``init_params`` to this float type (``None``: keep
            theirs).
        default_optimizer: the optimiser when ``optimizer`` is ``None`` and the M-step is by
            gradient (one object, so repeated fits hit the compilation cache).
        accelerate: as in :func:`jaxem.fit` (see :func:`jaxem.core.accelerate.resolve`).
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
    accelerated = acceleration.resolve(accelerate, rule, target)
    if m_step not in M_STEPS:
        raise ValueError(f"m_step must be 'auto', 'closed_form' or 'gradient', got {m_step!r}")
    if m_step == "closed_form" and not target.has_closed_form:
        raise ValueError(f"model {target.name!r} has no closed-form M-step; use m_step='gradient'")
    use_gradient = m_step == "gradient" or not target.has_closed_form
    checkpoint = as_checkpoint(checkpoint, resume)
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be callable or None, got {type(progress).__name__}")
    if key is None and init_params is not None:
        key = jax.random.key(0)  # the model's initialiser is not called; any key will do
    keys = restart_keys(key, n_restarts, caller)
    if init_params is not None:
        if dtype is not None:
            init_params = precision.cast_floats(init_params, dtype)
        init_params = jax.tree.map(
            lambda p: jnp.broadcast_to(jnp.asarray(p), (keys.shape[0],) + jnp.shape(p)),
            init_params)
    return FitSetup(keys, rule, use_gradient, (optimizer or default_optimizer) if use_gradient
                    else None, m_step_iters, max_iter, tol, block_size, init_params, progress,
                    checkpoint, resume, target, accelerated)


def finish(out: loop.LoopOutput, setup: FitSetup, *, compile_time: float = 0.0,
           fit_time: float = 0.0, hint: str = "") -> FitResult:
    """The :class:`FitResult` of a finished loop (see :func:`jaxem.core.result.result_from_loop`);
    its warning points at the user's call of the fit."""
    return result_from_loop(out, setup.keys, max_iter=setup.max_iter, tol=setup.tol,
                            compile_time=compile_time, fit_time=fit_time, hint=hint, stacklevel=4,
                            model=setup.model)


def interrupted(stop: loop.Interrupted, setup: FitSetup, hint: str = "") -> FitInterrupted:
    """The :class:`jaxem.FitInterrupted` for a loop stopped by Ctrl-C (the front ends raise
    it), holding the result of the iterations done."""
    return FitInterrupted(result_from_loop(stop.output, setup.keys, max_iter=setup.max_iter,
                                           tol=setup.tol, hint=hint, interrupted=True))


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
