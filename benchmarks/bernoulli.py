"""Bernoulli-mixture EM: jaxem against pomegranate and a plain NumPy EM (N=70000, D=784, K=10).

The data are seeded binary rows (MNIST-sized, about 27% ones) from a latent-factor model (see
``prepare``), on which EM with K=10 converges slowly, as on real images. Every library starts from
the same parameters (equal weights, probabilities uniform in [0.25, 0.75]) and runs exactly
``iters`` EM iterations with early stopping disabled (jaxem ``tol=None``, pomegranate ``tol=-inf``,
NumPy a plain loop). The mean log-likelihood column is computed from each library's fitted
parameters in float64.

Rows:

* ``limit``: the two dense products of an iteration, ``X @ [D, K]`` (E-step) and ``R^T X`` (M-step),
  jax float32 over row blocks of 4096.
* ``jaxem``: ``jem.fit(jem.bernoulli_mixture(K), X, init_params=start, max_iter=iters, tol=None)``;
  ``FitResult.fit_time`` (compilation apart, ``FitResult.compile_time``).
* ``numpy``: the EM loop below in float32 (one ``X @ W`` and one ``R^T X`` per iteration, as
  OpenBLAS calls), responsibilities below ``exp(-80)`` flushed to 0 so no subnormal work.
* ``pomegranate``: ``GeneralMixtureModel`` of ``Bernoulli`` distributions, after a one-iteration
  warm-up; only ``pomegranate_iters`` (5) iterations, for time, its log-likelihood compared with
  jaxem's after as many.

    python benchmarks/bernoulli.py [--quick] [--json out.json]
"""

from __future__ import annotations

import math
import sys

import numpy as np
from _harness import Target, Timing, Workload, main, timed

BLOCK = 4096
FLUSH = np.float32(-80.0)

WORKLOADS = [
    Workload("bernoulli", "Bernoulli mixture, N={n} D={d} K={k}, {iters} iterations",
             {"n": 70_000, "d": 784, "k": 10, "iters": 30, "pomegranate_iters": 5},
             ("limit", "jaxem", "numpy", "pomegranate"),
             (Target("jaxem faster than the plain NumPy EM", "numpy", "jaxem", ">=", 1.0),
              Target("jaxem ≥ 50× pomegranate", "pomegranate", "jaxem", ">=", 50)),
             {"n": 10_000, "d": 196, "iters": 10}),
]


def prepare(cfg: dict) -> dict:
    """Binary ``X [N, D]`` float32 and the start ``weights [1, K]``, ``probs [1, K, D]``.

    Rows are ``x_d ~ Bernoulli(sigmoid(a_d . z + b_d))`` with a 4-dimensional Gaussian ``z`` per row:
    a continuum rather than K separated clusters, so that, as on real images, EM is still moving
    after ``iters`` iterations (well-separated synthetic clusters converge exactly in 3-4, and the
    iteration count would no longer be fixed).
    """
    n, d, k = cfg["n"], cfg["d"], cfg["k"]
    rng = np.random.default_rng(0)
    A = rng.normal(0.0, 0.7, (4, d))
    bias = rng.normal(-1.5, 1.0, d)
    Z = rng.normal(size=(n, 4))
    X = (rng.random((n, d), np.float32) < 1 / (1 + np.exp(-(Z @ A + bias)))).astype(np.float32)
    start = np.random.default_rng(1).uniform(0.25, 0.75, (1, k, d))
    return {"X": X, "weights": np.full((1, k), 1.0 / k, np.float32),
            "probs": start.astype(np.float32)}


def loglik(arrays: dict, params: dict, cfg: dict) -> np.ndarray:
    """``[R]`` mean log-likelihood of each restart's ``weights [R, K]``, ``probs [R, K, D]``."""
    X = arrays["X"].astype(np.float64)
    out = []
    for w, p in zip(params["weights"], params["probs"], strict=True):
        p = np.clip(np.asarray(p, np.float64), 1e-300, 1 - 1e-16)
        lj = X @ np.log(p).T + (1 - X) @ np.log1p(-p).T + np.log(np.asarray(w, np.float64))
        m = lj.max(1, keepdims=True)
        out.append(float(np.mean(m[:, 0] + np.log(np.exp(lj - m).sum(1)))))
    return np.array(out)


