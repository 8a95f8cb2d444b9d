"""Accuracy and special values of the vectorised math in csrc/pfc_vmath.h.

Errors are measured in ulps of the exact result: float64 against the C
library's long double functions (11 extra bits), float32 against float64.
Every copy of the loops the CPU can run (baseline, AVX2+FMA, AVX-512) is
checked, since they round differently (FMA contraction).
"""

import math
import pathlib
import re
from fractions import Fraction

import numpy as np
import pytest

vmath = pytest.importorskip("pyflowcore._kernels.vmath")

FUNCS = ["exp", "expm1", "log", "log1p", "tanh"]
DTYPES = [np.float64, np.float32]
LEVELS = [lv for lv in (vmath.BASELINE, vmath.AVX2, vmath.AVX512) if lv <= vmath.best_level()]

# Measured maxima are 0.80 (exp), 1.10 (expm1), 0.83 (log, log1p), 1.96
# (tanh; 2.1 for the AVX-512 double copy's tabled exponential) ulp; the
# bounds leave room for rounding differences between copies.
MAX_ULP = {"exp": 1.0, "expm1": 1.5, "log": 1.0, "log1p": 1.0, "tanh": 2.5}

# Dense sweeps over each function's interesting ranges (float32 has its own
# where they reach past its overflow/underflow thresholds).
SWEEPS = {
    "exp": [(-750.0, 712.0), (-1.0, 1.0), (-0.36, 0.36)],
    "expm1": [(-50.0, 712.0), (-2.0, 2.0), (-1e-5, 1e-5)],
    "log": [(0.0, 3.0), (0.5, 2.0), (1e300, 1.7e308)],
    "log1p": [(-1.0, 3.0), (-0.5, 0.5), (-1e-6, 1e-6)],
    "tanh": [(-25.0, 25.0), (-1.0, 1.0), (-1e-3, 1e-3), (0.01, 0.04)],
}
F32_SWEEPS = {
    "exp": [(-110.0, 90.0), (-1.0, 1.0), (-0.36, 0.36)],
    "expm1": [(-30.0, 90.0), (-2.0, 2.0), (-1e-5, 1e-5)],
    "log": [(0.0, 3.0), (0.5, 2.0), (1e30, 3.4e38)],
}


def run(name, x, level=-1):
    out = np.empty_like(x)
    getattr(vmath, name)(x, out, level)
    return out


def reference(name, x):
    wide = x.astype(np.longdouble if x.dtype == np.float64 else np.float64)
    with np.errstate(all="ignore"):
        return getattr(np, name)(wide)


def ulp_error(y, ref, dtype):
    """|y - ref| in units of the last place of ref in dtype (subnormal ulp
    below the normal range); 0 where both are the same inf or both NaN."""
    info = np.finfo(dtype)
    mant = info.nmant + 1
    emin = int(np.log2(info.smallest_subnormal))
    ref = ref.astype(np.longdouble)
    with np.errstate(all="ignore"):
        _, e = np.frexp(ref)
        ulp = np.ldexp(np.longdouble(1), np.maximum(e.astype(np.int64) - mant, emin))
        err = np.abs(y.astype(np.longdouble) - ref) / ulp
        rounded = ref.astype(dtype)
    err = np.where(np.isinf(rounded) & (y == rounded), 0.0, err)
    err = np.where(np.isnan(ref) & np.isnan(y), 0.0, err)
    return err


def check(name, x, dtype, level):
    y = run(name, x, level)
    ref = reference(name, x)
    assert np.array_equal(np.isnan(y), np.isnan(ref)), x[np.isnan(y) != np.isnan(ref)][:5]
    err = ulp_error(y, ref, dtype)
    i = int(np.argmax(err))
    assert err[i] <= MAX_ULP[name], f"{name}({x[i]!r}) = {y[i]!r}, ref {ref[i]!r}: {err[i]:.3f} ulp"


