"""The command line's arguments: the parser of ``jaxem demo | fit | predict | select`` and the
table of model names it accepts (see :mod:`jaxem.app.cli` for what each command does)."""

from __future__ import annotations

import argparse
import importlib

import jaxem

# Command-line name -> estimator class name. A class appears once jaxem (or jaxem.hmm) exports
# it, so families that land later need no edit here. Families that need more than a table of
# observations (a response column, per-feature distributions) are fitted from Python, as is
# KMeans (its score is the negative inertia, not a log-likelihood the summary could print).
MODELS = {
    "gmm": "GaussianMixture",
    "bgmm": "BayesianGaussianMixture",
    "mfa": "MixtureOfFactorAnalysers",
    "ppca": "MixtureOfPPCA",
    "bernoulli": "BernoulliMixture",
    "categorical": "CategoricalMixture",
    "poisson": "PoissonMixture",
    "exponential": "ExponentialMixture",
    "gamma": "GammaMixture",
    "student-t": "StudentTMixture",
    "hmm": "GaussianHMM",
    "categorical-hmm": "CategoricalHMM",
    "poisson-hmm": "PoissonHMM",
    "gmm-hmm": "GMMHMM",
    "multinomial-hmm": "MultinomialHMM",
    "ar-hmm": "LinearAutoregressiveHMM",
}
_COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")


def estimator_class(class_name: str):
    """The estimator class ``class_name`` from ``jaxem`` or ``jaxem.hmm``, or ``None``."""
    for module in ("jaxem", "jaxem.hmm"):
        try:
            cls = getattr(importlib.import_module(module), class_name, None)
        except ImportError:
            cls = None
        if cls is not None:
            return cls
    return None


def available_models() -> dict:
    """``{command-line name: estimator class}`` for the families this jaxem has."""
    return {name: cls for name, cls_name in MODELS.items()
            if (cls := estimator_class(cls_name)) is not None}


class UsageError(Exception):
    """Bad input (arguments, files, data), reported with exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises on errors instead of printing usage and exiting."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


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


def _ks(text: str) -> list[int]:
    """``"1-10"``, ``"2,4,8"`` or ``"1-3,6"`` -> sorted distinct positive integers."""
    ks: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            lo, hi = int(lo), int(hi or lo)
            if lo < 1 or hi < lo:
                raise ValueError
            ks.update(range(lo, hi + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers of components like 1-10 or 2,4,8, got {text!r}") from None
    return sorted(ks)


def _common_fit_options(p: argparse.ArgumentParser, default_k: int | None) -> None:
    p.add_argument("--components", "-k", type=_positive_int, default=default_k, metavar="K",
                   required=default_k is None, help="number of components (hidden states for HMMs)")
    p.add_argument("--restarts", "-r", type=_positive_int, default=8, metavar="R",
                   help="random restarts run as one vmapped program; the best is kept (default: 8)")
    p.add_argument("--seed", type=_seed, default=0, metavar="S", help="random seed (default: 0)")
    p.add_argument("--covariance", choices=_COVARIANCE_TYPES,
                   help="covariance type of Gaussian models (default: the model's own)")
    p.add_argument("--max-iter", type=_positive_int, metavar="N",
                   help="most EM iterations per restart (default: the model's own)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA", help="a .csv, .tsv, .npy or .parquet table, one row per "
                   "observation (a header line is detected)")
    p.add_argument("--columns", metavar="A,B,...", help="use only these columns (names or 0-based "
                   "indices)")
    p.add_argument("--lengths", metavar="N1,N2,...", help="HMMs: lengths of the sequences stacked "
                   "in DATA (default: one sequence)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``jaxem`` command (``demo``, ``fit``, ``predict``, ``select``)."""
    models = available_models()
    parser = _Parser(prog="jaxem", description="Expectation-maximization in JAX.")
    parser.add_argument("--version", action="version", version=f"jaxem {jaxem.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo", help="fit a Gaussian mixture to the Old Faithful geyser data",
        description="Fit jaxem.GaussianMixture to the Old Faithful geyser data (272 x 2) with "
                    "several restarts run as one vmapped program, and print a summary.")
    _common_fit_options(demo, default_k=2)
    demo.set_defaults(covariance="full")
    demo.add_argument("--plot", metavar="FILE", help="draw the learning curve and the clusters with "
                      "2-sigma ellipses to FILE (.png, .pdf, .svg; needs matplotlib)")

    fit = commands.add_parser("fit", help="fit a model to a data file and print a summary",
                              description="Fit a model to DATA by EM, print a summary, and save it "
                                          "with --out (reload with 'jaxem predict' or jaxem.load).")
    _data_options(fit)
    fit.add_argument("--model", "-m", choices=sorted(models), default="gmm",
                     help="model family (default: gmm)")
    _common_fit_options(fit, default_k=None)
    fit.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                     help="any other hyperparameter of the estimator, e.g. --set n_trials=5")
    fit.add_argument("--out", "-o", metavar="FILE", help="save the fitted model to FILE (.npz)")
    fit.add_argument("--plot", metavar="FILE", help="draw the learning curve and the clusters "
                     "(or decoded states) to FILE (needs matplotlib)")
    fit.add_argument("--checkpoint", metavar="FILE", help="save the fit's state to FILE every "
                     "minute, at the end and on Ctrl-C, so a killed fit can be resumed")
    fit.add_argument("--resume", action="store_true", help="continue from --checkpoint FILE when "
                     "it exists (same data and options), to the result of an uninterrupted fit")

    predict = commands.add_parser(
        "predict", help="label the rows of a data file with a saved model",
        description="Write a CSV with one row per row of DATA: the most probable component "
                    "('label'; the Viterbi path for HMMs) and the probability of each component.")
    predict.add_argument("model_file", metavar="MODEL", help="a model saved by 'jaxem fit --out'")
    _data_options(predict)
    predict.add_argument("--out", "-o", metavar="FILE", help="write the CSV to FILE (default: "
                         "standard output)")

    select = commands.add_parser(
        "select", help="compare numbers of components by BIC and AIC",
        description="Fit the model for every K in --ks and print log-likelihood, BIC and AIC.")
    _data_options(select)
    select.add_argument("--model", "-m", choices=sorted(models), default="gmm",
                        help="model family (default: gmm)")
    select.add_argument("--ks", type=_ks, default=list(range(1, 11)), metavar="KS",
                        help="numbers of components: 1-10 (default), 2,4,8 or 1-3,6")
    select.add_argument("--criterion", choices=("bic", "aic"), default="bic",
                        help="which criterion picks the best K (default: bic)")
    _common_fit_options(select, default_k=1)
    return parser
