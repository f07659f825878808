"""JAX's persistent compilation cache, switched on for jaxem's programs.

Compiling a fit takes seconds; with the cache, a second process that fits the same model to data
of the same shapes loads the executable from disk instead. On import, jaxem points JAX's cache at
``$JAXEM_CACHE_DIR`` (default ``$XDG_CACHE_HOME/jaxem/xla``, i.e. ``~/.cache/jaxem/xla``) unless
the user has already chosen a cache directory, and lowers JAX's one-second threshold for caching
to 0, so that the small programs a fit runs eagerly (the split of the restart keys, say) are
kept too: compiled anew, they were a third of a small first fit with the cache warm. This setting
is process-wide: other jitted code in the same process is then cached as well. Set
``JAXEM_COMPILATION_CACHE=0`` before importing jaxem to leave JAX's configuration alone, or call
:func:`disable_compilation_cache`.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

_MIN_COMPILE_SECONDS = 0.0


def default_cache_dir() -> Path:
    """``$JAXEM_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxem/xla``, else ``~/.cache/jaxem/xla``."""
    if os.environ.get("JAXEM_CACHE_DIR"):
        return Path(os.environ["JAXEM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxem" / "xla"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Use JAX's persistent compilation cache in ``path`` (default :func:`default_cache_dir`).

    Returns:
        The directory in use, or ``None`` when it could not be created (the cache then stays off,
        which only costs compile time).
    """
    directory = Path(path) if path is not None else default_cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", _MIN_COMPILE_SECONDS)
    return directory


def disable_compilation_cache() -> None:
    """Stop writing to and reading from the persistent cache in this process."""
    jax.config.update("jax_compilation_cache_dir", None)


def enable_on_import() -> None:
    """What ``import jaxem`` does: enable the cache unless the user opted out or chose their own."""
    if os.environ.get("JAXEM_COMPILATION_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    if jax.config.jax_compilation_cache_dir:
        return
    enable_compilation_cache()
