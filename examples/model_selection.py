"""Choosing the number of components with BIC: fit K = 1..6 and print the table.

Run: ``python examples/model_selection.py`` (``--quick`` tries only K = 3, 4, 5).
"""

import sys

import jax
import numpy as np

import jaxem as jem

if __name__ == "__main__":
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]])
    X = centres[rng.choice(4, size=800)] + rng.normal(scale=0.7, size=(800, 2))

    ks = (3, 4, 5) if "--quick" in sys.argv else range(1, 7)
    sweep = jem.select_components(lambda k: jem.gaussian_mixture(k, "diag"), X, ks=ks,
                                  key=jax.random.key(0), n_restarts=4)
    print(sweep)
    print(f"best K by BIC: {sweep.best_k}")
    assert sweep.best_k == 4
