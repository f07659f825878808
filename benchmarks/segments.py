"""Cost of running the compiled EM loop in segments (Ctrl-C between them; jaxem.core.programs).

Measures the EM time per iteration (``FitResult.fit_time / max_iter``, compilation excluded) of
fixed-iteration fits (``tol=None``) and, with ``--compare DIR``, the same in another checkout of
jaxem (e.g. the commit before segments), alternating the two in fresh processes so machine noise
hits both alike. Reports medians and the ratio segmented / other.

    python benchmarks/segments.py [--quick] [--compare /path/to/other/checkout]
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

# N=1024 is a row bucket (jaxem.core.blocks.bucket_rows): rows are not padded, so the small case
# measures segments alone (since issue 21, 272 rows would be fitted as 1024, under weight 0).
CASES = [("small: N=1024 D=2 K=3 R=8, 400 it", 1024, 2, 3, 8, 400),
         ("medium: N=20000 D=8 K=8 R=4, 60 it", 20_000, 8, 8, 4, 60),
         ("hmm: T=5000 D=3 K=4 R=4, 100 it", 5000, 3, 4, 4, 100)]


def measure(repeats: int) -> dict:
    """Median seconds per iteration of each case in this process's jaxem."""
    import warnings

    import jax
    import numpy as np

    import jaxem as jem

    warnings.simplefilter("ignore")
    out = {}
    for label, n, d, k, r, iters in CASES:
        rng = np.random.default_rng(0)
        X = (rng.normal(0, 4, size=(k, d))[rng.integers(0, k, n)]
             + rng.normal(size=(n, d))).astype(np.float32)
        if label.startswith("hmm"):
            def run(X=X, k=k, r=r, iters=iters):
                return jem.hmm.fit(jem.hmm.gaussian_hmm(k, covariance_type="diag"), X,
                                   key=jax.random.key(0), n_restarts=r, max_iter=iters, tol=None)
        else:
            def run(X=X, k=k, r=r, iters=iters):
                return jem.fit(jem.gaussian_mixture(k), X, key=jax.random.key(0), n_restarts=r,
                               max_iter=iters, tol=None)
        compile_seconds = run().compile_time
        wall, cpu = [], []
        for _ in range(repeats):
            start = time.process_time()
            wall.append(run().fit_time / iters)
            cpu.append((time.process_time() - start) / iters)
        out[label] = [statistics.median(wall), statistics.median(cpu), compile_seconds]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and rounds")
    parser.add_argument("--compare", metavar="DIR", help="another jaxem checkout to compare with")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    if args.worker:
        print(json.dumps(measure(repeats)))
        return
    here = str(Path(__file__).resolve().parents[1])
    trees = {"segmented": here} | ({"other": args.compare} if args.compare else {})
    times = {name: {label: [] for label, *_ in CASES} for name in trees}
    for _ in range(1 if args.quick else 3):
        for name, tree in trees.items():
            env = dict(os.environ, PYTHONPATH=tree)
            done = subprocess.run([sys.executable, __file__, "--worker"] + (["--quick"] if args.quick
                                  else []), env=env, cwd=tree, capture_output=True, text=True,
                                  check=True)
            for label, seconds in json.loads(done.stdout.strip().splitlines()[-1]).items():
                times[name][label].append(seconds)
    # Wall: EM time per iteration; CPU: the process's CPU time per iteration (the whole fit call,
    # steadier than wall on a shared machine); compile: the first fit's compile_time (run with
    # JAXEM_COMPILATION_CACHE=0 to compare compilations rather than cache loads).
    for label, *_ in CASES:
        for i, kind in enumerate(("wall", "cpu", "compile")):
            row = {name: statistics.median(t[i] for t in times[name][label]) for name in trees}
            unit = "s" if kind == "compile" else "ms/it"
            scale = 1 if kind == "compile" else 1e3
            text = "  ".join(f"{name} {row[name] * scale:8.4f} {unit}" for name in trees)
            ratio = f"  ratio {row['segmented'] / row['other']:.3f}" if "other" in row else ""
            print(f"{label:38s} {kind:4s} {text}{ratio}")


if __name__ == "__main__":
    main()
