"""Mixture of factor analysers against a diagonal Gaussian mixture, per EM iteration (N=70000,
D=784, K=10, q=10).

The data are seeded MNIST-sized float32 rows from a mixture of 10 rank-10 Gaussians plus noise
(see ``prepare``). Both models start from the same rows as means, equal weights and the data's
variances (the factor model's loadings small and random) and run exactly ``iters`` iterations
with early stopping off (``tol=None``). The mean log-likelihood column is computed in float64 from
each fit's parameters (the factor model's through Woodbury): the factor model's covariance holds
the correlations a diagonal one cannot.

Rows:

* ``jaxem``: ``jem.fit(jem.mixture_of_factor_analysers(K, q), X, init_params=start,
  max_iter=iters, tol=None)``; ``FitResult.fit_time``. An iteration is ``O(N K D q)``: two
  products with ``X`` of ``K (q + 1)`` and ``K`` columns in the E-step, the same in the
  statistics.
* ``diag_gmm``: ``jem.gaussian_mixture(K, "diag")`` the same way.

    python benchmarks/mfa.py [--quick] [--json out.json]
"""

from __future__ import annotations

import math
import sys

import numpy as np
from _harness import Target, Timing, Workload, main

WORKLOADS = [
    Workload("mfa", "Mixture of factor analysers, N={n} D={d} K={k} q={q}, {iters} iterations",
             {"n": 70_000, "d": 784, "k": 10, "q": 10, "iters": 10},
             ("jaxem", "diag_gmm"),
             (Target("an MFA iteration costs at most 3× a diagonal GMM's", "jaxem", "diag_gmm",
                     "<=", 3.0, paired=True),),
             {"n": 10_000, "d": 196, "iters": 5}),
]


def prepare(cfg: dict) -> dict:
    """``X [N, D]`` float32 and the shared start (rows as means, the data's variances)."""
    n, d, k, q = cfg["n"], cfg["d"], cfg["k"], cfg["q"]
    rng = np.random.default_rng(0)
    means = rng.normal(0.0, 1.0, (k, d))
    loadings = rng.normal(0.0, 0.5, (k, d, q))
    labels = rng.integers(0, k, n)
    X = np.empty((n, d), np.float32)
    for j in range(k):
        rows = labels == j
        z = rng.normal(size=(int(rows.sum()), q))
        X[rows] = means[j] + z @ loadings[j].T + 0.3 * rng.normal(size=(int(rows.sum()), d))
    X -= X.mean(axis=0)
    start_means = X[np.random.default_rng(1).choice(n, k, replace=False)]
    var = X.var(axis=0)
    start_loadings = np.random.default_rng(2).normal(0.0, 0.01, (k, d, q)) * np.sqrt(var)[:, None]
    return {"X": X, "means": start_means, "var": var.astype(np.float32),
            "loadings": start_loadings.astype(np.float32)}


def loglik(arrays: dict, params: dict, cfg: dict) -> np.ndarray:
    """``[R]`` mean log-likelihood in float64 of either model's parameters."""
    X = arrays["X"].astype(np.float64)
    n, d = X.shape
    out = []
    for r in range(len(params["weights"])):
        w = np.asarray(params["weights"][r], np.float64)
        mu = np.asarray(params["means"][r], np.float64)
        if "loadings" in params:
            W = np.asarray(params["loadings"][r], np.float64)
            psi = np.asarray(params["noise"][r], np.float64)
        else:
            W = np.zeros((len(w), d, 0))
            psi = 1.0 / np.asarray(params["prec_chol"][r], np.float64) ** 2
        lj = np.empty((n, len(w)))
        for k in range(len(w)):
            # Woodbury: C^{-1} = Ψ^{-1} - Ψ^{-1} W M^{-1} W^T Ψ^{-1}, |C| = |Ψ| |M|.
            M = np.eye(W.shape[2]) + W[k].T @ (W[k] / psi[k][:, None])
            c = X - mu[k]
            maha = np.sum(c * c / psi[k], axis=1)
            if W.shape[2]:
                proj = np.linalg.solve(np.linalg.cholesky(M), ((c / psi[k]) @ W[k]).T)
                maha -= np.sum(proj * proj, axis=0)
            log_det = np.sum(np.log(psi[k])) + np.linalg.slogdet(M)[1]
            lj[:, k] = np.log(w[k]) - 0.5 * (d * math.log(2 * math.pi) + log_det + maha)
        m = lj.max(axis=1, keepdims=True)
        out.append(float(np.mean(m[:, 0] + np.log(np.exp(lj - m).sum(axis=1)))))
    return np.array(out)


def _stacked(params) -> dict:
    return {key: np.asarray(value) for key, value in params.items()}


def run_jaxem(arrays, cfg):
    import jaxem as jem

    k = cfg["k"]
    start = {"weights": np.full(k, 1.0 / k, np.float32), "means": arrays["means"],
             "loadings": arrays["loadings"], "noise": np.tile(arrays["var"], (k, 1))}
    res = jem.fit(jem.mixture_of_factor_analysers(k, cfg["q"]), arrays["X"], init_params=start,
                  max_iter=cfg["iters"], tol=None)
    return Timing(res.fit_time, int(res.n_iter.sum()), res.compile_time,
                  _stacked(res.all_params), "init_params = the start")


def run_diag_gmm(arrays, cfg):
    import jaxem as jem

    k = cfg["k"]
    start = {"weights": np.full(k, 1.0 / k, np.float32), "means": arrays["means"],
             "prec_chol": np.tile(1.0 / np.sqrt(arrays["var"]), (k, 1))}
    res = jem.fit(jem.gaussian_mixture(k, "diag"), arrays["X"], init_params=start,
                  max_iter=cfg["iters"], tol=None)
    return Timing(res.fit_time, int(res.n_iter.sum()), res.compile_time,
                  _stacked(res.all_params), "init_params = the start")


RUNNERS = {"jaxem": run_jaxem, "diag_gmm": run_diag_gmm}

if __name__ == "__main__":
    main(__file__, __doc__.splitlines()[0], WORKLOADS, prepare, loglik, RUNNERS, sys.argv[1:])
