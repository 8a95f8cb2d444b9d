/*
 * pfc_vmath.h -- CPU ONLY.  Branch-free exp, expm1, log, log1p and tanh for
 * float and double that gcc/clang vectorise inside `#pragma omp simd` loops.
 *
 * Why: glibc's scalar exp/log/tanh cost 10-20 ns a call and the compiler only
 * maps them onto vector versions under -ffast-math, which we refuse because
 * it breaks NaN/inf semantics.  These functions inline into the caller's loop
 * and use only +, -, *, /, compares turned into blends, and integer bit
 * manipulation of the IEEE representation: no branches, no table lookups (so
 * no gathers), no int64<->double conversions (which SSE2/AVX2 lack).  The
 * exception, written with AVX-512 intrinsics, is tanh_array's AVX-512 copy,
 * whose tables live in registers (see there): Real NVP's activations, and
 * tanh_sech2's for doubles, the planar layers'.
 *
 * The CUDA kernels do NOT use this header: device code keeps the native
 * functions through pfc::exp, pfc::log, ... of pfc_config.h.  Including it
 * from nvcc/NVRTC is an error.
 *
 * Accuracy (measured by tests/test_vmath.py against long double / float64
 * references): within 2 ulp of the correctly rounded result over the whole
 * domain for double and float (2.1 for the AVX-512 double tanh_array, whose
 * exponential is tabled); special values follow C99 Annex F like glibc:
 *   exp(-inf) = +0, exp(+inf) = +inf, overflow -> +inf, underflow -> 0 or a
 *   subnormal; expm1(-inf) = -1; log(+-0) = -inf, log(x < 0) = NaN,
 *   log(+inf) = +inf, subnormal inputs are exact; log1p(-1) = -inf,
 *   log1p(x < -1) = NaN; tanh(+-inf) = +-1; expm1, log1p and tanh return tiny
 *   arguments (signed zeros, subnormals) unchanged; NaN in -> NaN out.
 *
 * Algorithms
 *   exp, expm1, tanh: Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, with
 *     k rounded by the 1.5*2^52 shifter (so no float->int conversion), and
 *     p = e^r - 1 = r + r^2/2 + r^3 Q(r) (Q: Chebyshev fit, degree 9 for
 *     double, 4 for float; relative error of p far below half an ulp).
 *       exp   = (1 + p) 2^k1 2^k2,  k = k1 + k2 split so that underflow to
 *               subnormals and 2^1024 come out right with plain multiplies;
 *       expm1 = (2^kc p + (2^kc - 1)) 2^(k - kc), kc = min(k, 60 | 30): the
 *               "- 1" is exact for the k where it matters;
 *       tanh  = (1 - e) / (1 + e) with e = e^(-2|x|) = 2^k (1 + p), written
 *               as ((1 - 2^k) - 2^k p) / ((1 + 2^k) + 2^k p) so that both the
 *               small-|x| cancellation and the e -> 0 end keep full precision
 *               (double; float takes an odd polynomial below |x| = 0.5625
 *               and 1 - 2 / (e^(2|x|) + 1) above, with a plain exp).
 *   log, log1p: the fdlibm/musl scheme: u = 2^k m, m in [sqrt(2)/2, sqrt(2)),
 *     f = m - 1, s = f / (2 + f), log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2));
 *     log1p adds the rounding correction c / u of u = 1 + x.
 * Fused pairs for the row-wise flow kernels (rowwise_cpu.h), where one
 * reduction or one division serves two results: tanh_sech2 (tanh and
 * 1 - tanh^2 from one exponential and one division; measured 2.6 ulp for
 * tanh, 4.7 for 1 - tanh^2 in double, 1.4 and 5.1 in float, the latter
 * relative even where it is tiny; its AVX-512 double copy tanh_sech2_zmm
 * 2.6 and 5.5),
 * log_sum (log(u + c) for a small correction c, e.g. log1p(q) as
 * log(fl(1 + q)) + its rounding error; 1.2 ulp), and log_sum_normal /
 * log_sum2_normal (the same without special values, for u in a stated
 * range, the pair sharing its division; 1.2 and 1.4 ulp).  tests/test_vmath.py
 * covers tanh_sech2 (tanh_sech2_array); the flow tests cover the log
 * pairs, through the kernels.
 * Arguments where the reduction breaks down (e^x over- or underflowing,
 * |x| past tanh = 1, ...) go through the arithmetic harmlessly and are
 * replaced by selects at the end; NaN fails every comparison, so it keeps
 * the computed (NaN) value.  Every select is a bit blend of two computed
 * values (select_): see there for why gcc needs this to vectorise.
 *
 * Vector dispatch: PFC_VM_TARGET_AVX2 / PFC_VM_TARGET_AVX512 mark extra
 * copies of a hot loop compiled for those ISAs (the package itself is built
 * for baseline x86-64); pfc::vm::cpu_level() picks one at run time.  See
 * exp_array() below for the pattern the flow kernels follow.  gcc 12
 * vectorises the float functions at every level, the double ones only with
 * SSE4.2 or later (select_ needs a 64-bit compare mask, which SSE2 lacks):
 * the baseline double copy is scalar, about as fast as glibc (tanh, expm1,
 * log1p) or 2x slower (exp, log).
 */
#ifndef PFC_VMATH_H
#define PFC_VMATH_H

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#error "pfc_vmath.h is CPU-only; device code uses the native functions of pfc_config.h"
#endif

#include <stdint.h>
#include <string.h>

#include "pfc_config.h"
#include "pfc_tanh_table.h"

#if defined(__GNUC__)
/* The functions must inline into the caller's simd loop: a call would stop
 * vectorisation. */
#define PFC_VM_INLINE inline __attribute__((always_inline))
#else
#define PFC_VM_INLINE inline
#endif

#if defined(__GNUC__) || defined(__clang__)
/* Honoured under -fopenmp or -fopenmp-simd (setup.py passes the latter). */
#define PFC_VM_PRAGMA_SIMD _Pragma("omp simd")
#else
#define PFC_VM_PRAGMA_SIMD
#endif

#if defined(__GNUC__) && defined(__x86_64__) && !defined(PFC_VM_NO_DISPATCH)
#define PFC_VM_DISPATCH 1
#define PFC_VM_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define PFC_VM_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma")))
#include <immintrin.h>
#else
#define PFC_VM_DISPATCH 0
#endif

