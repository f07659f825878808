"""Float widths: full float32 matrix products in every program, and a fit's precision policy.

Matrix products. By default JAX lets accelerators compute float32 matrix products at reduced
precision (TF32 on recent NVIDIA GPUs, bfloat16 passes on TPUs): about three significant digits,
too few for log-likelihoods summed over many rows, for convergence tests on their changes, or for
the nearest-centre algebra of the diagonal Gaussian family (:mod:`jaxem.models._shifted`). jaxem
traces its programs with full float32 products instead. On CPUs that is what they compute anyway
(no cost); on accelerators it trades some matrix-unit speed for answers that match the CPU's.

Precision policy. A fit's ``dtype`` (``"float32"``, ``"float64"``, ``"auto"``; ``None`` is JAX's
default float type) is settled by :func:`resolve` and applied by :func:`scope`, which switches
JAX's x64 mode for the fit only (``jax.enable_x64`` is a context: tracing, compiling and running
inside it see float64; JAX's global flag is left as it was). What the fit returns leaves the
scope through :func:`to_host`: arrays of the fit's width, as NumPy arrays, since a float64 JAX
array outside x64 mode would be truncated to float32 by the next operation on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# The precision name JAX gives full float32 products (see jax.default_matmul_precision).
MATMUL_PRECISION = "float32"

DTYPES = ("float32", "float64", "auto")

# "auto" below this relative tolerance: float32 cannot test it. The loop counts a change within
# 4 float32 epsilons of the objective as round-off (see jaxem.core.loop.advance), so a tol below
# that could only ever end on round-off, never on tol.
FLOAT32_TOL_FLOOR = 4 * float(np.finfo(np.float32).eps)

# "auto" in float64 up to this many data values (rows x features): there a fit's time is
# compilation and per-block dispatch more than arithmetic, and float64 costs little. Measured
# (2-core AMD EPYC, heavily shared, so only roughly): full GMM D=13 K=6, seconds per iteration
# float64 / float32 = 1.5 at 1k rows (13k values; 2 ms extra), 0.9 at 10k, 1.3 at 100k. Small
# data are also where ill-conditioned components of a handful of rows leave float32 wandering
# in round-off (wine, K=6: float32 stalls at -8.16 nats/row, float64 converges at -7.43).
AUTO_FLOAT64_MAX_VALUES = 2**17


def jit(fun: Callable, **jit_kwargs) -> Callable:
    """``jax.jit(fun, **jit_kwargs)``, with every matrix product traced at full float32."""

    @functools.wraps(fun)
    def traced(*args, **kwargs):
        with jax.default_matmul_precision(MATMUL_PRECISION):
            return fun(*args, **kwargs)

    return jax.jit(traced, **jit_kwargs)


@functools.cache
def jit_once(fun: Callable) -> Callable:
    """:func:`jit` of ``fun``, one per function object: a front end that runs a (memoised) model's
    own function on each call, its initialiser say, reuses the program instead of compiling a
    fresh wrapper's."""
    return jit(fun)


def check_dtype(dtype, name: str = "dtype"):
    """``dtype`` checked: ``None`` or one of :data:`DTYPES` (a NumPy float type is accepted)."""
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    try:
        as_np = np.dtype(dtype)
    except TypeError:
        as_np = None
    if as_np is not None and as_np in (np.float32, np.float64):
        return as_np.name
    raise ValueError(f"{name} must be 'float32', 'float64', 'auto' or None (JAX's default float "
                     f"type), got {dtype!r}")


def default_float() -> np.dtype:
    """The float type JAX computes in here (float32 unless x64 mode is on)."""
    return np.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def resolve(dtype, *, n_values: int | None, tol: float | None) -> np.dtype:
    """The float type a fit computes in.

    Args:
        dtype: ``None`` (JAX's default), ``"float32"``, ``"float64"`` or ``"auto"``.
        n_values: rows x features of the data (``None`` when unknown, e.g. chunks from a file).
        tol: the fit's relative tolerance (``None``: no test).

    ``"auto"`` is float64 where float32 cannot meet ``tol`` (below :data:`FLOAT32_TOL_FLOOR`),
    where it costs little (at most :data:`AUTO_FLOAT64_MAX_VALUES` data values) or where JAX's
    x64 mode is on (the user asked for float64 everywhere), else float32.
    """
    dtype = check_dtype(dtype)
    if dtype is None:
        return default_float()
    if dtype != "auto":
        return np.dtype(dtype)
    small = n_values is not None and n_values <= AUTO_FLOAT64_MAX_VALUES
    # A tol of the wrong type is refused by the fit's own checks, with their message.
    unresolvable = isinstance(tol, (int, float, np.number)) and 0 < tol < FLOAT32_TOL_FLOOR
    wide = default_float() == np.float64
    return np.dtype(np.float64 if small or unresolvable or wide else np.float32)


def data_values(X) -> int | None:
    """Rows x features of in-memory data (``None`` for a file, an iterable or a callable)."""
    shape = getattr(X, "shape", None)
    if shape is None and isinstance(X, (list, tuple)):
        shape = np.shape(X)
    return None if shape is None else int(np.prod(shape))


def differs(dtype: np.dtype) -> bool:
    """Whether computing in ``dtype`` needs a :func:`scope` (it is not JAX's default here)."""
    return np.dtype(dtype) != default_float()


@contextlib.contextmanager
def scope(dtype):
    """Compute in ``dtype`` inside the block (JAX's x64 mode switched for it alone)."""
    if dtype is None or not differs(dtype):
        yield
        return
    with jax.enable_x64(np.dtype(dtype) == np.float64):
        yield


def to_host(tree):
    """``tree`` with its JAX arrays as NumPy arrays (PRNG keys kept), for results leaving a
    :func:`scope`."""
    def host(leaf):
        if isinstance(leaf, jax.Array) and not jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return np.asarray(leaf)
        return leaf
    return jax.tree.map(host, tree)


def run_in(width, fn: Callable, /, *args, **kwargs):
    """``fn(*args, **kwargs)`` computed in the float type ``width``; its result as
    :func:`to_host` when that needed a :func:`scope`, as returned otherwise."""
    if not differs(width):
        return fn(*args, **kwargs)
    with scope(width):
        out = fn(*args, **kwargs)
    return to_host_result(out)


def to_host_result(out):
    """A fit's result with its arrays on the host (a dataclass's fields, or a pytree)."""
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return dataclasses.replace(out, **{f.name: to_host(getattr(out, f.name))
                                           for f in dataclasses.fields(out)})
    return to_host(out)


def cast_floats(tree, dtype):
    """``tree`` with its floating leaves as ``dtype`` JAX arrays (other leaves as they are)."""
    def cast(leaf):
        arr = jnp.asarray(leaf)
        return arr.astype(dtype) if jnp.issubdtype(arr.dtype, jnp.floating) else arr
    return jax.tree.map(cast, tree)
