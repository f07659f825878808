"""Time to the answer: EM iterations, wall time and final log-likelihood of a converged fit, for
jaxem's plain EM, jaxem's accelerated EM (SQUAREM) and the peers, as a new user would run them.

Cases: scikit-learn's bundled iris, wine, breast cancer and digits (PCA to 16 dimensions) and Old
Faithful (``jaxem.datasets``), each standardised, with K = 3 and 6; a synthetic mixture of three
heavily overlapping 2-D Gaussians (where EM crawls); a 3-state Gaussian HMM with overlapping
emissions. Mixtures: full covariance, 10 restarts (scikit-learn ``n_init=10``), ``tol=1e-8``,
``max_iter=2000``, ``reg_covar=1e-6`` everywhere. HMM: 10 restarts for jaxem, 10 seeds of
hmmlearn (best kept).

Every library runs each case in a fresh process: ``first`` is the first fit call there (import
excluded; jaxem's includes compiling, or loading from the persistent cache), ``warm`` a second,
identical call. jaxem runs in float64 (``jax.enable_x64``): in float32 several of these fits stall
in round-off (see issue 21's precision policy), which would make the iteration counts about
round-off rather than about EM. Tolerances differ in kind: jaxem's is relative to the total
log-likelihood, scikit-learn's absolute on the mean per row (so 1e-8 is looser for jaxem where
``|mean ll| < 1``), hmmlearn's absolute on the total (given here as ``1e-8 * |total|`` of the
first fit's scale, i.e. ``1e-8 * N``).

Columns: ``iters`` is the best restart's iterations (for jaxem, passes over the data: with
SQUAREM a pass is one M-step and one E-step as in plain EM, so the units agree), ``passes`` the
total over all restarts, ``conv`` how many restarts converged, ``ll`` the final mean
log-likelihood per row of the best restart (each library's own ``score``), ``mono`` whether every
restart's history never decreased (beyond 30 float eps), ``fallbacks`` the rejected
extrapolations.

Restarts scaled to scikit-learn's time: for each mixture case, jaxem (accelerated) again with as
many restarts as fit in scikit-learn's warm wall time at jaxem's warm time per restart (at least
the same number, at most :data:`MAX_SCALED_RESTARTS`); its best log-likelihood against
scikit-learn's.

    python benchmarks/convergence.py [--quick] [--json out.json] [--cases iris-3 hmm ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _harness import machine_line

RESTARTS, TOL, MAX_ITER = 10, 1e-8, 2000
QUICK_RESTARTS = 3
DATASETS = ("iris", "wine", "breast_cancer", "digits16", "old_faithful")
CASES = [f"{name}-{k}" for name in DATASETS for k in (3, 6)] + ["overlap-3", "hmm-3"]
QUICK_CASES = ["iris-3", "overlap-3", "hmm-3"]
# A case is "slow" when plain EM's median restart needs at least this many iterations.
SLOW_ITERS = 100
MAX_SCALED_RESTARTS = 256


def _data(name: str):
    """``(X [N, D] standardised, lengths or None)`` for a case's data set."""
    import numpy as np

    if name == "old_faithful":
        from jaxem.datasets import load_old_faithful

        X = load_old_faithful()[0]
    elif name == "overlap":
        rng = np.random.default_rng(0)
        means = np.array([[0.0, 0.0], [1.2, 0.4], [0.3, 1.1]])
        X = np.concatenate([rng.multivariate_normal(m, [[1.0, 0.3], [0.3, 0.8]], 700) for m in means])
    elif name == "hmm":
        rng = np.random.default_rng(0)
        transition = np.array([[0.9, 0.07, 0.03], [0.05, 0.9, 0.05], [0.04, 0.06, 0.9]])
        states, lengths = [], [300] * 8
        for n in lengths:
            z = [rng.integers(3)]
            for _ in range(n - 1):
                z.append(rng.choice(3, p=transition[z[-1]]))
            states += z
        X = rng.normal(np.array([[0.0, 0.0], [0.9, 0.3], [0.2, 1.0]])[states], 0.8)
        return X, lengths
    else:
        import sklearn.datasets as sd

        X = getattr(sd, "load_digits" if name == "digits16" else f"load_{name}")().data
        if name == "digits16":
            from sklearn.decomposition import PCA

            X = PCA(16, random_state=0).fit_transform(X)
    X = np.asarray(X, np.float64)
    return (X - X.mean(0)) / X.std(0), None


def _monotone(history) -> bool:
    import numpy as np

    ok = True
    for row in np.asarray(history, np.float64):
        row = row[~np.isnan(row)]
        ok &= bool(np.all(row[:-1] - row[1:] <= 30 * np.finfo(np.float64).eps * np.abs(row[:-1])))
    return ok


