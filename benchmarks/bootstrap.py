"""Bootstrap refits as one program: jaxem against a loop of scikit-learn refits, and coverage.

Speed: 200 nonparametric bootstrap refits of a K-component full-covariance Gaussian mixture,
every refit started from the original fit (at most 100 iterations each):

* ``jaxem``: ``jem.bootstrap(model, X, 200, key=..., result=original)``: the replicates are
  multinomial ``sample_weight`` counts on the same rows, all one compiled program
  (:func:`jaxem.fit_many`), then matched to the original labels. Wall time including
  compilation (the persistent compilation cache is switched off, so every run compiles).
* ``sklearn``: a Python loop of ``GaussianMixture(K, weights_init=..., means_init=...,
  precisions_init=...)`` refits on ``X[rng.choice(N, N)]`` (scikit-learn's mixture takes no
  sample weights, so each replicate copies its rows). Its ``tol`` is on the mean log-likelihood
  (absolute), jaxem's on the total (relative): ``tol_sklearn = tol_jaxem * |mean log-likelihood|``,
  the same stopping point.

jaxem's time is given three ways: the first call in a process with compilation (on-disk caches
off), the first call in a new process whose on-disk program cache already holds the program (what a
user's next session sees), and a second call in the same process.

Workloads: Old Faithful (N=272, D=2, K=2) and a seeded mixture (N=10,000, D=8, K=4).

Coverage (issue 22): data sets of 500 rows from a known 1-D two-component mixture; the fraction of
data sets whose 95% interval for each mean covers the truth, for Wald intervals (500 data sets,
:func:`jaxem.fit_many` and the batched standard errors, one program each) and for parametric
bootstrap percentile intervals (200 data sets x 200 replicates; each data set's replicates one
program). A binomial band for the number of data sets: 92-98% for 500.

    python benchmarks/bootstrap.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

import jaxem as jem  # noqa: E402
from jaxem.datasets import load_old_faithful  # noqa: E402

jax.config.update("jax_enable_x64", False)


def _seeded_mixture(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 4.0, (k, d))
    z = rng.integers(0, k, n)
    scales = rng.uniform(0.5, 1.5, (k, d))
    return (centres[z] + scales[z] * rng.normal(size=(n, d))).astype(np.float32)


def _workload(index: int, quick: bool) -> tuple[str, np.ndarray, int]:
    if index == 0:
        return "Old Faithful N=272 D=2 K=2", load_old_faithful()[0].astype(np.float32), 2
    n = 2_000 if quick else 10_000
    return f"mixture N={n} D=8 K=4", _seeded_mixture(n, 8, 4), 4


def _cached_process(index: int, quick: bool, n_boot: int) -> float:
    """Seconds of the refits in a fresh process with the on-disk caches on, run twice so the
    second finds the compiled program there (what a user's second session sees)."""
    cmd = [sys.executable, __file__, "--_cached", str(index), str(n_boot)] + (["--quick"] if quick else [])
    for _ in range(2):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def _run_cached(index: int, n_boot: int, quick: bool) -> None:
    _, X, k = _workload(index, quick)
    model = jem.gaussian_mixture(k)
    original = jem.fit(model, X, key=jax.random.key(0), n_restarts=4, tol=1e-6)
    start = time.perf_counter()
    jem.bootstrap(model, X, n_boot, key=jax.random.key(1), result=original, tol=1e-6)
    print(time.perf_counter() - start)


def speed(index: int, quick: bool, n_boot: int, tol: float = 1e-6) -> dict:
    """Seconds of ``n_boot`` refits for jaxem (one program) and a scikit-learn loop."""
    from sklearn.mixture import GaussianMixture

    name, X, k = _workload(index, quick)
    cached_s = _cached_process(index, quick, n_boot)
    jem.disable_compilation_cache()   # the first call's wall time includes compilation
    model = jem.gaussian_mixture(k)
    original = jem.fit(model, X, key=jax.random.key(0), n_restarts=4, tol=tol)
    start = time.perf_counter()
    boot = jem.bootstrap(model, X, n_boot, key=jax.random.key(1), result=original, tol=tol)
    jaxem_s = time.perf_counter() - start
    start = time.perf_counter()   # again, the program now compiled (as in a simulation loop)
    jem.bootstrap(model, X, n_boot, key=jax.random.key(3), result=original, tol=tol)
    warm_s = time.perf_counter() - start

    params = jax.tree.map(np.asarray, original.params)
    A = params["prec_chol"].astype(np.float64)
    precisions = np.swapaxes(A, -1, -2) @ A
    mean_ll = abs(original.log_likelihood / X.shape[0])
    rng = np.random.default_rng(2)
    sk_means = []
    start = time.perf_counter()
    for _ in range(n_boot):
        rows = X[rng.choice(X.shape[0], X.shape[0])]
        gm = GaussianMixture(k, covariance_type="full", weights_init=params["weights"],
                             means_init=params["means"], precisions_init=precisions,
                             tol=tol * mean_ll, max_iter=100, reg_covar=1e-6).fit(rows)
        sk_means.append(gm.means_)
    sklearn_s = time.perf_counter() - start
    sk_se = np.std(np.sort(np.asarray(sk_means)[..., 0], axis=1), axis=0, ddof=1)
    jx_se = np.sort(np.asarray(boot.standard_errors["means"])[..., 0])
    return {"workload": name, "n_boot": n_boot, "jaxem_s": jaxem_s,
            "jaxem_compile_s": boot.fit.compile_time, "sklearn_s": sklearn_s,
            "ratio": sklearn_s / jaxem_s, "jaxem_warm_s": warm_s, "warm_ratio": sklearn_s / warm_s,
            "jaxem_cached_s": cached_s, "cached_ratio": sklearn_s / cached_s,
            "jaxem_se_first_coordinate": jx_se.tolist(),
            "sklearn_se_first_coordinate": sk_se.tolist()}


TRUTH = np.array([-1.5, 1.5])


def _simulate(n_sets: int, n_rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.uniform(size=(n_sets, n_rows)) < 0.4
    return (np.where(z, TRUTH[0], TRUTH[1]) + rng.normal(size=(n_sets, n_rows)))[..., None]


def _covered(lower, upper, estimate) -> np.ndarray:
    """``[B, 2]`` whether each mean's interval covers the truth, components in position order."""
    order = np.argsort(np.asarray(estimate)[:, :, 0], axis=1)
    lo = np.take_along_axis(np.asarray(lower)[:, :, 0], order, 1)
    hi = np.take_along_axis(np.asarray(upper)[:, :, 0], order, 1)
    return (lo <= TRUTH) & (TRUTH <= hi)


def coverage(n_wald: int, n_param: int, n_boot: int, n_rows: int = 500) -> dict:
    jax.config.update("jax_enable_x64", True)
    try:
        model = jem.gaussian_mixture(2)
        X = _simulate(n_wald, n_rows, 0)
        start = time.perf_counter()
        fits = jem.fit_many(model, X, key=jax.random.key(0), n_restarts=2, tol=1e-10, max_iter=300)
        lower, upper = fits.confidence_intervals(X)
        wald_s = time.perf_counter() - start
        wald = _covered(lower["means"], upper["means"], fits.params["means"]).mean(axis=0)

        X = _simulate(n_param, n_rows, 1)
        fits = jem.fit_many(model, X, key=jax.random.key(1), n_restarts=2, tol=1e-10, max_iter=300)
        start = time.perf_counter()
        rows = []
        for b in range(n_param):
            original = jem.fit(model, X[b], init_params=jax.tree.map(lambda a, b=b: a[b], fits.params),
                               tol=1e-10, max_iter=300)
            boot = jem.bootstrap(model, X[b], n_boot, key=jax.random.key(100 + b), kind="parametric",
                                 result=original, tol=1e-8, max_iter=300)
            lo, hi = boot.intervals(0.95)
            rows.append(_covered(lo["means"][None], hi["means"][None], original.params["means"][None]))
        boot_s = time.perf_counter() - start
        param = np.concatenate(rows).mean(axis=0)
    finally:
        jax.config.update("jax_enable_x64", False)
    return {"wald_datasets": n_wald, "wald_coverage": wald.tolist(), "wald_s": wald_s,
            "bootstrap_datasets": n_param, "n_boot": n_boot,
            "bootstrap_coverage": param.tolist(), "bootstrap_s": boot_s}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes, about a minute")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--_cached", nargs=2, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._cached:
        _run_cached(args._cached[0], args._cached[1], args.quick)
        return 0
    from _harness import machine_line

    print(f"machine: {machine_line()}\n")
    n_boot = 50 if args.quick else 200
    rows = [speed(0, args.quick, n_boot), speed(1, args.quick, n_boot)]
    print("jaxem's wall time: first call with compilation (on-disk caches off); first call in a new "
          "process whose on-disk program cache holds the program; again in the same process.\n")
    print("| workload | refits | jaxem first call (compile) | ratio | new process, cached | ratio "
          "| same process | ratio | scikit-learn loop |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workload']} | {r['n_boot']} | {r['jaxem_s']:.2f} s ({r['jaxem_compile_s']:.2f}) | "
              f"{r['ratio']:.1f}x | {r['jaxem_cached_s']:.2f} s | {r['cached_ratio']:.1f}x | "
              f"{r['jaxem_warm_s']:.2f} s | {r['warm_ratio']:.1f}x | {r['sklearn_s']:.2f} s |")
    cov = coverage(50, 5, 30) if args.quick else coverage(500, 200, 200)
    print(f"\nWald 95% coverage of the two means over {cov['wald_datasets']} data sets (N=500): "
          f"{cov['wald_coverage'][0]:.3f}, {cov['wald_coverage'][1]:.3f} ({cov['wald_s']:.1f} s)")
    print(f"parametric bootstrap 95% percentile coverage over {cov['bootstrap_datasets']} data sets "
          f"x {cov['n_boot']} replicates: {cov['bootstrap_coverage'][0]:.3f}, "
          f"{cov['bootstrap_coverage'][1]:.3f} ({cov['bootstrap_s']:.1f} s)\n")
    ok = True
    for r in rows:
        met = r["ratio"] >= 10
        ok &= met or args.quick
        print(f"- target bootstrap {r['workload']}: jaxem >= 10x a scikit-learn loop, "
              f"compilation included: "
              f"{r['ratio']:.1f}x {'met' if met else 'NOT met'}")
    for name in ("wald", "bootstrap"):
        values = np.asarray(cov[f"{name}_coverage"])
        met = bool(np.all((values >= 0.92) & (values <= 0.98)))
        ok &= met or args.quick
        print(f"- target {name} 95% coverage in [0.92, 0.98]"
              f"{' (quick: too few data sets to judge)' if args.quick else ''}: "
              f"{', '.join(f'{v:.3f}' for v in values)} {'met' if met else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"speed": rows, "coverage": cov}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
