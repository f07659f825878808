"""jem.load trusts nothing in a file: crafted and damaged files are refused with a ValueError that
names the file, no module a file names is imported or run, sizes are checked before reading, and
saved files follow the umask."""

from __future__ import annotations

import json
import os
import re
import stat
import struct
import sys
import threading
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest

import jaxem as jem


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A GaussianMixture fitted on a few rows, saved once: (estimator, X, path, metadata, arrays)."""
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(-3, 1, (6, 2)), rng.normal(3, 1, (6, 2))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jem.ConvergenceWarning)
        est = jem.GaussianMixture(2, max_iter=3, random_state=0).fit(X)
    path = tmp_path_factory.mktemp("safety") / "gmm.npz"
    est.save(path)
    with np.load(path) as archive:  # the file is ours: trusted here
        meta = json.loads(str(archive["__jaxem__"][()]))
        arrays = {name: archive[name] for name in archive.files if name != "__jaxem__"}
    return est, X, path, meta, arrays


def _write(dst, meta, arrays, compression=zipfile.ZIP_STORED):
    """A model file: ``meta`` (a dict, or JSON text) and ``arrays`` (name -> array or raw bytes)."""
    text = meta if isinstance(meta, str) else json.dumps(meta)
    with zipfile.ZipFile(dst, "w", compression) as archive:
        with archive.open("__jaxem__.npy", "w") as f:
            np.save(f, np.asarray(text))
        for name, value in arrays.items():
            with archive.open(name + ".npy", "w") as f:
                f.write(value) if isinstance(value, bytes) else np.save(f, value)
    return dst


def _variant(saved, dst, change=None, arrays=None):
    """The saved model's file with its metadata changed by ``change`` and ``arrays`` replaced."""
    _, _, _, meta, stored = saved
    meta = json.loads(json.dumps(meta))
    if change is not None:
        change(meta)
    return _write(dst, meta, {**stored, **(arrays or {})})


def _refused(path, match=""):
    """Loading ``path`` raises a ValueError naming it (and matching ``match``)."""
    with pytest.raises(ValueError, match=re.escape(str(path))) as info:
        jem.load(path)
    assert re.search(match, str(info.value)), str(info.value)
    return str(info.value)


def _jaxem_modules():
    return {name for name in sys.modules if name == "jaxem" or name.startswith("jaxem.")}


def test_the_saved_model_loads(saved):
    est, X, path, _, _ = saved
    assert np.array_equal(jem.load(path).predict_proba(X), est.predict_proba(X))


@pytest.mark.parametrize("spec", [
    "jaxem.__main__:main", "jaxem.__main__:GaussianMixture", "jaxem.app.cli:main", "jaxem.cli:main",
    "jaxem:fit", "jaxem.plot:plot_mixture", "jaxem.nosuch:GaussianMixture",
    "jaxem.estimators.params:EMEstimator", "jaxem.estimators:MixtureEstimator",
    "jaxem.estimators.gaussian:GaussianMixture.fit", "jaxem.app.io:GaussianMixture",
    "builtins:dict", "os:system", "jaxem", ":", 5, None,
])
def test_a_file_cannot_import_or_run_a_module(saved, tmp_path, monkeypatch, spec):
    """jaxem.__main__ ran the command line on sys.argv (it wrote predictions) when a file named it."""
    monkeypatch.delitem(sys.modules, "jaxem.__main__", raising=False)
    data, out = tmp_path / "x.csv", tmp_path / "predictions.csv"
    data.write_text("a,b\n1,2\n3,4\n")
    monkeypatch.setattr(sys, "argv", ["jaxem", "predict", str(saved[2]), str(data), "-o", str(out)])
    before = _jaxem_modules()
    path = _variant(saved, tmp_path / "m.npz", lambda m: m.update({"class": spec}))
    _refused(path, "not a jaxem estimator|does not have")
    assert _jaxem_modules() == before and "jaxem.__main__" not in sys.modules
    assert not out.exists()


@pytest.mark.parametrize("spec", ["jaxem.hmm.estimators:PoissonHMM", "jaxem.hmm:PoissonHMM",
                                  "jaxem.estimators.hmm:PoissonHMM", "jaxem:PoissonHMM",
                                  "jaxem.estimators:PoissonHMM"])
