"""What a fit returns: :class:`FitResult`, built from the compiled loop's output by
:func:`result_from_loop` (the last step of every fit driver: in memory, chunked, HMM), and
:class:`FitError` when every restart failed."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import numpy as np

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
            ``key=restart_keys[r:r + 1]`` reproduces restart ``r`` alone.
        compile_time: seconds spent compiling the fit program (0 when an executable for the same
            model, shapes and options was already compiled in this process).
        fit_time: seconds the compiled fit ran (all restarts, initialisation included).
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
    n_fallbacks: np.ndarray | None = None


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


def result_from_loop(out: LoopOutput, keys, *, max_iter: int, tol: float | None,
                     compile_time: float = 0.0, fit_time: float = 0.0, hint: str = "",
                     stacklevel: int = 3) -> FitResult:
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
    if tol is not None and not converged[~failed].any():
        warnings.warn(
            f"no restart converged within max_iter={max_iter} iterations (relative change of the "
            f"log-likelihood still above tol={tol:g}); increase max_iter or tol",
            ConvergenceWarning, stacklevel=stacklevel)
    return FitResult(
        params=jax.tree.map(lambda p: p[best], out.params),
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
        n_fallbacks=None if out.fallbacks is None else np.asarray(out.fallbacks),
    )
