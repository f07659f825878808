"""E-step, ELBO and the EM fit: one compiled program, restarts vmapped.

The fit of one restart is a ``lax.while_loop`` whose body is an M-step followed by one fused pass
over the data (the E-step at the new parameters plus the statistics the next M-step needs). The
whole loop is vmapped over restarts, so ``n_restarts`` starts cost one compilation and run as
batched array operations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _loop, _passes, _precision, distributed
from ._result import FitError, FitResult, result_from_loop  # noqa: F401  (public here)
from .data import pad_rows
from .estep import Annealing, resolve_e_step
from .model import Model
from .mstep import DEFAULT_M_STEP_ITERS, default_optimizer
from .validation import (
    check_data,
    check_enough_rows,
    check_labels,
    check_positive_int,
    check_sample_weight,
    check_tolerance,
    default_float_dtype,  # noqa: F401  (the estimators read it as em.default_float_dtype)
    to_device,
    tolerance_value,
)

Array = jax.Array


def _as_data(X, model: Model) -> Array:
    arr = check_data(X, allow_nan=model.handles_missing)
    check_model_data = getattr(model, "check_data", None)
    if check_model_data is not None:
        check_model_data(arr)
    return to_device(arr)


def _shape_error(X: Array, err: Exception) -> ValueError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ValueError(f"X has shape {tuple(X.shape)}, which does not fit the model (rows of shape "
                      f"{tuple(X.shape[1:])}): {reason}")


def _check_rows_fit(model: Model, params: Any, X: Array) -> None:
    """Refuse rows that ``params`` cannot score (wrong rank or feature count), before compute."""
    try:
        jax.eval_shape(model.log_joint_matrix, params, X[:1])
    except (TypeError, ValueError, IndexError) as err:
        raise _shape_error(X, err) from None


def _is_concrete(*arrays) -> bool:
    """Whether every array holds values (not a tracer inside ``jit`` or ``grad``), so it can be
    checked on the host."""
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def _checked(model: Model, params: Any, X, sample_weight, q=None):
    """``(X, sample_weight, q)`` checked before compute when they hold values; tracers (inside a
    user's ``jit`` or ``grad``) pass through unchecked."""
    if not _is_concrete(X, sample_weight, q):
        return X, sample_weight, q
    X = _as_data(X, model)
    _check_rows_fit(model, params, X)
    if sample_weight is not None:
        sample_weight = jnp.asarray(check_sample_weight(sample_weight, X.shape[0]), X.dtype)
    if q is not None:
        q_arr = np.asarray(q)
        if q_arr.ndim != 2 or q_arr.shape[0] != X.shape[0]:
            raise ValueError(f"q must have shape ({X.shape[0]}, K) to match X, got {q_arr.shape}")
        bad = ~np.isfinite(q_arr) | (q_arr < 0)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"q must hold finite probabilities >= 0; got {q_arr[row, col]} at row "
                             f"{row}, column {col}")
    return X, sample_weight, q


def _as_weights(sample_weight, n_rows: int, dtype) -> Array:
    w = check_sample_weight(sample_weight, n_rows)
    return jnp.ones((n_rows,), dtype) if w is None else jnp.asarray(w, dtype=dtype)


def _posterior_block(model: Model, params: Any, X: Array) -> tuple[Array, Array]:
    log_joint = model.log_joint_matrix(params, X)
    row_ll = jax.nn.logsumexp(log_joint, axis=-1)
    # exp(ℓ - logsumexp ℓ) sums to 1 only to about eps * |ℓ| (1e-5 in float32 when log-joints are
    # in the hundreds); dividing by the sum makes every row a distribution to float round-off.
    resp = jnp.exp(log_joint - row_ll[:, None])
    return resp / jnp.sum(resp, axis=-1, keepdims=True), row_ll


# A block of rows at a time: on all N rows at once, a full-covariance model's [N, K*D]
# temporaries made predict_proba on 1M x 16 rows take 0.6 s and 1.8 GB.
_posterior_program = _precision.jit(
    lambda model, params, X: _passes.map_row_blocks(
        functools.partial(_posterior_block, model, params), X),
    static_argnums=0)


def posterior_rows(model: Model, params: Any, X: Array) -> tuple[Array, Array]:
    """Exact (unflushed) responsibilities ``[N, K]`` and per-row log-likelihoods ``[N]`` for
    rows ``X [N, ...]``."""
    return _posterior_program(model, params, X)


