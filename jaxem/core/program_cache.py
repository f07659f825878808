"""An on-disk cache of compiled fit programs, so that a new process skips tracing and lowering.

JAX's persistent compilation cache (:mod:`jaxem.core.compile_cache`) is keyed by the lowered module, so a new
process still traces and lowers the whole fit program (about 0.5-1 s) before it can load the
executable. This cache stores the compiled executable itself
(:mod:`jax.experimental.serialize_executable`) under a key that is known *before* tracing: the
factory call that built the model (:attr:`jaxem.Model.cache_key`, set only by jaxem's own
factories), the program's static arguments, and every dynamic argument's shape, dtype, weak type
and sharding, plus everything else the program could depend on: jaxem's version and a hash of its
source files (read when this module is imported, so an edited checkout never loads a stale
program), the jax, jaxlib, numpy and Python versions, every jax configuration value as the calling
thread sees it, ``XLA_FLAGS``, the devices and the CPU.

Entries live in ``<cache dir>/programs`` where ``<cache dir>`` is
:func:`jaxem.core.compile_cache.default_cache_dir`
(``$JAXEM_CACHE_DIR``). The cache is used only while JAX's persistent cache is on (so
``JAXEM_COMPILATION_CACHE=0`` and :func:`jaxem.disable_compilation_cache` switch it off too). Files
are written to a temporary name and renamed, carry the full key text and a SHA-256 of their
payload, and any entry that cannot be read, does not match or fails to load is a miss, never an
error. Like JAX's own cache, an entry is executable code: the directory must be trusted.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import platform
import re
import struct
import sys
import tempfile
import threading
from pathlib import Path

import jax
import numpy as np

from . import compile_cache as _cache

_MAGIC = b"jaxem-program-cache-v1\n"
_SUFFIX = ".jaxem-program"
_OFF = ("0", "false", "no", "off")


def _source_hash() -> str | None:
    """SHA-256 over the path and bytes of every ``.py`` file of the jaxem package (``None`` when
    they cannot be read: then nothing is cached)."""
    root = Path(__file__).resolve().parents[1]  # the jaxem package, not only this folder
    digest = hashlib.sha256()
    try:
        paths = sorted(root.rglob("*.py"))
        for path in paths:
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    except OSError:
        return None
    return digest.hexdigest() if paths else None


# Read once, at import (jaxem imports this module): the code this process runs is the code that
# was imported, whatever happens to the files later.
SOURCE_HASH = _source_hash()


def enabled() -> bool:
    """Whether the program cache is on: ``JAXEM_COMPILATION_CACHE`` is not off and JAX's
    persistent cache is in use in this process."""
    if SOURCE_HASH is None:
        return False
    if os.environ.get("JAXEM_COMPILATION_CACHE", "1").strip().lower() in _OFF:
        return False
    return bool(jax.config.jax_compilation_cache_dir)


def cache_dir() -> Path:
    """The directory holding the entries."""
    return _cache.default_cache_dir() / "programs"


@functools.cache
def _cpu_identity() -> str:
    # An executable compiled for one CPU's instruction set may not run on another sharing the
    # cache directory (a network home), so the CPU model and flags are part of the key.
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        info = "".join(sorted(set(lines)))
    except OSError:
        info = ""
    return platform.machine() + ":" + platform.processor() + ":" + info


def _environment() -> list[str]:
    """Everything outside the call's own arguments that the compiled program depends on."""
    import jaxlib

    from .. import __version__

    devices = jax.devices()
    # getattr sees a thread's `with jax.default_matmul_precision(...)`-style overrides; a few
    # options are only in the global table. Where caches live does not change a program.
    config = [f"{name}={getattr(jax.config, name, value)!r}"
              for name, value in sorted(jax.config.values.items())
              if not name.startswith(("jax_compilation_cache", "jax_persistent_cache"))]
    return [
        f"jaxem {__version__} source {SOURCE_HASH}",
        f"jax {jax.__version__} jaxlib {jaxlib.__version__} numpy {np.__version__}",
        f"python {sys.version}",
        f"backend {jax.default_backend()} {devices[0].client.platform_version}",
        "devices " + ";".join(f"{d.id}:{d.platform}:{d.device_kind}" for d in devices),
        f"processes {jax.process_count()} index {jax.process_index()}",
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
        f"LIBTPU_INIT_ARGS={os.environ.get('LIBTPU_INIT_ARGS', '')!r}",
        "cpu " + hashlib.sha256(_cpu_identity().encode()).hexdigest(),
        "config " + hashlib.sha256("\n".join(config).encode()).hexdigest(),
    ]


