"""The ``jaxem`` command line.

``jaxem demo`` fits a Gaussian mixture to the Old Faithful geyser data with restarts and prints a
summary (and, with ``--plot FILE`` and matplotlib installed, draws the fit). Errors are reported as
one line on stderr: exit status 2 for a usage error, 1 for a failure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np

import jaxem
from jaxem.datasets import load_old_faithful

_COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")


class _UsageError(Exception):
    """A bad command line (reported with exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises on errors instead of printing usage and exiting."""

    def error(self, message: str):
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer ``>= minimum``, described as ``what`` in errors."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_seed = _int_at_least(0, "a non-negative integer")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``jaxem`` command (subcommand ``demo``)."""
    parser = _Parser(prog="jaxem", description="Expectation-maximization in JAX.")
    parser.add_argument("--version", action="version", version=f"jaxem {jaxem.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo", help="fit a Gaussian mixture to the Old Faithful geyser data",
        description="Fit jaxem.GaussianMixture to the Old Faithful geyser data (272 x 2) with "
                    "several restarts run as one vmapped program, and print a summary.")
    demo.add_argument("--components", "-k", type=_positive_int, default=2, metavar="K",
                      help="number of mixture components (default: 2)")
    demo.add_argument("--restarts", "-r", type=_positive_int, default=8, metavar="R",
                      help="random restarts; the best is kept (default: 8)")
    demo.add_argument("--seed", type=_seed, default=0, metavar="S",
                      help="random seed (default: 0)")
    demo.add_argument("--covariance", choices=_COVARIANCE_TYPES, default="full",
                      help="covariance type (default: full)")
    demo.add_argument("--plot", metavar="FILE",
                      help="write a scatter plot with 2-sigma component ellipses to FILE "
                           "(needs matplotlib: pip install 'jaxem[plot]')")
    return parser


def _format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Right-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]


def _full_covariances(gm: jaxem.GaussianMixture) -> np.ndarray:
    """The fitted covariances as ``[K, D, D]`` whatever the covariance type."""
    cov = np.asarray(gm.covariances_, dtype=np.float64)
    k, d = gm.n_components, gm.n_features_in_
    if gm.covariance_type == "tied":
        return np.broadcast_to(cov, (k, d, d))
    if gm.covariance_type == "diag":
        return cov[:, :, None] * np.eye(d)
    if gm.covariance_type == "spherical":
        return cov[:, None, None] * np.eye(d)
    return cov


def _check_writable(path: str) -> None:
    """Fail before fitting when the plot could not be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OSError(f"cannot write plot to {path!r}: folder {folder!r} does not exist")


def save_plot(gm: jaxem.GaussianMixture, X: np.ndarray, feature_names: Sequence[str],
              path: str) -> bool:
    """Write a scatter of ``X`` coloured by component, with 2-sigma ellipses, to ``path``.

    Args:
        gm: a fitted :class:`jaxem.GaussianMixture` on 2-D data.
        X: the data ``[N, 2]``.
        feature_names: names of the two columns (axis labels).
        path: output file; the format follows its extension (``.png``, ``.pdf``, ``.svg``, ...).

    Returns:
        ``True`` when the file was written, ``False`` when matplotlib is not installed (a one-line
        note is printed to stderr then).
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Ellipse
    except ImportError:
        print("note: --plot skipped, matplotlib is not installed; pip install 'jaxem[plot]'",
              file=sys.stderr)
        return False
    labels = gm.predict(X)
    colors = [f"C{k % 10}" for k in range(gm.n_components)]
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.scatter(X[:, 0], X[:, 1], s=10, c=[colors[k] for k in labels], alpha=0.7)
    for k, (mean, cov) in enumerate(zip(np.asarray(gm.means_), _full_covariances(gm), strict=True)):
        eigvals, eigvecs = np.linalg.eigh(cov)
        angle = np.degrees(np.arctan2(eigvecs[1, -1], eigvecs[0, -1]))
        width, height = 2 * 2 * np.sqrt(np.maximum(eigvals[::-1], 0.0))  # 2 sigma each side
        ax.add_patch(Ellipse(mean, width, height, angle=angle, fill=False, lw=2, color=colors[k]))
        ax.plot(*mean, marker="x", color="black")
    ax.set_xlabel(f"{feature_names[0]} (minutes)")
    ax.set_ylabel(f"{feature_names[1]} (minutes)")
    ax.set_title(f"Old Faithful: K={gm.n_components}, {gm.covariance_type} covariance, "
                 "2-sigma ellipses", fontsize=10)
    fig.savefig(path)
    return True


def run_demo(args: argparse.Namespace) -> int:
    """Fit the demo mixture and print its summary; returns the exit status."""
    if args.plot:
        _check_writable(args.plot)
    X, names = load_old_faithful()
    n, d = X.shape
    gm = jaxem.GaussianMixture(args.components, covariance_type=args.covariance,
                               n_restarts=args.restarts, random_state=args.seed)
    start = time.perf_counter()
    gm.fit(X)
    first = time.perf_counter() - start
    start = time.perf_counter()
    jaxem.GaussianMixture(**gm.get_params()).fit(X)  # same shapes: reuses the compiled program
    again = time.perf_counter() - start

    per_sample = gm.score(X)
    result = gm.fit_result_
    n_conv = int(np.sum(result.converged))
    status = "yes" if gm.converged_ else f"no (max_iter={gm.max_iter} reached)"
    lines = [
        "jaxem demo: Gaussian mixture fitted by EM",
        f"  data            Old Faithful geyser, {n} samples x {d} features ({', '.join(names)})",
        f"  model           GaussianMixture(n_components={args.components}, "
        f"covariance_type={args.covariance!r})",
        f"  restarts        {args.restarts}, run as one vmapped program (seed {args.seed}); "
        f"best is #{result.best_restart}, {n_conv}/{args.restarts} converged",
        f"  log-likelihood  {per_sample * n:.4f} total, {per_sample:.6f} per sample",
        f"  BIC             {gm.bic(X):.4f}",
        f"  converged       {status}, after {gm.n_iter_} iterations",
        f"  fit time        {first:.3f} s wall on {jax.default_backend()} (first call: includes JIT "
        "compilation)",
        f"  refit time      {again:.3f} s wall (same shapes: the compiled program is reused)",
        "",
    ]
    header = ["component", "weight", *(f"mean {name}" for name in names)]
    means = np.asarray(gm.means_)
    rows = [[str(k), f"{w:.4f}", *(f"{m:.4f}" for m in means[k])]
            for k, w in enumerate(np.asarray(gm.weights_))]
    lines += ["  " + line for line in _format_table(header, rows)]
    print("\n".join(lines))
    if args.plot and save_plot(gm, X, names, args.plot):
        print(f"\nplot written to {args.plot}")
    return 0


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``jaxem`` command line.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when the command failed, 2 for a usage error. Errors are
        printed as one line on stderr, without a traceback.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        print(f"jaxem: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help and --version
        return exit_.code if isinstance(exit_.code, int) else 0
    try:
        return run_demo(args)
    except (ValueError, OSError, jaxem.FitError) as err:
        print(f"jaxem: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("jaxem: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