namespace pfc {
namespace vm {

namespace detail {

PFC_VM_INLINE uint64_t bits(double x) { uint64_t u; memcpy(&u, &x, sizeof u); return u; }
PFC_VM_INLINE uint32_t bits(float x) { uint32_t u; memcpy(&u, &x, sizeof u); return u; }
PFC_VM_INLINE double as_double(uint64_t u) { double x; memcpy(&x, &u, sizeof x); return x; }
PFC_VM_INLINE float as_float(uint32_t u) { float x; memcpy(&x, &u, sizeof x); return x; }

PFC_VM_INLINE double fabs_(double x) { return as_double(bits(x) & 0x7fffffffffffffffULL); }
PFC_VM_INLINE float fabs_(float x) { return as_float(bits(x) & 0x7fffffffU); }
PFC_VM_INLINE double copysign_(double mag, double sgn) {
    return as_double((bits(mag) & 0x7fffffffffffffffULL) | (bits(sgn) & 0x8000000000000000ULL));
}
PFC_VM_INLINE float copysign_(float mag, float sgn) {
    return as_float((bits(mag) & 0x7fffffffU) | (bits(sgn) & 0x80000000U));
}

/* c ? a : b as a bit blend of two values that are both computed.  A plain
 * ?: whose arm feeds further arithmetic lets gcc thread a constant arm
 * through the rest of the function into a separate path with trapping
 * operations, and the loop then no longer if-converts (no vectorisation). */
PFC_VM_INLINE uint64_t mask_(bool c) { return (uint64_t)0 - (uint64_t)c; }
PFC_VM_INLINE uint32_t mask_f_(bool c) { return (uint32_t)0 - (uint32_t)c; }
PFC_VM_INLINE double select_(bool c, double a, double b) {
    const uint64_t m = mask_(c);
    return as_double((bits(a) & m) | (bits(b) & ~m));
}
PFC_VM_INLINE float select_(bool c, float a, float b) {
    const uint32_t m = mask_f_(c);
    return as_float((bits(a) & m) | (bits(b) & ~m));
}

/* Adding the shifter rounds |v| < 2^51 to the nearest integer (ties to
 * even) in the low mantissa bits; subtracting it again gives that integer as
 * a double. */
const double SHIFT_D = 6755399441055744.0;  /* 1.5 * 2^52 */
const float SHIFT_F = 12582912.0f;          /* 1.5 * 2^23 */

PFC_VM_INLINE double round_int(double v) { return (v + SHIFT_D) - SHIFT_D; }
PFC_VM_INLINE float round_int(float v) { return (v + SHIFT_F) - SHIFT_F; }

/* 2^k for an integral double k in [-1022, 1023]: the low bits of k + shifter
 * are k in two's complement; adding the bias and shifting the rest out
 * leaves the exponent field. */
PFC_VM_INLINE double pow2i(double k) {
    return as_double((bits(k + SHIFT_D) + 1023U) << 52);
}
PFC_VM_INLINE float pow2i(float k) {
    return as_float((bits(k + SHIFT_F) + 127U) << 23);
}

/* ln2 split so that k * LN2_HI is exact for |k| < 2^20 (double) or 2^8
 * (float): the Cody-Waite reduction then loses nothing. */
const double INV_LN2_D = 1.4426950408889634;
const double LN2_HI_D = 6.93147180369123816490e-01; /* 0x3fe62e42fee00000 */
const double LN2_LO_D = 1.90821492927058770002e-10; /* 0x3dea39ef35793c76 */
const float INV_LN2_F = 1.44269502163f;
const float LN2_HI_F = 0.693145751953125f;          /* 0x3f317200 */
const float LN2_LO_F = 1.428606765330187045e-06f;   /* 0x35bfbe8e */

/* The tail e^r - 1 - r on |r| <= ln2/2 (a little beyond is fine), as
 * r^2/2 + r^3 Q(r), Q a Chebyshev fit of (e^r - 1 - r - r^2/2)/r^3 whose
 * error, times r^2, is < 1e-18 (double) and < 1e-9 (float) relative to
 * e^r - 1.  Callers keep r and the tail apart where r enters exactly. */
PFC_VM_INLINE double expm1_kernel(double r) {
    double q = 2.0911236630261545e-09;
    q = q * r + 2.510038549551032e-08;
    q = q * r + 2.755728296954995e-07;
    q = q * r + 2.7557268459997064e-06;
    q = q * r + 2.4801587317144498e-05;
    q = q * r + 0.00019841269863053618;
    q = q * r + 0.0013888888888886552;
    q = q * r + 0.008333333333330062;
    q = q * r + 0.041666666666666664;
    q = q * r + 0.16666666666666669;
    return (r * r) * (0.5 + r * q);
}
PFC_VM_INLINE float expm1_kernel(float r) {
    float q = 0.00019882698337221478f;
    q = q * r + 0.0013926183587713494f;
    q = q * r + 0.008333320887169642f;
    q = q * r + 0.041666554617204574f;
    q = q * r + 0.16666666666666666f;
    return (r * r) * (0.5f + r * q);
}

/* Cody-Waite reduction x = k ln2 + (r + c), e^(r + c) - 1 = r + h: r is the
 * rounded remainder, c what its rounding lost (fdlibm's correction, worth
 * up to 0.7 ulp of expm1 and tanh results), h the tail including c. */
PFC_VM_INLINE void expm1_reduced(double x, double& k, double& r, double& h) {
    k = round_int(x * INV_LN2_D);
    const double hi = x - k * LN2_HI_D;
    const double lo = k * LN2_LO_D;
    r = hi - lo;
    const double c = (hi - r) - lo;
    h = expm1_kernel(r) + (c + c * r);
}
PFC_VM_INLINE void expm1_reduced(float x, float& k, float& r, float& h) {
    k = round_int(x * INV_LN2_F);
    const float hi = x - k * LN2_HI_F;
    const float lo = k * LN2_LO_F;
    r = hi - lo;
    const float c = (hi - r) - lo;
    h = expm1_kernel(r) + (c + c * r);
}

/* log(1 + f) - f + f^2/2 for f in [sqrt(2)/2 - 1, sqrt(2) - 1], as
 * s (hfsq + R(s^2)) with s = f / (2 + f) (fdlibm's Lg1..Lg7 / musl logf's
 * Lg1..Lg4, error < 2^-58.45 resp. 2^-34.24). */
PFC_VM_INLINE double log_kernel_s(double s, double hfsq) {
    const double z = s * s;
    const double w = z * z;
    const double t1 = w * (3.999999999940941908e-01 +
                           w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01));
    const double t2 = z * (6.666666666666735130e-01 +
                           w * (2.857142874366239149e-01 +
                                w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
    return s * (hfsq + (t2 + t1));
}
PFC_VM_INLINE float log_kernel_s(float s, float hfsq) {
    const float z = s * s;
    const float w = z * z;
    const float t1 = w * (0.40000972152f + w * 0.24279078841f);
    const float t2 = z * (0.66666662693f + w * 0.28498786688f);
    return s * (hfsq + (t2 + t1));
}
PFC_VM_INLINE double log_kernel(double f, double hfsq) { return log_kernel_s(f / (2.0 + f), hfsq); }
PFC_VM_INLINE float log_kernel(float f, float hfsq) { return log_kernel_s(f / (2.0f + f), hfsq); }

const double LOG_LN2_HI_D = 6.93147180369123816490e-01; /* 0x3fe62e42fee00000 */
const double LOG_LN2_LO_D = 1.90821492927058770002e-10;
const float LOG_LN2_HI_F = 6.9313812256e-01f;           /* 0x3f317180 */
const float LOG_LN2_LO_F = 9.0580006145e-06f;           /* 0x3717f7d1 */

/* Exponent of a bit pattern already offset so that the mantissa range is
 * [sqrt(2)/2, sqrt(2)): int -> double through the 2^52 magic number, since
 * SSE2/AVX2 have no vector int64 -> double conversion. */
PFC_VM_INLINE double biased_exponent(uint64_t ix) {
    return as_double(0x4330000000000000ULL | (ix >> 52)) - (4503599627370496.0 + 1023.0);
}
PFC_VM_INLINE float biased_exponent(uint32_t ix) {
    return (float)((int32_t)(ix >> 23) - 127);
}

const double INF_D = __builtin_huge_val();
const float INF_F = __builtin_huge_valf();

}  // namespace detail

/* ------------------------------------------------------------------ exp */

PFC_VM_INLINE double exp(double x) {
    using namespace detail;
    double k, r, h;
    expm1_reduced(x, k, r, h);
    const double p = r + h;
    /* k in [-1076, 1024] on the range kept below: two factors, each a normal
     * power of two, so that the result rounds once into the subnormals and
     * 2^1024 (1 + p) overflows exactly when it should. */
    const double k1 = round_int(k * 0.5);
    double y = ((1.0 + p) * pow2i(k1)) * pow2i(k - k1);
    /* Out there e^x is inf or 0 while k (and so y) is meaningless. */
    y = select_(x > 709.8, INF_D, y);
    return select_(x < -746.0, 0.0, y);
}

PFC_VM_INLINE float exp(float x) {
    using namespace detail;
    float k, r, h;
    expm1_reduced(x, k, r, h);
    const float p = r + h;
    const float k1 = round_int(k * 0.5f);
    float y = ((1.0f + p) * pow2i(k1)) * pow2i(k - k1);
    y = select_(x > 88.8f, INF_F, y);
    return select_(x < -104.0f, 0.0f, y);
}

/* ---------------------------------------------------------------- expm1 */

PFC_VM_INLINE double expm1(double x) {
    using namespace detail;
    double k, r, h;
    expm1_reduced(x, k, r, h);
    /* e^x - 1 = 2^k (r + h) + 2^k - 1.  Up to k = 53, 2^k - 1 and
     * 2^k r + (2^k - 1) are exact (or, for k >= 2, far from cancelling), so
     * only the tail's addition rounds: summing 2^k p would lose a bit where
     * 2p + 1 cancels (k = 1).  Beyond, 2^k - 1 is inexact and the "- 1"
     * goes first into 2^k p instead.  Past k = 512 the factor 2^d, d = 1,
     * keeps 2^(k-d) normal up to k = 1024, where the result must overflow
     * by itself. */
    const double d = round_int(k * 0x1p-10);
    const double s = pow2i(k - d);
    const bool small = k < 54.0;
    const double hx = select_(small, s - 1.0, -pow2i(-d));
    const double hy = select_(small, s * r, s * (r + h));
    const double tl = select_(small, s * h, s);
    double y = ((hx + hy) + tl) * pow2i(d);
    y = select_(x > 709.8, INF_D, y);
    /* e^x is below half an ulp of 1 there (and k would leave the range). */
    y = select_(x < -40.0, -1.0, y);
    /* Keeps -0 and subnormals exact, where expm1(x) rounds to x. */
    return select_(fabs_(x) < 0x1p-60, x, y);
}

PFC_VM_INLINE float expm1(float x) {
    using namespace detail;
    float k, r, h;
    expm1_reduced(x, k, r, h);
    const float d = round_int(k * 0x1p-7f);
    const float s = pow2i(k - d);
    const bool small = k < 25.0f;
    const float hx = select_(small, s - 1.0f, -pow2i(-d));
    const float hy = select_(small, s * r, s * (r + h));
    const float tl = select_(small, s * h, s);
    float y = ((hx + hy) + tl) * pow2i(d);
    y = select_(x > 88.8f, INF_F, y);
    y = select_(x < -20.0f, -1.0f, y);
    return select_(fabs_(x) < 0x1p-30f, x, y);
}

/* ------------------------------------------------------------------ log */

PFC_VM_INLINE double log(double x) {
    using namespace detail;
    /* Subnormals (and the special values, fixed below) are scaled into the
     * normal range first; 2^54 is exact. */
    const bool sub = x < 2.2250738585072014e-308;
    const double xs = select_(sub, x * 0x1p54, x);
    const uint64_t ix = bits(xs) + (0x3ff0000000000000ULL - 0x3fe6a09e00000000ULL);
    const double k = biased_exponent(ix) - select_(sub, 54.0, 0.0);
    const double f = as_double((ix & 0x000fffffffffffffULL) + 0x3fe6a09e00000000ULL) - 1.0;
    const double hfsq = 0.5 * f * f;
    double y = log_kernel(f, hfsq) + k * LOG_LN2_LO_D - hfsq + f + k * LOG_LN2_HI_D;
    y = select_(x == INF_D, x, y);
    y = select_(x == 0.0, -INF_D, y);
    y = select_(x < 0.0, __builtin_nan(""), y);
    return select_(x != x, x + x, y);
}

PFC_VM_INLINE float log(float x) {
    using namespace detail;
    const bool sub = x < 1.17549435e-38f;
    const float xs = select_(sub, x * 0x1p25f, x);
    const uint32_t ix = bits(xs) + (0x3f800000U - 0x3f3504f3U);
    const float k = biased_exponent(ix) - select_(sub, 25.0f, 0.0f);
    const float f = as_float((ix & 0x007fffffU) + 0x3f3504f3U) - 1.0f;
    const float hfsq = 0.5f * f * f;
    float y = log_kernel(f, hfsq) + k * LOG_LN2_LO_F - hfsq + f + k * LOG_LN2_HI_F;
    y = select_(x == INF_F, x, y);
    y = select_(x == 0.0f, -INF_F, y);
    y = select_(x < 0.0f, __builtin_nanf(""), y);
    return select_(x != x, x + x, y);
}

/* ---------------------------------------------------------------- log1p */

PFC_VM_INLINE double log1p(double x) {
    using namespace detail;
    const double u = 1.0 + x;
    const uint64_t iu = bits(u) + (0x3ff0000000000000ULL - 0x3fe6a09e00000000ULL);
    const double k = biased_exponent(iu);
    /* c/u ~ log(1 + x) - log(u) restores what rounding 1 + x lost; when
     * 1 + x is already in [sqrt(2)/2, sqrt(2)) use f = x exactly instead. */
    const double c0 = select_(k >= 2.0, 1.0 - (u - x), x - (u - 1.0)) / u;
    const bool k0 = k == 0.0;
    const double c = select_(k < 54.0 && !k0, c0, 0.0);
    const double fr = as_double((iu & 0x000fffffffffffffULL) + 0x3fe6a09e00000000ULL) - 1.0;
    const double f = select_(k0, x, fr);
    const double hfsq = 0.5 * f * f;
    double y = log_kernel(f, hfsq) + (k * LOG_LN2_LO_D + c) - hfsq + f + k * LOG_LN2_HI_D;
    y = select_(x == INF_D, x, y);
    y = select_(x == -1.0, -INF_D, y);
    y = select_(x < -1.0, __builtin_nan(""), y);
    y = select_(fabs_(x) < 0x1p-60, x, y);
    return select_(x != x, x + x, y);
}

PFC_VM_INLINE float log1p(float x) {
    using namespace detail;
    const float u = 1.0f + x;
    const uint32_t iu = bits(u) + (0x3f800000U - 0x3f3504f3U);
    const float k = biased_exponent(iu);
    const float c0 = select_(k >= 2.0f, 1.0f - (u - x), x - (u - 1.0f)) / u;
    const bool k0 = k == 0.0f;
    const float c = select_(k < 25.0f && !k0, c0, 0.0f);
    const float fr = as_float((iu & 0x007fffffU) + 0x3f3504f3U) - 1.0f;
    const float f = select_(k0, x, fr);
    const float hfsq = 0.5f * f * f;
    float y = log_kernel(f, hfsq) + (k * LOG_LN2_LO_F + c) - hfsq + f + k * LOG_LN2_HI_F;
    y = select_(x == INF_F, x, y);
    y = select_(x == -1.0f, -INF_F, y);
    y = select_(x < -1.0f, __builtin_nanf(""), y);
    y = select_(fabs_(x) < 0x1p-30f, x, y);
    return select_(x != x, x + x, y);
}

/* ----------------------------------------------------------------- tanh */

PFC_VM_INLINE double tanh(double x) {
    using namespace detail;
    const double a = fabs_(x);
    double k, r, h;
    expm1_reduced(-2.0 * a, k, r, h);
    const double p = r + h;
    const double s = pow2i(k);
    /* e^(-2a) = e = s (1 + p), and 1 - s, 1 + s are exact, so 1 - e and
     * 1 + e are each rounded once.  Past a = 0.55 (e < 1/3) tanh is taken
     * as 1 - 2e / (1 + e) instead: the rounding of 1 + e just above 1 would
     * otherwise cost a whole ulp of the result just below 1. */
    const double sp = s * p;
    const bool large = a > 0.55;
    const double den = (1.0 + s) + sp;
    const double q = select_(large, 2.0 * (s + sp), (1.0 - s) - sp) / den;
    double t = select_(large, 1.0 - q, q);
    /* tanh rounds to 1 beyond 19.1; further out 2^k would leave the range. */
    t = select_(a > 20.0, 1.0, t);
    const double y = copysign_(t, x);
    return select_(fabs_(x) < 0x1p-30, x, y);
}

namespace detail {
/* tanh(a) for 0 <= a < 0.5625 as a + a^3 P(a^2) (P: weighted least-squares
 * fit of degree 4, relative error 1.4e-9 before rounding). */
PFC_VM_INLINE float tanh_near(float a) {
    const float a2 = a * a;
    float p = -6.1696082149e-03f;
    p = p * a2 + 2.0999314620e-02f;
    p = p * a2 - 5.3835159034e-02f;
    p = p * a2 + 1.3332426734e-01f;
    p = p * a2 - 3.3333312954e-01f;
    return a + (a * a2) * p;
}

/* Q(h) = e^(2h) for |h| <= ln2/4 (interpolation at Chebyshev nodes,
 * relative error 2.5e-9): the far branches of the float tanh functions. */
PFC_VM_INLINE float tanh_exp2h(float h) {
    float q = 8.922314644e-02f;
    q = q * h + 2.680042386e-01f;
    q = q * h + 6.666616201e-01f;
    q = q * h + 1.333313227e+00f;
    q = q * h + 2.0f;
    q = q * h + 2.0f;
    return q * h + 1.0f;
}
}  // namespace detail

/* float: two cheap branches instead of the split form above (float's 24
 * bits leave room for a polynomial): |x| < 0.5625 takes the odd polynomial
 * of tanh_near, beyond 1 - 2 / (E + 1) with E = e^(2|x|) > 3.
 * There E's relative error enters tanh damped (by 2E / (E + 1)^2 / tanh <=
 * 3/4), so E is a plain exp: no split remainder or tail as in expm1, and
 * the remainder is kept halved, h = |x| - k ln2 / 2, so that 2|x| is never
 * formed (E = 2^k Q(h), Q: interpolation of e^(2h) at Chebyshev nodes,
 * relative error 2.5e-9).  Max error 1.56 ulp over every float (measured
 * exhaustively), at 80% of the cost of the expm1 form.  Past |x| = 9.01
 * tanh rounds to 1; clamping |x| at 10 (as integers: positive floats order
 * like their bits) keeps 2^k finite, and NaN, which compares false, takes
 * the polynomial and stays NaN. */
PFC_VM_INLINE float tanh(float x) {
    using namespace detail;
    const float a = fabs_(x);
    const float near0 = tanh_near(a);
    const uint32_t ten = 0x41200000U;
    const float ac = as_float(bits(a) < ten ? bits(a) : ten);
    const float kshift = ac * (2.0f * INV_LN2_F) + SHIFT_F;
    const float k = kshift - SHIFT_F;
    const float h = (ac - k * (0.5f * LN2_HI_F)) - k * (0.5f * LN2_LO_F);
    const float e = tanh_exp2h(h) * as_float((bits(kshift) + 127U) << 23);   /* 2^k Q(h) */
    const float far = 1.0f - 2.0f / (e + 1.0f);
    return copysign_(select_(a >= 0.5625f, far, near0), x);
}

/* --------------------------------------------------- fused pairs
 *
 * Pairs of results that the row-wise flow kernels (rowwise_cpu.h) need per
 * row, cheaper together than apart: one range reduction, or one division,
 * serves both.  Division is the scarce unit in those kernels (one vdivpd
 * per 8 doubles occupies the divider for ~16 cycles on current x86).
 */

/* t = tanh(x) and hp = 1 - tanh(x)^2 = 4e / (1 + e)^2, e = e^(-2|x|), from
 * one reduction and one division.  |x| <= 0.55 takes tanh()'s split form
 * t = ((1 - 2^k) - 2^k p) / ((1 + 2^k) + 2^k p), beyond t = 1 - 2e / (1 + e)
 * (times the reciprocal of the denominator, so half an ulp above tanh()).
 * hp keeps its relative accuracy for large |x|, where 1 - t^2 rounds to 0,
 * until e^(-2|x|) becomes subnormal (|x| > 354; 0 past 373).  tanh(+-inf) =
 * +-1 with hp = 0; NaN gives NaN in both. */
PFC_VM_INLINE void tanh_sech2(double x, double& t, double& hp) {
    using namespace detail;
    const double a = fabs_(x);
    double k, r, h;
    expm1_reduced(-2.0 * a, k, r, h);
    const double p = r + h;
    /* e = 2^k (1 + p) through 2^(k + 60), normal for every k >= -1076 that
     * is kept, so that a subnormal e rounds only once. */
    const double s60 = pow2i(k + 60.0);
    const double e = select_(a > 373.0, 0.0, (s60 + s60 * p) * 0x1p-60);
    const bool large = a > 0.55;
    const double s = s60 * 0x1p-60;   /* 2^k, exact in the branch that uses it (k >= -2) */
    const double sp = s * p;
    const double inv = 1.0 / select_(large, 1.0 + e, (1.0 + s) + sp);
    const double q = select_(large, 2.0 * e, (1.0 - s) - sp) * inv;
    t = copysign_(select_(large, 1.0 - q, q), x);
    hp = ((4.0 * e) * inv) * inv;
}

/* float: tanh()'s two branches.  Below |x| = 0.5625 t is tanh_near's
 * polynomial and hp = 1 - t^2 (>= 3/4: no cancellation); beyond, with
 * e = e^(-2|x|) = 2^-k Q(-h) as in tanh(), t = 1 - 2e / (1 + e) and hp as
 * in double.  |x| is clamped at 52 (as integers), where e rounds to 0; NaN,
 * which compares false, takes the polynomial and stays NaN.  Measured over
 * every float: 1.43 ulp for t, 5.1 for hp (the expm1 form before: 2.7 and
 * 5.1), in ~16% fewer instructions. */
PFC_VM_INLINE void tanh_sech2(float x, float& t, float& hp) {
    using namespace detail;
    const float a = fabs_(x);
    const float near_t = tanh_near(a);
    const uint32_t cap = 0x42500000U;   /* 52 */
    const float ac = as_float(bits(a) < cap ? bits(a) : cap);
    const float kshift = ac * (2.0f * INV_LN2_F) + SHIFT_F;
    const float k = kshift - SHIFT_F;
    const float h = (k * (0.5f * LN2_HI_F) - ac) + k * (0.5f * LN2_LO_F);
    /* 2^(30 - k) is normal for every k kept, so a subnormal e rounds once */
    const float e = (tanh_exp2h(h) * as_float((127U + 30U - bits(kshift)) << 23)) * 0x1p-30f;
    const float inv = 1.0f / (1.0f + e);
    const float qe = (2.0f * e) * inv;
    const bool far = a >= 0.5625f;
    t = copysign_(select_(far, 1.0f - qe, near_t), x);
    hp = select_(far, (2.0f * qe) * inv, 1.0f - near_t * near_t);
}

namespace detail {

/* x = 2^k m, m in [sqrt(2)/2, sqrt(2)) (log()'s reduction, subnormals
 * scaled first).  f = m - 1 is then exact. */
PFC_VM_INLINE void log_reduce(double x, double& k, double& m) {
    const bool sub = x < 2.2250738585072014e-308;
    const double xs = select_(sub, x * 0x1p54, x);
    const uint64_t ix = bits(xs) + (0x3ff0000000000000ULL - 0x3fe6a09e00000000ULL);
    k = biased_exponent(ix) - select_(sub, 54.0, 0.0);
    m = as_double((ix & 0x000fffffffffffffULL) + 0x3fe6a09e00000000ULL);
}
PFC_VM_INLINE void log_reduce(float x, float& k, float& m) {
    const bool sub = x < 1.17549435e-38f;
    const float xs = select_(sub, x * 0x1p25f, x);
    const uint32_t ix = bits(xs) + (0x3f800000U - 0x3f3504f3U);
    k = biased_exponent(ix) - select_(sub, 25.0f, 0.0f);
    m = as_float((ix & 0x007fffffU) + 0x3f3504f3U);
}

/* log_reduce() for normal x only. */
PFC_VM_INLINE void log_reduce_normal(double x, double& k, double& m) {
    const uint64_t ix = bits(x) + (0x3ff0000000000000ULL - 0x3fe6a09e00000000ULL);
    k = biased_exponent(ix);
    m = as_double((ix & 0x000fffffffffffffULL) + 0x3fe6a09e00000000ULL);
}
PFC_VM_INLINE void log_reduce_normal(float x, float& k, float& m) {
    const uint32_t ix = bits(x) + (0x3f800000U - 0x3f3504f3U);
    k = biased_exponent(ix);
    m = as_float((ix & 0x007fffffU) + 0x3f3504f3U);
}

/* log(u) + cu from the reduction u = 2^k (1 + f), s = f / (2 + f) and the
 * correction cu = c / u, for u in the normal range. */
PFC_VM_INLINE double log_combine(double k, double f, double s, double cu) {
    const double hfsq = 0.5 * f * f;
    return log_kernel_s(s, hfsq) + (k * LOG_LN2_LO_D + cu) - hfsq + f + k * LOG_LN2_HI_D;
}
PFC_VM_INLINE float log_combine(float k, float f, float s, float cu) {
    const float hfsq = 0.5f * f * f;
    return log_kernel_s(s, hfsq) + (k * LOG_LN2_LO_F + cu) - hfsq + f + k * LOG_LN2_HI_F;
}

/* c 2^-k: the correction c of u = 2^k m relative to 2^k.  Taken as 0 where
 * 2^-k would leave the range (|log u| > ~690 resp. ~80, where c / u, at
 * most an ulp of 1, is far below an ulp of the logarithm). */
PFC_VM_INLINE double unscale(double c, double k) {
    const bool ok = fabs_(k) < 1000.0;
    return select_(ok, c * pow2i(select_(ok, -k, 0.0)), 0.0);
}
PFC_VM_INLINE float unscale(float c, float k) {
    const bool ok = fabs_(k) < 120.0f;
    return select_(ok, c * pow2i(select_(ok, -k, 0.0f)), 0.0f);
}

/* log(u) + cu from the reduction u = 2^k (1 + f), s = f / (2 + f) and the
 * correction cu = c / u; special values of u as in log(). */
PFC_VM_INLINE double log_assemble(double u, double k, double f, double s, double cu) {
    double y = log_combine(k, f, s, cu);
    y = select_(u == INF_D, u, y);
    y = select_(u == 0.0, -INF_D, y);
    y = select_(u < 0.0, __builtin_nan(""), y);
    return select_(u != u, u + u, y);
}
PFC_VM_INLINE float log_assemble(float u, float k, float f, float s, float cu) {
    float y = log_combine(k, f, s, cu);
    y = select_(u == INF_F, u, y);
    y = select_(u == 0.0f, -INF_F, y);
    y = select_(u < 0.0f, __builtin_nanf(""), y);
    return select_(u != u, u + u, y);
}

}  // namespace detail

/* log(u + c) for u >= 0 and a correction |c| <= ulp(u) given apart, e.g.
 * u = fl(1 + q) and c = q - (u - 1), its rounding error, which makes it
 * log1p(q) -- and, with a select on u and c, one function for log1p(q) and
 * log(v) in the same lane.  Computed as log(u) + c/u, where s = f / (2 + f)
 * of the log kernel and c/u = c 2^-k / m come from one reciprocal of
 * (2 + f) m.  Special values of u as in log() (c is then ignored). */
template <typename T>
PFC_VM_INLINE T log_sum(T u, T c) {
    using namespace detail;
    T k, m;
    log_reduce(u, k, m);
    const T f = m - T(1);
    const T two_f = T(1) + m;   /* 2 + f */
    const T rcp = T(1) / (two_f * m);
    const T s = (f * m) * rcp;
    const T cu = (unscale(c, k) * two_f) * rcp;
    return log_assemble(u, k, f, s, cu);
}

/* The range of u where log_sum_normal() and log_sum2_normal() hold:
 * [2^-1000, 2^1000) (float: [2^-100, 2^100)), where u (2 + f) and 2^-k are
 * normal too. */
PFC_VM_INLINE bool log_sum_in_range(double u) { return (u >= 0x1p-1000) & (u < 0x1p1000); }
PFC_VM_INLINE bool log_sum_in_range(float u) { return (u >= 0x1p-100f) & (u < 0x1p100f); }

/* log_sum() without the special cases, for u in range (log_sum_in_range);
 * other u give garbage, to be replaced by the caller.  About 25 vector
 * operations fewer than log_sum(), for loops where out-of-range arguments
 * are rare and can be redone apart.  Here s = f / (2 + f) = f u R and
 * c / u = c (2 + f) R with R = 1 / (u (2 + f)), so no 2^-k is needed (f u
 * may be subnormal only where f < 2^-22, when s matters only through
 * terms of order f^3). */
template <typename T>
PFC_VM_INLINE T log_sum_normal(T u, T c) {
    using namespace detail;
    T k, m;
    log_reduce_normal(u, k, m);
    const T f = m - T(1);
    const T two_f = T(1) + m;   /* 2 + f */
    const T rcp = T(1) / (two_f * u);
    return log_combine(k, f, (f * u) * rcp, (c * two_f) * rcp);
}

/* log(u1 + c1) and log(u2 + c2) as log_sum_normal(), sharing one division. */
template <typename T>
PFC_VM_INLINE void log_sum2_normal(T u1, T c1, T u2, T c2, T& l1, T& l2) {
    using namespace detail;
    T k1, m1, k2, m2;
    log_reduce_normal(u1, k1, m1);
    log_reduce_normal(u2, k2, m2);
    const T f1 = m1 - T(1), f2 = m2 - T(1);
    const T tf1 = T(1) + m1, tf2 = T(1) + m2;
    const T d1 = tf1 * m1, d2 = tf2 * m2;   /* each in [1.2, 3.5) */
    const T rcp = T(1) / (d1 * d2);
    const T r1 = d2 * rcp, r2 = d1 * rcp;   /* 1 / d1, 1 / d2 */
    l1 = log_combine(k1, f1, (f1 * m1) * r1, ((c1 * pow2i(-k1)) * tf1) * r1);
    l2 = log_combine(k2, f2, (f2 * m2) * r2, ((c2 * pow2i(-k2)) * tf2) * r2);
}

/* ---------------------------------------------------- CPU feature levels */

enum { LEVEL_BASELINE = 0, LEVEL_AVX2 = 1, LEVEL_AVX512 = 2 };

/* The widest vector ISA the running CPU supports, among the copies
 * PFC_VM_TARGET_* can build.  Cheap: the feature bits are cached by libgcc. */
inline int cpu_level() {
#if PFC_VM_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma")) {
        return LEVEL_AVX512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        return LEVEL_AVX2;
    }
#endif
    return LEVEL_BASELINE;
}

/* ------------------------------------------------------- array helpers
 *
 * The loop pattern for kernels: a plain `PFC_VM_PRAGMA_SIMD` loop over
 * contiguous data calling pfc::vm functions, instantiated once for the
 * baseline ISA and once per PFC_VM_TARGET_* attribute, and a dispatcher that
 * picks the copy matching cpu_level().  out may equal in (element-wise).
 * `level` lets tests force a copy; -1 means "best available".
 */
#define PFC_VM_ARRAY_LOOP(fn)                                                   \
    PFC_VM_PRAGMA_SIMD                                                          \
    for (index_t i = 0; i < n; ++i) {                                           \
        out[i] = fn(in[i]);                                                     \
    }

#if PFC_VM_DISPATCH
#define PFC_VM_DEFINE_ARRAY(fn)                                                 \
    namespace detail {                                                          \
    template <typename T> void fn##_array_base(const T* in, T* out, index_t n) { \
        PFC_VM_ARRAY_LOOP(pfc::vm::fn)                                          \
    }                                                                           \
    template <typename T>                                                       \
    PFC_VM_TARGET_AVX2 void fn##_array_avx2(const T* in, T* out, index_t n) {   \
        PFC_VM_ARRAY_LOOP(pfc::vm::fn)                                          \
    }                                                                           \
    template <typename T>                                                       \
    PFC_VM_TARGET_AVX512 void fn##_array_avx512(const T* in, T* out, index_t n) { \
        PFC_VM_ARRAY_LOOP(pfc::vm::fn)                                          \
    }                                                                           \
    }                                                                           \
    template <typename T>                                                       \
    inline void fn##_array(const T* in, T* out, index_t n, int level = -1) {    \
        const int best = cpu_level();                                           \
        if (level < 0 || level > best) level = best;                            \
        if (level == LEVEL_AVX512) {                                            \
            detail::fn##_array_avx512(in, out, n);                              \
        } else if (level == LEVEL_AVX2) {                                       \
            detail::fn##_array_avx2(in, out, n);                                \
        } else {                                                                \
            detail::fn##_array_base(in, out, n);                                \
        }                                                                       \
    }
