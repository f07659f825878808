"""Checkpoints of a running fit, so a killed fit resumes where it was and ends as it would have.

A checkpoint is the EM loop's whole state (:func:`jaxem.core.loop.initial_state`: every restart's
parameters, the statistics the next M-step needs, the history, the counters), written at segment
boundaries of the compiled loop (:func:`jaxem.core.programs.run_segmented`) or between iterations
of the host loop. A resumed fit continues from it with the same programs, so it ends with the
result the uninterrupted fit would have had (the arithmetic is the same; only where the loop
paused differs).

The file is an ``.npz`` archive of plain arrays (no pickled objects: :func:`numpy.load` reads it
with ``allow_pickle=False``) plus one JSON member with the format, the leaves' shapes and dtypes,
the iteration reached, and fingerprints (SHA-256) of the model, the data and the settings: a
resume whose fingerprints differ is refused with a message naming which part differs. It is
written to a temporary file in the same folder and renamed over the old one (``os.replace``), so a
fit killed while writing leaves the previous checkpoint intact; its mode follows the umask.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from . import sharding

FORMAT = "jaxem-checkpoint-v1"
_META = "meta.json"
# The JSON member is small; a larger one is not a checkpoint this module wrote.
_MAX_META_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Where and how often a fit saves its state (``checkpoint=`` of the fit functions).

    Attributes:
        path: the checkpoint file (``.npz``); its folder must exist.
        every_seconds: save when this many seconds passed since the last save (default 60).
        every_iterations: save every this many iterations (the compiled loop pauses at these
            iterations). With both, whichever comes first; with neither, only when the fit ends
            or is interrupted.

    A fit also saves when it ends and when Ctrl-C stops it. Passing a path string is
    ``Checkpoint(path)``.
    """

    path: str
    every_seconds: float | None = 60.0
    every_iterations: int | None = None

    def __post_init__(self):
        if not isinstance(self.path, (str, os.PathLike)) or not str(self.path):
            raise ValueError(f"checkpoint path must be a file name, got {self.path!r}")
        object.__setattr__(self, "path", os.fspath(self.path))
        if self.every_seconds is not None and not (float(self.every_seconds) > 0):
            raise ValueError(f"every_seconds must be positive or None, got {self.every_seconds!r}")
        if self.every_iterations is not None and (
                isinstance(self.every_iterations, bool)
                or not isinstance(self.every_iterations, (int, np.integer))
                or self.every_iterations < 1):
            raise ValueError("every_iterations must be a positive integer or None, got "
                             f"{self.every_iterations!r}")
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise ValueError(f"cannot write the checkpoint {self.path!r}: folder {folder!r} does "
                             "not exist")


def as_checkpoint(checkpoint, resume: bool) -> Checkpoint | None:
    """``checkpoint=`` of a fit as a :class:`Checkpoint` (``None``: no checkpoints); ``resume``
    without a checkpoint is an error."""
    if resume not in (True, False):
        raise ValueError(f"resume must be True or False, got {resume!r}")
    if checkpoint is None:
        if resume:
            raise ValueError("resume=True needs checkpoint='path' (the file to resume from)")
        return None
    return checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)


def _update(digest, part) -> None:
    if part is None:
        digest.update(b"none;")
    elif isinstance(part, (str, bytes, int, float, bool)):
        text = part if isinstance(part, bytes) else repr(part).encode()
        digest.update(b"s%d:" % len(text) + text)
    elif isinstance(part, (tuple, list)):
        digest.update(b"(%d" % len(part))
        for item in part:
            _update(digest, item)
        digest.update(b")")
    else:  # an array (a typed PRNG key by its key data)
        if isinstance(part, jax.Array) and jax.dtypes.issubdtype(part.dtype, jax.dtypes.prng_key):
            part = jax.random.key_data(part)
        arr = np.ascontiguousarray(np.asarray(part))
        if arr.dtype.hasobject:
            raise TypeError(f"cannot fingerprint a {type(part).__name__}")
        digest.update(f"a{arr.dtype.str}{arr.shape}:".encode())
        digest.update(arr.tobytes())