def random_bits(dtype, n, rng):
    """Random finite values spread uniformly over the bit patterns, i.e. over
    the whole exponent range, subnormals included."""
    if dtype == np.float64:
        x = rng.integers(0, 0x7FF0000000000000, n, dtype=np.int64).view(np.float64)
    else:
        x = rng.integers(0, 0x7F800000, n, dtype=np.int32).view(np.float32)
    return x


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", FUNCS)
def test_sweeps(name, dtype, level):
    sweeps = F32_SWEEPS.get(name, SWEEPS[name]) if dtype == np.float32 else SWEEPS[name]
    for lo, hi in sweeps:
        check(name, np.linspace(lo, hi, 100_001).astype(dtype), dtype, level)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", FUNCS)
def test_whole_exponent_range(name, dtype, level, rng):
    x = random_bits(dtype, 100_000, rng)
    check(name, x, dtype, level)
    check(name, -x, dtype, level)


# Measured maxima over every float: 1.56 ulp for tanh()'s two branches
# (baseline and AVX2 copies), 0.99 for the AVX-512 copy's piecewise
# polynomials; the bounds leave room for the copies' different contractions.
F32_TANH_MAX_ULP = {vmath.BASELINE: 1.75, vmath.AVX2: 1.75, vmath.AVX512: 1.05}


@pytest.mark.parametrize("level", LEVELS)
def test_float32_tanh_every_value_in_its_curved_range(level):
    """Every float in [2^-12, 12], where tanh is neither x nor 1 to float
    precision, with tanh()'s seam at 0.5625, the polynomials' interval ends
    and the cap at 9.5 where tanh rounds to 1, against float64's tanh (tanh
    is odd by construction: copysign)."""
    lo, hi = np.array([2.0**-12, 12.0], dtype=np.float32).view(np.uint32)
    worst = 0.0
    for start in range(int(lo), int(hi) + 1, 1 << 22):
        x = np.arange(start, min(start + (1 << 22), int(hi) + 1), dtype=np.uint32)
        x = x.view(np.float32)
        ref = np.tanh(x.astype(np.float64))
        # ulps of float32 below ref (ref < 1 here), in float64 arithmetic:
        # ulp_error's long doubles would take ten times as long.
        ulp = np.ldexp(1.0, np.frexp(ref)[1] - 24)
        y = run("tanh", x, level)
        assert y.max() <= 1.0
        err = np.abs(y - ref) / ulp
        worst = max(worst, float(err.max()))
    assert worst <= F32_TANH_MAX_ULP[level], worst


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_subnormal_and_tiny_inputs(dtype):
    tiny = np.finfo(dtype).smallest_subnormal
    x = np.geomspace(tiny, np.finfo(dtype).tiny * 4, 20_001).astype(dtype)
    for level in LEVELS:
        check("log", x, dtype, level)
        for name in ("expm1", "log1p", "tanh"):
            check(name, x, dtype, level)
            check(name, -x, dtype, level)


def special_cases(dtype):
    f = np.finfo(dtype)
    inf, nan = np.inf, np.nan
    sub, big = f.smallest_subnormal, f.max
    return {
        "exp": [(0.0, 1.0), (-0.0, 1.0), (inf, inf), (-inf, 0.0), (nan, nan),
                (1000.0, inf), (-1000.0, 0.0), (big, inf), (-big, 0.0), (sub, 1.0)],
        "expm1": [(0.0, 0.0), (-0.0, -0.0), (inf, inf), (-inf, -1.0), (nan, nan),
                  (1000.0, inf), (-1000.0, -1.0), (-60.0, -1.0), (big, inf), (-big, -1.0),
                  (sub, sub), (-sub, -sub)],
        "log": [(0.0, -inf), (-0.0, -inf), (1.0, 0.0), (inf, inf), (-inf, nan), (nan, nan),
                (-1.0, nan), (-sub, nan)],
        "log1p": [(0.0, 0.0), (-0.0, -0.0), (-1.0, -inf), (-2.0, nan), (-inf, nan), (inf, inf),
                  (nan, nan), (sub, sub), (-sub, -sub), (f.tiny, f.tiny)],
        "tanh": [(0.0, 0.0), (-0.0, -0.0), (inf, 1.0), (-inf, -1.0), (nan, nan), (30.0, 1.0),
                 (-30.0, -1.0), (big, 1.0), (-big, -1.0), (sub, sub), (-sub, -sub),
                 (f.tiny, f.tiny)],
    }


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", FUNCS)
def test_special_values(name, dtype, level):
    cases = special_cases(dtype)[name]
    x = np.array([c[0] for c in cases], dtype=dtype)
    want = np.array([c[1] for c in cases], dtype=dtype)
    y = run(name, x, level)
    with np.errstate(all="ignore"):
        libm = getattr(np, name)(x)
    for xi, yi, wi, li in zip(x, y, want, libm):
        # The expected value is written out above and is also what the C
        # library (through NumPy) returns.
        assert np.isnan(wi) == np.isnan(li) and (np.isnan(wi) or wi == li), (name, xi, li)
        if np.isnan(wi):
            assert np.isnan(yi), (name, xi, yi)
        else:
            assert yi == wi and np.signbit(yi) == np.signbit(wi), (name, xi, yi, wi)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", FUNCS)