def test_old_and_public_module_paths_name_the_class(tmp_path, spec):
    path = tmp_path / "hmm.npz"
    jem.PoissonHMM(3, n_iter=7).save(path)
    with np.load(path) as archive:
        meta = json.loads(str(archive["__jaxem__"][()]))
    loaded = jem.load(_write(path, {**meta, "class": spec}, {}))
    assert type(loaded) is jem.PoissonHMM and loaded.n_components == 3 and loaded.n_iter == 7


def test_only_the_members_the_metadata_names_are_read(saved, tmp_path):
    est, X, _, _, _ = saved
    path = _variant(saved, tmp_path / "m.npz", arrays={"junk": b"\x93NUMPY garbage" * 1000})
    assert np.array_equal(jem.load(path).predict_proba(X), est.predict_proba(X))


def test_a_compressed_member_cannot_expand_past_the_file(saved, tmp_path):
    """A 1 MB file made load allocate 1.2 GB: a deflated member of 64 MiB of zeros (~65 KB)."""
    header = b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (8388608,), }"
    header = header.ljust(127, b" ") + b"\n"
    path = _write(tmp_path / "bomb.npz", saved[3],
                  {name: arr for name, arr in saved[4].items() if name != "attr/weights_"})
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("attr/weights_.npy", "w", force_zip64=True) as f:
            f.write(header)
            for _ in range(64):
                f.write(bytes(1 << 20))
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        _refused(path, "declares 67108992 bytes")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_declared_sizes_are_checked_before_reading(saved, tmp_path):
    """A member declaring 8 TB raised a raw MemoryError."""
    header = b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (10**12,), }"
    header = header.replace(b"10**12", b"1000000000000").ljust(127, b" ") + b"\n"
    path = _variant(saved, tmp_path / "huge.npz", arrays={"attr/weights_": header + bytes(16)})
    _refused(path, r"declares shape \(1000000000000,\)")
    # The zip's central directory says the metadata member holds 4 GB.
    data = bytearray(saved[2].read_bytes())
    entry = data.index(b"PK\x01\x02")  # the first central-directory entry: __jaxem__.npy
    assert data[entry + 46:entry + 59] == b"__jaxem__.npy"
    data[entry + 24:entry + 28] = struct.pack("<I", 0xFFFFFFF0)
    (tmp_path / "big.npz").write_bytes(data)
    _refused(tmp_path / "big.npz", "corrupted jaxem model file")


@pytest.mark.parametrize("name", ["predict", "fit", "__dict__", "__class__", "_check_fitted",
                                  "_fitted_attribute", "_param_keys", "n_components", "x",
                                  "_1", "__x", "__x__", "a b_", "means_\n", "é_"])
def test_attribute_names_are_checked(saved, tmp_path, name):
    def change(meta):
        meta["attributes"][name] = {"kind": "json", "value": 1}

    _refused(_variant(saved, tmp_path / "m.npz", change), "corrupted jaxem model file")


@pytest.mark.parametrize("name, value", [
    ("n_components", 10**12), ("n_components", -3), ("n_components", "two"), ("n_components", 2.5),
    ("n_components", True), ("n_components", None), ("n_components", 3), ("tol", float("nan")),
    ("covariance_type", "nonsense"), ("max_iter", 0), ("bogus", 1),
])
def test_hyperparameters_are_checked(saved, tmp_path, name, value):
    def change(meta):
        meta["params"][name] = {"kind": "json", "value": value}

    message = _refused(_variant(saved, tmp_path / "m.npz", change))
    assert name in message or "components" in message


def test_an_unfitted_model_cannot_ask_for_a_trillion_components(tmp_path):
    path = jem.GaussianMixture(2).save(tmp_path / "m.npz")
    with np.load(path) as archive:
        meta = json.loads(str(archive["__jaxem__"][()]))
    meta["params"]["n_components"]["value"] = 10**12
    _refused(_write(path, meta, {}), "at most")


@pytest.mark.parametrize("name, bad", [("weights_", np.nan), ("means_", np.inf),
                                       ("covariances_", -np.inf), ("_offset", np.nan)])
def test_fitted_arrays_must_be_finite(saved, tmp_path, name, bad):
    arr = saved[4][f"attr/{name}"].copy()
    arr.flat[0] = bad
    _refused(_variant(saved, tmp_path / "m.npz", arrays={f"attr/{name}": arr}), "not finite")