#else
#define PFC_VM_DEFINE_ARRAY(fn)                                                 \
    template <typename T>                                                       \
    inline void fn##_array(const T* in, T* out, index_t n, int level = -1) {    \
        (void)level;                                                            \
        PFC_VM_ARRAY_LOOP(pfc::vm::fn)                                          \
    }
#endif

PFC_VM_DEFINE_ARRAY(exp)
PFC_VM_DEFINE_ARRAY(expm1)
PFC_VM_DEFINE_ARRAY(log)
PFC_VM_DEFINE_ARRAY(log1p)
PFC_VM_DEFINE_ARRAY(tanh)

#if PFC_VM_DISPATCH
/* tanh_array's AVX-512 copies, written with intrinsics: their tables live in
 * two registers each and are read by in-register permutes (vpermt2ps: 32
 * floats, vpermt2pd: 16 doubles), where SSE/AVX2 would need gathers.
 * gcc 12's unmasked AVX-512 intrinsics pass _mm512_undefined_* through, which
 * -Wmaybe-uninitialized reports (GCC PR 105593, fixed in gcc 13). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace detail {

#define PFC_VM_ZMM_INL PFC_VM_TARGET_AVX512 inline __attribute__((always_inline))

/* One zmm register of T and the few operations on it that the AVX-512
 * kernels need (these, realnvp_cpu.h's GEMM tiles and rowwise_cpu.h's
 * radial square roots); tail(n) masks the first min(n, L) lanes, load and
 * store take such a mask, loadu and storeu move whole vectors, fnma(a, b,
 * c) is c - a b rounded once, rsqrt14 and rcp14 the 2^-14 estimates.  Ymm
 * below is the AVX2 counterpart of the GEMM's subset. */
