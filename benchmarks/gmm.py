"""Gaussian-mixture EM benchmark: jaxem against scikit-learn and a dense-product "limit".

Every library starts from the same parameters (K random data rows as means, equal weights,
identity covariances) and runs exactly ``--iters`` EM iterations with early stopping disabled, on
seeded float32 data drawn from a random K-component mixture. Rows:

* ``limit``: only the dense products one iteration cannot avoid, jitted in jax float32, in row
  blocks of 4096 (full: ``X @ W`` with ``W [D, K*D]`` plus the K weighted Gram matrices; diag: two
  ``[N, D] x [D, K]`` products plus ``R^T X`` and ``R^T (X*X)``). No softmax, no M-step solve.
* ``jaxem``: ``jem.fit`` with ``init_params`` and ``tol=0``; the first call compiles, the second
  identical call is the steady-state time. Seconds per iteration divide by ``n_iter`` actually run.
* ``jaxem xR``: (with ``--restarts R > 1``) one vmapped fit of R restarts from random keys
  (``init_params=None``, so each restart's k-means initialisation is inside the time); seconds per
  iteration per restart.
* ``sklearn``: ``GaussianMixture(..., tol=0)`` warm-started at the same point; ``.fit`` time.
* ``gmmx``, ``pomegranate``: only if importable; otherwise skipped with a note.

Both jaxem and sklearn evaluate the E-step ``n_iter + 1`` times (jaxem: an initial pass, then one
per iteration; sklearn: one per iteration plus a final E-step after the loop), so per-iteration
times are comparable. Peak RSS is ``ru_maxrss`` of the whole process after the row ran, i.e. a
running maximum, not the row's own footprint.

    python benchmarks/gmm.py                    # N=100000 D=16 K=16 full, 10 iterations
    python benchmarks/gmm.py --quick            # N=20000 D=8 K=8
    python benchmarks/gmm.py --covariance diag --n 1000000 --d 32 --k 32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
import warnings

import numpy as np

BLOCK = 4096


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def make_data(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """``[n, d]`` float32 rows from a random K-component full-covariance mixture."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 2.0, (k, d))
    A = rng.normal(0.0, 1.0, (k, d, d)) / math.sqrt(d)
    chol = np.linalg.cholesky(A @ A.transpose(0, 2, 1) + 0.1 * np.eye(d))
    z = rng.choice(k, size=n, p=rng.dirichlet(np.full(k, 5.0)))
    X = rng.standard_normal((n, d))
    for j in range(k):
        rows = z == j
        X[rows] = means[j] + X[rows] @ chol[j].T
    return X.astype(np.float32)


def make_start(X: np.ndarray, k: int, covariance: str, seed: int) -> dict:
    """Common start: K random rows as means, equal weights, identity covariances."""
    rng = np.random.default_rng(seed + 1)
    d = X.shape[1]
    means = X[rng.choice(X.shape[0], size=k, replace=False)].astype(np.float32)
    prec = np.broadcast_to(np.eye(d, dtype=np.float32), (k, d, d)) if covariance == "full" \
        else np.ones((k, d), np.float32)
    return {"weights": np.full(k, 1.0 / k, np.float32), "means": means, "prec_chol": np.array(prec)}


def row(library, sec_per_iter, ll=None, first_call=None, n_iter=None, note=""):
    return {"library": library, "sec_per_iter": sec_per_iter, "mean_loglik": ll,
            "first_call_s": first_call, "n_iter": n_iter, "peak_rss_mb": peak_rss_mb(), "note": note}


def twice(call, block):
    """Time a first (compiling) call and a second identical call; return both times and result."""
    t0 = time.perf_counter()
    block(call())
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = call()
    block(out)
    return first, time.perf_counter() - t0, out


def run_limit(X, args):
    import jax
    import jax.numpy as jnp

    n, d = X.shape
    k = args.k
    nb = math.ceil(n / BLOCK)
    Xp = np.zeros((nb * BLOCK, d), np.float32)
    Xp[:n] = X
    k1, k2 = jax.random.split(jax.random.key(args.seed))
    Xb = jnp.asarray(Xp).reshape(nb, BLOCK, d)
    Rb = jax.nn.softmax(jax.random.normal(k1, (nb, BLOCK, k)), axis=-1)
    if args.covariance == "full":
        W = jax.random.normal(k2, (d, k * d))

        def block(x, r):
            e = jnp.sum(x @ W)                                         # E-step: X @ [D, K*D]
            return e, jnp.einsum("bk,bd,be->kde", r, x, x)            # M-step: K Gram matrices
    else:
        W = jax.random.normal(k2, (d, 2 * k))

        def block(x, r):
            e = jnp.sum((x * x) @ W[:, :k] + x @ W[:, k:])             # E-step: two [D, K]
            return e, (r.T @ x, r.T @ (x * x))                         # M-step: R^T X, R^T X^2

    @jax.jit
    def limit(Xb, Rb):
        def body(acc, blk):
            return jax.tree.map(jnp.add, acc, block(*blk)), None
        zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(block, Xb[0], Rb[0]))
        return jax.lax.scan(body, zero, (Xb, Rb))[0]

    t0 = time.perf_counter()
    jax.block_until_ready(limit(Xb, Rb))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.iters):
        jax.block_until_ready(limit(Xb, Rb))
    return row("limit", (time.perf_counter() - t0) / args.iters, first_call=first,
               note="dense products only, blocks of 4096")


