"""Saving and loading estimators (jaxem.io): round trips for every estimator, bad files."""

from __future__ import annotations

import functools
import importlib
import json
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from conftest import binary_data, three_blobs

import jaxem as jem
from jaxem import io as jio


def _counts(seed=0, n=300, d=3):
    rng = np.random.default_rng(seed)
    z = rng.choice(2, size=n)
    return rng.poisson(np.array([2.0, 12.0])[z][:, None] * np.ones(d)).astype(np.float64)


def _positive(seed=0, n=300, d=2):
    rng = np.random.default_rng(seed)
    z = rng.choice(2, size=n)
    return rng.gamma(3.0, np.array([0.5, 4.0])[z][:, None] * np.ones(d)) + 1e-3


def _categories(seed=0, n=300, d=3):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4, size=(n, d)).astype(np.float64)


def _sequence(seed=0, n=300):
    rng = np.random.default_rng(seed)
    states = np.repeat(rng.integers(0, 2, size=n // 30), 30)
    return rng.normal(np.array([-2.0, 2.0])[states], 1.0)[:, None]


def _mixed(seed=0, n=240):
    rng = np.random.default_rng(seed)
    z = rng.choice(2, size=n)
    return np.column_stack([rng.normal(np.where(z, 3.0, -3.0)), rng.poisson(np.where(z, 9.0, 1.0))])


def _regression(seed=0, n=240):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, size=(n, 1))
    z = rng.choice(2, size=n)
    y = np.where(z, 2 * X[:, 0] + 1, -X[:, 0]) + 0.2 * rng.normal(size=n)
    return X, y


# Estimator class name -> (extra hyperparameters, data: X, or the tuple of arrays fit takes).
# Families are tested once they exist in jaxem, so one that lands later needs no edit here.
SPECIMENS = {
    "GaussianMixture": ({"covariance_type": "full"}, lambda: three_blobs(n=240)),
    "BernoulliMixture": ({}, lambda: binary_data(n=240, d=6)[0]),
    "PoissonMixture": ({}, _counts),
    "CategoricalMixture": ({}, _categories),
    "ExponentialMixture": ({}, _positive),
    "GammaMixture": ({}, _positive),
    "StudentTMixture": ({}, lambda: three_blobs(n=240)),
    "IndependentMixture": ({"features": [("gaussian", [0]), ("poisson", range(1, 2))]}, _mixed),
    "KMeans": ({}, lambda: three_blobs(n=240)),
    "MixtureOfLinearRegressions": ({}, _regression),
    "MixtureOfExperts": ({}, _regression),
    "GaussianHMM": ({}, _sequence),
    "PoissonHMM": ({}, lambda: _counts(d=1)),
    "CategoricalHMM": ({}, lambda: _categories(d=1)),
    "GMMHMM": ({"n_mix": 2}, _sequence),
    "MultinomialHMM": ({}, lambda: _counts(d=3).astype(np.int64)),
    "LinearAutoregressiveHMM": ({"num_lags": 2}, _sequence),
}


def _class(name):
    """The estimator class from jaxem's public modules, ``None`` where it does not exist (yet)."""
    for module in ("jaxem", "jaxem.hmm", "jaxem.hmm.estimators"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            cls = None
        if cls is not None:
            return cls
    return None


AVAILABLE = [name for name in SPECIMENS if _class(name) is not None]


@functools.cache
def _fitted(name):
    """One small fit per family, shared by the tests (compilation dominates their time)."""
    extra, data = SPECIMENS[name]
    args = data()
    args = args if isinstance(args, tuple) else (args,)
    cls = _class(name)
    iters = "n_iter" if "n_iter" in cls().get_params() else "max_iter"  # hmmlearn's name in HMMs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jem.ConvergenceWarning)
        est = cls(2, n_restarts=2, random_state=0, **{iters: 5}, **extra).fit(*args)
    return est, args


def _assert_equal(loaded, value, where):
    assert type(loaded) is type(value), where
    if isinstance(value, (np.ndarray, jax.Array)):
        assert loaded.dtype == value.dtype and np.array_equal(loaded, value, equal_nan=True), where
    elif isinstance(value, (list, tuple)):
        assert len(loaded) == len(value), where
        for i, (a, b) in enumerate(zip(loaded, value, strict=True)):
            _assert_equal(a, b, f"{where}[{i}]")
    elif isinstance(value, dict):
        assert loaded.keys() == value.keys(), where
        for k in value:
            _assert_equal(loaded[k], value[k], f"{where}[{k!r}]")
    else:
        assert loaded == value, where


def _assert_same_state(a, b):
    assert type(a) is type(b)
    _assert_equal(b.get_params(), a.get_params(), "get_params()")
    for name, value in jio._fitted_state(a).items():
        if jio._try_encode(value, name, {}) is not None:  # e.g. fit_result_ is not stored
            _assert_equal(getattr(b, name), value, name)


@pytest.mark.parametrize("name", AVAILABLE)
def test_round_trip_keeps_every_fitted_attribute(name, tmp_path):
    est, args = _fitted(name)
    path = jem.save(est, tmp_path / "model.npz")
    loaded = jem.load(path)
    _assert_same_state(est, loaded)
    assert not hasattr(loaded, "fit_result_")  # a fit summary, not needed to predict
    assert np.array_equal(loaded.predict_proba(*args), est.predict_proba(*args))
    assert np.array_equal(loaded.predict(args[0]), est.predict(args[0]))
    assert loaded.score(*args) == est.score(*args)


# One mixture, one HMM, one regression mixture: that a new process computes bit for bit what this
# one did is XLA's property, not a class's; every class's saved state is checked above.
IN_A_NEW_PROCESS = [n for n in ("GaussianMixture", "GaussianHMM", "MixtureOfLinearRegressions")
                    if n in AVAILABLE]


def test_predictions_are_bit_identical_in_a_new_process(tmp_path):
    expected = {}
    for name in IN_A_NEW_PROCESS:
        est, args = _fitted(name)
        jem.save(est, tmp_path / f"{name}.npz")
        np.savez(tmp_path / f"{name}.args.npz", *args)
        # score() is a log-likelihood for every family (HMMs' score_samples returns a tuple).
        expected[name] = (est.predict_proba(*args), est.score(*args))
    script = textwrap.dedent(f"""
        import numpy as np, jaxem as jem
        for name in {IN_A_NEW_PROCESS!r}:
            est = jem.load(r"{tmp_path}/" + name + ".npz")
            with np.load(r"{tmp_path}/" + name + ".args.npz") as f:
                args = [f[k] for k in sorted(f.files)]
            np.save(r"{tmp_path}/" + name + ".proba.npy", est.predict_proba(*args))
            np.save(r"{tmp_path}/" + name + ".ll.npy", est.score(*args))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name, (proba, ll) in expected.items():
        assert np.array_equal(np.load(tmp_path / f"{name}.proba.npy"), proba), name
        assert np.array_equal(np.load(tmp_path / f"{name}.ll.npy"), ll), name


def test_float64_fit_round_trips_in_float64(x64, tmp_path):
    X = binary_data(n=240, d=6)[0].astype(np.float64)
    est = jem.BernoulliMixture(2, max_iter=5, random_state=0).fit(X)
    assert est.probs_.dtype == np.float64
    loaded = jem.load(est.save(tmp_path / "m.npz"))
    _assert_same_state(est, loaded)
    assert np.array_equal(loaded.predict_proba(X), est.predict_proba(X))


def test_unfitted_estimator_and_array_hyperparameters(tmp_path):
    means_init = np.array([[0.0, 0.0], [4.0, 1.0]], np.float32)
    est = jem.GaussianMixture(2, covariance_type="diag", means_init=means_init, random_state=3)
    loaded = jem.load(est.save(tmp_path / "m.npz"))
    assert loaded.covariance_type == "diag" and loaded.random_state == 3
    assert np.array_equal(loaded.means_init, means_init) and loaded.means_init.dtype == np.float32
    with pytest.raises(jem.NotFittedError):
        loaded.predict(means_init)


def test_unstorable_hyperparameters_warn_and_load_as_none(tmp_path):
    est = jem.GaussianMixture(2, optimizer=optax.adam(1e-2), random_state=jax.random.key(1))
    with pytest.warns(UserWarning, match=r"\['optimizer', 'random_state'\]"):
        path = est.save(tmp_path / "m.npz")
    loaded = jem.load(path)
    assert loaded.optimizer is None and loaded.random_state is None and loaded.n_components == 2


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("io") / "m.npz"
    jem.BernoulliMixture(3, n_trials=2).save(path)
    return path.read_bytes()


def _rewrite_meta(src, dst, change):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item == "__jaxem__.npy":
                meta = json.loads(str(np.load(zin.open(item))[()]))
                change(meta)
                with zout.open(item, "w") as f:
                    np.save(f, np.asarray(json.dumps(meta)))
            else:
                zout.writestr(item, data)


def test_bad_files_raise_clear_errors(model_bytes, tmp_path):
    good = tmp_path / "good.npz"
    good.write_bytes(model_bytes)
    assert jem.load(good).n_trials == 2

    with pytest.raises(FileNotFoundError):
        jem.load(tmp_path / "missing.npz")
    text = tmp_path / "data.csv"
    text.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"data.csv: not a jaxem model file \(not an .npz archive\)"):
        jem.load(text)
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ValueError, match="not a jaxem model file"):
        jem.load(npy)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(3))
    with pytest.raises(ValueError, match="without jaxem's metadata"):
        jem.load(foreign)
    for cut in (len(model_bytes) // 2, len(model_bytes) - 10):
        truncated = tmp_path / f"cut{cut}.npz"
        truncated.write_bytes(model_bytes[:cut])
        with pytest.raises(ValueError, match="truncated or corrupted"):
            jem.load(truncated)

    newer = tmp_path / "newer.npz"
    _rewrite_meta(good, newer, lambda m: m.update(version=jio.FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match="newer than this jaxem reads"):
        jem.load(newer)
    hostile = tmp_path / "hostile.npz"
    _rewrite_meta(good, hostile, lambda m: m.update({"class": "os:system"}))
    with pytest.raises(ValueError, match="not a jaxem estimator"):
        jem.load(hostile)
    gone = tmp_path / "gone.npz"
    _rewrite_meta(good, gone, lambda m: m.update({"class": "jaxem.estimators:NoSuchMixture"}))
    with pytest.raises(ValueError, match="does not have"):
        jem.load(gone)


def test_save_refuses_objects_that_are_not_jaxem_estimators(tmp_path):
    with pytest.raises(TypeError, match="expects a jaxem estimator"):
        jio.save(object(), tmp_path / "m.npz")
    assert list(tmp_path.iterdir()) == []


# -- reading data tables ----------------------------------------------------------------------------
def test_read_table_formats_agree(tmp_path):
    X = np.array([[1.5, -2.0, 3.0], [4.0, 5.25, -6.0], [7.0, 8.0, 9.5]])
    (tmp_path / "a.csv").write_text("\ufeffa, b ,c\n1.5,-2,3\n\n4,5.25,-6\n7,8,9.5\n")  # BOM, blank
    (tmp_path / "a.tsv").write_text("a\tb\tc\n1.5\t-2\t3\n4\t5.25\t-6\n7\t8\t9.5\n")
    (tmp_path / "noheader.txt").write_text("1.5\t-2\t3\n4\t5.25\t-6\n7\t8\t9.5\n")
    np.save(tmp_path / "a.npy", X)
    for name, names in [("a.csv", ["a", "b", "c"]), ("a.tsv", ["a", "b", "c"]),
                        ("noheader.txt", ["x0", "x1", "x2"]), ("a.npy", ["x0", "x1", "x2"])]:
        got, got_names = jio.read_table(tmp_path / name)
        assert got.dtype == np.float64 and np.array_equal(got, X), name
        assert got_names == names, name
    got, names = jio.read_table(tmp_path / "a.csv", columns=["c", "0"])
    assert names == ["c", "a"] and np.array_equal(got, X[:, [2, 0]])
    one_d, _ = jio.read_table(_saved(tmp_path / "v.npy", X[:, 0]))
    assert one_d.shape == (3, 1)


def _saved(path, arr):
    np.save(path, arr)
    return path


def test_read_table_parquet(tmp_path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:  # without the 'parquet' extra the error says how to get it, then skip
        (tmp_path / "a.parquet").write_bytes(b"PAR1")
        with pytest.raises(ImportError, match=r"pip install 'jaxem\[parquet\]'"):
            jio.read_table(tmp_path / "a.parquet")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"n": [1, 2, 3], "x": [0.5, 1.5, -2.0], "ok": [True, False, True]}),
                   tmp_path / "a.parquet")
    X, names = jio.read_table(tmp_path / "a.parquet")
    assert names == ["n", "x", "ok"]
    assert np.array_equal(X, [[1, 0.5, 1], [2, 1.5, 0], [3, -2.0, 1]])
    pq.write_table(pa.table({"x": [1.0, None], "s": ["a", "b"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="column 'x' .* missing value at row 2"):
        jio.read_table(tmp_path / "bad.parquet")
    pq.write_table(pa.table({"s": ["a", "b"]}), tmp_path / "text.parquet")
    with pytest.raises(ValueError, match="column 's' .* not numeric"):
        jio.read_table(tmp_path / "text.parquet")


@pytest.mark.parametrize("text, message", [
    ("a,b\n1,2\n3,x\n", r"column 'b' \(column 2\) is not numeric: line 3 holds 'x'"),
    ("a,b\n1,2\n3,\n", r"column 'b' .* line 3 holds '', a missing value"),
    ("a,b\n1,2\n3,4,5\n", "line 3 has 3 fields but the header has 2"),
    ("a,b\n1,inf\n", "not a finite number"),
    ("a,b\n", "no data rows"),
    ("\n\n", "the file is empty"),
])
def test_read_table_names_the_bad_cell(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        jio.read_table(path)


def test_read_table_missing_file_and_bad_columns(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        jio.read_table(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="not a file"):
        jio.read_table(tmp_path)
    path = tmp_path / "a.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no column 'z'"):
        jio.read_table(path, columns=["z"])
    with pytest.raises(ValueError, match="index 5 is out of range"):
        jio.read_table(path, columns=[5])
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(ValueError, match="not numeric"):
        jio.read_table(tmp_path / "s.npy")


def test_files_saved_before_the_engine_moved_into_folders_still_load():
    """tests/data holds a GaussianMixture and a PoissonHMM saved by jaxem 0.1.0 before its
    modules moved into folders (the HMM's class is recorded as jaxem.hmm.estimators:PoissonHMM);
    they load, and predict as they did when saved."""
    from jaxem.datasets import load_old_faithful

    data = Path(__file__).resolve().parent / "data"
    expected = np.load(data / "v0_1_0_expected.npz")
    X, _ = load_old_faithful()
    gm = jem.load(data / "gmm_v0_1_0.npz")
    assert type(gm) is jem.GaussianMixture
    np.testing.assert_allclose(gm.predict_proba(X), expected["gmm_proba"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gm.score(X), expected["gmm_score"], rtol=1e-6)
    hmm = jem.load(data / "poisson_hmm_v0_1_0.npz")
    assert type(hmm) is jem.PoissonHMM
    Y = expected["Y"]
    np.testing.assert_array_equal(hmm.predict(Y, [150, 150]), expected["hmm_states"])
    np.testing.assert_allclose(hmm.score(Y, [150, 150]), expected["hmm_score"], rtol=1e-6)


def test_a_map_fit_loads_and_predicts_as_before(tmp_path):
    """A GaussianMixture fitted with priors keeps no prior in its file (it depends on the
    training data); the loaded model predicts and scores exactly as the fitted one."""
    X = three_blobs(n=300)
    gm = jem.GaussianMixture(3, weight_concentration=2.0, mean_precision_prior=0.1,
                             random_state=0).fit(X)
    gm.save(tmp_path / "map.npz")
    loaded = jem.load(tmp_path / "map.npz")
    np.testing.assert_array_equal(loaded.predict_proba(X), gm.predict_proba(X))
    assert loaded.score(X) == gm.score(X)