def _fit_jaxem(case: str, restarts: int, accelerate):
    import jax

    jax.config.update("jax_enable_x64", True)
    import jaxem as jem

    name, k = case.rsplit("-", 1)
    X, lengths = _data(name)
    if name == "hmm":
        def fit():
            return jem.GaussianHMM(int(k), "full", n_restarts=restarts, n_iter=MAX_ITER, tol=TOL,
                                   random_state=0, accelerate=accelerate).fit(X, lengths)
    else:
        def fit():
            return jem.GaussianMixture(int(k), n_restarts=restarts, max_iter=MAX_ITER, tol=TOL,
                                       random_state=0, accelerate=accelerate).fit(X)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        est = fit()
        times.append(time.perf_counter() - start)
    r = est.fit_result_
    # An HMM's score is the total over the sequences (hmmlearn's convention), a mixture's the mean.
    score = est.score(X, lengths) / len(X) if name == "hmm" else est.score(X)
    return dict(iters=int(r.n_iter[r.best_restart]), passes=int(r.n_iter.sum()),
                median_iters=float(statistics.median(r.n_iter.tolist())),
                conv=f"{int(r.converged.sum())}/{restarts}", ll=float(score), mono=_monotone(r.history),
                fallbacks=None if r.n_fallbacks is None else int(r.n_fallbacks.sum()),
                first_s=times[0], warm_s=times[1])


def _fit_sklearn(case: str, restarts: int):
    from sklearn.mixture import GaussianMixture

    name, k = case.rsplit("-", 1)
    X, _ = _data(name)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        gm = GaussianMixture(int(k), n_init=restarts, max_iter=MAX_ITER, tol=TOL,
                             random_state=0).fit(X)
        times.append(time.perf_counter() - start)
    return dict(iters=int(gm.n_iter_), passes=None, median_iters=None, conv=bool(gm.converged_),
                ll=float(gm.score(X)), mono=None, fallbacks=None, first_s=times[0], warm_s=times[1])


def _fit_hmmlearn(case: str, restarts: int):
    import warnings

    import numpy as np
    from hmmlearn.hmm import GaussianHMM

    _, k = case.rsplit("-", 1)
    X, lengths = _data("hmm")
    times = []
    for _ in range(2):
        start = time.perf_counter()
        best, passes, conv = None, 0, 0
        for seed in range(restarts):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = GaussianHMM(int(k), "full", n_iter=MAX_ITER, tol=TOL * len(X),
                                random_state=seed).fit(X, lengths)
            score = m.score(X, lengths)
            passes += m.monitor_.iter
            conv += bool(m.monitor_.converged)
            if best is None or score > best[0]:
                best = (score, m)
        times.append(time.perf_counter() - start)
    score, m = best
    history = np.asarray(m.monitor_.history)[None]
    return dict(iters=int(m.monitor_.iter), passes=passes, median_iters=None,
                conv=f"{conv}/{restarts}",
                ll=float(score / len(X)), mono=_monotone(history), fallbacks=None,
                first_s=times[0], warm_s=times[1])


LIBRARIES = {"jaxem": lambda c, r: _fit_jaxem(c, r, None),
             "jaxem+squarem": lambda c, r: _fit_jaxem(c, r, "squarem"),
             "sklearn": _fit_sklearn, "hmmlearn": _fit_hmmlearn}


def _libraries(case: str) -> list[str]:
    return ["jaxem", "jaxem+squarem", "hmmlearn" if case.startswith("hmm") else "sklearn"]


def _run_worker(lib: str, case: str, timeout: float, restarts: int) -> dict:
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", lib, case, str(restarts)]
    # The worker imports the jaxem of this checkout, whatever is installed.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=root,
                              env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}


