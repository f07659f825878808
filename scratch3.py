import numpy as np, jax, jax.numpy as jnp, time
jax.config.update("jax_enable_x64", True)
import jaxem as jem
from jaxem.models import factor_analysers as fa
from scipy.stats import multivariate_normal
rng = np.random.default_rng(0)
D, q, K, n = 12, 2, 3, 900
Ws = rng.normal(size=(K, D, q)) * 2
mus = rng.normal(size=(K, D)) * 5
X = np.concatenate([mus[k] + rng.normal(size=(n//K, q)) @ Ws[k].T + 0.3*rng.normal(size=(n//K, D)) for k in range(K)])
X = X - X.mean(0)
for iso in [False, True]:
    model = fa.mixture_of_factor_analysers(K, q, isotropic=iso)
    p = model.init(jax.random.key(0), jnp.asarray(X))
    lls = []
    for it in range(5):
        lj = model.log_joint_matrix(p, jnp.asarray(X))
        ll = float(jax.scipy.special.logsumexp(lj, 1).sum())
        C = np.asarray(fa.covariances(p))
        dense = np.log(np.sum([np.asarray(p["weights"])[k]*multivariate_normal(np.asarray(p["means"])[k], C[k]).pdf(X) for k in range(K)], 0)).sum()
        lls.append((ll, dense))
        resp = jax.nn.softmax(lj, 1)
        p = model.maximize(model.suff_stats(p, jnp.asarray(X), resp), p)
    print(iso, [(a, (a-b)/abs(b)) for a,b in lls])
    t=time.time(); r = jem.fit(model, X, key=jax.random.key(1), n_restarts=2, max_iter=100)
    print(r.log_likelihood, r.n_iter, time.time()-t, np.all(np.diff(np.asarray(r.history)[0][:int(r.n_iter[0])]) > -1e-8))
