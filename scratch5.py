import time, numpy as np, jax, jax.numpy as jnp, sys
sys.path.insert(0, "benchmarks")
import mfa
import jaxem as jem
cfg = {"n": 10_000, "d": 196, "k": 10, "q": 10, "iters": 5}
a = mfa.prepare(cfg)
for _ in range(2):
    for name, run in [("mfa", mfa.run_jaxem), ("diag", mfa.run_diag_gmm)]:
        t = run(a, cfg)
        print(name, t.fit_s / t.iters)