def test_deeply_nested_metadata_is_refused(saved, tmp_path):
    text = json.dumps(saved[3])
    deep = text[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    _refused(_write(tmp_path / "m.npz", deep, saved[4]), "nests deeper")
    entry = '{"kind": "list", "items": [' * 5000 + "]}" * 5000
    deep = text.replace('"attributes": {', '"attributes": {"deep_": ' + entry + ", ")
    _refused(_write(tmp_path / "m.npz", deep, saved[4]), "nests deeper")


@pytest.mark.parametrize("change", [
    lambda m: m.update(params=[]), lambda m: m.pop("attributes"), lambda m: m.update(version=0),
    lambda m: m.update(version="1"), lambda m: m.update(version=True), lambda m: m.update(format=2),
    lambda m: m["attributes"].update(weights_={"kind": "array", "key": 5}),
    lambda m: m["attributes"].update(weights_={"kind": "array", "key": "attr/nope"}),
    lambda m: m["attributes"].update(weights_={"kind": "array", "key": "__jaxem__"}),
    lambda m: m["attributes"].update(weights_={"kind": "pickle", "value": "x"}),
    lambda m: m["attributes"].update(weights_={"kind": "json", "value": [1, 2]}),
    lambda m: m["attributes"].update(weights_=[]),
    lambda m: m["params"].update(features={"kind": "range", "value": [0, 10**12, 1]}),
    lambda m: m["params"].update(features={"kind": "range", "value": [0, 1, 0]}),
    lambda m: m["params"].update(tol={"kind": "dict", "items": []}),
])
def test_malformed_metadata_is_refused(saved, tmp_path, change):
    _refused(_variant(saved, tmp_path / "m.npz", change))


def test_odd_members_are_refused(saved, tmp_path):
    npy = b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (2,), }"
    path = _variant(saved, tmp_path / "m.npz", arrays={"attr/weights_": npy.ljust(127) + b"\n" + bytes(16)})
    _refused(path, "holds dtype object")
    path = _variant(saved, tmp_path / "m.npz", arrays={"attr/weights_": b"\x93NUMPY\x01\x00\x10\x00{((((("})
    _refused(path, "corrupted jaxem model file")
    data = bytearray(saved[2].read_bytes())
    entry = data.index(b"PK\x01\x02")
    for offset, value in ((10, struct.pack("<H", 12)), (8, struct.pack("<H", 1))):  # bzip2; encrypted
        changed = bytearray(data)
        changed[entry + offset:entry + offset + 2] = value
        (tmp_path / "c.npz").write_bytes(changed)
        _refused(tmp_path / "c.npz", "corrupted jaxem model file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_or_a_folder_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.npz"
    os.mkfifo(fifo)
    outcome = []

    def attempt():
        try:
            jem.load(fifo)
        except Exception as err:  # reported below
            outcome.append(err)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "load blocked on a FIFO"
    assert isinstance(outcome[0], ValueError) and str(fifo) in str(outcome[0])
    assert "not a regular file" in str(outcome[0])
    _refused(tmp_path, "not a regular file")


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = jem.GaussianMixture(2).save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["m.npz"]


def test_byte_flips_are_refused_or_harmless(saved, tmp_path):
    """Every single-byte change of a saved model: a ValueError naming the file, or a model that
    predicts exactly as the original (a changed timestamp, say)."""
    est, X, path, _, _ = saved
    good, expected = path.read_bytes(), est.predict_proba(X)
    rng = np.random.default_rng(24)
    positions = rng.choice(len(good), size=min(600, len(good)), replace=False)
    flipped, outcomes = tmp_path / "flipped.npz", {"refused": 0, "same": 0}
    for position, mask in zip(positions, rng.integers(1, 256, size=len(positions)), strict=True):
        data = bytearray(good)
        data[position] ^= int(mask)
        flipped.write_bytes(data)
        try:
            loaded = jem.load(flipped)
        except ValueError as err:
            assert str(flipped) in str(err), (position, mask, str(err))
            outcomes["refused"] += 1
            continue
        assert np.array_equal(loaded.predict_proba(X), expected), (position, mask)
        outcomes["same"] += 1
    assert outcomes["refused"] > len(positions) // 2, outcomes
