"""Restarts in groups side by side (core/restart_groups.py): one loop executable run from several
host threads on a multi-core CPU, with the same answers as one program of all restarts."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import laplace_mixture

import jaxem as jem
from jaxem.core import programs, restart_groups

RNG = np.random.default_rng(0)
X = RNG.laplace(size=(400, 1)) + np.repeat([[-3.0], [3.0]], 200, 0)
SEQUENCE = np.concatenate([RNG.normal(m, 1, size=(60, 2)) for m in (0, 3, 0, 3)])


@pytest.fixture
def segment_threads(monkeypatch):
    """The names of the threads each loop segment ran in, during the test."""
    names = []
    original = programs._segments

    def recorded(*args, **kwargs):
        names.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(programs, "_segments", recorded)
    return names


def _cores(monkeypatch, n):
    monkeypatch.setattr(restart_groups, "_cores", lambda: n)


@pytest.mark.parametrize("n_restarts,cores,groups", [(8, 2, 2), (6, 4, 3), (3, 2, 1), (1, 4, 1),
                                                     (4, 1, 1), (12, 16, 12)])
def test_groups_are_equal_and_at_most_one_per_core(monkeypatch, n_restarts, cores, groups):
    _cores(monkeypatch, cores)
    state = {"params": {"mean": jax.ShapeDtypeStruct((n_restarts, 3), jnp.float32)},
             "history": jax.ShapeDtypeStruct((n_restarts, 50), jnp.float32),
             "trips": jax.ShapeDtypeStruct((), jnp.int32)}
    assert restart_groups.count(state, {"in_sequence": True}, True) == groups
    assert restart_groups.count(state, {"in_sequence": False}, True) == 1
    assert restart_groups.count(state, {"in_sequence": True}, False) == 1
    # A leaf without the restart axis in front: the state cannot be cut into restarts.
    odd = dict(state, shared=jax.ShapeDtypeStruct((n_restarts + 1, 2), jnp.float32))
    assert restart_groups.count(odd, {"in_sequence": True}, True) == 1
    keys = dict(state, key=jax.random.split(jax.random.key(0), n_restarts))
    assert restart_groups.count(keys, {"in_sequence": True}, True) == 1


def test_split_and_merge_give_back_the_state():
    state = {"params": {"mean": np.arange(24.0).reshape(8, 3)}, "trips": np.int32(5),
             "n_iter": np.arange(8, dtype=np.int32), "consumed": None}
    parts = restart_groups.split(state, 4, jax.devices()[0])
    assert [p["n_iter"].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    parts[1]["trips"] = jnp.int32(7)
    merged = restart_groups.merge(parts)
    np.testing.assert_array_equal(merged["params"]["mean"], state["params"]["mean"])
    np.testing.assert_array_equal(merged["n_iter"], state["n_iter"])
    assert merged["trips"] == 7 and merged["consumed"] is None


def _fits(monkeypatch, fit):
    """The fit in one program (one core) and in groups (two cores)."""
    out = []
    for cores in (1, 2):
        _cores(monkeypatch, cores)
        out.append(fit())
    return out


@pytest.mark.parametrize("kind", ["gradient", "closed form", "hmm"])
def test_grouped_fit_is_the_one_program_fit(monkeypatch, segment_threads, kind):
    if kind == "gradient":
        def fit():
            return jem.fit(laplace_mixture(), X, key=jax.random.key(0), n_restarts=4,
                           max_iter=40)
    elif kind == "closed form":
        def fit():
            return jem.fit(jem.gaussian_mixture(2), X, key=jax.random.key(1), n_restarts=4,
                           max_iter=40)
    else:
        def fit():
            return jem.hmm.fit(jem.hmm.gaussian_hmm(2, covariance_type="diag"), SEQUENCE,
                               key=jax.random.key(2), n_restarts=2, max_iter=25)
    alone, grouped = _fits(monkeypatch, fit)
    n_restarts = alone.n_iter.shape[0]
    # One segment loop in the caller's thread, then one per group in the restart threads.
    assert segment_threads[0] == threading.current_thread().name
    assert len(segment_threads) == 3
    assert all(name.startswith("jaxem-restarts") for name in segment_threads[1:])
    assert grouped.n_iter.shape == (n_restarts,)
    for name in ("n_iter", "converged", "all_log_likelihoods", "history"):
        np.testing.assert_array_equal(getattr(grouped, name), getattr(alone, name), err_msg=name)
    jax.tree.map(np.testing.assert_array_equal, grouped.all_params, alone.all_params)


def test_progress_keeps_one_program(monkeypatch, segment_threads):
    _cores(monkeypatch, 2)
    seen = []
    jem.fit(laplace_mixture(), X, key=jax.random.key(0), n_restarts=4, max_iter=10, tol=None,
            progress=lambda iteration, objective, *rest: seen.append(np.shape(objective)))
    assert seen and set(seen) == {(4,)}
    assert segment_threads == [threading.current_thread().name]


def test_ctrl_c_stops_every_group(monkeypatch, segment_threads):
    import contextlib

    @contextlib.contextmanager
    def pressed():
        yield lambda: True

    monkeypatch.setattr(programs, "_interrupt_flag", pressed)
    _cores(monkeypatch, 2)
    with pytest.raises(jem.FitInterrupted) as stop:
        jem.fit(laplace_mixture(), X, key=jax.random.key(0), n_restarts=4, max_iter=40)
    partial = stop.value.result
    assert len(segment_threads) == 2 and partial.interrupted
    np.testing.assert_array_equal(partial.n_iter, programs.FIRST_SEGMENT_TRIPS - 1)
