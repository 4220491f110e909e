"""A float64 base-2 exp for softmax arguments that vectorises inside numba loops.

numba from PyPI calls the C library's scalar ``exp`` from a loop, which stops
the loop from vectorising. The EM kernels therefore work in base 2: logits are
scaled by log2(e) once per pass (through the centers), so the softmax needs
2^t for t = logit - largest logit <= 0. `fast_exp2` computes it from
operations that LLVM vectorises (adds, multiply-adds, a max, and integer
arithmetic on the bit pattern):

1. Range reduction: n = round(t), found by adding 1.5 * 2^52 (the sum's low
   mantissa bits then hold n); r = t - n is exact, |r| <= 1/2. In base e this
   step needs two multiply-adds with a split ln 2; in base 2 it is exact.
2. 2^r by a polynomial of degree 11: the Chebyshev fit of 2^r on [-1/2, 1/2]
   computed in 50-digit arithmetic (``mpmath.chebyfit``) and rounded to
   float64. Its relative error, coefficients rounded, is below 2e-17, so the
   result's error is Horner's rounding: a few ulp at most.
3. Scaling by 2^n, assembled as the bit pattern (n + 1023) << 52. The bias is
   folded into the integer constant. t is first clamped at -1023, where the
   pattern is 0 and so the result is exactly 0.

Accuracy (checked against ``np.exp2`` over the whole domain in
``tests/test_kernels.py``): while 2^t is normal, at most 1 ulp from
``np.exp2`` and within 1.2 half-ulps of the exact value on a sample checked
in 40-digit arithmetic. For -1022.5 <= t < -1022 the result is subnormal,
rounded once from the exact product; below that it is 0, where 2^t < 1.6e-308.
That flush costs a softmax weight at most 1.6e-308, next to a largest term
of 1.

Domain: t <= 0 and not NaN, which a logit minus the largest logit always is.
Larger t give a wrong scale; NaN is not propagated.

The function is compiled with contraction (FMA) but without reassociation: the
rounding trick in step 1 must not be folded away. It must be called, not
inlined at numba level into a function compiled with reassociation (LLVM
inlines it later and keeps each instruction's own flags).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["LOG2E", "fast_exp2", "fast_exp2_array"]

LOG2E = 1.4426950408889634  # log2(e): logits times this are base-2 exponents

_SHIFTER = 6755399441055744.0  # 1.5 * 2^52: adding it rounds to an integer
_T_MIN = -1023.0  # 2^n's pattern is 0 at n = -1023: the result is exactly 0

# 2^r ~ sum_j _C[j] r^j on |r| <= 1/2; see the module docstring.
_C0 = 1.0
_C1 = 0.6931471805599453
_C2 = 0.24022650695910158
_C3 = 0.055504108664821625
_C4 = 0.009618129107587256
_C5 = 0.001333355814640647
_C6 = 0.00015403530463724353
_C7 = 1.5252733841556773e-05
_C8 = 1.3215432535912375e-06
_C9 = 1.0178057087733941e-07
_C10 = 7.074194297288521e-09
_C11 = 4.4558179083360645e-10

EXP_FLAGS = {"contract"}


@intrinsic
def _bits_of(typingctx, value):
    """Reinterpret a float64 as int64 (no conversion)."""
    if value != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _float_of(typingctx, value):
    """Reinterpret an int64 as float64 (no conversion)."""
    if value != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


# bits(t + _SHIFTER) - _BIAS is n + 1023, the biased exponent of 2^n.
_BIAS = int(np.float64(_SHIFTER).view(np.int64)) - 1023


@njit(cache=True, fastmath=EXP_FLAGS, error_model="numpy")
def fast_exp2(t: float) -> float:
    """2^t for a float64 t <= 0; see the module docstring for accuracy."""
    y = max(t, _T_MIN)
    shifted = y + _SHIFTER
    r = y - (shifted - _SHIFTER)

    p = _C11
    p = p * r + _C10
    p = p * r + _C9
    p = p * r + _C8
    p = p * r + _C7
    p = p * r + _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    p = p * r + _C1
    p = p * r + _C0

    return p * _float_of((_bits_of(shifted) - _BIAS) << 52)


@njit(cache=True, fastmath=EXP_FLAGS, error_model="numpy")
def fast_exp2_array(t: np.ndarray) -> np.ndarray:
    """Elementwise `fast_exp2` of a 1-d float64 array, shape (n,) -> (n,)."""
    out = np.empty_like(t)
    for i in range(t.shape[0]):
        out[i] = fast_exp2(t[i])
    return out