def numpy_em(X: np.ndarray, weights: np.ndarray, probs: np.ndarray, iters: int):
    """Plain float32 EM for a Bernoulli mixture; returns ``(weights [K], probs [K, D])``."""
    tiny = np.finfo(np.float32).tiny
    for _ in range(iters):
        log_p, log_q = np.log(np.maximum(probs, tiny)), np.log(np.maximum(1 - probs, tiny))
        # log p(x, z=k) = x . (log p_k - log q_k) + Σ_d log q_kd + log w_k: one product
        lj = X @ (log_p - log_q).T
        lj += log_q.sum(1) + np.log(weights)
        lj -= lj.max(1, keepdims=True)
        lj[lj < FLUSH] = -np.inf          # exp gives exactly 0: no subnormal products below
        resp = np.exp(lj)
        resp /= resp.sum(1, keepdims=True)
        nk = resp.sum(0)
        probs = np.clip((resp.T @ X) / nk[:, None], 0.0, 1.0)
        weights = nk / nk.sum()
    return weights, probs


def run_limit(arrays, cfg):
    import jax
    import jax.numpy as jnp

    X, k = arrays["X"], cfg["k"]
    n, d = X.shape
    nb = math.ceil(n / BLOCK)
    Xb = jnp.asarray(np.concatenate([X, np.zeros((nb * BLOCK - n, d), X.dtype)])).reshape(nb, BLOCK, d)
    k1, k2 = jax.random.split(jax.random.key(0))
    Rb = jax.nn.softmax(jax.random.normal(k1, (nb, BLOCK, k)), axis=-1)
    W = jax.random.normal(k2, (d, k))

    @jax.jit
    def limit(Xb, Rb):
        def body(acc, blk):
            x, r = blk
            return (acc[0] + jnp.sum(x @ W), acc[1] + r.T @ x), None
        return jax.lax.scan(body, (jnp.zeros(()), jnp.zeros((k, d))), (Xb, Rb))[0]

    compile_s, compiled = timed(lambda: limit.lower(Xb, Rb).compile())
    jax.block_until_ready(compiled(Xb, Rb))

    def loop():
        for _ in range(cfg["iters"]):
            jax.block_until_ready(compiled(Xb, Rb))
    seconds, _ = timed(loop)
    return Timing(seconds, cfg["iters"], compile_s, note=f"X @ W and R^T X only, blocks of {BLOCK}")


def run_jaxem(arrays, cfg):
    import jaxem as jem

    start = {"weights": arrays["weights"][0], "probs": arrays["probs"][0]}
    res = jem.fit(jem.bernoulli_mixture(cfg["k"]), arrays["X"], init_params=start,
                  max_iter=cfg["iters"], tol=None)
    params = {"weights": np.asarray(res.all_params["weights"]),
              "probs": np.asarray(res.all_params["probs"])}
    return Timing(res.fit_time, int(res.n_iter.sum()), res.compile_time, params,
                  "init_params = the start")


def run_numpy(arrays, cfg):
    X, w, p = arrays["X"], arrays["weights"][0], arrays["probs"][0]
    warm, _ = timed(numpy_em, X, w, p, 1)
    seconds, (w, p) = timed(numpy_em, X, w, p, cfg["iters"])
    return Timing(seconds, cfg["iters"], warm, {"weights": w[None], "probs": p[None]},
                  f"float32, flush below exp({FLUSH:g})")


def run_pomegranate(arrays, cfg):
    import torch
    from pomegranate.distributions import Bernoulli
    from pomegranate.gmm import GeneralMixtureModel

    X = torch.from_numpy(arrays["X"])

    def fit(iters):
        # check_data=False: skip pomegranate's per-call input checks, its fastest configuration.
        dists = [Bernoulli(probs=torch.tensor(p), check_data=False) for p in arrays["probs"][0]]
        gm = GeneralMixtureModel(dists, priors=torch.tensor(arrays["weights"][0]), max_iter=iters,
                                 tol=float("-inf"), check_data=False)
        return gm.fit(X)

    # About 8 s per iteration: the full count alone would take 4 of run_all's 15 minutes, so it
    # runs fewer and the harness compares it with jaxem after as many.
    iters = min(cfg["iters"], cfg.get("pomegranate_iters", cfg["iters"]))
    warm, _ = timed(fit, 1)
    seconds, gm = timed(fit, iters)
    params = {"weights": gm.priors.detach().numpy()[None],
              "probs": np.stack([d.probs.detach().numpy() for d in gm.distributions])[None]}
    note = f"only {iters} of {cfg['iters']} iterations (time budget)" if iters < cfg["iters"] else ""
    return Timing(seconds, iters, warm, params, note)


RUNNERS = {"limit": run_limit, "jaxem": run_jaxem, "numpy": run_numpy,
           "pomegranate": run_pomegranate}

if __name__ == "__main__":
    main(__file__, __doc__.splitlines()[0], WORKLOADS, prepare, loglik, RUNNERS, sys.argv[1:])