def test_agrees_with_numpy_and_libm(name, dtype, rng):
    x = rng.standard_normal(10_000) * 4
    if name == "log":
        x = np.abs(x)
    if name == "log1p":
        x = np.abs(x) - 0.99
    x = x.astype(dtype)
    y = run(name, x)
    libm = np.empty_like(x)
    getattr(vmath, name + "_libm")(x, libm)
    np.testing.assert_allclose(y, getattr(np, name)(x), rtol=4 * np.finfo(dtype).eps, atol=0)
    np.testing.assert_allclose(y, libm, rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", FUNCS)
def test_in_place_empty_and_odd_lengths(name, dtype, rng):
    for n in (0, 1, 3, 7, 17, 33):
        x = rng.uniform(0.1, 2.0, n).astype(dtype)
        want = run(name, x)
        y = x.copy()
        getattr(vmath, name)(y, y)
        np.testing.assert_array_equal(y, want)
        # Tails of every length go through the same code as the vector body.
        np.testing.assert_array_equal(want, [run(name, x[i:i + 1])[0] for i in range(n)])


def test_bad_arguments():
    with pytest.raises(ValueError, match="same length"):
        vmath.tanh(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="dtype mismatch"):
        vmath.tanh(np.zeros(3), np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="same length"):
        vmath.tanh_sech2(np.zeros(3), np.zeros(3), np.zeros(2))


# tanh_sech2, the planar kernels' fused pair: measured maxima 2.4 ulp for t
# and 4.4 for hp = 1 - t^2 (baseline and AVX2; float32 1.5 and 4.4), 2.6 and
# 5.5 for the AVX-512 double copy's tabled exponential, hp relative to
# itself also where it is tiny (down to its underflow past |x| = 354).
TANH_SECH2_MAX_ULP = {"t": 3.0, "hp": 6.0}


def tanh_sech2(x, level=-1):
    t, hp = np.empty_like(x), np.empty_like(x)
    vmath.tanh_sech2(x, t, hp, level)
    return t, hp


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_sech2(dtype, level, rng):
    sweeps = [(-25.0, 25.0), (-1.0, 1.0), (-1e-3, 1e-3), (0.5, 0.6), (30.0, 400.0)]
    x = np.concatenate([np.linspace(lo, hi, 100_001) for lo, hi in sweeps]
                       + [random_bits(dtype, 100_000, rng)]).astype(dtype)
    x = np.concatenate([x, -x])
    wide = x.astype(np.longdouble if dtype == np.float64 else np.float64)
    with np.errstate(over="ignore"):
        refs = {"t": np.tanh(wide), "hp": 1 / np.cosh(wide) ** 2}
    for name, y in zip(("t", "hp"), tanh_sech2(x, level)):
        err = ulp_error(y, refs[name], dtype)
        i = int(np.argmax(err))
        assert err[i] <= TANH_SECH2_MAX_ULP[name], f"{name}({x[i]!r}) = {y[i]!r}: {err[i]:.2f} ulp"
    # Special values and their signs.
    f = np.finfo(dtype)
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, f.smallest_subnormal, -f.tiny, f.max,
                  -1e4, 380.0], dtype=dtype)
    t, hp = tanh_sech2(x, level)
    np.testing.assert_array_equal(t, [0.0, -0.0, 1, -1, np.nan, x[5], x[6], 1, -1, 1])
    np.testing.assert_array_equal(np.signbit(t), np.signbit(x))
    np.testing.assert_array_equal(hp, [1, 1, 0, 0, np.nan, 1, 1, 0, 0, 0])
    # A masked tail gives the vector body's bits.
    x = np.resize(x, 17)
    whole = tanh_sech2(x, level)
    for i in range(x.size):
        for k, part in enumerate(tanh_sech2(x[i:i + 1], level)):
            np.testing.assert_array_equal(part[0], whole[k][i])


