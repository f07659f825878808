"""Out-of-core EM: a Gaussian mixture on a float32 array on disk, read in chunks.

Three phases, each in a fresh process so that the OS's peak resident memory (``ru_maxrss``) is the
phase's own:

1. ``write``: a seeded ``N x D`` float32 mixture sample written to a ``.npy`` chunk by chunk.
2. ``batch``: ``jem.fit_chunked`` (exact EM) for ``--iters`` iterations reading the file in chunks;
   reports peak RSS, seconds per pass and the final log-likelihood, and saves its start.
3. ``online``: ``jem.fit_online`` (Cappé-Moulines) from the same start for the same wall-clock as
   the batch fit, then the full-data log-likelihood of its parameters (scored in chunks, not
   timed); reports its gap to the batch log-likelihood (criterion: within 1%).

Usage::

    python benchmarks/out_of_core.py            # N=10,000,000 D=16 K=8 full, 10 iterations
    python benchmarks/out_of_core.py --quick    # N=1,000,000
    python benchmarks/out_of_core.py --n 20000000 --dir /data/tmp --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

GiB = 1024**3


def peak_rss_bytes() -> int:
    """The process's peak resident set size from the OS (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write(cfg: dict) -> dict:
    """Write the data set chunk by chunk (never more than one chunk in memory)."""
    n, d, k = cfg["n"], cfg["d"], cfg["k"]
    rng = np.random.default_rng(cfg["seed"])
    centres = rng.normal(0.0, 3.0, (k, d))
    scales = rng.normal(0.0, 1.0, (k, d, d)) / math.sqrt(d)
    weights = rng.dirichlet(np.full(k, 5.0))
    start = time.perf_counter()
    with open(cfg["path"], "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (n, d)})
        for lo in range(0, n, 1 << 20):
            m = min(1 << 20, n - lo)
            z = rng.choice(k, size=m, p=weights)
            X = rng.standard_normal((m, d))
            for j in range(k):
                rows = z == j
                X[rows] = centres[j] + X[rows] @ scales[j].T
            f.write(X.astype(np.float32).tobytes())
    return {"seconds": time.perf_counter() - start, "bytes": os.path.getsize(cfg["path"]),
            "peak_rss": peak_rss_bytes()}


def batch(cfg: dict) -> dict:
    import jax
    import jax.numpy as jnp

    import jaxem as jem
    from jaxem.data import as_source

    model = jem.gaussian_mixture(cfg["k"], "full")
    # The start (k-means on a random sample of rows) is saved so the online phase starts there too.
    _, sample = as_source(cfg["path"]).sample(cfg["init_size"], np.random.default_rng(cfg["seed"]))
    start_params = jax.jit(model.init)(jax.random.key(cfg["seed"]), jnp.asarray(sample))
    del sample
    np.savez(cfg["start_path"], **{k: np.asarray(v) for k, v in start_params.items()})
    stamps = []
    start = time.perf_counter()
    result = jem.fit_chunked(model, cfg["path"], chunk_size=cfg["chunk"], init_params=start_params,
                             max_iter=cfg["iters"], tol=None,
                             progress=lambda *_: stamps.append(time.perf_counter()))
    total = time.perf_counter() - start
    # Each progress call follows one M-step and one pass; the first pass (before any callback)
    # includes compilation, so it is left out of the median.
    per_pass = float(np.median(np.diff([start] + stamps)[1:])) if len(stamps) > 1 else total
    return {"seconds": total, "seconds_per_pass": per_pass, "passes": int(result.n_iter[0]) + 1,
            "log_likelihood": result.log_likelihood, "peak_rss": peak_rss_bytes()}


def online(cfg: dict) -> dict:
    import jaxem as jem

    model = jem.gaussian_mixture(cfg["k"], "full")
    start = dict(np.load(cfg["start_path"]))
    result = jem.fit_online(model, cfg["path"], batch_size=cfg["batch_size"], n_epochs=1000,
                            max_seconds=cfg["budget"], init_params=start, kappa=cfg["kappa"])
    ll = jem.log_likelihood_chunked(model, result.params, cfg["path"], chunk_size=cfg["chunk"])
    return {"seconds": result.fit_time, "steps": result.n_steps, "epochs": result.n_epochs,
            "log_likelihood": ll, "peak_rss": peak_rss_bytes()}


def _phase(name: str, cfg: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--phase", name, "--cfg", json.dumps(cfg)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"phase {name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=1 << 18)
    parser.add_argument("--batch-size", type=int, default=1 << 15)
    parser.add_argument("--kappa", type=float, default=0.6)
    parser.add_argument("--init-size", type=int, default=65536)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=None, help="where the .npy goes (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="N=1,000,000")
    parser.add_argument("--json", default=None)
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cfg", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        cfg = json.loads(args.cfg)
        print(json.dumps({"write": write, "batch": batch, "online": online}[args.phase](cfg)))
        return
    n = 1_000_000 if args.quick else args.n
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        cfg = dict(n=n, d=args.d, k=args.k, iters=args.iters, chunk=args.chunk,
                   batch_size=args.batch_size, kappa=args.kappa, init_size=args.init_size,
                   seed=args.seed, path=os.path.join(tmp, "X.npy"),
                   start_path=os.path.join(tmp, "start.npz"))
        out = {"config": {k: v for k, v in cfg.items() if not k.endswith("path")}}
        out["write"] = _phase("write", cfg)
        out["batch"] = _phase("batch", cfg)
        cfg["budget"] = out["batch"]["seconds"]
        out["online"] = _phase("online", cfg)
    b, o = out["batch"], out["online"]
    gap = (b["log_likelihood"] - o["log_likelihood"]) / abs(b["log_likelihood"])
    out["online_gap"] = gap
    print(f"data: {n:,} x {args.d} float32 = {out['write']['bytes'] / 1e6:.0f} MB on disk, "
          f"K={args.k} full covariance, chunks of {args.chunk:,} rows")
    print(f"batch (exact, chunked): {b['passes']} passes in {b['seconds']:.1f} s, "
          f"{b['seconds_per_pass']:.2f} s/pass, mean loglik {b['log_likelihood'] / n:.5f}, "
          f"peak RSS {b['peak_rss'] / GiB:.2f} GiB "
          f"({'below' if b['peak_rss'] < 2 * GiB else 'ABOVE'} 2 GiB)")
    print(f"online (batches of {args.batch_size:,}, kappa={args.kappa}): {o['steps']} steps "
          f"({o['epochs']:.2f} epochs) in {o['seconds']:.1f} s, mean loglik "
          f"{o['log_likelihood'] / n:.5f}, peak RSS {o['peak_rss'] / GiB:.2f} GiB")
    print(f"online vs batch at equal wall-clock: {100 * gap:+.3f}% of the batch log-likelihood "
          f"({'within' if abs(gap) <= 0.01 else 'NOT within'} 1%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
