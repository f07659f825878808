"""The reference fits of ``custom.py``, in NumPy and SciPy (float64): the log-likelihood every
row is scored by, SciPy L-BFGS-B on the marginal likelihood with its analytic gradient, and EM
with the closed-form Laplace M-step."""

from __future__ import annotations

import numpy as np

K, N_RESTARTS, MAX_ITER, TOL = 3, 8, 500, 1e-7


def _lse(a, axis=-1):
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def log_densities(name: str, p: dict, X: np.ndarray) -> np.ndarray:
    """``[N, K]`` log p(x | z=k) (mixtures: plus log weights)."""
    from scipy.special import gammaln
    x = X[:, None]
    if name == "gamma":
        a, b = p["shape"], p["rate"]
        return np.log(p["weights"]) + a * np.log(b) - gammaln(a) + (a - 1) * np.log(x) - b * x
    out = -np.log(2 * p["scale"]) - np.abs(x - p["loc"]) / p["scale"]
    return out if name == "hmm" else out + np.log(p["weights"])


def _forward(p: dict, dens: np.ndarray):
    """Scaled forward pass over ``dens [B, T, K]``: (log-likelihood, alphas, scales)."""
    alpha = np.empty_like(dens)
    scale = np.empty(dens.shape[:2])
    shift = dens.max(-1, keepdims=True)
    e = np.exp(dens - shift)
    a = p["initial"] * e[:, 0]
    for t in range(dens.shape[1]):
        if t:
            a = (alpha[:, t - 1] @ p["transition"]) * e[:, t]
        scale[:, t] = a.sum(-1)
        alpha[:, t] = a / scale[:, t, None]
    return np.sum(np.log(scale)) + np.sum(shift), alpha, scale, e


def loglik(name: str, p: dict, data: dict) -> float:
    X = data["X"]
    if name == "hmm":
        B = len(data["lengths"])
        return _forward(p, log_densities(name, p, X).reshape(B, -1, K))[0]
    return float(np.sum(_lse(log_densities(name, p, X))))


def _softmax(u):
    e = np.exp(u - u.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def scipy_fit(name: str, data: dict, start: dict) -> tuple[dict, int]:
    """L-BFGS-B on the marginal negative log-likelihood per row, analytic gradient, in an
    unconstrained parameterisation (logits and logs); returns (params, iterations)."""
    from scipy.optimize import minimize
    from scipy.special import digamma
    X = data["X"]
    n = X.shape[0]
    if name == "hmm":
        B = len(data["lengths"])
        chain = ("initial", "transition")
        sizes = {"initial": K, "transition": K * K, "loc": K, "scale": K}
    else:
        chain = ()
        second, third = ("shape", "rate") if name == "gamma" else ("loc", "scale")
        sizes = {"weights": K, second: K, third: K}

    def unpack(v):
        out, i = {}, 0
        for key, size in sizes.items():
            part = v[i:i + size]
            i += size
            if key in ("weights", "initial"):
                out[key] = _softmax(part)
            elif key == "transition":
                out[key] = _softmax(part.reshape(K, K))
            elif key == "loc":
                out[key] = part
            else:
                out[key] = np.exp(part)
        return out

    def objective(v):
        p = unpack(v)
        dens = log_densities(name, p, X)
        if name == "hmm":
            ll, alpha, scale, e = _forward(p, dens.reshape(B, -1, K))
            beta = np.ones_like(alpha)
            for t in range(alpha.shape[1] - 2, -1, -1):
                beta[:, t] = (e[:, t + 1] * beta[:, t + 1]) @ p["transition"].T / scale[:, t + 1, None]
            gamma = (alpha * beta).reshape(-1, K)
            xi = np.einsum("btk,bt,btl,kl->kl", alpha[:, :-1], 1 / scale[:, 1:],
                           e[:, 1:] * beta[:, 1:], p["transition"])
            r = gamma
            grads = {"initial": gamma.reshape(B, -1, K)[:, 0].sum(0) - B * p["initial"],
                     "transition": (xi - xi.sum(1, keepdims=True) * p["transition"]).ravel()}
        else:
            ll = np.sum(_lse(dens))
            r = np.exp(dens - _lse(dens)[:, None])
            grads = {"weights": r.sum(0) - n * p["weights"]}
        x = X[:, None]
        if name == "gamma":
            a, b = p["shape"], p["rate"]
            grads["shape"] = a * np.sum(r * (np.log(b) - digamma(a) + np.log(x)), 0)
            grads["rate"] = np.sum(r * (a - b * x), 0)
        else:
            z = (x - p["loc"]) / p["scale"]
            grads["loc"] = np.sum(r * np.sign(z), 0) / p["scale"]
            grads["scale"] = np.sum(r * (np.abs(z) - 1), 0)
        return -ll / n, -np.concatenate([grads[k] for k in sizes]) / n

    def packed(s):
        parts = []
        for key in sizes:
            if key in ("weights",):
                parts.append(np.log(s[key]))
            elif key in ("initial", "transition"):
                parts.append(np.zeros(sizes[key]))   # the uniform chain jaxem starts from
            elif key == "loc":
                parts.append(s[key])
            else:
                parts.append(np.log(s[key]))
        return np.concatenate(parts)

    del chain
    fits, iters = [], 0
    for r in range(N_RESTARTS):
        res = minimize(objective, packed({k: v[r] for k, v in start.items()}), jac=True,
                       method="L-BFGS-B")
        fits.append(unpack(res.x))
        iters += res.nit
    return {k: np.stack([f[k] for f in fits]) for k in fits[0]}, iters


def _weighted_median(xs: np.ndarray, w: np.ndarray) -> float:
    c = np.cumsum(w)
    return xs[np.searchsorted(c, 0.5 * c[-1])]


def numpy_em(name: str, data: dict, start: dict) -> tuple[dict, int]:
    """EM with the closed-form Laplace M-step (weighted median, weighted mean deviation)."""
    X = data["X"]
    order = np.argsort(X)
    xs = X[order]
    fits, iters = [], 0
    for r in range(N_RESTARTS):
        p = {k: v[r].copy() for k, v in start.items()}
        prev = -np.inf
        for _ in range(MAX_ITER):
            dens = log_densities(name, p, X)
            norm = _lse(dens)
            ll = norm.sum()
            iters += 1
            if abs(ll - prev) <= TOL * abs(ll):
                break
            prev = ll
            resp = np.exp(dens - norm[:, None])
            nk = resp.sum(0)
            p["weights"] = nk / nk.sum()
            p["loc"] = np.array([_weighted_median(xs, resp[order, k]) for k in range(K)])
            p["scale"] = np.maximum(np.sum(resp * np.abs(X[:, None] - p["loc"]), 0) / nk, 1e-6)
        fits.append(p)
    return {k: np.stack([f[k] for f in fits]) for k in fits[0]}, iters
