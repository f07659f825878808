"""k-means benchmark: jaxem.KMeans (hard EM, one compiled program) against scikit-learn's KMeans.

Both start from the same k-means++ centres (drawn once with scikit-learn's ``kmeans_plusplus``)
and run Lloyd iterations with early stopping disabled (jaxem ``tol=None``, scikit-learn
``tol=0``; both still stop if the assignments stop changing, and the table shows the iterations
each ran). s/iter divides the fit time by the iterations run (jaxem: ``FitResult.fit_time``,
compile time apart; scikit-learn: the whole ``fit``); wall/iter is the whole second ``fit`` call
for both. The ``xla floor`` row times the leanest XLA Lloyd iteration we could write (see
:func:`xla_floor`): what any k-means compiled by XLA for this CPU costs at least. The final
inertia of each is printed so a fast wrong answer is visible.

    python benchmarks/kmeans.py                  # N=1,000,000 D=32 K=32, 20 iterations
    python benchmarks/kmeans.py --quick          # N=100,000 D=16 K=16
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np


def make_data(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """``[n, d]`` float32 rows around ``k`` random centres with unequal spreads."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, (k, d))
    scales = rng.uniform(0.5, 2.0, k)
    z = rng.integers(0, k, n)
    return (centres[z] + scales[z, None] * rng.standard_normal((n, d))).astype(np.float32)


def xla_floor(X: np.ndarray, centres: np.ndarray, iters: int, block: int = 8192):
    """A timer (call it for seconds per iteration) of the leanest XLA Lloyd iteration we know:
    per block of rows, one product ``C @ x^T`` laid out ``[K, block]``, the nearest centre by a
    running comparison over the ``K`` rows of scores (XLA:CPU's argmin along a short minor axis
    costs several times more), and cluster sums by index; then the centres' update. No
    objective, weights, variance or stopping test: near the floor of any XLA k-means on this
    machine, not a usable fit."""
    import jax
    import jax.numpy as jnp

    n, d = X.shape
    k = centres.shape[0]
    rows = block * (n // block)
    Xb = jnp.asarray(X[:rows]).reshape(rows // block, block, d)
    ones = jnp.ones((block, 1), X.dtype)

    def lloyd_step(C, _):
        def one_block(total, x):
            scores = C @ x.T - 0.5 * jnp.sum(C * C, axis=1)[:, None]

            def compare(j, state):
                better = scores[j] > state[0]
                return jnp.where(better, scores[j], state[0]), jnp.where(better, j, state[1])

            _, nearest = jax.lax.fori_loop(1, k, compare, (scores[0], jnp.zeros(block, jnp.int32)),
                                           unroll=True)
            return total + jax.ops.segment_sum(jnp.concatenate([x, ones], 1), nearest, k), None

        sums, _ = jax.lax.scan(one_block, jnp.zeros((k, d + 1), X.dtype), Xb)
        return jnp.where(sums[:, d:] > 0, sums[:, :d] / jnp.maximum(sums[:, d:], 1), C), None

    program = jax.jit(lambda C: jax.lax.scan(lloyd_step, C, None, length=iters)[0])
    C0 = jnp.asarray(centres, X.dtype)
    jax.block_until_ready(program(C0))

    def seconds_per_iter() -> float:
        start = time.perf_counter()
        jax.block_until_ready(program(C0))
        return (time.perf_counter() - start) * n / rows / iters

    return seconds_per_iter


def run(n: int, d: int, k: int, iters: int, seed: int, repeats: int = 3) -> list[dict]:
    """One row per library; each is timed ``repeats`` times, the libraries taking turns (so a
    burst of load on this shared machine hits all of them), and the best time is kept."""
    from sklearn.cluster import KMeans as SklearnKMeans
    from sklearn.cluster import kmeans_plusplus

    import jaxem as jem

    # Early stopping is off on purpose, so the warning that no restart converged is expected.
    warnings.simplefilter("ignore", jem.ConvergenceWarning)
    X = make_data(n, d, k, seed)
    centres, _ = kmeans_plusplus(X, k, random_state=seed)

    ours = jem.KMeans(k, init=centres, max_iter=iters, tol=None)
    ours.fit(X)  # compiles
    jaxem_row = {"library": "jaxem", "compile_s": ours.fit_result_.compile_time,
                 "s_per_iter": np.inf, "wall_per_iter": np.inf}
    floor = xla_floor(X, centres, iters)
    floor_row = {"library": "xla floor", "iters": iters, "s_per_iter": np.inf, "compile_s": 0.0,
                 "inertia": float("nan")}
    ref = SklearnKMeans(k, init=centres, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd")
    sklearn_row = {"library": "sklearn", "compile_s": 0.0, "s_per_iter": np.inf}
    for _ in range(repeats):
        start = time.perf_counter()
        ours.fit(X)
        wall = time.perf_counter() - start
        jaxem_row.update(iters=ours.n_iter_, inertia=ours.inertia_,
                         s_per_iter=min(jaxem_row["s_per_iter"],
                                        ours.fit_result_.fit_time / ours.n_iter_),
                         wall_per_iter=min(jaxem_row["wall_per_iter"], wall / ours.n_iter_))
        floor_row["s_per_iter"] = min(floor_row["s_per_iter"], floor())
        start = time.perf_counter()
        ref.fit(X)
        wall = time.perf_counter() - start
        sklearn_row.update(iters=ref.n_iter_, inertia=float(ref.inertia_),
                           s_per_iter=min(sklearn_row["s_per_iter"], wall / ref.n_iter_))
        sklearn_row["wall_per_iter"] = sklearn_row["s_per_iter"]
    return [jaxem_row, floor_row, sklearn_row]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=32)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed fits per library (best kept)")
    parser.add_argument("--quick", action="store_true", help="N=100000 D=16 K=16")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.d, args.k = 100_000, 16, 16
    rows = run(args.n, args.d, args.k, args.iters, args.seed, args.repeats)
    base = rows[0]["s_per_iter"]
    print(f"k-means N={args.n} D={args.d} K={args.k}, {args.iters} iterations, same k-means++ start, "
          f"best of {args.repeats} interleaved fits")
    print(f"{'library':<10}{'iters':>6}{'s/iter':>10}{'ratio':>8}{'wall/iter':>11}{'compile s':>11}"
          f"{'inertia':>18}")
    for row in rows:
        print(f"{row['library']:<10}{row['iters']:>6}{row['s_per_iter']:>10.4f}"
              f"{row['s_per_iter'] / base:>7.2f}x{row.get('wall_per_iter', float('nan')):>11.4f}"
              f"{row['compile_s']:>11.2f}{row['inertia']:>18.6g}")
    rel = abs(rows[0]["inertia"] - rows[-1]["inertia"]) / rows[-1]["inertia"]
    print(f"inertia agreement (relative): {rel:.2e}")
    speedup = rows[-1]["s_per_iter"] / base
    print(f"- target jaxem faster per iteration than scikit-learn: sklearn / jaxem s/iter = "
          f"{speedup:.2f} (needs > 1): {'met' if speedup > 1 else 'MISSED'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
