"""Diagonal-family distances and moments in float32: about each row's nearest centre (exact algebra,
float32 accuracy) and, for few features, taken directly."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import start_params

from jaxem.models import _shifted


def _case(offset, spread, seed=0, k=8, d=5, b=3000):
    rng = np.random.default_rng(seed)
    means = rng.normal(offset, spread, (k, d))
    prec = rng.uniform(0.3, 3.0, (k, d))
    z = rng.integers(0, k, b)
    X = means[z] + rng.normal(size=(b, d)) / np.sqrt(prec[z])
    resp = rng.dirichlet(np.ones(k), b)
    return X, means, prec, resp, z


def _exact(X, means, prec, resp):
    diff = X[:, None, :] - means[None]
    return (np.einsum("kd,bkd->bk", prec, diff ** 2), resp.sum(axis=0),
            np.einsum("bk,bkd->kd", resp, diff), np.einsum("bk,bkd->kd", resp, diff ** 2))


def test_algebra_is_exact_in_float64(x64):
    X, means, prec, resp, _ = _case(2.0, 3.0)
    shifted = _shifted.shift_to_nearest(jnp.asarray(X), jnp.asarray(means))
    dist = _shifted.squared_distances(shifted, jnp.asarray(means), jnp.asarray(prec))
    total, first, second = _shifted.moments(shifted, jnp.asarray(means), jnp.asarray(resp))
    ref = _exact(X, means, prec, resp)
    for ours, theirs in zip((dist, total, first, second), ref, strict=True):
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("offset, spread", [(0.0, 3.0), (1e4, 3.0), (0.0, 1e4)])
def test_float32_keeps_each_rows_own_distance(offset, spread):
    """Clusters 10^4 standard deviations from the origin or from each other: the distance of each
    row to its own component (the one that decides its likelihood) stays accurate to 0.05."""
    X, means, prec, resp, z = _case(offset, spread)
    f32 = [jnp.asarray(a, jnp.float32) for a in (X, means, prec, resp)]
    shifted = _shifted.shift_to_nearest(f32[0], f32[1])
    dist = np.asarray(_shifted.squared_distances(shifted, f32[1], f32[2]))
    second = np.asarray(_shifted.moments(shifted, f32[1], f32[3])[2])
    # The reference uses the same float32-rounded inputs, in float64 arithmetic.
    ref_dist, _, _, ref_second = _exact(*(np.asarray(a, np.float64) for a in f32))
    rows = np.arange(len(z))
    assert np.max(np.abs(dist[rows, z] - ref_dist[rows, z])) < 0.05
    np.testing.assert_allclose(second, ref_second, rtol=1e-4)


@pytest.mark.parametrize("n_features", [2, 5])
@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_fused_block_stats_equal_the_log_joint_and_suff_stats(x64, covariance_type, n_features):
    """The diagonal family's one-function E-step and statistics (``block_stats``) give what the
    separate log-joint, posterior and ``suff_stats`` give, with weights and partial labels; for
    few features (differences taken directly) and more (about the nearest centre)."""
    import dataclasses

    import jax

    import jaxem as jem
    from jaxem.core import blocks, passes
    from jaxem.models import gaussian

    assert (n_features <= gaussian.DIRECT_MAX_FEATURES[covariance_type]) == (n_features == 2)
    X, *_ = _case(2.0, 3.0, d=n_features)
    model = jem.gaussian_mixture(8, covariance_type)
    assert model.block_stats is not None
    plain = dataclasses.replace(model, block_stats=None)
    params = start_params(model, jax.random.key(0), X)
    rng = np.random.default_rng(1)
    weights, labels = rng.uniform(0.5, 2.0, len(X)), np.where(rng.uniform(size=len(X)) < 0.1, 3, -1)
    rows = blocks.block_rows(jnp.asarray(X), jnp.asarray(weights), jnp.asarray(labels), 4, 750)
    for temperature in (None, jnp.asarray(1.7)):
        fused = passes.stats_pass(model, params, rows, temperature=temperature)
        separate = passes.stats_pass(plain, params, rows, temperature=temperature)
        for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(separate), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
@pytest.mark.parametrize("offset, spread", [(0.0, 3.0), (1e4, 3.0), (0.0, 1e4)])
def test_few_features_take_differences_directly_and_stay_accurate_in_float32(offset, spread,
                                                                              covariance_type):
    """With few features the Gaussians skip the nearest-centre algebra and the whitening product:
    their float32 distances and moments match the float64 ones for every component, near or far."""
    import jax

    import jaxem as jem
    from jaxem.models import gaussian

    d = gaussian.DIRECT_MAX_FEATURES[covariance_type]
    X, means, prec, resp, _ = _case(offset, spread, d=d)
    f32 = [jnp.asarray(a, jnp.float32) for a in (X, means, prec, resp)]
    root = jnp.sqrt(f32[2])
    params = {"weights": jnp.full(len(means), 1 / len(means), jnp.float32), "means": f32[1],
              "prec_chol": root if covariance_type == "diag" else jax.vmap(jnp.diag)(root)}
    dist = np.asarray(gaussian._mahalanobis(params, f32[0], covariance_type))
    model = jem.gaussian_mixture(len(means), covariance_type)
    stats = jax.jit(model.suff_stats)(params, f32[0], f32[3])
    second = np.asarray(stats["second"])
    second = second if second.ndim == 2 else np.diagonal(second, axis1=1, axis2=2)
    ref_dist, ref_total, ref_first, ref_second = _exact(*(np.asarray(a, np.float64) for a in f32))
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-5)
    np.testing.assert_allclose(stats["nk"], ref_total, rtol=1e-5)
    np.testing.assert_allclose(second, ref_second, rtol=1e-4)
    # The first moment sums terms of both signs: its error is measured against their spread.
    spread_scale = np.sqrt(ref_second * ref_total[:, None])
    assert np.all(np.abs(np.asarray(stats["first"]) - ref_first) <= 1e-5 * spread_scale)