template <typename T> struct Zmm;

template <> struct Zmm<double> {
    typedef __m512d v;
    typedef __mmask8 m;
    enum { L = 8 };
    static PFC_VM_ZMM_INL m tail(index_t n) { return (m)((n >= 8) ? 0xff : ((1u << n) - 1u)); }
    static PFC_VM_ZMM_INL v load(const double* p, m k) { return _mm512_maskz_loadu_pd(k, p); }
    static PFC_VM_ZMM_INL void store(double* p, v a, m k) { _mm512_mask_storeu_pd(p, k, a); }
    static PFC_VM_ZMM_INL v loadu(const double* p) { return _mm512_loadu_pd(p); }
    static PFC_VM_ZMM_INL void storeu(double* p, v a) { _mm512_storeu_pd(p, a); }
    static PFC_VM_ZMM_INL v set1(double a) { return _mm512_set1_pd(a); }
    static PFC_VM_ZMM_INL v zero() { return _mm512_setzero_pd(); }
    static PFC_VM_ZMM_INL v fma(v a, v b, v c) { return _mm512_fmadd_pd(a, b, c); }
    static PFC_VM_ZMM_INL v fnma(v a, v b, v c) { return _mm512_fnmadd_pd(a, b, c); }
    static PFC_VM_ZMM_INL v add(v a, v b) { return _mm512_add_pd(a, b); }
    static PFC_VM_ZMM_INL v mul(v a, v b) { return _mm512_mul_pd(a, b); }
    static PFC_VM_ZMM_INL v rsqrt14(v a) { return _mm512_rsqrt14_pd(a); }
    static PFC_VM_ZMM_INL v rcp14(v a) { return _mm512_rcp14_pd(a); }
};