def run_jaxem(X, start, args):
    import jax

    import jaxem as jem

    model = jem.gaussian_mixture(args.k, args.covariance)
    key = jax.random.key(args.seed)
    rows = []
    call = lambda: jem.fit(model, X, key=key, init_params=start, max_iter=args.iters, tol=0.0)
    first, steady, res = twice(call, lambda r: jax.block_until_ready(r.params))
    n_iter = int(res.n_iter[0])
    rows.append(row("jaxem", steady / n_iter, res.log_likelihood / X.shape[0], first, n_iter))
    if args.restarts > 1:
        R = args.restarts
        call = lambda: jem.fit(model, X, key=key, n_restarts=R, max_iter=args.iters, tol=0.0)
        first, steady, res = twice(call, lambda r: jax.block_until_ready(r.all_params))
        total = int(res.n_iter.sum())
        rows.append(row(f"jaxem x{R}", steady / total, res.log_likelihood / X.shape[0], first,
                        total, f"{R} vmapped restarts, k-means init included; per restart-iter"))
    return rows


def run_sklearn(X, start, args):
    from sklearn.mixture import GaussianMixture

    prec = start["prec_chol"]  # identity / ones, so precision == its Cholesky factor
    gm = GaussianMixture(args.k, covariance_type=args.covariance, tol=0.0, max_iter=args.iters,
                         n_init=1, weights_init=start["weights"], means_init=start["means"],
                         precisions_init=prec, random_state=args.seed)
    t0 = time.perf_counter()
    gm.fit(X)
    sec = time.perf_counter() - t0
    note = f"incl. final E-step; computes in {gm.means_.dtype}"
    if gm.n_iter_ != args.iters:
        note += f"; ran {gm.n_iter_} != {args.iters} iterations"
    return row("sklearn", sec / gm.n_iter_, float(gm.score(X)), sec, int(gm.n_iter_), note)


def run_gmmx(X, start, args):
    import jax
    import jax.numpy as jnp
    from gmmx import EMFitter, GaussianMixtureModelJax

    d = X.shape[1]
    cov = np.broadcast_to(np.eye(d, dtype=np.float32), (args.k, d, d)) \
        if args.covariance == "full" else np.ones((args.k, d), np.float32)
    gmm = GaussianMixtureModelJax.from_squeezed(
        means=jnp.asarray(start["means"]), covariances=jnp.asarray(cov),
        weights=jnp.asarray(start["weights"]), covariance_type=args.covariance)
    xj = jnp.asarray(X)
    fitter = EMFitter(tol=0.0, max_iter=args.iters)
    first, steady, res = twice(lambda: fitter.fit(x=xj, gmm=gmm), jax.block_until_ready)
    n_iter = int(res.n_iter)
    return row("gmmx", steady / n_iter, float(res.gmm.score(xj)), first, n_iter)


def run_pomegranate(X, start, args):
    import torch
    from pomegranate.distributions import Normal
    from pomegranate.gmm import GeneralMixtureModel

    d = X.shape[1]
    cov = np.eye(d, dtype=np.float32) if args.covariance == "full" else np.ones(d, np.float32)
    dists = [Normal(means=torch.tensor(m), covs=torch.tensor(cov), covariance_type=args.covariance)
             for m in start["means"]]
    gm = GeneralMixtureModel(dists, priors=torch.tensor(start["weights"]), max_iter=args.iters,
                             tol=0.0)
    xt = torch.from_numpy(X)
    t0 = time.perf_counter()
    gm.fit(xt)
    sec = time.perf_counter() - t0
    ll = float(gm.log_probability(xt).mean())
    return row("pomegranate", sec / args.iters, ll, sec, None, "n_iter not reported; assumed")


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(rows):
    base = next((r["sec_per_iter"] for r in rows if r["library"] == "jaxem"), None)
    head = ("library", "s/iter", "vs jaxem", "mean loglik", "1st call s", "peak RSS MB", "iters")
    print("{:<12} {:>9} {:>8} {:>12} {:>10} {:>11} {:>5}  note".format(*head))
    for r in rows:
        ratio = r["sec_per_iter"] / base if base else None
        print(f"{r['library']:<12} {r['sec_per_iter']:>9.4f} {fmt(ratio, '.2f'):>8} "
              f"{fmt(r['mean_loglik'], '.4f'):>12} {fmt(r['first_call_s'], '.2f'):>10} "
              f"{r['peak_rss_mb']:>11.0f} {fmt(r['n_iter'], 'd'):>5}  {r['note']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--covariance", choices=("full", "diag"), default="full")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="N=20000 D=8 K=8")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.d, args.k = 20_000, 8, 8
    warnings.simplefilter("ignore")  # both libraries warn that tol=0 never "converged"

    X = make_data(args.n, args.d, args.k, args.seed)
    start = make_start(X, args.k, args.covariance, args.seed)
    print(f"N={args.n} D={args.d} K={args.k} covariance={args.covariance} iters={args.iters} "
          f"seed={args.seed} restarts={args.restarts}")
    rows = [run_limit(X, args)]
    rows += run_jaxem(X, start, args)
    for name, runner in (("sklearn", run_sklearn), ("gmmx", run_gmmx),
                         ("pomegranate", run_pomegranate)):
        try:
            rows.append(runner(X, start, args))
        except ImportError as err:
            print(f"{name}: skipped, not installed ({err})")
        except Exception as err:  # an adapter that breaks is reported, never faked
            print(f"{name}: failed: {type(err).__name__}: {err}")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
