"""exp and log written so that LLVM vectorizes them inside numba loops.

numba calls libm's exp and log one element at a time (this llvmlite build has no SVML): about 5 ns
an element, which made exp, sigmoid and log half of the compiled reductions' time (fused.py). Both are
branch-free, with the float's bits reached through a bitcast so every step is a vector instruction: exp
by fdlibm's Cody-Waite reduction to |r| <= ln2/2 and the Taylor polynomial of degree 13 (fdlibm uses a
rational form with a division), log as fdlibm's (the exponent split and its Lg1..Lg7 series). Both stay
within 1 ulp of the exact value, as libm's do (tests/test_vecmath.py measures it against 80-bit long
double over their range and compares the limits and NaN with numpy's); they may differ from libm's
result in the last bit.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_LN2_HI = 6.93147180369123816490e-01  # fdlibm's split of ln 2: k * LN2_HI is exact for |k| < 2^11
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_EXP_MAX = 709.782712893383973096  # above: inf
_EXP_MIN = -745.13321910194110842  # below: 0
# 1/n! for n = 2..13: exp(r) - 1 - r on |r| <= ln2/2 to well under an ulp (the first term left out,
# 0.35^14/14!, is 4e-18)
_C = [1.0 / float(np.prod(np.arange(1, n + 1))) for n in range(2, 14)]
(_C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11, _C12, _C13) = _C
# fdlibm's e_log.c
_LG1, _LG2, _LG3 = 6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01
_LG4, _LG5 = 2.222219843214978396e-01, 1.818357216161805012e-01
_LG6, _LG7 = 1.531383769920937332e-01, 1.479819860511658591e-01
_SQRT2_MANT = 0x6A09E667F3BCD  # the mantissa bits of sqrt(2): above them, the mantissa is halved and k raised
_MANT = (1 << 52) - 1


@intrinsic
def _as_int(typingctx, x):  # type: ignore[no-untyped-def]
    """The bits of a float64 as an int64 (a bitcast: no instruction of its own in a vector loop)."""
    if x != types.float64:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _as_float(typingctx, x):  # type: ignore[no-untyped-def]
    """The float64 whose bits are an int64."""
    if x != types.int64:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@numba.njit(cache=True, fastmath={"contract"})
def vexp(x: float) -> float:
    """exp(x) within 1 ulp: inf above 709.78, 0 below -745.13, NaN for NaN."""
    xc = min(max(x, _EXP_MIN - 1.0), _EXP_MAX + 1.0)  # NaN passes through min/max unchanged only here,
    xc = 0.0 if x != x else xc  # so it is replaced by 0 and put back at the end
    kf = np.floor(xc * _INV_LN2 + 0.5)
    r = (xc - kf * _LN2_HI) - kf * _LN2_LO
    p = _C13
    p = p * r + _C12
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
    y = 1.0 + (r + r * r * p)
    k = np.int64(kf)
    k1 = k >> 1  # 2^k in two factors, each a normal float, so that 2^1024 and subnormal results are reached
    y = y * _as_float((k1 + 1023) << 52) * _as_float((k - k1 + 1023) << 52)  # past the limits: inf or 0
    return x if x != x else y


@numba.njit(cache=True, fastmath={"contract"})
def vlog(x: float) -> float:
    """log(x) within 1 ulp for positive normal x and +inf; NaN for NaN. Zero, negative and subnormal
    arguments are not handled (the callers take log(|x| + 1e-8))."""
    bits = _as_int(x)
    mant = bits & _MANT
    up = mant > _SQRT2_MANT
    k = (bits >> 52) - 1023 + (1 if up else 0)
    m = _as_float(mant | ((1022 if up else 1023) << 52))  # in [sqrt(2)/2, sqrt(2))
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    r = t2 + t1
    hfsq = 0.5 * f * f
    dk = np.float64(k)
    y = dk * _LN2_HI - ((hfsq - (s * (hfsq + r) + dk * _LN2_LO)) - f)
    return x if not x < np.inf else y  # inf and NaN are their own log
