"""Many data sets, one program: the in-memory fit vmapped over data sets.

:func:`fit_many` fits the same model to ``B`` data sets (a simulation study's replicates, one
mixture per subject, a bootstrap's resamples): the data sets are padded to one row count with
weight-0 rows (exact: every sum over rows is weighted, see :mod:`jaxem.core.batch_data`), and the
compiled in-memory fit (:func:`jaxem.core.runner._program`, restarts included) is vmapped over
them (mapped one after another on a CPU), so all ``B x R`` fits are one compiled program.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import blocks, driver, precision, programs
from .ascent import DEFAULT_M_STEP_ITERS
from .batch_data import stack_datasets
from .model import Model
from .result import FitError, FitResult, result_from_loop
from .runner import _STATIC, _program
from .validation import ConvergenceWarning, check_enough_rows, default_float_dtype


def _many_program(keys, init_params, X, weights, tol, *, x_axis, p_axis, datasets_in_sequence,
                  **static):
    # Data set b's restarts start from fold_in(key_r, b): derived here, not in a program of its own.
    keys = jax.vmap(lambda b: jax.vmap(lambda k: jax.random.fold_in(k, b))(keys))(
        jnp.arange(weights.shape[0]))

    def one(k, p, x, w):
        return _program(k, p, x, w, None, tol, None, None, **static)  # the whole loop, unsegmented

    if not datasets_in_sequence:
        return jax.vmap(one, in_axes=(0, p_axis, x_axis, 0))(keys, init_params, X, weights), keys
    # On a CPU the data sets run one after another, as restarts do (blocks.plan_restarts): each
    # stops at its own convergence, and no LAPACK call is batched over them (see core.linalg).
    mapped = {"k": keys, "w": weights, **({} if p_axis is None else {"p": init_params}),
              **({} if x_axis is None else {"x": X})}
    out = jax.lax.map(lambda m: one(m["k"], m.get("p", init_params), m.get("x", X), m["w"]),
                      mapped)
    return out, keys


_many = precision.jit(_many_program, static_argnames=_STATIC + ("x_axis", "p_axis",
                                                                "datasets_in_sequence"))
# The name the on-disk program cache knows this program by.
PROGRAM_NAME = "jaxem.core.many._many_program"


def fit_many(model: Model, Xs, *, key=None, n_restarts: int | None = None, max_iter: int = 100,
             tol: float | None = 1e-6, sample_weight=None, init_params: Any = None,
             e_step="soft", m_step: str = "auto", optimizer=None,
             m_step_iters: int = DEFAULT_M_STEP_ITERS, block_size: int | None = None,
             accelerate="auto") -> FitResult:
    """Fit ``model`` to each of ``B`` data sets, every data set and restart in one program.

    Args:
        model: a mixture :class:`jaxem.Model`.
        Xs: a list of ``B`` arrays ``[N_b, ...]`` (row counts may differ) or one array
            ``[B, N, ...]``.
        sample_weight: optional weights per data set: a list of ``[N_b]`` arrays, or ``[B, N]``.
        key: a PRNG key; restart ``r`` of data set ``b`` starts from
            ``fold_in(split(key, R)[r], b)``.
        init_params: optional starting parameters (one pytree) for every data set.
        n_restarts, max_iter, tol, e_step, m_step, optimizer, m_step_iters, block_size,
            accelerate: as in :func:`jaxem.fit`.

    Returns:
        A batched :class:`FitResult` (``n_datasets = B``): every field has a leading ``[B]`` axis
        (``params`` the best restart of each data set, ``log_likelihood [B]``, ``best_restart
        [B]``, ``history [B, R, max_iter]``, ``all_params [B, R, ...]``, ...).
        ``result.standard_errors(Xs)`` gives every data set's standard errors at once.

    Raises:
        ValueError: bad input, before any compute.
        FitError: every restart of some data set failed (the message names the data sets).
    """
    batch = stack_datasets(Xs, sample_weight, model)
    X = jnp.asarray(batch.X, default_float_dtype())
    return fit_batch(model, X, batch.weights, key=key, n_restarts=n_restarts, max_iter=max_iter,
                     tol=tol, init_params=init_params, e_step=e_step, m_step=m_step,
                     optimizer=optimizer, m_step_iters=m_step_iters, block_size=block_size,
                     accelerate=accelerate)


def fit_batch(model: Model, X, weights, *, shared_rows: bool = False, key=None,
              init_params: Any = None, **options) -> FitResult:
    """:func:`fit_many` on checked data ``X [B, N, ...]`` and ``weights [B, N]``; with
    ``shared_rows``, one ``X [N, ...]`` that every data set shares (a nonparametric bootstrap:
    only the weights differ), never copied."""
    unknown = sorted(set(options) - set(_DEFAULTS))
    if unknown:
        raise TypeError(f"fit_many got unexpected keyword argument(s) {', '.join(unknown)}")
    setup = driver.setup_fit(model, key=key, init_params=init_params, dtype=X.dtype,
                             **{k: options.get(k, v) for k, v in _DEFAULTS.items()})
    weights = np.asarray(weights)
    n_rows = weights.shape[1]
    if model.n_components is not None:
        check_enough_rows(int(np.min(np.sum(weights > 0, axis=1))), model.n_components)
    platform = jax.devices()[0].platform
    plan = blocks.plan_restarts(setup.n_restarts, platform, setup.block_size)
    # Data sets follow the restarts' rule: one after another where restarts are.
    datasets_in_sequence = blocks.plan_restarts(weights.shape[0], platform).in_sequence
    n_blocks, rows_per_block = blocks.plan_blocks(n_rows, plan.block_size)
    static = dict(model=model, n_blocks=n_blocks, rows_per_block=rows_per_block,
                  max_iter=setup.max_iter, use_gradient=setup.use_gradient,
                  optimizer=setup.optimizer, m_step_iters=setup.m_step_iters, rule=setup.rule,
                  in_sequence=plan.in_sequence, accelerate=setup.accelerate,
                  x_axis=None if shared_rows else 0, p_axis=None,
                  datasets_in_sequence=datasets_in_sequence)
    (out, keys), compile_time, fit_time = programs.run_compiled(
        _many, (setup.keys, setup.init_params, X, jnp.asarray(weights, X.dtype),
                setup.loop_settings(X.dtype).tol), static, disk_name=PROGRAM_NAME,
        repeats=(setup.n_restarts if plan.in_sequence else 1)
        * (weights.shape[0] if datasets_in_sequence else 1), small_ops=setup.use_gradient)
    return _stack(out, keys, setup, compile_time, fit_time)


_DEFAULTS = dict(n_restarts=None, max_iter=100, tol=1e-6, e_step="soft", m_step="auto",
                 optimizer=None, m_step_iters=DEFAULT_M_STEP_ITERS, block_size=None,
                 accelerate="auto")


def _stack(out, keys, setup, compile_time: float, fit_time: float) -> FitResult:
    """One batched :class:`FitResult` from the ``[B]``-stacked loop output: each data set's
    result as :func:`jaxem.fit` makes it, one warning and one error for all of them."""
    out = jax.tree.map(np.asarray, out)
    results, failed, not_converged = [], [], []
    for b in range(n_data := keys.shape[0]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            try:
                # The keys go on the batched result once (slicing device keys costs a dispatch each).
                results.append(result_from_loop(jax.tree.map(lambda a, b=b: a[b], out), None,
                                                max_iter=setup.max_iter, tol=setup.tol))
            except FitError as err:
                failed.append((b, str(err)))
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            not_converged.append(b)
    if failed:
        names = ", ".join(str(b) for b, _ in failed[:10]) + (", ..." if len(failed) > 10 else "")
        raise FitError(f"{len(failed)} of {n_data} data sets failed (data sets {names}); "
                       f"data set {failed[0][0]}: {failed[0][1]}")
    if not_converged:
        warnings.warn(f"{len(not_converged)} of {n_data} data sets had no restart converge "
                      f"within max_iter={setup.max_iter} (first: data set {not_converged[0]}); "
                      "increase max_iter or tol", ConvergenceWarning, stacklevel=3)

    def stacked(name):
        return np.stack([getattr(r, name) for r in results])

    return FitResult(
        params=jax.tree.map(lambda *leaves: jnp.asarray(np.stack(leaves)), *[r.params for r in results]),
        log_likelihood=stacked("log_likelihood"), history=stacked("history"),
        initial_log_likelihood=stacked("initial_log_likelihood"), converged=stacked("converged"),
        n_iter=stacked("n_iter"), failed=stacked("failed"), all_params=out.params,
        all_log_likelihoods=stacked("all_log_likelihoods"), best_restart=stacked("best_restart"),
        restart_keys=keys, compile_time=compile_time, fit_time=fit_time, model=setup.model,
        n_datasets=n_data)
