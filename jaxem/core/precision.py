"""Full float32 matrix products in every program jaxem compiles.

By default JAX lets accelerators compute float32 matrix products at reduced precision (TF32 on
recent NVIDIA GPUs, bfloat16 passes on TPUs): about three significant digits, too few for
log-likelihoods summed over many rows, for convergence tests on their changes, or for the
nearest-centre algebra of the diagonal Gaussian family (:mod:`jaxem.models._shifted`). jaxem traces
its programs with full float32 products instead. On CPUs that is what they compute anyway (no
cost); on accelerators it trades some matrix-unit speed for answers that match the CPU's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax

# The precision name JAX gives full float32 products (see jax.default_matmul_precision).
MATMUL_PRECISION = "float32"


def jit(fun: Callable, **jit_kwargs) -> Callable:
    """``jax.jit(fun, **jit_kwargs)``, with every matrix product traced at full float32."""

    @functools.wraps(fun)
    def traced(*args, **kwargs):
        with jax.default_matmul_precision(MATMUL_PRECISION):
            return fun(*args, **kwargs)

    return jax.jit(traced, **jit_kwargs)