template <> struct Zmm<float> {
    typedef __m512 v;
    typedef __mmask16 m;
    enum { L = 16 };
    static PFC_VM_ZMM_INL m tail(index_t n) { return (m)((n >= 16) ? 0xffff : ((1u << n) - 1u)); }
    static PFC_VM_ZMM_INL v load(const float* p, m k) { return _mm512_maskz_loadu_ps(k, p); }
    static PFC_VM_ZMM_INL void store(float* p, v a, m k) { _mm512_mask_storeu_ps(p, k, a); }
    static PFC_VM_ZMM_INL v loadu(const float* p) { return _mm512_loadu_ps(p); }
    static PFC_VM_ZMM_INL void storeu(float* p, v a) { _mm512_storeu_ps(p, a); }
    static PFC_VM_ZMM_INL v set1(float a) { return _mm512_set1_ps(a); }
    static PFC_VM_ZMM_INL v zero() { return _mm512_setzero_ps(); }
    static PFC_VM_ZMM_INL v fma(v a, v b, v c) { return _mm512_fmadd_ps(a, b, c); }
    static PFC_VM_ZMM_INL v fnma(v a, v b, v c) { return _mm512_fnmadd_ps(a, b, c); }
    static PFC_VM_ZMM_INL v add(v a, v b) { return _mm512_add_ps(a, b); }
    static PFC_VM_ZMM_INL v mul(v a, v b) { return _mm512_mul_ps(a, b); }
    static PFC_VM_ZMM_INL v rsqrt14(v a) { return _mm512_rsqrt14_ps(a); }
    static PFC_VM_ZMM_INL v rcp14(v a) { return _mm512_rcp14_ps(a); }
};