def fingerprint(*parts) -> str:
    """SHA-256 (hex) of ``parts``: strings, numbers, ``None``, arrays (shape, dtype and bytes)
    and tuples of these; pytrees of arrays go in as ``jax.tree.leaves`` plus their structure."""
    digest = hashlib.sha256()
    for part in parts:
        _update(digest, part)
    return digest.hexdigest()


def process_file(path: str) -> str:
    """The file a process writes: ``path`` itself, or with several processes (each holds its own
    rows, so its own fingerprints) ``name.process<i>of<n>.ext``."""
    if jax.process_count() == 1:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.process{jax.process_index()}of{jax.process_count()}{ext}"


def _host(leaf) -> np.ndarray:
    # A multi-process fit's state is replicated over the processes: each saves its own copy.
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return np.asarray(leaf.addressable_data(0))
    return np.asarray(leaf)


def _leaves(state: dict) -> tuple[list, str]:
    leaves, treedef = jax.tree.flatten(state)
    return leaves, str(treedef)


def save(checkpoint: Checkpoint, state: dict, fingerprints: dict) -> None:
    """Write the loop ``state`` (device or host arrays) to ``checkpoint.path`` atomically."""
    leaves, treedef = _leaves(state)
    arrays = {f"leaf_{i:05d}": _host(leaf) for i, leaf in enumerate(leaves)}
    meta = {"format": FORMAT, "treedef": treedef, "fingerprints": fingerprints,
            "trips": int(np.asarray(state["trips"])), "written": time.time(),
            "leaves": [[list(a.shape), a.dtype.str] for a in arrays.values()]}
    path = process_file(checkpoint.path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
                archive.writestr(_META, json.dumps(meta))
                for name, arr in arrays.items():
                    buffer = io.BytesIO()
                    np.lib.format.write_array(buffer, arr, allow_pickle=False)
                    archive.writestr(name + ".npy", buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; a checkpoint is an ordinary output file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _refuse(path: str, why: str) -> ValueError:
    return ValueError(f"cannot resume from the checkpoint {path!r}: {why}")


def load(checkpoint: Checkpoint, fingerprints: dict, like: dict) -> dict | None:
    """The loop state saved in ``checkpoint.path`` as host arrays in the structure of ``like``
    (the fresh loop's starting state), or ``None`` when there is no file (the fit then starts
    afresh). Anything else that does not match is a ValueError naming the file."""
    path = process_file(checkpoint.path)
    if not os.path.exists(path):
        return None
    if not os.path.isfile(path):
        raise _refuse(path, "it is not a regular file")
    like_leaves, like_treedef = _leaves(like)
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(_META)
            if info.file_size > _MAX_META_BYTES:
                raise _refuse(path, "its metadata is too large; not a jaxem checkpoint")
            meta = json.loads(archive.read(_META))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise _refuse(path, f"not a {FORMAT} file")
            saved = meta.get("fingerprints", {})
            differ = [name for name in fingerprints if saved.get(name) != fingerprints[name]]
            if differ:
                raise _refuse(path, f"it was written by a fit with different {' and '.join(differ)}"
                              " (resume with the same model, data and settings, or delete the "
                              "file to start afresh)")
            if meta.get("treedef") != like_treedef or len(meta.get("leaves", ())) != len(like_leaves):
                raise _refuse(path, "its loop state does not have this fit's structure")
            leaves = []
            for i, like_leaf in enumerate(like_leaves):
                shape, dtype = tuple(np.shape(like_leaf)), np.dtype(like_leaf.dtype)
                if meta["leaves"][i] != [list(shape), dtype.str]:
                    raise _refuse(path, f"state array {i} has shape/dtype {meta['leaves'][i]}, "
                                  f"this fit's is {[list(shape), dtype.str]}")
                member = f"leaf_{i:05d}.npy"
                expected = int(np.prod(shape)) * dtype.itemsize
                if archive.getinfo(member).file_size > expected + 4096:
                    raise _refuse(path, f"member {member} is larger than its declared shape")
                with archive.open(member) as f:
                    arr = np.lib.format.read_array(f, allow_pickle=False)
                if arr.shape != shape or arr.dtype != dtype:
                    raise _refuse(path, f"member {member} does not match its metadata")
                leaves.append(arr)
    except ValueError as err:
        if str(err).startswith("cannot resume"):
            raise
        raise _refuse(path, f"the file is damaged ({err})") from None
    except (OSError, KeyError, zipfile.BadZipFile, EOFError, TypeError, AttributeError) as err:
        raise _refuse(path, f"the file is damaged ({type(err).__name__}: {err})") from None
    return jax.tree.unflatten(jax.tree.structure(like), leaves)


class Saver:
    """Saves a fit's loop state when due: called with the state after each segment of the
    compiled loop or each iteration of the host loop; :meth:`save` saves at once (when the fit
    ends or Ctrl-C stops it)."""

    def __init__(self, checkpoint: Checkpoint, fingerprints: dict):
        self.checkpoint = checkpoint
        self.fingerprints = fingerprints
        self._last_time = time.monotonic()

    def next_stop(self, trips: int) -> int | None:
        """The trip count at which the compiled loop should pause for the next save by
        iterations (trip ``t`` ends iteration ``t - 1``; trip 0 is the initial E-step)."""
        every = self.checkpoint.every_iterations
        return None if every is None else ((trips - 1) // every + 1) * every + 1

    def due(self, state: dict) -> bool:
        iterations = int(np.asarray(state["trips"])) - 1
        every, seconds = self.checkpoint.every_iterations, self.checkpoint.every_seconds
        return ((every is not None and iterations > 0 and iterations % every == 0)
                or (seconds is not None and time.monotonic() - self._last_time >= seconds))

    def save(self, state: dict) -> None:
        save(self.checkpoint, state, self.fingerprints)
        self._last_time = time.monotonic()

    def __call__(self, state: dict) -> None:
        # Every process of a multi-process fit saves at the same iteration, when any is due.
        if sharding.every_process([self.due(state)])[:, 0].any():
            self.save(state)


def _placed_like(value: np.ndarray, like):
    """A restored host ``value`` placed as the starting state's leaf ``like`` was; in a
    multi-process fit, a leaf the start held in one process only is replicated over every
    process's devices, where the loop's later states hold it (the start's own placement would
    put it beside the global statistics on other devices)."""
    if not isinstance(like, jax.Array):
        return value
    where = like.sharding
    if like.is_fully_addressable and jax.process_count() > 1:
        where = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(jax.devices()), ("all",)),
                                           jax.sharding.PartitionSpec())
    return jax.make_array_from_callback(value.shape, where, lambda index: value[index])


def _check_same_trips(trips: int) -> None:
    """A resumed multi-process fit: every process's checkpoint must hold the same iteration."""
    every = sharding.every_process([trips])[:, 0]
    if np.any(every != every[0]):
        raise ValueError(f"the processes' checkpoints hold different iterations "
                         f"({', '.join(str(int(t) - 1) for t in every)}): resume from files "
                         "written by one run together, or delete them to start afresh")


def restorer(checkpoint: Checkpoint | None, resume: bool, fingerprints: dict) -> Callable | None:
    """``restore(start_state) -> state`` for :func:`jaxem.core.programs.run_segmented` and the
    host loop: the saved state placed like the starting state's leaves (the start when there is
    no file yet), or ``None`` when not resuming."""
    if checkpoint is None or not resume:
        return None

    def restore(start: dict) -> Any:
        saved = load(checkpoint, fingerprints, start)
        _check_same_trips(int(_host((start if saved is None else saved)["trips"])))
        if saved is None:
            return start
        return jax.tree.map(_placed_like, saved, start)

    return restore
