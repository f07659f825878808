"""ARCHITECTURE.md's worked family, run as written: a geometric mixture built by following the
page, fitted by the engine in memory and in chunks, and checked against a NumPy EM."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxem as jem

PAGE = Path(__file__).resolve().parents[1] / "ARCHITECTURE.md"


def _family_code() -> str:
    text = PAGE.read_text()
    section = text[text.index("## Adding a family"):text.index("## Adding a runner")]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section shows one code block"
    return blocks[0]


def _numpy_em(X, weights, probs, n_iter):
    """EM for a geometric mixture written directly in NumPy (float64), the oracle."""
    history = []
    for _ in range(n_iter):
        log_joint = np.log(weights) + np.log(probs) + X[:, None] * np.log1p(-probs)
        top = log_joint.max(axis=1, keepdims=True)
        row_ll = top[:, 0] + np.log(np.exp(log_joint - top).sum(axis=1))
        history.append(row_ll.sum())
        resp = np.exp(log_joint - row_ll[:, None])
        n, s = resp.sum(0), resp.T @ X
        weights, probs = n / n.sum(), n / (n + s)
    return weights, probs, np.array(history)


@pytest.fixture(scope="module")
def family():
    namespace: dict = {}
    exec(compile(_family_code(), str(PAGE), "exec"), namespace)
    return namespace["geometric_mixture"]


@pytest.fixture(scope="module")
def counts():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.geometric(0.6, 3000) - 1, rng.geometric(0.08, 2000) - 1]).astype(
        np.float64)


def test_the_page_family_matches_a_numpy_em(family, counts):
    model = family(2)
    start = {"weights": np.array([0.5, 0.5]), "probs": np.array([0.5, 0.2])}
    result = jem.fit(model, counts, init_params=start, max_iter=25, tol=None, accelerate=None)
    weights, probs, history = _numpy_em(counts, start["weights"], start["probs"], 26)
    np.testing.assert_allclose(result.params["probs"], probs, rtol=2e-4)
    np.testing.assert_allclose(result.params["weights"], weights, rtol=2e-4)
    # history[i] is the log-likelihood after i + 1 M-steps; the NumPy list starts at the start.
    np.testing.assert_allclose(result.history[0], history[1:], rtol=1e-5)


def test_the_page_family_runs_in_chunks_and_recovers_the_truth(family, counts):
    model = family(2)
    in_memory = jem.fit(model, counts, key=jax.random.key(1), n_restarts=4, max_iter=300)
    chunked = jem.fit_chunked(model, counts, chunk_size=1024, key=jax.random.key(1), n_restarts=4,
                              max_iter=300)
    order = np.argsort(in_memory.params["probs"])
    np.testing.assert_allclose(np.asarray(in_memory.params["probs"])[order], [0.08, 0.6], rtol=0.1)
    np.testing.assert_allclose(chunked.log_likelihood, in_memory.log_likelihood, rtol=1e-5)