#define PFC_VM_YMM_INL PFC_VM_TARGET_AVX2 inline __attribute__((always_inline))

/* One ymm register of T with Zmm's interface as far as realnvp_cpu.h's GEMM
 * tiles use it.  AVX2 has no mask registers: a mask is a vector whose lanes
 * are all ones (taken) or zero, and masked loads and stores are vmaskmov,
 * which is slow to store on AMD cores, so the tiles use it only for a
 * panel's ragged last vector. */
template <typename T> struct Ymm;

template <> struct Ymm<double> {
    typedef __m256d v;
    typedef __m256i m;
    enum { L = 4 };
    static PFC_VM_YMM_INL m tail(index_t n) {
        return _mm256_cmpgt_epi64(_mm256_set1_epi64x((long long)(n < 4 ? n : 4)),
                                  _mm256_setr_epi64x(0, 1, 2, 3));
    }
    static PFC_VM_YMM_INL v load(const double* p, m k) { return _mm256_maskload_pd(p, k); }
    static PFC_VM_YMM_INL void store(double* p, v a, m k) { _mm256_maskstore_pd(p, k, a); }
    static PFC_VM_YMM_INL v loadu(const double* p) { return _mm256_loadu_pd(p); }
    static PFC_VM_YMM_INL void storeu(double* p, v a) { _mm256_storeu_pd(p, a); }
    static PFC_VM_YMM_INL v set1(double a) { return _mm256_set1_pd(a); }
    static PFC_VM_YMM_INL v zero() { return _mm256_setzero_pd(); }
    static PFC_VM_YMM_INL v fma(v a, v b, v c) { return _mm256_fmadd_pd(a, b, c); }
};

template <> struct Ymm<float> {
    typedef __m256 v;
    typedef __m256i m;
    enum { L = 8 };
    static PFC_VM_YMM_INL m tail(index_t n) {
        return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 8 ? n : 8)),
                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
    static PFC_VM_YMM_INL v load(const float* p, m k) { return _mm256_maskload_ps(p, k); }
    static PFC_VM_YMM_INL void store(float* p, v a, m k) { _mm256_maskstore_ps(p, k, a); }
    static PFC_VM_YMM_INL v loadu(const float* p) { return _mm256_loadu_ps(p); }
    static PFC_VM_YMM_INL void storeu(float* p, v a) { _mm256_storeu_ps(p, a); }
    static PFC_VM_YMM_INL v set1(float a) { return _mm256_set1_ps(a); }
    static PFC_VM_YMM_INL v zero() { return _mm256_setzero_ps(); }
    static PFC_VM_YMM_INL v fma(v a, v b, v c) { return _mm256_fmadd_ps(a, b, c); }
};