def _argument_signature(dynamic) -> list[str]:
    leaves, treedef = jax.tree.flatten(dynamic)
    out = [f"tree {treedef}"]
    for leaf in leaves:
        aval = jax.typeof(leaf)
        out.append(f"{aval.str_short()} weak={getattr(aval, 'weak_type', None)} "
                   f"sharding={getattr(leaf, 'sharding', None)!r}")
    return out


def program_key(program_name: str, static: dict, dynamic: tuple) -> str | None:
    """The full key text for one compiled program, or ``None`` when it must not be cached.

    Args:
        program_name: names the jitted program (its source is covered by the source hash).
        static: the program's static arguments; ``model`` must carry a ``cache_key``, and every
            other value must have a :func:`jaxem.model.stable_repr` (so a custom optimizer, a
            device mesh or a progress callback rules the cache out).
        dynamic: the program's positional arguments (arrays or ``None``).
    """
    from .model import factory_cache_key, stable_repr

    model_key = factory_cache_key(static.get("model"))
    if model_key is None or static.get("report"):
        return None
    # A deserialised executable is placed on every local device: in a process with several,
    # a single-device program comes back expecting one shard per device (seen with 4 forced
    # CPU devices: "Expected args ... to have 4 shards"). Only single-device processes use it.
    if jax.local_device_count() != 1:
        return None
    parts = [f"program {program_name}", f"model {model_key}"]
    for name in sorted(static):
        if name == "model":
            continue
        text = stable_repr(static[name])
        if text is None:
            return None
        parts.append(f"static {name}={text}")
    try:
        parts += _argument_signature(dynamic) + _environment()
    except Exception:  # noqa: BLE001 - an argument or device we cannot describe: no caching
        return None
    return "\n".join(parts)


def _path(key: str) -> Path:
    return cache_dir() / (hashlib.sha256(key.encode()).hexdigest() + _SUFFIX)


_LAPACK_READY = False


def _initialize_lapack() -> None:
    # A program with LAPACK custom calls normally initialises jaxlib's LAPACK kernels while it is
    # lowered; an executable loaded without lowering would call null kernel pointers (a crash).
    global _LAPACK_READY
    try:
        try:
            from jax._src.lax import linalg

            linalg.initialize_lapack()
        except (ImportError, AttributeError):  # private API gone: lowering a Cholesky does it too
            jax.jit(jax.numpy.linalg.cholesky).lower(jax.numpy.eye(2, dtype=np.float32))
        _LAPACK_READY = True
    except Exception:  # noqa: BLE001 - the entry is then not used
        pass


