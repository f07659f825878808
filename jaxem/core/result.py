"""What a fit returns: :class:`FitResult`, built from the compiled loop's output by
:func:`result_from_loop` (the last step of every fit driver: in memory, chunked, HMM), and
:class:`FitError` when every restart failed."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import numpy as np

from . import standard_errors as se
from .batch_data import stack_datasets
from .loop import LoopOutput
from .validation import ConvergenceWarning


class FitError(RuntimeError):
    """Raised when every restart of a fit failed (its log-likelihood became NaN or infinite)."""


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What :func:`jaxem.fit` returns.

    Attributes:
        params: the best restart's parameters (pytree).
        log_likelihood: its final total (weighted) log-likelihood, ``log p(X | params)``.
        history: ``[n_restarts, max_iter]``; ``history[r, i]`` is the log-likelihood after ``i + 1``
            EM iterations of restart ``r``, NaN after it stopped.
        initial_log_likelihood: ``[n_restarts]`` log-likelihood at each restart's initial params.
        converged: ``[n_restarts]`` bool, whether the relative change fell below ``tol``.
        n_iter: ``[n_restarts]`` EM iterations (M-steps) each restart ran.
        failed: ``[n_restarts]`` bool, restarts whose log-likelihood became NaN or infinite; they are
            never chosen as best.
        all_params: the parameters of every restart, stacked on a leading ``n_restarts`` axis.
        all_log_likelihoods: ``[n_restarts]`` final log-likelihood of every restart.
        best_restart: index of the chosen restart.
        restart_keys: ``[n_restarts]`` the PRNG keys the restarts were initialised with; fitting with
            ``key=restart_keys[r:r + 1]`` reproduces restart ``r`` alone (for a model with an
            ``explore_init``, such as the Gaussian and Student-t mixtures' default, only even
            ``r``: odd restarts of a fit with several started from ``explore_init``).
        compile_time: seconds spent compiling the fit program (0 when an executable for the same
            model, shapes and options was already compiled in this process).
        fit_time: seconds the compiled fit ran (all restarts, initialisation included).
        stalled: ``[n_restarts]`` bool, restarts that stopped on float round-off, not on ``tol``:
            the change of the log-likelihood fell within round-off of its float type while still
            above ``tol``, or it decreased beyond round-off (exact EM never decreases it). Never
            counted as converged; ``dtype="float64"`` resolves what float32 cannot.
        model: the fitted model (for :meth:`standard_errors`).
        n_datasets: ``None`` for one data set; ``B`` for :func:`jaxem.fit_many`'s batched result,
            whose every field has a leading ``[B]`` axis (``params`` ``[B, ...]``,
            ``log_likelihood``, ``best_restart`` ``[B]``, ``history`` ``[B, R, max_iter]``, ...).
        n_fallbacks: ``[n_restarts]`` extrapolations of accelerated EM that were rejected (their
            log-likelihood was lower) and replaced by a plain EM step; ``None`` for plain EM.

    With ``e_step="hard"`` the log-likelihoods and history are the classification log-likelihood
    ``Σ_n w_n max_k log p(x_n, z_n=k)``; with a model ``log_prior`` they include the prior.
    """

    params: Any
    log_likelihood: float
    history: np.ndarray
    initial_log_likelihood: np.ndarray
    converged: np.ndarray
    n_iter: np.ndarray
    failed: np.ndarray
    all_params: Any
    all_log_likelihoods: np.ndarray
    best_restart: int
    restart_keys: Any
    compile_time: float = 0.0
    fit_time: float = 0.0
    interrupted: bool = False
    stalled: np.ndarray | None = None
    model: Any = None
    n_datasets: int | None = None
    n_fallbacks: np.ndarray | None = None

    def __getstate__(self) -> dict:
        # The model holds functions (often closures) that cannot be pickled; an unpickled result
        # keeps everything else (its standard errors then need jaxem.standard_errors(model, ...)).
        return {**self.__dict__, "model": None}

    def standard_errors(self, X, sample_weight=None, *, transform=None, **data_options) -> Any:
        """Standard errors of the best restart's ``params`` (same pytree) from the observed
        information on the data ``X`` the fit saw (see :func:`jaxem.standard_errors`; an HMM
        takes ``lengths=``). For a batched result (:func:`jaxem.fit_many`) give the same list
        ``Xs`` (and weights): the result has a leading ``[B]`` axis.

        Raises ValueError, or warns :class:`jaxem.IllConditionedWarning`, naming the parameter
        when the information is singular or ill-conditioned."""
        if self.model is None:
            raise ValueError("this FitResult does not know its model; use "
                             "jaxem.standard_errors(model, result.params, X)")
        if self.n_datasets is not None:
            batch = stack_datasets(X, sample_weight, self.model)
            return se.batched_standard_errors(self.model, self.params, batch.X.astype(
                jax.tree.leaves(self.params)[0].dtype), batch.weights, transform=transform)
        return se.standard_errors(self.model, self.params, X, sample_weight, transform=transform,
                                  **data_options)

    def confidence_intervals(self, X, level: float = 0.95, sample_weight=None, *, transform=None,
                             **data_options) -> tuple[Any, Any]:
        """``(lower, upper)`` Wald intervals ``θ ∓ z · SE`` at ``level``, each shaped like
        ``params`` (see :meth:`standard_errors`)."""
        se.normal_quantile(level)
        errors = self.standard_errors(X, sample_weight, transform=transform, **data_options)
        estimate = self.params if transform is None else (
            jax.vmap(transform)(self.params) if self.n_datasets is not None else transform(self.params))
        return se.wald_intervals(estimate, errors, level)


class FitInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a fit between two iterations (or two segments of the compiled loop,
    about half a second each). ``result`` is a :class:`FitResult` with the parameters reached
    so far (``interrupted`` True; restarts still running are not ``converged``); a
    KeyboardInterrupt, so a script stops unless it catches it::

        try:
            result = jem.fit(model, X, key=key, max_iter=10_000)
        except jem.FitInterrupted as stop:
            result = stop.result
    """

    def __init__(self, result: FitResult):
        n_iter = int(np.max(result.n_iter)) if np.size(result.n_iter) else 0
        super().__init__(f"the fit was interrupted after {n_iter} iterations (log-likelihood "
                         f"{result.log_likelihood:.6g}); the parameters so far are in .result")
        self.result = result


def _non_finite_params(params) -> np.ndarray:
    """``[R]`` the path of the first floating parameter of each restart that holds a NaN or an
    infinity (``""`` where all are finite)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    n_restarts = np.shape(leaves[0][1])[0] if leaves else 0
    bad = np.full((n_restarts,), "", dtype=object)
    for path, leaf in leaves:
        leaf = np.asarray(leaf)
        if not np.issubdtype(leaf.dtype, np.floating):
            continue
        finite = np.isfinite(leaf.reshape(n_restarts, -1)).all(axis=1)
        bad = np.where((bad == "") & ~finite, jax.tree_util.keystr(path), bad)
    return bad


def _gradient_stalled(out: LoopOutput, tol: float) -> np.ndarray:
    """``[R]`` restarts not converged whose last change was within ``tol`` (relative): only a
    gradient M-step's tests hold those back (see :func:`jaxem.core.loop.advance`)."""
    history, n_iter = np.asarray(out.history), np.asarray(out.n_iter)
    rows = np.arange(history.shape[0])
    last = history[rows, np.maximum(n_iter - 1, 0)]
    before = np.where(n_iter >= 2, history[rows, np.maximum(n_iter - 2, 0)],
                      np.asarray(out.initial_objective))
    with np.errstate(invalid="ignore"):
        small = np.abs(last - before) <= max(tol, 4 * np.finfo(history.dtype).eps) * np.abs(before)
    return ~np.asarray(out.converged) & (n_iter >= 1) & small


def _restart(leaf, index: int):
    """``leaf[index]``; a one-device array is sliced on the host and put back (uncommitted), since
    slicing it there compiles a small program per leaf (60 ms of a small first fit)."""
    if isinstance(leaf, jax.Array) and len(leaf.sharding.device_set) == 1:
        return jax.device_put(np.asarray(leaf)[index])
    return leaf[index]


