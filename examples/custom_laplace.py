"""A new model from scratch: a mixture of Laplace distributions, written as a log-joint.

There is no closed-form M-step here (the Laplace location's maximiser is a weighted median), so
``jem.fit`` climbs the expected complete-data log-likelihood with optax (L-BFGS) in the
unconstrained space the constraints give. Run: ``python examples/custom_laplace.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import laplace

import jaxem as jem

K = 2


def init(key, X):                          # X: all the data [N]; once per restart
    return {"weights": jnp.full(K, 1.0 / K),
            "loc": jax.random.choice(key, X, (K,), replace=False),
            "scale": jnp.full(K, jnp.std(X))}


def log_joint(params, x):                  # x: ONE observation -> log p(x, z=k), k = 0..K-1
    return jnp.log(params["weights"]) + laplace.logpdf(x, params["loc"], params["scale"])


model = jem.Model(init=init, log_joint=log_joint, n_components=K,
                  constraints={"weights": jem.constraints.simplex, "loc": jem.constraints.real,
                               "scale": jem.constraints.positive})

if __name__ == "__main__":
    rng = np.random.default_rng(0)
    z = rng.choice(K, size=1500, p=[0.7, 0.3])
    X = rng.laplace(np.array([-2.0, 3.0])[z], np.array([0.5, 1.0])[z])
    result = jem.fit(model, X, key=jax.random.key(0), n_restarts=4, max_iter=60)
    order = np.argsort(result.params["loc"])
    for name in ("weights", "loc", "scale"):
        print(f"{name:>8}: {np.round(np.asarray(result.params[name])[order], 2)}")
    print(f"log-likelihood {result.log_likelihood:.2f} after {result.n_iter[result.best_restart]} "
          "EM iterations")
    assert np.allclose(np.asarray(result.params["loc"])[order], [-2.0, 3.0], atol=0.15)