/* The float coefficient tables, loaded into registers once per loop:
 * entries 0-15 of COEF[k] in lo16[k], 16-31 in hi16[k]. */
struct TanhTableF32 {
    __m512 lo16[tanh_table::DEGREE + 3], hi16[tanh_table::DEGREE + 3];
    PFC_VM_ZMM_INL TanhTableF32() {
        for (int k = 0; k < tanh_table::DEGREE + 3; ++k) {
            lo16[k] = _mm512_load_ps(tanh_table::COEF[k]);
            hi16[k] = _mm512_load_ps(tanh_table::COEF[k] + 16);
        }
    }
};

/* tanh of 16 floats: piecewise polynomials instead of tanh()'s two
 * branches (33 vector operations and a division per 16 floats, ~35% of a
 * float32 Real NVP forward).  30 intervals cover [0, 9.5]; a lane's interval
 * index is its bit pattern >> 21 (exponent and two leading mantissa bits,
 * minus FIRST, at least 0), and each coefficient is one vpermt2ps from a
 * 32-entry table.  On an interval [lo, lo + w),
 * tanh(lo + t) = HI + (LO + t Q(t)) with tanh(lo) = HI + LO and Q of degree
 * 4 (pfc_tanh_table.h, generated by gen_tanh_table.py, explains the fit).
 * t = |x| - lo is exact (lo: |x| with the mantissa bits below the index
 * cleared, or 0 below 1/16).  Max error 1.0 ulp over every float (measured
 * exhaustively), at ~21 operations and no division per 16 floats.  |x| is
 * capped at 9.5, where tanh rounds to 1, before the index is taken; NaN
 * passes the cap (min(9.5, NaN) is NaN) and stays NaN through t; the sign
 * is copied back from x, so -0 and +-inf come out right. */
PFC_VM_ZMM_INL __m512 tanh_zmm(const TanhTableF32& tab, __m512 x) {
    namespace tt = tanh_table;
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
    const __m512i xi = _mm512_castps_si512(x);
    const __m512 a = _mm512_min_ps(_mm512_set1_ps(tt::CAP),
                                   _mm512_castsi512_ps(_mm512_and_si512(xi, abs_mask)));
    const __m512i ai = _mm512_castps_si512(a);
    const __m512i idx = _mm512_max_epi32(
        _mm512_sub_epi32(_mm512_srli_epi32(ai, tt::SHIFT), _mm512_set1_epi32(tt::FIRST)),
        _mm512_setzero_si512());
    const __mmask16 binned = _mm512_cmp_ps_mask(a, _mm512_set1_ps(0.0625f), _CMP_GE_OQ);
    const __m512 lo = _mm512_castsi512_ps(
        _mm512_maskz_and_epi32(binned, ai, _mm512_set1_epi32(-(1 << tt::SHIFT))));
    const __m512 t = _mm512_sub_ps(a, lo);
    const int top = tt::DEGREE + 2;
    __m512 p = _mm512_permutex2var_ps(tab.lo16[top], idx, tab.hi16[top]);
    for (int k = top - 1; k >= 1; --k) {
        p = _mm512_fmadd_ps(p, t, _mm512_permutex2var_ps(tab.lo16[k], idx, tab.hi16[k]));
    }
    p = _mm512_add_ps(p, _mm512_permutex2var_ps(tab.lo16[0], idx, tab.hi16[0]));
    /* p >= 0: take x's sign bit (ternary logic: abs_mask ? p : x). */
    return _mm512_castsi512_ps(
        _mm512_ternarylogic_epi32(abs_mask, _mm512_castps_si512(p), xi, 0xca));
}

/* 2^(j/16) as HI (1 + RATIO), in registers (entries 0-7, 8-15). */
struct TanhTableF64 {
    __m512d hi[2], ratio[2];
    PFC_VM_ZMM_INL TanhTableF64() {
        for (int h = 0; h < 2; ++h) {
            hi[h] = _mm512_load_pd(tanh_table::EXP2_16_HI + 8 * h);
            ratio[h] = _mm512_load_pd(tanh_table::EXP2_16_RATIO + 8 * h);
        }
    }
};

/* e^(-2a) of 8 doubles a >= 0 from a 16-entry table instead of a
 * degree-10 polynomial: e = 2^m T_j e^r, n = 16 m + j = round(-2a 16 /
 * ln2), |r| <= ln2/32, e^r - 1 to degree 8 (Taylor; the next term is below
 * 2^-60 of it), T_j = 2^(j/16) = HI (1 + RATIO) from one vpermt2pd each
 * (pfc_tanh_table.h).  Returned as e = 2^-M s (1 + p): s = 2^(m + M) HI,
 * p = (e^r - 1) + RATIO (1 + r); the caller picks M so that 2^(m + M) is
 * normal for every a it lets through.  The product n LN2_16_HI is taken
 * inside an FMA, so the reduction is exact for any such n. */
template <int M>
PFC_VM_ZMM_INL __m512d exp_neg2_zmm(const TanhTableF64& tab, __m512d a, __m512d& p) {
    namespace tt = tanh_table;
    /* n in the low bits of kshift: the table index (vpermt2pd reads bits
     * 0-3) and, shifted, 2^m's exponent. */
    const __m512d shift = _mm512_set1_pd(SHIFT_D);
    const __m512d kshift = _mm512_fmadd_pd(a, _mm512_set1_pd(tt::MINUS_32_OVER_LN2), shift);
    const __m512i kbits = _mm512_castpd_si512(kshift);
    const __m512d n = _mm512_sub_pd(kshift, shift);
    const __m512d r = _mm512_sub_pd(
        _mm512_fnmadd_pd(n, _mm512_set1_pd(tt::LN2_16_HI), _mm512_mul_pd(a, _mm512_set1_pd(-2.0))),
        _mm512_mul_pd(n, _mm512_set1_pd(tt::LN2_16_LO)));
    __m512d q = _mm512_set1_pd(1.0 / 40320);
    q = _mm512_fmadd_pd(q, r, _mm512_set1_pd(1.0 / 5040));
    q = _mm512_fmadd_pd(q, r, _mm512_set1_pd(1.0 / 720));
    q = _mm512_fmadd_pd(q, r, _mm512_set1_pd(1.0 / 120));
    q = _mm512_fmadd_pd(q, r, _mm512_set1_pd(1.0 / 24));
    q = _mm512_fmadd_pd(q, r, _mm512_set1_pd(1.0 / 6));
    q = _mm512_fmadd_pd(q, r, _mm512_set1_pd(0.5));
    const __m512d ratio = _mm512_permutex2var_pd(tab.ratio[0], kbits, tab.ratio[1]);
    p = _mm512_fmadd_pd(_mm512_mul_pd(r, r), q, _mm512_add_pd(r, _mm512_fmadd_pd(ratio, r, ratio)));
    /* 2^(m + M), m = floor(n / 16): (n + 16 (1023 + M)) >> 4 << 52, n =
     * kbits - bits(SHIFT_D) */
    const __m512i bias = _mm512_set1_epi64(16 * (1023 + M) - (long long)bits(SHIFT_D));
    const __m512d scale = _mm512_castsi512_pd(
        _mm512_slli_epi64(_mm512_srli_epi64(_mm512_add_epi64(kbits, bias), 4), 52));
    return _mm512_mul_pd(_mm512_permutex2var_pd(tab.hi[0], kbits, tab.hi[1]), scale);
}

/* tanh of 8 doubles: tanh()'s quotient (1 - e) / (1 + e), e = e^(-2|x|) =
 * s (1 + p) from exp_neg2_zmm (M = 0).  HI is a multiple of 2^-50, so for
 * |x| <= 0.55 (m >= -2), where the quotient cancels, s = 2^m HI gives
 * 1 - s and 1 + s exactly and e enters both through one FMA.  Beyond 0.55
 * tanh = 1 - 2e / (1 + e), as in tanh().  |x| is capped at 40 (tanh rounds
 * to 1 from 19.1; 2^m stays normal); tiny |x| needs no branch (n = 0,
 * e - 1 = p = -2|x|, and tanh = 2|x| / 2).  Max error 2.1 ulp
 * (tests/test_vmath.py; the worst just past |x| = ln2/32, n = -1), at ~33
 * vector operations per 8 doubles instead of tanh()'s ~45. */
