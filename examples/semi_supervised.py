"""Semi-supervised EM: a few labelled rows pin the components to known classes.

Rows with a label keep a fixed one-hot responsibility (``labels[n] = k``); ``-1`` marks the
unlabelled majority. With 3% of the rows labelled, the fitted components come out in the classes'
order, so component ``k`` *is* class ``k`` and ``predict`` is a classifier.
Run: ``python examples/semi_supervised.py``.
"""

import jax
import numpy as np

import jaxem as jem

if __name__ == "__main__":
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [3.0, 1.0], [0.5, 3.5]])
    y = rng.choice(3, size=900, p=[0.5, 0.3, 0.2])
    X = centres[y] + rng.normal(scale=0.8, size=(900, 2))

    labels = np.full(len(y), -1)
    known = rng.choice(len(y), size=27, replace=False)
    labels[known] = y[known]

    model = jem.gaussian_mixture(3, "full")
    result = jem.fit(model, X, key=jax.random.key(0), labels=labels, n_restarts=4)
    resp, _ = jem.e_step(model, result.params, X)
    accuracy = np.mean(np.argmax(resp, axis=1) == y)
    print("fitted means (rows in class order):")
    print(np.round(np.asarray(result.params["means"]), 2))
    print(f"accuracy on all rows with {len(known)} labels: {accuracy:.3f}")
    assert accuracy > 0.85
