"""The vectorizable exp and log stay within 1 ulp of the exact value, as libm's do, limits and NaN included."""

import numba
import numpy as np
import pytest

from emq.search_space.vecmath import vexp, vlog

EXACT = np.finfo(np.longdouble).nmant >= 63  # x86's 80-bit long double: 11 more bits than float64


@numba.njit
def _exp(x, out):
    for i in range(x.shape[0]):
        out[i] = vexp(x[i])


@numba.njit
def _log(x, out):
    for i in range(x.shape[0]):
        out[i] = vlog(x[i])


def _apply(fn, x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    fn(x, out)
    return out


def _ulps(y: np.ndarray, exact: np.ndarray) -> float:
    """Largest error in units of the last place of the correctly rounded result."""
    step = np.spacing(np.abs(exact.astype(np.float64))).astype(np.longdouble)
    return float(np.max(np.abs((y.astype(np.longdouble) - exact) / step)))


@pytest.mark.skipif(not EXACT, reason="needs an extended-precision long double as the exact reference")
def test_exp_within_one_ulp_over_its_range():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-708, 709.7, 400_000), rng.uniform(-1, 1, 200_000), rng.normal(0, 1e-9, 10_000)])
    y, exact = _apply(_exp, x), np.exp(x.astype(np.longdouble))
    assert _ulps(y, exact) <= 1.0
    assert _ulps(y, exact) >= 0.5  # the measure sees rounding at all (a same-precision reference would not)


@pytest.mark.skipif(not EXACT, reason="needs an extended-precision long double as the exact reference")
def test_log_within_one_ulp_over_every_binade():
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            np.exp(rng.uniform(np.log(1e-300), np.log(1e300), 400_000)),
            rng.uniform(0.5, 2.0, 200_000),  # both sides of the sqrt(2) split and of 1
            1.0 + rng.normal(0, 1e-7, 10_000),
            [np.sqrt(2.0), np.nextafter(np.sqrt(2.0), 0.0), np.nextafter(np.sqrt(2.0), 2.0), np.finfo(float).max],
        ]
    )
    y, exact = _apply(_log, x), np.log(x.astype(np.longdouble))
    keep = exact != 0
    assert _ulps(y[keep], exact[keep]) <= 1.0


def test_limits_and_nan_as_numpy_gives_them():
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 709.78, 709.79, -745.13, -745.14, -740.0, -1e-300, 1e-300])
    with np.errstate(over="ignore", under="ignore"):
        np.testing.assert_array_equal(_apply(_exp, x), np.exp(x))  # subnormal results, overflow, underflow
    pos = np.array([1.0, 2.0, 0.5, np.inf, np.nan, 1e-8, np.finfo(float).max, np.finfo(float).tiny])
    np.testing.assert_array_equal(_apply(_log, pos), np.log(pos))
