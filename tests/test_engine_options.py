"""The engine's options: partial labels, MAP priors, progress reports, compile/run timing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_non_decreasing, three_blobs

import jaxem as jem

MODEL = jem.gaussian_mixture(3, "full")


def test_partial_labels_fix_responsibilities_and_the_objective(x64):
    X = three_blobs(dtype=np.float64)
    labels = np.full(len(X), -1)
    # Pin a few rows of the first blob to component 2 and of the second blob to component 0.
    labels[:10] = 2
    labels[300:310] = 0
    result = jem.fit(MODEL, X, key=jax.random.key(0), labels=labels, n_restarts=2)
    assert_non_decreasing(result)
    means = result.params["means"]
    # The labelled components sit on the blobs their labelled rows came from.
    assert np.linalg.norm(means[2] - X[:300].mean(0)) < 0.3
    assert np.linalg.norm(means[0] - X[300:500].mean(0)) < 0.3
    # The objective is Σ_unlabelled log p(x) + Σ_labelled log p(x, z=label).
    lj = np.asarray(MODEL.log_joint_matrix(result.params, jnp.asarray(X)))
    known = labels >= 0
    expected = (jax.nn.logsumexp(lj[~known], axis=1).sum()
                + lj[np.flatnonzero(known), labels[known]].sum())
    np.testing.assert_allclose(result.log_likelihood, expected, rtol=1e-10)


def test_without_labels_the_pinned_components_are_not_implied():
    """The test above fails if labels are ignored: unlabelled, component 2 is not the first blob
    for these keys."""
    X = three_blobs()
    result = jem.fit(MODEL, X, key=jax.random.key(0), n_restarts=2)
    assert np.linalg.norm(result.params["means"][2] - X[:300].mean(0)) > 1.0


@pytest.mark.parametrize("labels, message", [
    (np.zeros(5, int), "labels must have shape"),
    (np.full(600, 3), "got 3 at row 0"),
    (np.full(600, -2), "got -2 at row 0"),
    (np.full(600, 0.5), "labels must be integers"),
])
def test_bad_labels_are_refused(labels, message):
    with pytest.raises(ValueError, match=message):
        jem.fit(MODEL, three_blobs(), key=jax.random.key(0), labels=labels)


def test_log_prior_enters_the_objective_and_the_gradient_m_step(x64):
    """A custom model with a Gaussian prior on its means: the reported objective includes the
    prior, never decreases, and the prior pulls the means towards 0."""
    X = three_blobs(dtype=np.float64)
    base = jem.gaussian_mixture(3, "spherical")
    strength = 50.0
    prior = jem.Model(init=base.init, log_joint=base.log_joint,
                      batch_log_joint=base.batch_log_joint, constraints=base.constraints,
                      n_components=3,
                      log_prior=lambda p: -0.5 * strength * jnp.sum(p["means"] ** 2))
    result = jem.fit(prior, X, key=jax.random.key(0), max_iter=15, m_step_iters=10)
    assert_non_decreasing(result)
    penalty = -0.5 * strength * float(jnp.sum(result.params["means"] ** 2))
    np.testing.assert_allclose(
        result.log_likelihood, float(jem.log_likelihood(prior, result.params, X)) + penalty,
        rtol=1e-10)
    plain = jem.fit(base, X, key=jax.random.key(0), max_iter=15, m_step="gradient",
                    m_step_iters=10)
    assert (np.linalg.norm(result.params["means"]) < np.linalg.norm(plain.params["means"]))


def test_progress_reports_every_iteration_without_recompiling():
    X = three_blobs()
    calls = []
    first = jem.fit(MODEL, X, key=jax.random.key(0), n_restarts=3, max_iter=20,
                    progress=lambda *args: calls.append(args))
    assert [c[0] for c in calls] == list(range(1, len(calls) + 1))
    assert len(calls) == first.n_iter.max()
    it, ll, converged, running = calls[-1]
    assert ll.shape == converged.shape == running.shape == (3,)
    np.testing.assert_allclose(ll, first.all_log_likelihoods)
    # A different callback reuses the compiled program; so does a refit without one.
    again = jem.fit(MODEL, X, key=jax.random.key(0), n_restarts=3, max_iter=20,
                    progress=lambda *args: None)
    assert again.compile_time == 0.0 and again.fit_time > 0.0
    np.testing.assert_array_equal(again.history, first.history)


def test_progress_must_be_callable():
    with pytest.raises(ValueError, match="progress must be callable"):
        jem.fit(MODEL, three_blobs(), key=jax.random.key(0), progress=3)


def test_nan_is_refused_unless_the_model_handles_missing_values():
    X = three_blobs()
    X[7, 1] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        jem.fit(MODEL, X, key=jax.random.key(0))


def _run_python(code, env_extra):
    import os
    import subprocess
    import sys

    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)


def test_persistent_compilation_cache_is_written_and_can_be_declined(tmp_path):
    code = ("import jax, numpy as np, jaxem as jem\n"
            "print('DIR', jax.config.jax_compilation_cache_dir)\n"
            "X = np.random.default_rng(0).normal(size=(200, 2))\n"
            "jem.fit(jem.gaussian_mixture(2, 'diag'), X, key=jax.random.key(0), max_iter=3)\n")
    cache = tmp_path / "cache"
    out = _run_python(code, {"JAXEM_CACHE_DIR": str(cache), "JAXEM_COMPILATION_CACHE": "1"})
    assert out.returncode == 0, out.stderr
    assert f"DIR {cache}" in out.stdout
    assert any(p.name.startswith("jit__program") for p in cache.iterdir())
    declined = _run_python(code, {"JAXEM_CACHE_DIR": str(tmp_path / "other"),
                                  "JAXEM_COMPILATION_CACHE": "0"})
    assert declined.returncode == 0, declined.stderr
    assert "DIR None" in declined.stdout and not (tmp_path / "other").exists()


@pytest.mark.filterwarnings("ignore::jaxem.ConvergenceWarning")
def test_freed_programs_are_compiled_again_and_give_the_same_fit():
    from jaxem.core import programs

    X = three_blobs(n=90)
    model = jem.gaussian_mixture(2, "diag")

    def fit():
        before = programs.counts()
        result = jem.fit(model, X, key=jax.random.key(3), max_iter=5, tol=0.0)
        after = programs.counts()
        return result, {k: after[k] - before[k] for k in after}

    first, _ = fit()
    _, reused = fit()
    jem.free_compiled_programs()
    again, compiled = fit()
    assert reused["compiled"] == 0 and reused["reused"] >= 1
    assert compiled["compiled"] >= 1 and compiled["reused"] == 0
    np.testing.assert_array_equal(np.asarray(again.log_likelihood), np.asarray(first.log_likelihood))


def test_seed_keys_built_on_the_host_are_jaxs_keys(x64):
    """``key_from_seed`` (estimators' ``random_state``, ``key=<int>``) gives exactly
    ``jax.random.key(seed)``, in and out of x64 mode, so seeded fits are unchanged."""
    from jaxem.core.driver import key_from_seed

    for seed in (0, 1, 12345, 2**31 - 1, 2**32 - 1, -3, 2**40):
        for enabled in (True, False) if seed < 2**31 else (True,):  # int32 seeds without x64
            with jax.enable_x64(enabled):
                ours = jax.random.key_data(key_from_seed(np.int64(seed)))
                theirs = jax.random.key_data(jax.random.key(seed))
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_restart_keys_split_on_the_host_are_jaxs_split(x64):
    """``split_key`` (the restart keys of every fit) gives exactly ``jax.random.split``, bit for
    bit, in and out of x64 mode and under either threefry form, so seeded fits are unchanged."""
    from jaxem.core.driver import split_key

    for partitionable in (True, False):
        with jax.threefry_partitionable(partitionable):
            for enabled in (True, False):
                with jax.enable_x64(enabled):
                    for key in (jax.random.key(0), jax.random.key(2**32 - 1),
                                jax.random.fold_in(jax.random.key(7), 3)):
                        for n in (1, 3, 64):
                            np.testing.assert_array_equal(
                                np.asarray(jax.random.key_data(split_key(key, n))),
                                np.asarray(jax.random.key_data(jax.random.split(key, n))))