def result_from_loop(out: LoopOutput, keys, *, max_iter: int, tol: float | None,
                     compile_time: float = 0.0, fit_time: float = 0.0, hint: str = "",
                     stacklevel: int = 3, interrupted: bool = False,
                     model: Any = None) -> FitResult:
    """The :class:`FitResult` of a finished loop (every fit driver's last step): picks the best
    restart that did not fail, raises :class:`FitError` when all failed, warns
    :class:`ConvergenceWarning` when none converged.

    Args:
        out: the loop's output (leading ``[R]`` axis on every leaf).
        keys: ``[R]`` the restarts' keys.
        max_iter, tol: the fit's settings, for the messages.
        compile_time, fit_time: seconds, reported in the result.
        hint: what to check, appended to the all-failed message.
        stacklevel: for the warning, so it points at the user's call.
        interrupted: the loop was stopped by Ctrl-C (no warning; the result says so).
        model: the fitted model, kept on the result.
    """
    ll = np.asarray(out.objective)
    bad_params = _non_finite_params(out.params)
    failed = ~np.isfinite(ll) | (bad_params != "")
    if failed.all():
        what = (f"parameter {bad_params[np.isfinite(ll)][0]!r} became NaN or infinite"
                if np.isfinite(ll).any() else
                f"the log-likelihood became {'NaN' if np.isnan(ll).any() else 'infinite'}")
        raise FitError(f"all {ll.shape[0]} restarts failed: {what}" + (f"; {hint}" if hint else ""))
    best = int(np.argmax(np.where(failed, -np.inf, ll)))
    # A restart whose numbers are not finite has not converged, whatever its last change was.
    converged = np.asarray(out.converged) & ~failed
    stalled = (np.zeros_like(converged) if out.stalled is None
               else np.asarray(out.stalled) & ~failed & ~converged)
    if stalled[best]:
        width = np.asarray(out.objective).dtype
        remedy = ("fit with dtype='float64' (or 'auto') to reach tol" if width != np.float64 else
                  "rescale the data or regularise the model (e.g. a larger reg_covar)")
        warnings.warn(
            f"the best restart stopped on {width} round-off, not converged to tol={tol:g}: the "
            f"log-likelihood's change fell below what {width} resolves, or it decreased (round-off "
            f"in ill-conditioned parameters); {remedy}", ConvergenceWarning, stacklevel=stacklevel)
    elif tol is not None and not interrupted and not converged[~failed].any():
        if _gradient_stalled(out, tol)[~failed].any():
            what = ("the gradient M-step stalled (the log-likelihood changed by less than "
                    f"tol={tol:g}, but an EM-gradient step or the log-likelihood's own Newton "
                    "estimate says more is to be gained, or the changes shrink too slowly to be "
                    "near the maximum); give the optimizer larger steps (a larger learning rate, "
                    "more m_step_iters) or leave optimizer=None for the EM-gradient step; with "
                    "that step already, increase max_iter, or tol where the log-joint has kinks "
                    "(an absolute value: no step crosses one at once)")
        else:
            what = (f"relative change of the log-likelihood still above tol={tol:g}; increase "
                    "max_iter or tol")
        warnings.warn(f"no restart converged within max_iter={max_iter} iterations ({what})",
                      ConvergenceWarning, stacklevel=stacklevel)
    return FitResult(
        params=jax.tree.map(lambda p: _restart(p, best), out.params),
        log_likelihood=float(ll[best]),
        history=np.asarray(out.history),
        initial_log_likelihood=np.asarray(out.initial_objective),
        converged=converged,
        n_iter=np.asarray(out.n_iter),
        failed=failed,
        all_params=out.params,
        all_log_likelihoods=ll,
        best_restart=best,
        restart_keys=keys,
        compile_time=compile_time,
        fit_time=fit_time,
        interrupted=interrupted,
        stalled=stalled,
        model=model,
        n_fallbacks=None if out.fallbacks is None else np.asarray(out.fallbacks),
    )
