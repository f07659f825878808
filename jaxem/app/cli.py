"""The ``jaxem`` command line.

- ``jaxem demo``: a Gaussian mixture fitted to the Old Faithful geyser data shipped with jaxem.
- ``jaxem fit DATA --model gmm -k 3``: fit a CSV, TSV, ``.npy`` or Parquet table, print a summary,
  save the model with ``--out``, draw it with ``--plot``.
- ``jaxem predict MODEL DATA``: a CSV of each row's label and component probabilities.
- ``jaxem select DATA --ks 1-10``: the BIC/AIC table over numbers of components.

Errors are one line on stderr: exit status 2 for bad input (arguments, files, data: everything
checked before compute), 1 for a failure after valid input. ``JAXEM_DEBUG=1`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import sys
import time
import warnings
from collections.abc import Sequence

import jax
import numpy as np

import jaxem
from jaxem.app import io as jio
from jaxem.app.arguments import (  # noqa: F401  (MODELS and build_parser: jaxem.cli's names)
    MODELS,
    UsageError,
    available_models,
    build_parser,
    estimator_class,
)
from jaxem.app.report import format_table, summary, total_log_likelihood
from jaxem.datasets import load_old_faithful
from jaxem.estimators.params import input_tags


# -- building and fitting estimators -----------------------------------------------------------
def _parse_value(text: str):
    for convert in (int, float):
        with contextlib.suppress(ValueError):
            return convert(text)
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def _make_estimator(cls, args: argparse.Namespace, k: int):
    """The estimator with the command line's hyperparameters; unknown names are usage errors."""
    params = set(cls().get_params())
    wanted = {"n_components": k, "n_restarts": args.restarts, "random_state": args.seed}
    if args.covariance is not None:
        wanted["covariance_type"] = args.covariance
    if args.max_iter is not None:
        wanted["n_iter" if "n_iter" in params and "max_iter" not in params else "max_iter"] = \
            args.max_iter
    if getattr(args, "resume", False) and not args.checkpoint:
        raise UsageError("--resume needs --checkpoint FILE (the file to resume from)")
    if getattr(args, "checkpoint", None):
        wanted.update(checkpoint=args.checkpoint, resume=args.resume)
    verbose = 0 if args.quiet else 1  # a bar only on a terminal, for fits longer than a second
    if "verbose" in params:
        wanted["verbose"] = verbose
    for setting in getattr(args, "settings", []):
        name, eq, value = setting.partition("=")
        if not eq:
            raise UsageError(f"--set expects NAME=VALUE, got {setting!r}")
        wanted[name.strip()] = _parse_value(value.strip())
    unknown = sorted(set(wanted) - params)
    if unknown:
        option = {"covariance_type": "--covariance", "n_restarts": "--restarts"}
        names = ", ".join(option.get(u, u) for u in unknown)
        raise UsageError(f"{cls.__name__} does not take {names}; its hyperparameters are "
                          f"{', '.join(sorted(params))}")
    est = cls(**wanted)
    if "verbose" not in params:
        est.verbose = verbose  # read by the estimators' fit where the family has no such parameter
    return est, wanted


def _lengths(args, n_rows: int, cls) -> dict:
    if args.lengths is None:
        return {}
    if "lengths" not in inspect.signature(cls.fit).parameters:
        raise UsageError(f"--lengths applies to HMMs, not {cls.__name__}")
    try:
        lengths = [int(v) for v in args.lengths.split(",")]
    except ValueError:
        raise UsageError(f"--lengths expects integers like 100,250, got {args.lengths!r}") from None
    if sum(lengths) != n_rows or min(lengths) < 1:
        raise UsageError(f"--lengths must be positive and sum to the {n_rows} rows of DATA, got "
                          f"sum {sum(lengths)}")
    return {"lengths": np.asarray(lengths)}


def _read(args, cls) -> tuple[np.ndarray, list[str]]:
    """DATA for an estimator of class ``cls``: missing values read as NaN where it takes them."""
    columns = None if args.columns is None else [c.strip() for c in args.columns.split(",")]
    return jio.read_table(args.data, columns, missing=input_tags(cls).get("allow_nan", False),
                          who=cls.__name__)


