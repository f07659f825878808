"""Cost of the progress bar (jaxem.progress) on a fit, as a ratio of fit times.

Runs the same compiled fit (closed-form GMM, fixed iteration count: tol=0) with no callback, with
a no-op callback (the engine's host callback alone), and with the tqdm and plain bars drawing to
/dev/null with no delay (the worst case: every iteration is drawn or considered). Reports the
median ``FitResult.fit_time`` (compilation excluded) of several repeats.

    python benchmarks/progress_overhead.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import numpy as np

import jaxem as jem
from jaxem.progress import ProgressBar


def _data(n, d, k, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(k, d))
    return (centres[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    sink = open(os.devnull, "w")  # noqa: SIM115 - lives for the whole run
    # The bar's own cost per iteration, without the engine: a call with [R] arrays.
    ll, conv = np.linspace(-2e4, -1e4, 8).astype(np.float32), np.zeros(8, bool)
    for use_tqdm in (True, False):
        bar = ProgressBar(10**6, stream=sink, delay=0.0, use_tqdm=use_tqdm)
        start = time.perf_counter()
        for i in range(1, 20_001):
            bar(i, ll, conv, ~conv)
        per_call = (time.perf_counter() - start) / 20_000
        bar.close()
        print(f"bar call alone ({'tqdm' if use_tqdm else 'plain'}): {per_call * 1e6:.1f} us per iteration")
    cases = [("small: N=272 D=2 K=3 R=8", 272, 2, 3, 8, 200),
             ("medium: N=10000 D=4 K=4 R=8", 10_000, 4, 4, 8, 50)]
    print(f"{'workload':30s} {'variant':12s} {'s/fit':>9s} {'vs none':>8s}")
    for label, n, d, k, r, iters in cases:
        X = _data(n, d, k)
        model = jem.gaussian_mixture(k)
        variants = {"none": lambda: None, "no-op": lambda: (lambda *a: None),
                    "tqdm": lambda iters=iters: ProgressBar(iters, stream=sink, delay=0.0, use_tqdm=True),
                    "plain": lambda iters=iters: ProgressBar(iters, stream=sink, delay=0.0, use_tqdm=False)}
        times = {name: [] for name in variants}
        for rep in range(args.repeats + 1):  # the first round compiles
            for name, make in variants.items():
                bar = make()
                result = jem.fit(model, X, key=jax.random.key(0), n_restarts=r, max_iter=iters,
                                 tol=0.0, progress=bar)
                if bar is not None and hasattr(bar, "close"):
                    bar.close()
                if rep:
                    times[name].append(result.fit_time)
        base = statistics.median(times["none"])
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"{label:30s} {name:12s} {med:9.4f} {med / base:8.3f}  "
                  f"({(med - base) / iters * 1e6:+.0f} us/iteration)")


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore", jem.ConvergenceWarning)
    main()
