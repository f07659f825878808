"""Batched dense linear algebra for the fit programs, one matrix per LAPACK call on affected CPUs.

jaxlib 0.10's CPU LAPACK kernels (Cholesky, triangular solve, inverse, ...) split a batch of
matrices over XLA's intra-op thread pool and then block, inside a pool thread, until the pieces
are done. Two such kernels running at once on a pool of two threads wait for each other forever:
a SQUAREM fit of breast cancer (K=3, 10 restarts, float64) hung in 3 of 5 runs on a 2-core
machine, in ``lapack_dpotrf_ffi`` and ``lapack_dtrsm_ffi`` (gdb). jaxlib 0.9 has no such path and
0.11.1 compiles it out. Where it exists, the functions here call LAPACK once per matrix
(``lax.map`` over the flattened batch), which runs inline; elsewhere they are the plain batched
calls. Same answers either way (the same kernel on each matrix).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

Array = jax.Array


def _version(text: str) -> tuple:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


# The jaxlib releases whose CPU kernels block on the pool (see the module docstring).
BLOCKING_BATCH_JAXLIB = ((0, 10, 0), (0, 11, 1))


@functools.cache
def one_matrix_per_call() -> bool:
    """Whether batched LAPACK calls go one matrix at a time here (jaxlib 0.10-0.11.0, CPU)."""
    import jaxlib

    low, high = BLOCKING_BATCH_JAXLIB
    return jax.default_backend() == "cpu" and low <= _version(jaxlib.__version__) < high


def _per_matrix(fun, *arrays: Array, core: tuple[int, ...]):
    """``fun`` over the leading batch axes of ``arrays`` (each with ``core[i]`` trailing matrix
    axes, batch axes shared), one matrix at a time where :func:`one_matrix_per_call`."""
    batch = arrays[0].shape[:arrays[0].ndim - core[0]]
    if not batch or not one_matrix_per_call():
        return fun(*arrays)
    flat = [a.reshape((-1,) + a.shape[a.ndim - c:]) for a, c in zip(arrays, core, strict=True)]
    out = jax.lax.map(lambda args: fun(*args), flat)
    return jax.tree.map(lambda o: o.reshape(batch + o.shape[1:]), out)


def cholesky(a: Array) -> Array:
    """Lower Cholesky factor of ``a [..., D, D]``."""
    return _per_matrix(jnp.linalg.cholesky, a, core=(2,))


def solve_triangular(a: Array, b: Array, lower: bool) -> Array:
    """``a^{-1} b`` for triangular ``a [..., D, D]`` and ``b [..., D, M]`` (same batch axes)."""
    return _per_matrix(functools.partial(jsl.solve_triangular, lower=lower), a, b, core=(2, 2))


def inv(a: Array) -> Array:
    """Inverse of ``a [..., D, D]``."""
    return _per_matrix(jnp.linalg.inv, a, core=(2,))