def _scaled_restarts(case_results: dict, restarts: int) -> int | None:
    """Restarts of jaxem (accelerated) that fit in scikit-learn's warm time, or None (no
    scikit-learn row, or a failed one)."""
    ours, theirs = case_results.get("jaxem+squarem", {}), case_results.get("sklearn", {})
    if "warm_s" not in ours or "warm_s" not in theirs:
        return None
    per_restart = ours["warm_s"] / restarts
    return int(min(MAX_SCALED_RESTARTS, max(restarts, theirs["warm_s"] // per_restart)))


def _fmt(value, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return format(value, spec)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help=f"only {', '.join(QUICK_CASES)}, {QUICK_RESTARTS} restarts")
    p.add_argument("--cases", nargs="+", choices=CASES)
    p.add_argument("--libraries", nargs="+", choices=list(LIBRARIES))
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per library and case")
    p.add_argument("--_worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        lib, case, restarts = args._worker
        print(json.dumps(LIBRARIES[lib](case, int(restarts))), flush=True)
        return 0
    restarts = QUICK_RESTARTS if args.quick else RESTARTS

    cases = args.cases or (QUICK_CASES if args.quick else CASES)
    print(f"machine: {machine_line()}")
    print(f"{restarts} restarts, tol {TOL:g}, max_iter {MAX_ITER}, full covariance, jaxem in float64\n")
    print("| case | library | iters | passes | conv | ll (mean) | mono | fallbacks | first s | warm s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results: dict = {}
    for case in cases:
        for lib in [lib for lib in _libraries(case) if lib in (args.libraries or LIBRARIES)]:
            r = results.setdefault(case, {})[lib] = _run_worker(lib, case, args.timeout, restarts)
            if "error" in r:
                print(f"| {case} | {lib} | error: {r['error']} |||||||")
                continue
            print(f"| {case} | {lib} | {r['iters']} | {_fmt(r['passes'])} | {_fmt(r['conv'])} | "
                  f"{r['ll']:.6f} | {_fmt(r['mono'])} | {_fmt(r['fallbacks'])} | "
                  f"{r['first_s']:.2f} | {r['warm_s']:.3f} |", flush=True)
        scaled = _scaled_restarts(results[case], restarts)
        if scaled is not None:
            r = results[case]["jaxem scaled"] = dict(
                _run_worker("jaxem+squarem", case, args.timeout, scaled), restarts=scaled)
            if "error" not in r:
                print(f"| {case} | jaxem+squarem, {scaled} restarts | {r['iters']} | "
                      f"{r['passes']} | {r['conv']} | {r['ll']:.6f} | {_fmt(r['mono'])} | "
                      f"{_fmt(r['fallbacks'])} | {r['first_s']:.2f} | {r['warm_s']:.3f} |",
                      flush=True)

    ok = {c: r for c, r in results.items()
          if all(lib in r and "error" not in r[lib] for lib in ("jaxem", "jaxem+squarem"))}
    slow = [c for c, r in ok.items() if r["jaxem"]["median_iters"] >= SLOW_ITERS]
    ratios = [ok[c]["jaxem+squarem"]["passes"] / ok[c]["jaxem"]["passes"] for c in slow]
    print(f"\nslow cases (plain EM's median restart >= {SLOW_ITERS} iterations): "
          + (", ".join(f"{c} {q:.2f}" for c, q in zip(slow, ratios, strict=True)) or "none"))
    if ratios:
        median = statistics.median(ratios)
        print(f"- target accelerated passes <= 1/3 of plain EM's, median over slow cases: "
              f"{median:.3f} {'met' if median <= 1 / 3 else 'NOT met'}")
    lower = [c for c, r in ok.items()
             if r["jaxem+squarem"]["ll"] < r["jaxem"]["ll"] - 1e-6 * abs(r["jaxem"]["ll"])]
    print(f"- target accelerated final log-likelihood no lower than plain EM's (1e-6 relative): "
          f"{'met' if not lower else 'NOT met in ' + ', '.join(lower)}")
    not_mono = [f"{c} {lib}" for c, r in ok.items() for lib in ("jaxem", "jaxem+squarem")
                if not r[lib]["mono"]]
    print(f"- target monotone histories in every case: "
          f"{'met' if not not_mono else 'NOT met in ' + ', '.join(not_mono)}")
    behind = [c for c, r in ok.items() for peer in ("sklearn", "hmmlearn")
              if peer in r and "error" not in r[peer]
              and r["jaxem+squarem"]["ll"] < r[peer]["ll"] - 1e-5 * abs(r[peer]["ll"])]
    print(f"- target jaxem (accelerated) best log-likelihood no lower than the peer's (1e-5 "
          f"relative): {'met' if not behind else 'NOT met in ' + ', '.join(behind)}")
    gains = [(r["jaxem scaled"]["ll"] - r["sklearn"]["ll"]) / abs(r["sklearn"]["ll"])
             for r in results.values() if "error" not in r.get("jaxem scaled", {"error": 1})]
    if gains:
        median = statistics.median(gains)
        print(f"- target with restarts scaled to scikit-learn's warm time, jaxem's best "
              f"log-likelihood higher on the median case: {median:+.3g} relative "
              f"({sum(g > 0 for g in gains)} higher, {sum(g == 0 for g in gains)} equal of "
              f"{len(gains)}) {'met' if median > 0 else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_line(), "results": results},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
