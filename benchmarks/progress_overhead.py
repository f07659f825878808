"""Cost of the progress bar (jaxem.progress) on a fit, as a ratio of fit times.

Runs the same compiled fit (closed-form GMM, fixed iteration count: tol=None) with no callback, with
a no-op callback (the engine's host callback alone), and with the tqdm and plain bars drawing to
/dev/null with no delay (the worst case: every iteration is drawn or considered). Reports the
median ``FitResult.fit_time`` (wall, compilation excluded) and the median process CPU time of
several repeats; on a shared machine the CPU time is the steadier of the two.

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
    print(f"{'workload':30s} {'variant':8s} {'wall s':>8s} {'vs none':>8s} {'cpu s':>8s} {'vs none':>8s}")
    for label, n, d, k, r, iters in cases:
        X = _data(n, d, k)
        model = jem.gaussian_mixture(k)
        variants = {"none": lambda: None, "no-op": lambda: (lambda *a: None),
                    "tqdm": lambda iters=iters: ProgressBar(iters, stream=sink, delay=0.0, use_tqdm=True),
                    "plain": lambda iters=iters: ProgressBar(iters, stream=sink, delay=0.0, use_tqdm=False)}
        times = {name: [] for name in variants}
        cpu = {name: [] for name in variants}
        for rep in range(args.repeats + 1):  # the first round compiles
            for name, make in variants.items():
                bar = make()
                start = time.process_time()
                result = jem.fit(model, X, key=jax.random.key(0), n_restarts=r, max_iter=iters,
                                 tol=None, progress=bar)
                if bar is not None and hasattr(bar, "close"):
                    bar.close()
                if rep:
                    times[name].append(result.fit_time)
                    cpu[name].append(time.process_time() - start)
        base, cpu_base = statistics.median(times["none"]), statistics.median(cpu["none"])
        for name in variants:
            med, cpu_med = statistics.median(times[name]), statistics.median(cpu[name])
            print(f"{label:30s} {name:8s} {med:8.4f} {med / base:8.3f} {cpu_med:8.4f} "
                  f"{cpu_med / cpu_base:8.3f}  ({(cpu_med - cpu_base) / iters * 1e6:+.0f} us CPU/it)")


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore", jem.ConvergenceWarning)
    main()