def _tanh_table_header():
    """The constants of csrc/pfc_tanh_table.h, by name (arrays as lists)."""
    path = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "pfc_tanh_table.h"
    if not path.exists():
        pytest.skip("csrc/ is not beside the tests")
    text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
    consts = {}
    for m in re.finditer(r"const (?:float|double|int) (\w+)(\[[^=]*\])? = ([^;]*);", text):
        body = m.group(3).replace("{", " ").replace("}", " ").replace("f,", ",")
        vals = [float(v.strip().rstrip("f")) for v in body.split(",") if v.strip()]
        consts[m.group(1)] = vals if m.group(2) else vals[0]
    return consts


def test_tanh_tables_hold_what_the_kernels_assume():
    """The AVX-512 tanh copies' tables (generated by csrc/gen_tanh_table.py),
    against their definitions in exact arithmetic."""
    t = _tanh_table_header()
    # float: interval i >= 1 starts at the float whose bits >> SHIFT are FIRST + i.
    first = int(np.float32(1 / 16).view(np.uint32)) >> int(t["SHIFT"])
    assert t["FIRST"] == first - 1
    coef = np.array(t["COEF"], dtype=np.float32).reshape(int(t["DEGREE"]) + 3, 32)
    n = int(t["NUM_INTERVALS"])
    starts = np.array([0.0] + [np.uint32((first + i - 1) << int(t["SHIFT"])).view(np.float32)
                               for i in range(1, n)])
    assert starts[1] == 1 / 16 and starts[-1] == 8.0 and t["CAP"] > 9.01
    tanh_lo = coef[0, :n].astype(np.float64) + coef[1, :n].astype(np.float64)
    # HI + LO carries tanh(lo) to ~2^-48, far below float32's 2^-24
    np.testing.assert_allclose(tanh_lo, np.tanh(starts), rtol=2.0**-47, atol=0)
    # double: 2^(j/16) = HI (1 + RATIO), HI a multiple of 2^-50 (so that
    # 1 +- 2^m HI is exact for m >= -2), ln2/16 = LN2_16_HI + LN2_16_LO with
    # n LN2_16_HI exact for |n| < 2^11.
    for j, (hi, ratio) in enumerate(zip(t["EXP2_16_HI"], t["EXP2_16_RATIO"])):
        assert (Fraction(hi) * 2**50).denominator == 1
        v = 2**j << (16 * 120)
        for _ in range(4):
            v = math.isqrt(v)
        exact = Fraction(v, 2**120)
        got = Fraction(hi) * (1 + Fraction(ratio))
        assert abs(got - exact) < Fraction(1, 2**100), j
    m, _ = math.frexp(t["LN2_16_HI"])
    assert (Fraction(m) * 2**42).denominator == 1
    ln2_16 = Fraction(math.log(2)) / 16   # only to ~1e-17: checks the split's sum
    assert abs(Fraction(t["LN2_16_HI"]) + Fraction(t["LN2_16_LO"]) - ln2_16) < 1e-17
    assert t["MINUS_32_OVER_LN2"] == -32 / math.log(2)
