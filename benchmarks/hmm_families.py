"""GMMHMM and the linear autoregressive HMM: jaxem against hmmlearn and dynamax.

Every library starts from the same parameters and runs exactly ``--iters`` EM iterations with
early stopping disabled, on seeded float32 data of ``--seqs`` sequences of ``--steps`` steps.

* GMM-HMM (``S`` states, ``M`` diagonal Gaussians each, ``D`` features):
  ``jem.hmm.fit(jem.hmm.gmm_hmm(S, M, "diag", 0.0), ...)``; hmmlearn's ``GMMHMM`` with flat
  priors (its spherical/diag defaults are flat for diag) in float64, which centres its
  covariance statistics on the previous means (so its trajectory differs slightly); dynamax's
  ``DiagonalGaussianMixtureHMM`` with flat chain priors and its default weak emission priors
  (which it cannot turn off).
* AR-HMM (``S`` states, ``D`` features, ``L`` lags): ``jem.hmm.fit(autoregressive_hmm(...),
  lagged_rows(X, lengths, L), lengths)`` against dynamax's ``LinearAutoregressiveHMM`` (flat chain
  priors: the same maximum-likelihood EM, so its final log-likelihood should match).

jaxem's time per iteration is ``FitResult.fit_time / n_iter`` of a second call (the first
compiles); dynamax's ``fit_em`` compiles on every call, so its time per iteration is
``(t(iters + 1) - t(1)) / iters`` (``nan`` when that is below the compile's noise).
``mean loglik`` is each library's own final value per step (dynamax's: before its last M-step).

    python benchmarks/hmm_families.py            # 100 x 500 steps, D=4, S=4, M=3, L=2, 10 iters
    python benchmarks/hmm_families.py --quick    # 20 x 200 steps, 5 iterations
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def gmm_data(args) -> np.ndarray:
    rng = np.random.default_rng(args.seed)
    n = args.seqs * args.steps
    states = np.repeat(rng.integers(0, args.states, n // 50 + 1), 50)[:n]
    centres = rng.normal(0.0, 4.0, (args.states, args.mix, args.d))
    mix = rng.integers(0, args.mix, n)
    return (centres[states, mix] + rng.normal(size=(n, args.d))).astype(np.float32)


def gmm_start(X, args) -> dict:
    rng = np.random.default_rng(args.seed + 1)
    S, M = args.states, args.mix
    return {"startprob_": np.full(S, 1 / S), "transmat_": np.full((S, S), 1 / S),
            "weights_": np.full((S, M), 1 / M),
            "means_": X[rng.choice(len(X), S * M, replace=False)].reshape(S, M, -1).astype(float),
            "covars_": np.ones((S, M, X.shape[1]))}


def ar_data(args):
    rng = np.random.default_rng(args.seed)
    D, L, S = args.d, args.lags, args.states
    coefs = rng.normal(0.0, 0.3 / np.sqrt(L * D), (S, D, L * D))
    intercepts = rng.normal(0.0, 2.0, (S, D))
    rows = []
    for _ in range(args.seqs):
        lags, s = np.zeros(L * D), 0
        for t in range(args.steps):
            s = s if t and rng.random() < 0.95 else rng.integers(S)
            x = coefs[s] @ lags + intercepts[s] + 0.5 * rng.normal(size=D)
            rows.append(x)
            lags = np.concatenate([x, lags[:-D]])
    start = {"initial": np.full(S, 1 / S), "transition": np.full((S, S), 1 / S),
             "emission": {"coef": np.zeros((S, D, L * D)),
                          "intercept": np.array(rows)[rng.choice(len(rows), S, replace=False)],
                          "prec_chol": np.broadcast_to(np.eye(D), (S, D, D)).copy()}}
    return np.array(rows, np.float32), start


def jaxem_row(hmm, X, lengths, init, iters):
    import jaxem as jem

    def call():
        return jem.hmm.fit(hmm, X, lengths, init_params=init, max_iter=iters, tol=None)

    compile_s = call().compile_time
    res = call()
    n = int(res.n_iter[0])
    return res.fit_time / n, float(res.log_likelihood) / len(X), compile_s


def dynamax_row(model, params, props, emissions, iters, inputs=None):
    import jax

    def timed(k):
        t0 = time.perf_counter()
        out, lps = model.fit_em(params, props, emissions, inputs=inputs, num_iters=k,
                                verbose=False)
        jax.block_until_ready(lps)
        return time.perf_counter() - t0, lps

    t_one, _ = timed(1)
    t_all, lps = timed(iters + 1)
    per_iter = (t_all - t_one) / iters
    # At small sizes the iterations drown in the noise of fit_em's compilation.
    return (per_iter if per_iter > 0 else float("nan"),
            float(lps[-1]) / np.prod(emissions.shape[:-1]), t_one)


def run_gmm(args, rows):
    import jax.numpy as jnp

    import jaxem as jem

    X = gmm_data(args)
    lengths = [args.steps] * args.seqs
    start = gmm_start(X, args)
    S, M = args.states, args.mix
    init = {"initial": start["startprob_"], "transition": start["transmat_"],
            "emission": {"weights": start["weights_"], "means": start["means_"],
                         "prec_chol": 1 / np.sqrt(start["covars_"])}}
    rows.append(("GMM-HMM", "jaxem", *jaxem_row(jem.hmm.gmm_hmm(S, M, "diag", 0.0), X, lengths,
                                                 init, args.iters)))
    try:
        from hmmlearn import hmm as hl
    except ImportError:
        rows.append(("GMM-HMM", "hmmlearn", None, None, None))
    else:
        ref = hl.GMMHMM(S, M, covariance_type="diag", n_iter=args.iters, tol=-np.inf,
                        init_params="")
        for name, value in start.items():
            setattr(ref, name, value)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref.fit(X.astype(np.float64), lengths)
        rows.append(("GMM-HMM", "hmmlearn (float64)", (time.perf_counter() - t0) / args.iters,
                     ref.score(X.astype(np.float64), lengths) / len(X), 0.0))
    try:
        from dynamax.hidden_markov_model import DiagonalGaussianMixtureHMM
    except ImportError:
        rows.append(("GMM-HMM", "dynamax", None, None, None))
        return
    model = DiagonalGaussianMixtureHMM(S, M, X.shape[1], initial_probs_concentration=1.0,
                                       transition_matrix_concentration=1.0,
                                       emission_weights_concentration=1.0)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    params, props = model.initialize(
        initial_probs=f32(start["startprob_"]), transition_matrix=f32(start["transmat_"]),
        emission_weights=f32(start["weights_"]), emission_means=f32(start["means_"]),
        emission_scale_diags=f32(np.sqrt(start["covars_"])))
    rows.append(("GMM-HMM", "dynamax", *dynamax_row(model, params, props,
                                                    jnp.asarray(X.reshape(args.seqs, args.steps, -1)),
                                                    args.iters)))


def run_ar(args, rows):
    import jax.numpy as jnp

    import jaxem as jem

    X, start = ar_data(args)
    lengths = [args.steps] * args.seqs
    hmm = jem.hmm.autoregressive_hmm(args.states, args.d, args.lags, reg_covar=0.0)
    rows.append(("AR-HMM", "jaxem", *jaxem_row(hmm, jem.hmm.lagged_rows(X, lengths, args.lags),
                                                lengths, start, args.iters)))
    try:
        from dynamax.hidden_markov_model import LinearAutoregressiveHMM
    except ImportError:
        rows.append(("AR-HMM", "dynamax", None, None, None))
        return
    model = LinearAutoregressiveHMM(args.states, args.d, num_lags=args.lags,
                                    initial_probs_concentration=1.0,
                                    transition_matrix_concentration=1.0)
    em = start["emission"]
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    params, props = model.initialize(
        initial_probs=f32(start["initial"]), transition_matrix=f32(start["transition"]),
        emission_weights=f32(em["coef"]), emission_biases=f32(em["intercept"]),
        emission_covariances=f32(np.broadcast_to(np.eye(args.d), (args.states, args.d, args.d))))
    seqs = jnp.asarray(X.reshape(args.seqs, args.steps, -1))
    inputs = jnp.stack([model.compute_inputs(s) for s in seqs])
    rows.append(("AR-HMM", "dynamax", *dynamax_row(model, params, props, seqs, args.iters,
                                                   inputs)))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seqs", type=int, default=100)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--d", type=int, default=4)
    p.add_argument("--states", type=int, default=4)
    p.add_argument("--mix", type=int, default=3)
    p.add_argument("--lags", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="20 x 200 steps, 5 iterations")
    args = p.parse_args()
    if args.quick:
        args.seqs, args.steps, args.iters = 20, 200, 5
    rows: list = []
    run_gmm(args, rows)
    run_ar(args, rows)
    print(f"{args.seqs} sequences x {args.steps} steps, D={args.d}, S={args.states}, "
          f"M={args.mix}, L={args.lags}, {args.iters} iterations")
    print(f"{'model':<8} {'library':<19} {'s/iter':>9} {'vs jaxem':>8} {'mean loglik':>12} "
          f"{'compile s':>9}")
    base = {}
    for model, lib, sec, ll, comp in rows:
        if sec is None:
            print(f"{model:<8} {lib:<19} (not installed)")
            continue
        base.setdefault(model, sec)
        print(f"{model:<8} {lib:<19} {sec:>9.4f} {sec / base[model]:>8.2f} {ll:>12.5f} "
              f"{comp:>9.2f}")


if __name__ == "__main__":
    main()