PFC_VM_ZMM_INL __m512d tanh_zmm(const TanhTableF64& tab, __m512d x) {
    const __m512i abs_mask = _mm512_set1_epi64(0x7fffffffffffffffLL);
    const __m512d one = _mm512_set1_pd(1.0);
    const __m512i xi = _mm512_castpd_si512(x);
    const __m512d a = _mm512_min_pd(_mm512_set1_pd(40.0),
                                    _mm512_castsi512_pd(_mm512_and_si512(xi, abs_mask)));
    __m512d p;
    const __m512d s = exp_neg2_zmm<0>(tab, a, p);
    const __mmask8 far = _mm512_cmp_pd_mask(a, _mm512_set1_pd(0.55), _CMP_GT_OQ);
    const __m512d den = _mm512_fmadd_pd(s, p, _mm512_add_pd(one, s));
    const __m512d num = _mm512_mask_mul_pd(_mm512_fnmadd_pd(s, p, _mm512_sub_pd(one, s)), far,
                                           _mm512_fmadd_pd(s, p, s), _mm512_set1_pd(2.0));
    const __m512d quo = _mm512_div_pd(num, den);
    const __m512d t = _mm512_mask_sub_pd(quo, far, one, quo);
    return _mm512_castsi512_pd(
        _mm512_ternarylogic_epi64(abs_mask, _mm512_castpd_si512(t), xi, 0xca));
}

/* tanh_sech2 of 8 doubles with tanh_zmm's tabled exponential: t = num / den
 * as there, taken as num (1 / den) (half an ulp more, as in tanh_sech2),
 * so that the same reciprocal gives hp = 4e / (1 + e)^2.  Where tanh_zmm
 * caps |x| at 40, hp would be wrong: here the cap is 373, where e rounds
 * to 0, and exp_neg2_zmm gives s60 = 2^(m + 60) HI, normal for every m
 * kept, so that a subnormal e = 2^-60 s60 (1 + p) rounds once; hp keeps
 * its relative accuracy until it underflows (as tanh_sech2's).  ~38 vector
 * operations per 8 doubles instead of tanh_sech2's ~50. */
PFC_VM_ZMM_INL void tanh_sech2_zmm(const TanhTableF64& tab, __m512d x, __m512d& t, __m512d& hp) {
    const __m512i abs_mask = _mm512_set1_epi64(0x7fffffffffffffffLL);
    const __m512d one = _mm512_set1_pd(1.0);
    const __m512i xi = _mm512_castpd_si512(x);
    const __m512d a = _mm512_min_pd(_mm512_set1_pd(373.0),
                                    _mm512_castsi512_pd(_mm512_and_si512(xi, abs_mask)));
    __m512d p;
    const __m512d s60 = exp_neg2_zmm<60>(tab, a, p);
    const __m512d tiny = _mm512_set1_pd(0x1p-60);
    const __m512d s = _mm512_mul_pd(s60, tiny);   /* exact where it matters (m >= -2) */
    const __m512d e = _mm512_mul_pd(_mm512_fmadd_pd(s60, p, s60), tiny);
    const __mmask8 far = _mm512_cmp_pd_mask(a, _mm512_set1_pd(0.55), _CMP_GT_OQ);
    const __m512d inv = _mm512_div_pd(one, _mm512_fmadd_pd(s, p, _mm512_add_pd(one, s)));
    const __m512d num = _mm512_mask_mul_pd(_mm512_fnmadd_pd(s, p, _mm512_sub_pd(one, s)), far,
                                           e, _mm512_set1_pd(2.0));
    const __m512d quo = _mm512_mul_pd(num, inv);
    t = _mm512_castsi512_pd(_mm512_ternarylogic_epi64(
        abs_mask, _mm512_castpd_si512(_mm512_mask_sub_pd(quo, far, one, quo)), xi, 0xca));
    hp = _mm512_mul_pd(_mm512_mul_pd(_mm512_mul_pd(e, _mm512_set1_pd(4.0)), inv), inv);
}

/* out[i] = tanh(in[i]) through tanh_zmm with the Table, a register at a time,
 * the last one masked. */
template <typename T, typename Table>
PFC_VM_TARGET_AVX512 inline void tanh_table_array(const T* in, T* out, index_t n) {
    typedef Zmm<T> S;
    const Table tab;
    for (index_t i = 0; i < n; i += S::L) {
        const typename S::m live = S::tail(n - i);
        S::store(out + i, tanh_zmm(tab, S::load(in + i, live)), live);
    }
}

template <>
PFC_VM_TARGET_AVX512 inline void tanh_array_avx512<float>(const float* in, float* out,
                                                         index_t n) {
    tanh_table_array<float, TanhTableF32>(in, out, n);
}

template <>
PFC_VM_TARGET_AVX512 inline void tanh_array_avx512<double>(const double* in, double* out,
                                                          index_t n) {
    tanh_table_array<double, TanhTableF64>(in, out, n);
}
}  // namespace detail
#pragma GCC diagnostic pop
#endif

/* t[i], hp[i] = tanh_sech2(in[i]), the pair's array helper (for the tests):
 * the loop of PFC_VM_DEFINE_ARRAY, but for doubles on AVX-512 the copy the
 * planar sweeps run there (tanh_sech2_zmm). */
#define PFC_VM_TANH_SECH2_LOOP                                                  \
    PFC_VM_PRAGMA_SIMD                                                          \
    for (index_t i = 0; i < n; ++i) {                                           \
        T tv, hv;                                                               \
        tanh_sech2(in[i], tv, hv);                                              \
        t[i] = tv;                                                              \
        hp[i] = hv;                                                             \
    }
namespace detail {
template <typename T>
void tanh_sech2_array_base(const T* in, T* t, T* hp, index_t n) { PFC_VM_TANH_SECH2_LOOP }
#if PFC_VM_DISPATCH
template <typename T>
PFC_VM_TARGET_AVX2 void tanh_sech2_array_avx2(const T* in, T* t, T* hp, index_t n) {
    PFC_VM_TANH_SECH2_LOOP
}
PFC_VM_TARGET_AVX512 inline void tanh_sech2_array_avx512(const float* in, float* t, float* hp,
                                                         index_t n) {
    typedef float T;
    PFC_VM_TANH_SECH2_LOOP
}
PFC_VM_TARGET_AVX512 inline void tanh_sech2_array_avx512(const double* in, double* t,
                                                         double* hp, index_t n) {
    const TanhTableF64 tab;
    for (index_t i = 0; i < n; i += 8) {
        const __mmask8 live = Zmm<double>::tail(n - i);
        __m512d tv, hv;
        tanh_sech2_zmm(tab, _mm512_maskz_loadu_pd(live, in + i), tv, hv);
        _mm512_mask_storeu_pd(t + i, live, tv);
        _mm512_mask_storeu_pd(hp + i, live, hv);
    }
}
#endif
}  // namespace detail
#undef PFC_VM_TANH_SECH2_LOOP

template <typename T>
inline void tanh_sech2_array(const T* in, T* t, T* hp, index_t n, int level = -1) {
#if PFC_VM_DISPATCH
    const int best = cpu_level();
    if (level < 0 || level > best) level = best;
    if (level == LEVEL_AVX512) {
        detail::tanh_sech2_array_avx512(in, t, hp, n);
        return;
    }
    if (level == LEVEL_AVX2) {
        detail::tanh_sech2_array_avx2(in, t, hp, n);
        return;
    }
#else
    (void)level;
#endif
    detail::tanh_sech2_array_base(in, t, hp, n);
}

#undef PFC_VM_DEFINE_ARRAY
#undef PFC_VM_ARRAY_LOOP

}  // namespace vm
}  // namespace pfc

#endif  /* PFC_VMATH_H */
