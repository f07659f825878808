"""How hard XLA optimises a fit program on a CPU: compile time against run time.

A fit's first call is mostly compiling. :func:`compile_options` picks XLA's options for one
program from the bytes one trip moves (the program's ops counted where that settles it, else
XLA's own estimate), and from whether the program is made of many small operations;
accelerators keep XLA's defaults.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.extend.mlir import ir

# Compile effort on a CPU. XLA spends most of a fit's first second or two optimising (LLVM at -O2,
# the fusion emitters); unoptimised, a program compiles 3-5x faster and runs 3-4x slower. Where
# one trip moves at most this many bytes (XLA's cost estimate of the program, times the restarts
# that pass one after another) a trip takes under ~5 ms at full effort, so the time lost over a
# fit's iterations is less than the compile time saved. Measured (2-core AMD EPYC, 50 iterations,
# full covariance, compile s / warm fit s, full -> cheap): N=1024 D=2 K=3: 1.34/0.003 ->
# 0.36/0.012; R=8: 2.12/0.019 -> 0.49/0.074; N=8192 D=8 K=8: 1.45/0.051 -> 0.35/0.162; R=4:
# 2.25/0.19 -> 0.50/0.65; N=65536 D=16 K=16 (full effort kept): 1.77/1.0 -> 0.59/4.2.
CHEAP_COMPILE_MAX_BYTES = 2**27
# A segmented fit's start (the initialiser) runs once, not once per iteration, so it counts as half
# a trip: GaussianMixture(3, n_restarts=4) on 3000 x 3 rows (8192-row bucket), start estimated at
# 2.2e8 bytes: first fit 2.95 -> 1.79 s, the initialiser's run 20 ms slower.
START_REPEATS = 0.5
CHEAP_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0,
                         "xla_llvm_disable_expensive_passes": True,
                         "xla_cpu_use_fusion_emitters": False}
# XLA:CPU's fusion emitters make the few large fused loops over rows of a closed-form mixture pass
# 15-20% faster, but double the compile time of a program made of many small operations (a
# gradient M-step's autodiff gradients, Hessians and P x P algebra; a forward-backward scan over
# time steps of K-wide operations), which runs as fast or faster without them. Measured (2-core
# AMD EPYC, compile s / warm fit s, with -> without): Laplace mixture by EM-gradient, 7k rows,
# R=8: 2.29/1.69 -> 1.20/1.53, 210k rows: 3.15/12.3 -> 1.41/11.1; Gaussian HMM 20 x 500 x 3,
# K=4, R=4: 4.45/0.50 -> 2.98/0.47; full GMM N=65536 D=16 K=16: 4.59/2.02 -> 3.62/2.44 (kept).
#
# Such programs also compile about 10% faster at LLVM's -O1 than at -O2 and run as fast (the same
# machine, compile s / warm s, -O2 -> -O1, 3 fresh processes each: Laplace 0.99-1.06 / 0.76 ->
# 0.89-0.93 / 0.74, gamma 1.14-1.24 / 0.38-0.41 -> 1.06-1.19 / 0.39-0.41, the HMM of
# benchmarks/custom.py 1.00-1.28 / 1.04-1.06 -> 0.94-1.07 / 0.96-1.06).
#
# They also run faster without XLA:CPU's YNNPACK fusions, which take their reductions and small
# products (a `[rows, P]` sum, a `P x P` product) into library calls whose fixed cost per call
# outweighs the work at these sizes (2-core AMD EPYC, benchmarks/custom.py, warm fit s, with ->
# without: Laplace 0.62 -> 0.475, the custom-emission HMM 0.84 -> 0.61, gamma 0.25 -> 0.25; the
# reductions compile as LLVM loops instead, about 0.1 s more). A closed-form mixture pass keeps
# them: without, its cheaply compiled program ran 2x slower (GaussianMixture(3, n_restarts=4),
# 3000 x 3: 0.14 -> 0.25 s warm).
SMALL_OPS_COMPILE_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1,
                             "xla_cpu_experimental_ynn_fusion_type": ""}


# XLA's estimate of a program's bytes converts the lowered module to HLO anew: 0.13-0.17 s for a
# gradient M-step's loop program, on the critical path of its first call. Counting each op's
# operands and results in the module itself takes a tenth of that and read 0.66-1.45x XLA's
# figure over the loop and start programs of benchmarks/custom.py's three models, of
# GaussianMixture at 3,000-90,000 rows and of a GaussianHMM (2-core AMD EPYC, session 19); where
# that count is this many times the limit, XLA's figure is surely above it too, and is not asked.
CLEARLY_ABOVE = 3


def _counted_bytes(lowered) -> float | None:
    """The bytes the ops of ``lowered``'s StableHLO module read and write, each op once (a loop
    body once); ``None`` where the module cannot be read."""
    try:
        module = lowered.compiler_ir("stablehlo")
        total = 0

        def visit(op):
            nonlocal total
            operation = op.operation
            if operation.name not in _NOT_COUNTED:
                total += sum(map(_tensor_bytes, (v.type for v in operation.operands)))
                total += sum(map(_tensor_bytes, (r.type for r in operation.results)))
            return ir.WalkResult.ADVANCE

        module.operation.walk(visit)
        return float(total)
    except Exception:  # noqa: BLE001 - no count only means asking XLA
        return None


# Structure, not work: what a loop, branch or call carries is counted where its body uses it (as
# XLA counts), not again at the loop, branch or call itself.
_NOT_COUNTED = ("builtin.module", "func.func", "func.return", "func.call", "stablehlo.return",
                "stablehlo.while", "stablehlo.case", "stablehlo.if")


def _tensor_bytes(kind) -> int:
    if not isinstance(kind, ir.RankedTensorType):
        return 0
    element, parts = kind.element_type, 1
    if isinstance(element, ir.ComplexType):
        element, parts = element.element_type, 2
    bits = getattr(element, "width", 32)
    return int(np.prod(kind.shape, dtype=np.int64)) * parts * max(bits, 8) // 8


def compile_options(lowered, repeats: float = 1, small_ops: bool = False) -> dict:
    """XLA options for compiling ``lowered`` on a CPU: :data:`CHEAP_COMPILE_OPTIONS` when its
    estimated bytes moved times ``repeats`` (restarts that run the program's pass one after
    another) is at most :data:`CHEAP_COMPILE_MAX_BYTES`; else :data:`SMALL_OPS_COMPILE_OPTIONS`
    for a program of many small operations (``small_ops``: a gradient M-step or a
    forward-backward pass), else none (full optimisation)."""
    if jax.default_backend() != "cpu":
        return {}  # accelerators: not measured, so XLA's default
    full = dict(SMALL_OPS_COMPILE_OPTIONS) if small_ops else {}
    counted = _counted_bytes(lowered)
    if counted is not None and counted * repeats > CLEARLY_ABOVE * CHEAP_COMPILE_MAX_BYTES:
        return full
    try:
        cost = lowered.cost_analysis()
    except Exception:  # noqa: BLE001 - no estimate only means the default effort
        return full
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    moved = (cost or {}).get("bytes accessed")
    if moved is None or moved * repeats > CHEAP_COMPILE_MAX_BYTES:
        return full
    return dict(CHEAP_COMPILE_OPTIONS)
