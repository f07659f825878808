"""A fit across several processes on this machine, each holding only its own rows (issue 24).

Starts ``--processes`` (default 4) Python processes on 127.0.0.1 (``jax.distributed``, CPU, gloo
collectives); process ``i`` reads rows ``i::P`` of one data set. Each runs ``jem.fit`` and
``jem.fit_chunked`` with ``devices="all"`` for a fixed number of iterations (``tol=None``) from
the same starting parameters, and one process fits all rows the same way. Reports each fit's EM
time (compilation excluded) and the largest difference of the fitted means from the
one-process fit, relative to the means' scale: the statistics are summed across processes, so
this is float round-off.

    python benchmarks/multiprocess.py [--quick] [--processes 4]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FIT = """
import json, sys, time, warnings
import jax
warnings.simplefilter("ignore")
pid, count, port, n, iters = (int(a) for a in sys.argv[1:6])
if count > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=count, process_id=pid,
                               initialization_timeout=120)
import numpy as np, jaxem as jem
rng = np.random.default_rng(0)
X = (rng.normal(0, 3, size=(8, 6))[rng.integers(0, 8, n)] + rng.normal(size=(n, 6))).astype(np.float32)
mine = X[pid::count]
model = jem.gaussian_mixture(8)
init = jax.tree.map(np.asarray, model.init(jax.random.key(0), jax.numpy.asarray(X[:20000])))
kw = dict(key=jax.random.key(0), max_iter=iters, tol=None, init_params=init)
if count > 1:
    kw["devices"] = "all"
out = {}
for name, fit in (("fit", jem.fit), ("fit_chunked", jem.fit_chunked)):
    extra = {"chunk_size": 65536} if name == "fit_chunked" else {}
    result = fit(model, mine, **kw, **extra)
    out[name] = {"means": np.asarray(result.params["means"]).tolist(),
                 "fit_time": result.fit_time, "compile_time": result.compile_time}
print("RESULT " + json.dumps(out), flush=True)
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(count: int, n: int, iters: int) -> list[dict]:
    """Every process's results of one configuration (``count`` processes)."""
    port = _port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAXEM_COMPILATION_CACHE": "0"}
    procs = [subprocess.Popen([sys.executable, "-c", FIT, str(pid), str(count), str(port), str(n),
                               str(iters)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for pid in range(count)]
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(stderr[-3000:])
        line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))
        outs.append(json.loads(line[len("RESULT "):]))
    return outs


def main() -> None:
    import numpy as np

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="40k rows, 10 iterations")
    p.add_argument("--processes", type=int, default=4)
    args = p.parse_args()
    n, iters = (40_000, 10) if args.quick else (400_000, 30)
    began = time.perf_counter()
    one = run(1, n, iters)[0]
    many = run(args.processes, n, iters)
    print(f"## Multi-process fits: N={n:,} D=6 K=8, {iters} iterations, {args.processes} processes "
          f"on 127.0.0.1 (each its own rows) vs one process (wall {time.perf_counter() - began:.0f} s)")
    print("| fit | one process EM s | slowest of P EM s | max |mean - one-process mean| / max |mean| |")
    print("|---|---|---|---|")
    for name in ("fit", "fit_chunked"):
        ref = np.asarray(one[name]["means"])
        diff = max(float(np.max(np.abs(np.asarray(o[name]["means"]) - ref))) for o in many)
        slowest = max(o[name]["fit_time"] for o in many)
        print(f"| {name} | {one[name]['fit_time']:.2f} | {slowest:.2f} | "
              f"{diff / float(np.max(np.abs(ref))):.1e} |")
    print("target: every process's means equal the one-process fit's to 1e-5 relative")


if __name__ == "__main__":
    main()