@contextlib.contextmanager
def _one_line_warnings():
    """Show each warning raised inside as one ``jaxem: warning:`` line on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for message in dict.fromkeys(_one_line(w.message) for w in caught):
        print(f"jaxem: warning: {message}", file=sys.stderr)


# XLA compilations seen so far: every backend compilation, and those JAX's persistent cache
# served (jaxem's own program cache loads an executable without either). Counted from JAX's
# monitoring events, registered once.
_COMPILATIONS = {"backend": 0, "cache_hits": 0}


def _on_duration(event: str, duration: float, **_) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILATIONS["backend"] += 1


def _on_event(event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _COMPILATIONS["cache_hits"] += 1


def _compiled_so_far() -> int:
    if not _COMPILATIONS.get("listening"):
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        jax.monitoring.register_event_listener(_on_event)
        _COMPILATIONS["listening"] = 1
    return _COMPILATIONS["backend"] - _COMPILATIONS["cache_hits"]


def _fit(est, X, fit_kwargs: dict) -> tuple[float, bool]:
    """Fit ``est`` to ``X``; returns the wall time in seconds and whether XLA compiled a
    program for it (rather than loading every one from a cache)."""
    if est.n_components > X.shape[0]:  # checked here too, so select fails before any fit
        raise ValueError(f"{est.n_components} components but DATA has only {X.shape[0]} rows; a "
                         "model needs at least as many rows as components")
    before = _compiled_so_far()
    start = time.perf_counter()
    with _one_line_warnings():
        est.fit(X, **fit_kwargs)
    return time.perf_counter() - start, _compiled_so_far() > before


def _check_writable(path: str | None, what: str) -> None:
    """Fail before fitting when an output file could not be written."""
    if path is not None:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise UsageError(f"cannot write {what} to {path!r}: folder {folder!r} does not exist")


def _save_plot(est, X, names, path, fit_kwargs) -> None:
    try:
        from jaxem.app.plot import plot_fit

        fig = plot_fit(est, X, feature_names=names, lengths=fit_kwargs.get("lengths"))
    except ImportError:
        print("note: --plot skipped, matplotlib is not installed; pip install 'jaxem[plot]'",
              file=sys.stderr)
        return
    fig.savefig(path)
    print(f"\nplot written to {path}")


# -- commands ---------------------------------------------------------------------------------
def run_demo(args: argparse.Namespace) -> int:
    """``jaxem demo``: fit the Old Faithful mixture and print its summary; returns the status."""
    _check_writable(args.plot, "the plot")
    X, names = load_old_faithful()
    gm, shown = _make_estimator(jaxem.GaussianMixture, args, args.components)
    elapsed, compiled = _fit(gm, X, {})
    lines = summary(gm, X, names, "jaxem demo: Gaussian mixture fitted by EM to the Old Faithful "
                    "geyser data", shown, elapsed, compiled=compiled)
    print("\n".join(lines))
    if args.plot:
        _save_plot(gm, X, names, args.plot, {})
    return 0


def run_fit(args: argparse.Namespace) -> int:
    """``jaxem fit``: fit DATA, print the summary, save and plot on request."""
    cls = available_models()[args.model]
    _check_writable(args.out, "the model")
    _check_writable(args.plot, "the plot")
    est, shown = _make_estimator(cls, args, args.components)
    X, names = _read(args, cls)
    fit_kwargs = _lengths(args, X.shape[0], cls)
    title, status, compiled = f"jaxem fit: {cls.__name__} fitted by EM to {args.data}", 0, False
    start = time.perf_counter()
    try:
        elapsed, compiled = _fit(est, X, fit_kwargs)
    except jaxem.FitInterrupted as stop:
        # The estimator holds the parameters reached so far: print and save them, then exit as
        # an interrupted command does.
        elapsed, status = time.perf_counter() - start, 130
        title = (f"jaxem fit: {cls.__name__} INTERRUPTED after {est.n_iter_} iterations (not "
                 f"converged; the parameters so far) on {args.data}")
        print(f"jaxem: interrupted: {stop}", file=sys.stderr)
    print("\n".join(summary(est, X, names, title, shown, elapsed, fit_kwargs, compiled=compiled)))
    if args.out:
        jio.save(est, args.out)
        print(f"\nmodel saved to {args.out} (load with jaxem.load or 'jaxem predict')")
    if args.plot and not status:
        _save_plot(est, X, names, args.plot, fit_kwargs)
    return status


def run_predict(args: argparse.Namespace) -> int:
    """``jaxem predict``: a CSV of labels and component probabilities, one row per DATA row."""
    _check_writable(args.out, "the predictions")
    est = jio.load(args.model_file)
    needs = [p for p in inspect.signature(est.predict_proba).parameters.values()
             if p.default is inspect.Parameter.empty and p.name != "X"]
    if needs:  # e.g. regression mixtures: their posterior needs the response y as well
        raise UsageError(f"{type(est).__name__}.predict_proba needs {needs[0].name!r} besides X; "
                          "predict from Python")
    X, _ = _read(args, type(est))
    fit_kwargs = _lengths(args, X.shape[0], type(est))
    proba = np.asarray(est.predict_proba(X, **fit_kwargs))
    labels = np.asarray(est.predict(X, **fit_kwargs))
    digits = 9 if proba.dtype == np.float32 else 17  # enough to read back the same number
    header = "label," + ",".join(f"p{k}" for k in range(proba.shape[1]))
    table = np.column_stack([labels, proba]).astype(object)
    fmt = ["%d"] + [f"%.{digits}g"] * proba.shape[1]
    with open(args.out, "w", newline="") if args.out else contextlib.nullcontext(sys.stdout) as f:
        np.savetxt(f, table, fmt=fmt, delimiter=",", header=header, comments="")
    if args.out:
        print(f"{len(labels)} predictions written to {args.out}", file=sys.stderr)
    return 0


def run_select(args: argparse.Namespace) -> int:
    """``jaxem select``: fit every K in ``--ks`` and print log-likelihood, BIC and AIC."""
    cls = available_models()[args.model]
    X, _ = _read(args, cls)
    fit_kwargs = _lengths(args, X.shape[0], cls)
    if max(args.ks) > X.shape[0]:
        raise ValueError(f"--ks goes up to {max(args.ks)} components but DATA has only "
                         f"{X.shape[0]} rows")
    rows, best = [], None
    for k in args.ks:
        est, _ = _make_estimator(cls, args, k)
        elapsed, _ = _fit(est, X, fit_kwargs)
        score = {"bic": est.bic(X, **fit_kwargs), "aic": est.aic(X, **fit_kwargs)}
        if best is None or score[args.criterion] < best[1]:
            best = (k, score[args.criterion])
        rows.append([str(k), f"{total_log_likelihood(est, X, fit_kwargs):.4f}",
                     f"{score['bic']:.4f}", f"{score['aic']:.4f}",
                     "yes" if est.converged_ else "no", f"{elapsed:.2f}",
                     f"{est.fit_result_.compile_time:.2f}"])
    for row in rows:
        row.append("<- best" if int(row[0]) == best[0] else "")
    print(f"jaxem select: {cls.__name__} on {args.data} ({X.shape[0]} x {X.shape[1]}), "
          f"{args.restarts} restarts per K")
    header = ["K", "log-likelihood", "BIC", "AIC", "converged", "seconds", "compile s", ""]
    print("\n".join(format_table(header, rows)))
    print(f"best K by {args.criterion.upper()}: {best[0]}")
    return 0


_COMMANDS = {"demo": run_demo, "fit": run_fit, "predict": run_predict, "select": run_select}


def _one_line(err) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``jaxem`` command line.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for bad input (arguments, missing or unreadable files,
        data a model cannot take), 1 for a failure after valid input. Errors are printed as one
        line on stderr, without a traceback (set ``JAXEM_DEBUG=1`` to see one).
    """
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        print(f"jaxem: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help and --version
        return exit_.code if isinstance(exit_.code, int) else 0
    debug = bool(os.environ.get("JAXEM_DEBUG"))
    try:
        return _COMMANDS[args.command](args)
    except (UsageError, ValueError, ImportError, FileNotFoundError, IsADirectoryError,
            PermissionError) as err:
        if debug:
            raise
        print(f"jaxem: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxem: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a failure after valid input: still one line, no traceback
        if debug:
            raise
        kind = "" if isinstance(err, (jaxem.FitError, OSError)) else f"{type(err).__name__}: "
        print(f"jaxem: error: {kind}{_one_line(err)} (JAXEM_DEBUG=1 shows a traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