def load(key: str | None, dynamic: tuple):
    """The compiled program stored under ``key`` (a :class:`jax.stages.Compiled`), or ``None``.

    Every failure (no entry, unreadable, another key, bad checksum, a load error, arguments that
    do not match) is a miss.
    """
    if key is None or not enabled():
        return None
    try:
        blob = _path(key).read_bytes()
        if not blob.startswith(_MAGIC):
            return None
        pos = len(_MAGIC)
        (key_len,) = struct.unpack_from("<Q", blob, pos)
        pos += 8
        if blob[pos:pos + key_len] != key.encode():
            return None
        pos += key_len
        needs_lapack, digest = blob[pos], blob[pos + 1:pos + 33]
        payload = blob[pos + 33:]
        if hashlib.sha256(payload).digest() != digest:
            return None
        # LAPACK's set-up (importing SciPy's kernels, slow next to a load) overlaps the
        # deserialisation.
        lapack = threading.Thread(target=_initialize_lapack, daemon=True) if needs_lapack else None
        if lapack is not None:
            lapack.start()
        try:
            from jax.experimental import serialize_executable

            serialized, in_tree, out_tree = pickle.loads(payload)
            compiled = serialize_executable.deserialize_and_load(serialized, in_tree, out_tree)
        finally:
            if lapack is not None:
                lapack.join()
        if needs_lapack and not _LAPACK_READY:
            return None
        leaves, treedef = jax.tree.flatten((tuple(dynamic), {}))
        infos = jax.tree.leaves(compiled.args_info)
        if compiled.in_tree != treedef or len(infos) != len(leaves):
            return None
        for info, leaf in zip(infos, leaves, strict=True):
            aval = jax.typeof(leaf)
            if info.shape != aval.shape or info.dtype != aval.dtype:
                return None
        return compiled
    except Exception:  # noqa: BLE001 - whatever went wrong, compile instead
        return None


_COMPILE_EVENTS = threading.local()
_LISTENING = False


def _on_event(event: str, **_) -> None:
    seen = getattr(_COMPILE_EVENTS, "seen", None)
    if seen is not None and event.startswith("/jax/compilation_cache/"):
        seen.append(event)


def compile_and_store(key: str | None, lowered, options: dict | None = None):
    """``lowered.compile(options)``, written under ``key`` when it was a fresh compilation.

    An executable that JAX loaded from its own persistent cache (or reused from memory) serialises
    incompletely in jaxlib 0.10 (a later load fails with "Function ... not found"), so only an
    executable compiled during this call, as JAX's cache events tell, is stored.
    """
    global _LISTENING
    if key is None or not enabled():
        return _compile(lowered, options)
    if not _LISTENING:
        jax.monitoring.register_event_listener(_on_event)
        _LISTENING = True
    _COMPILE_EVENTS.seen = seen = []
    try:
        compiled = _compile(lowered, options)
    finally:
        _COMPILE_EVENTS.seen = None
    fresh = ("/jax/compilation_cache/compile_requests_use_cache" in seen
             and "/jax/compilation_cache/cache_hits" not in seen)
    if fresh:
        _store(key, compiled, lowered.as_text())
    return compiled


def _compile(lowered, options: dict | None):
    """``lowered.compile(options)`` without the options this XLA does not know: they tune the
    effort, never the result, and a jaxlib that lacks one (an experimental flag renamed or gone)
    compiles as its default."""
    options = dict(options or {})
    while True:
        try:
            return lowered.compile(options or None)
        except Exception as err:  # noqa: BLE001 - jaxlib's error class differs between versions
            unknown = re.search(r"No such compile option: '([^']+)'", str(err))
            if unknown is None or unknown.group(1) not in options:
                raise
            options.pop(unknown.group(1))


def _store(key: str, compiled, lowered_text: str) -> None:
    """Write ``compiled`` under ``key`` (atomically); failures are ignored. Custom calls in the
    lowered module (LAPACK kernels) make a later load initialise jaxlib's LAPACK first."""
    # Files edited since import: this process's program is not what the files would build now.
    if _source_hash() != SOURCE_HASH:
        return
    try:
        from jax.experimental import serialize_executable

        payload = pickle.dumps(serialize_executable.serialize(compiled),
                               protocol=pickle.HIGHEST_PROTOCOL)
        encoded = key.encode()
        blob = b"".join([_MAGIC, struct.pack("<Q", len(encoded)), encoded,
                         bytes(["custom_call" in lowered_text]),
                         hashlib.sha256(payload).digest(), payload])
        path = _path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except Exception:  # noqa: BLE001 - a cache that cannot be written only costs compile time
        return
