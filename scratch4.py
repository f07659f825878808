import time, numpy as np, jax, jax.numpy as jnp
import jaxem as jem
from jaxem.models import factor_analysers as fa
from jaxem.core.estep import posterior
n,d,k,q = 8192,196,10,10
rng=np.random.default_rng(0)
X = jnp.asarray(rng.normal(size=(n,d)).astype(np.float32))
p = {"weights": jnp.full(k, .1), "means": jnp.asarray(rng.normal(size=(k,d)).astype(np.float32)),
     "loadings": jnp.asarray(rng.normal(size=(k,d,q)).astype(np.float32)*.1), "noise": jnp.ones((k,d))}
def t(f, *a):
    f = jax.jit(f); jax.block_until_ready(f(*a)); s=time.perf_counter()
    for _ in range(5): jax.block_until_ready(f(*a))
    return (time.perf_counter()-s)/5
print("woodbury", t(fa._woodbury, p))
print("project", t(lambda p,X: fa._project(p,X)[0], p, X))
print("block_stats", t(lambda p,X: fa._block_stats(p,X,lambda lj: posterior(lj)), p, X))
print("matmul", t(lambda X, W: X @ W, X, jnp.ones((d, k*q+k))))

M = jnp.broadcast_to(jnp.eye(q)*2, (k,q,q))
print("chol", t(jnp.linalg.cholesky, M))
print("trisolve", t(lambda L, B: jax.scipy.linalg.solve_triangular(L, B, lower=True), M, jnp.ones((k,q,d))))
print("einsum M", t(lambda W, S: jnp.einsum("kdq,kdr->kqr", W, S), p["loadings"], p["loadings"]))
print("woodbury again", t(fa._woodbury, p))