def e_step(model: Model, params: Any, X, sample_weight=None) -> tuple[Array, Array]:
    """Posterior responsibilities and the log-likelihood at ``params``.

    Args:
        model: a :class:`jaxem.Model`.
        params: the model's parameter pytree.
        X: data ``[N, ...]``.
        sample_weight: optional ``[N]`` non-negative row weights.

    Returns:
        ``(resp, log_likelihood)``: ``resp [N, K]`` with ``resp[n] = softmax_k log p(x_n, z=k)``,
        and the scalar ``Σ_n w_n logsumexp_k log p(x_n, z=k)``.
    """
    X = _as_data(X, model)
    _check_rows_fit(model, params, X)
    resp, row_ll = posterior_rows(model, params, X)
    return resp, _passes.weighted_sum(row_ll, _as_weights(sample_weight, X.shape[0], X.dtype))


def log_likelihood(model: Model, params: Any, X, sample_weight=None) -> Array:
    """Total (weighted) incomplete-data log-likelihood ``Σ_n w_n log p(x_n | params)`` (scalar).

    Differentiable with respect to ``params`` when called with arrays inside a traced function.
    Concrete inputs are checked first, as in :func:`e_step`.
    """
    X, sample_weight, _ = _checked(model, params, X, sample_weight)
    X = jnp.asarray(X)
    row_ll = jax.nn.logsumexp(model.log_joint_matrix(params, X), axis=-1)
    return row_ll.sum() if sample_weight is None else jnp.sum(jnp.asarray(sample_weight) * row_ll)


def expected_log_joint(model: Model, params: Any, X, resp, sample_weight=None) -> Array:
    """``Q(params) = Σ_n w_n Σ_k resp_nk log p(x_n, z_n=k | params)`` (scalar).

    ``resp [N, K]`` is held fixed; entries equal to 0 contribute 0 even where the log-joint is
    ``-inf``. By the Fisher identity, ``grad Q`` at the parameters that produced ``resp`` equals
    ``grad log_likelihood`` there.
    """
    X, sample_weight, resp = _checked(model, params, X, sample_weight, resp)
    X = jnp.asarray(X)
    resp = jnp.asarray(resp)
    if sample_weight is not None:
        resp = resp * jnp.asarray(sample_weight)[:, None]
    lj = model.log_joint_matrix(params, X)
    return _passes.fixed_responsibility_sum(lj, resp)


def elbo(model: Model, params: Any, X, q, sample_weight=None) -> Array:
    """Evidence lower bound ``L(q, θ) = Σ_n w_n Σ_k q_nk (log p(x_n, z_n=k | θ) - log q_nk)``.

    Args:
        model: a :class:`jaxem.Model`.
        params: parameter pytree θ.
        X: data ``[N, ...]``.
        q: ``[N, K]`` a distribution over latent states for each row (rows sum to 1).
        sample_weight: optional ``[N]`` row weights.

    Returns:
        Scalar ``L(q, θ) <= log p(X | θ)``, with equality when ``q`` is the exact posterior.
    """
    expected = expected_log_joint(model, params, X, q, sample_weight)  # checks the inputs first
    q = jnp.asarray(q)
    w = 1.0 if sample_weight is None else jnp.asarray(sample_weight)[:, None]
    return expected - jnp.sum(w * jax.scipy.special.xlogy(q, q))


def _restart_keys(key, n_restarts: int | None):
    if key is None:
        raise ValueError("fit needs a PRNG key, e.g. key=jax.random.key(0)")
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    is_typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    single = key.ndim == 0 if is_typed else key.shape == (2,)
    if single:
        return jax.random.split(key, 1 if n_restarts is None else n_restarts)
    if n_restarts is not None and key.shape[0] != n_restarts:
        raise ValueError(f"got {key.shape[0]} keys but n_restarts={n_restarts}")
    return key


