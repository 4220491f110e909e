"""A float64 exp that vectorises inside numba loops.

numba from PyPI calls the C library's scalar ``exp`` from a loop, which stops
the loop from vectorising. `fast_exp` is built from operations that LLVM
vectorises (multiply-adds, compares, selects, integer adds and shifts on the
bit patterns):

1. Range reduction: n = round(x / ln 2), found by adding 1.5 * 2^52 (the sum's
   low mantissa bits hold n); r = x - n ln2_hi - n ln2_lo with the classical
   two-part ln 2 whose high part has 21 trailing zero bits, so that n ln2_hi
   is exact and |r| <= ln(2)/2 to within an ulp.
2. exp(r) by its Taylor polynomial of degree 12 in Horner form: the
   truncation error is below (ln(2)/2)^13 / 13! < 1.8e-16, relative.
3. Scaling by 2^n, assembled as a bit pattern. Near the ends of the exponent
   range (|n| > 1020) the scale is built as 2^(n -+ 54) times 2^(+-54), so
   that the one rounding into the subnormal range, or the overflow, happens
   in the last multiply.

Accuracy: within 4 ulp of the correctly rounded exp for results in the
normal range; within half of the smallest subnormal step plus that relative
error in the subnormal range; exactly 0 below -745.2 (where exp(x) rounds to
0), inf above 709.79, and NaN for NaN. ``tests/test_kernels.py`` checks it
against ``np.exp`` over the whole range.

`fast_exp_nonpositive` is the same function for x <= 0 without the overflow
and NaN handling: the softmax in the EM kernels only ever needs that.

The functions are compiled with contraction (FMA) but without reassociation: the
rounding trick in step 1 must not be folded away.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["fast_exp", "fast_exp_array", "fast_exp_nonpositive"]

_SHIFTER = 6755399441055744.0  # 1.5 * 2^52: adding it rounds to an integer
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # 21 trailing zero bits
_LN2_LO = 1.90821492927058770002e-10
_X_MAX = 709.79  # exp overflows above about 709.7827
_X_MIN = -745.2  # exp rounds to 0 below about -745.1332
_SPLIT = 54
_TWO_M_SPLIT = 2.0**-_SPLIT
_TWO_P_SPLIT = 2.0**_SPLIT

# Taylor coefficients 1/j!, j = 0..12.
_C = [1.0]
for _j in range(1, 13):
    _C.append(_C[-1] / _j)
(_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11, _C12) = _C

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


_SHIFTER_BITS = int(np.float64(_SHIFTER).view(np.int64))


@njit(cache=True, fastmath=EXP_FLAGS, error_model="numpy")
def fast_exp(x: float) -> float:
    """exp(x) for a float64 scalar; see the module docstring for accuracy."""
    y = min(max(x, -746.0), 710.0)  # keeps the integer arithmetic in range
    shifted = y * _LOG2E + _SHIFTER
    nf = shifted - _SHIFTER
    n = _bits_of(shifted) - _SHIFTER_BITS
    r = y - nf * _LN2_HI
    r = r - nf * _LN2_LO

    p = _C12
    p = p * r + _C11
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

    # 2^n in two factors near the ends of the exponent range, so that neither
    # factor leaves it; the last multiply does the one rounding or overflow.
    small = n < -1020
    large = n > 1020
    offset = _SPLIT if small else (-_SPLIT if large else 0)
    scale = _float_of((n + 1023 + offset) << 52)
    result = p * scale
    result = result * (_TWO_M_SPLIT if small else (_TWO_P_SPLIT if large else 1.0))
    result = 0.0 if x < _X_MIN else result
    result = np.inf if x > _X_MAX else result
    return x if x != x else result


@njit(cache=True, fastmath=EXP_FLAGS, error_model="numpy")
def fast_exp_array(x: np.ndarray) -> np.ndarray:
    """Elementwise `fast_exp` of a 1-d float64 array, shape (n,) -> (n,)."""
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = fast_exp(x[i])
    return out


@njit(cache=True, fastmath=EXP_FLAGS, error_model="numpy")
def fast_exp_nonpositive(x: float) -> float:
    """`fast_exp` for x <= 0 and not NaN (softmax arguments), a few ops less.

    Same result as `fast_exp` on that domain: it drops only the overflow and
    NaN handling, which cannot trigger there.
    """
    y = max(x, -746.0)
    shifted = y * _LOG2E + _SHIFTER
    nf = shifted - _SHIFTER
    n = _bits_of(shifted) - _SHIFTER_BITS
    r = y - nf * _LN2_HI
    r = r - nf * _LN2_LO

    p = _C12
    p = p * r + _C11
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

    small = n < -1020
    scale = _float_of((n + 1023 + (_SPLIT if small else 0)) << 52)
    result = p * scale
    result = result * (_TWO_M_SPLIT if small else 1.0)
    return 0.0 if x < _X_MIN else result