def fit(model: Model, X, *, key=None, n_restarts: int | None = None, max_iter: int = 100,
        tol: float = 1e-6, sample_weight=None, labels=None, init_params: Any = None,
        e_step: str | Annealing = "soft", m_step: str = "auto",
        optimizer: optax.GradientTransformation | None = None,
        m_step_iters: int = DEFAULT_M_STEP_ITERS, block_size: int | None = None,
        progress: Callable | None = None, devices=None) -> FitResult:
    """Fit ``model`` to ``X`` by EM from several random starts at once.

    Args:
        model: a :class:`jaxem.Model`.
        X: data ``[N, ...]`` (rows are observations). NaN entries (missing values) are accepted
            only when the model declares ``handles_missing``.
        key: a PRNG key (split into one key per restart), or ``[R]`` keys used as given (restart
            ``r`` then uses ``key[r]``, so ``key=keys[r:r+1]`` reproduces one restart). Optional
            when ``init_params`` is given.
        n_restarts: number of random starts, all run as one vmapped program (default 1, or the
            number of keys given).
        max_iter: maximum EM iterations per restart.
        tol: stop a restart when ``|ℓ_t - ℓ_{t-1}| <= tol * |ℓ_{t-1}|`` (relative change of the total
            log-likelihood); a change within a few float epsilons always counts as converged.
            ``None``: no test on the objective, so every restart runs ``max_iter`` iterations
            (what benchmarks want) unless an M-step leaves its parameters bit-identical, a fixed
            point where it stops (k-means whose assignments no longer change). An M-step that
            returns identical parameters stops a restart under any ``tol``.
        sample_weight: optional ``[N]`` non-negative frequency weights (weight 2 = row twice).
        labels: optional ``[N]`` integer partial labels for semi-supervised EM: a row with label
            ``k >= 0`` belongs to component ``k`` (its responsibility is fixed one-hot and its
            likelihood term is ``log p(x, z=k)``); ``-1`` marks an unknown component. With a
            closed-form M-step, the initialiser's components are first renumbered to follow the
            labels (see ``_passes.align_to_labels``); ``init_params`` are used as given.
        init_params: optional starting parameters (one pytree) instead of ``model.init``; every
            restart then starts from them, so use it with ``n_restarts=1``.
        e_step: ``"soft"`` (the posterior; default), ``"hard"`` (classification EM: one-hot at the
            most probable component, climbing the classification log-likelihood), ``"anneal"``
            (deterministic annealing with the default :class:`jaxem.Annealing` schedule) or an
            :class:`jaxem.Annealing` schedule.
        m_step: ``"auto"`` (closed form when the model has one, else gradient), ``"closed_form"``
            or ``"gradient"``.
        optimizer: optax transformation for the gradient M-step (default: L-BFGS).
        m_step_iters: optimiser steps per gradient M-step.
        block_size: rows per block of the data pass (default: about 8192 for one restart; for R
            restarts on an accelerator about 4096 / R, at least 256, so the vmapped restarts'
            temporaries stay in cache). On a CPU several restarts pass over the data one after
            another inside the same program (XLA:CPU's batched products are slower per restart
            than one restart's), each with the one-restart blocks.
        progress: optional ``progress(iteration, log_likelihood [R], converged [R], running [R])``
            called once per EM iteration from inside the compiled loop (see
            :mod:`jaxem.progress` for a progress bar); it does not trigger a recompilation.
        devices: ``None`` (one device), ``"all"`` (every device of every process), a list of
            devices or a :class:`jax.sharding.Mesh` with one ``"data"`` axis: each pass splits the
            row blocks over the devices and adds their statistics (see :mod:`jaxem.distributed`).
            Each device holds only its share of the rows during the fit; the initialiser first
            sees all rows on one device (pass ``init_params`` to skip it). For data larger than
            the devices' memory use :func:`jaxem.fit_chunked`, which accepts ``devices`` too.

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: bad input or arguments, before any compute.
        FitError: every restart's log-likelihood became NaN or infinite.
    """
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_tolerance(tol)
    m_step_iters = check_positive_int(m_step_iters, "m_step_iters")
    if n_restarts is not None:
        n_restarts = check_positive_int(n_restarts, "n_restarts")
    if block_size is not None:
        block_size = check_positive_int(block_size, "block_size")
    rule = resolve_e_step(e_step)
    if m_step not in ("auto", "closed_form", "gradient"):
        raise ValueError(f"m_step must be 'auto', 'closed_form' or 'gradient', got {m_step!r}")
    if m_step == "closed_form" and not model.has_closed_form:
        raise ValueError(f"model {model.name!r} has no closed-form M-step; use m_step='gradient'")
    use_gradient = m_step == "gradient" or not model.has_closed_form
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be callable or None, got {type(progress).__name__}")

    X = _as_data(X, model)
    host_weights = check_sample_weight(sample_weight, X.shape[0])
    weights = _as_weights(host_weights, X.shape[0], X.dtype)
    if model.n_components is not None:
        # Counted on the host: a device reduction here would wait for X's transfer.
        check_enough_rows(X.shape[0] if host_weights is None else int(np.sum(host_weights > 0)),
                          model.n_components)
    if key is None and init_params is not None:
        key = jax.random.key(0)  # the model's initialiser is not called; any key will do
    keys = _restart_keys(key, n_restarts)
    if labels is not None:
        labels = jnp.asarray(check_labels(labels, X.shape[0], _n_components(model, keys[0], X)))
    mesh = distributed.data_mesh(devices)
    plan = _passes.plan_restarts(keys.shape[0], distributed.platform(X, mesh), block_size)
    n_blocks, rows = _passes.plan_blocks(X.shape[0], plan.block_size, distributed.n_shards(mesh))
    if init_params is not None:
        init_params = jax.tree.map(
            lambda p: jnp.broadcast_to(jnp.asarray(p), (keys.shape[0],) + jnp.shape(p)),
            init_params)

    static = dict(model=model, n_blocks=n_blocks, rows=rows, max_iter=max_iter,
                  use_gradient=use_gradient,
                  optimizer=(optimizer or _DEFAULT_OPTIMIZER) if use_gradient else None,
                  m_step_iters=m_step_iters, rule=rule, in_sequence=plan.in_sequence)
    rows_X, init_compile, init_run = X, 0.0, 0.0
    if mesh is not None:
        static["mesh"] = mesh
        if init_params is None:
            # Initialised on one device from the unpadded rows (as without a mesh); the fit
            # program then sees only the padded rows, split over the devices.
            init_params, init_compile, init_run = _loop.run_compiled(
                (keys, X, weights, labels),
                dict(model=model, n_blocks=n_blocks, rows=rows, use_gradient=use_gradient),
                program=_loop.initialise_program)
        init_params = distributed.replicate(init_params, mesh)
        # Padded on the host to the blocks' length (weight 0, label unknown), then split.
        n_padded = n_blocks * rows
        padded = (pad_rows(np.asarray(X), n_padded), pad_rows(np.asarray(weights), n_padded, 0),
                  None if labels is None else pad_rows(np.asarray(labels), n_padded, -1))
        rows_X, weights, labels = distributed.split_rows(padded, mesh)
        keys = distributed.replicate(keys, mesh)
    try:
        out, compile_time, fit_time = _loop.run_compiled(
            (keys, init_params, rows_X, weights, labels,
             jnp.asarray(tolerance_value(tol), X.dtype)), static, progress)
    except (TypeError, ValueError, IndexError) as err:
        # Tracing failed before any compute; when the model cannot even score these rows (wrong
        # rank or feature count), say that instead of JAX's shape error deep in the model.
        _diagnose_rows(model, keys[0], X, init_params, err)
        raise

    return result_from_loop(out, keys, max_iter=max_iter, tol=tol,
                            compile_time=compile_time + init_compile, fit_time=fit_time + init_run,
                            hint="check the data scale and the model (for "
                            "Gaussian mixtures, increase reg_covar)")


def _diagnose_rows(model: Model, key, X: Array, init_params: Any, err: Exception,
                   hint: str = "") -> None:
    """Raise a ValueError naming ``X``'s shape when the model cannot initialise on or score it
    (``hint``, if any, is appended to the message)."""
    def score(k, x, p):
        p = model.init(k, x) if p is None else jax.tree.map(lambda a: a[0], p)
        return model.log_joint_matrix(p, x[:1])

    try:
        jax.eval_shape(score, key, X, init_params)
    except (TypeError, ValueError, IndexError):
        shape_error = _shape_error(X, err)
        raise ValueError(f"{shape_error}{hint}") from None


def _n_components(model: Model, key, X: Array) -> int:
    """``K`` from the model, or from the shape of its log-joint when it does not say."""
    if model.n_components is not None:
        return model.n_components
    shape = jax.eval_shape(lambda k, x: model.log_joint_matrix(model.init(k, x), x[:1]), key, X)
    return int(shape.shape[-1])


# One object, so repeated fits with the default hit the compilation cache.
_DEFAULT_OPTIMIZER = default_optimizer()
