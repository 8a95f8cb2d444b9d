/*
 * pfc_config.h -- the one place where host (Cython/C++) and device (CUDA)
 * compilation differ.
 *
 * Every per-element math header in csrc/ includes this file and writes its
 * functions as templates over the floating type T, marked PFC_HOSTDEVICE.
 * The Cython kernels instantiate them for float and double on the CPU; the
 * CUDA sources (compiled by nvcc in CI and by NVRTC through CuPy at run time)
 * include the very same headers, so the CPU test-suite exercises the GPU's
 * arithmetic too.
 *
 * The pfc::math overloads below give one spelling (pfc::exp, pfc::log, ...)
 * that resolves to the float or double C function on either side; NVRTC has
 * no <cmath>, but provides these names as built-ins.
 */
#ifndef PFC_CONFIG_H
#define PFC_CONFIG_H

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define PFC_HOSTDEVICE __host__ __device__
#define PFC_INLINE __forceinline__
#define PFC_RESTRICT __restrict__
#else
#include <math.h>
#define PFC_HOSTDEVICE
#define PFC_INLINE inline
#define PFC_RESTRICT __restrict__
#endif

namespace pfc {

typedef long long index_t;

#define PFC_UNARY(name, fname, dname)                                              \
    PFC_HOSTDEVICE PFC_INLINE float name(float x) { return ::fname(x); }           \
    PFC_HOSTDEVICE PFC_INLINE double name(double x) { return ::dname(x); }

PFC_UNARY(exp, expf, exp)
PFC_UNARY(expm1, expm1f, expm1)
PFC_UNARY(log, logf, log)
PFC_UNARY(log1p, log1pf, log1p)
PFC_UNARY(tanh, tanhf, tanh)
PFC_UNARY(sqrt, sqrtf, sqrt)
PFC_UNARY(fabs, fabsf, fabs)
#undef PFC_UNARY

template <typename T> PFC_HOSTDEVICE PFC_INLINE T square(T x) { return x * x; }

/* Largest finite value and machine epsilon of T, usable in device code. */
template <typename T> struct limits;
template <> struct limits<float> {
    PFC_HOSTDEVICE static PFC_INLINE float max() { return 3.402823466e+38f; }
    PFC_HOSTDEVICE static PFC_INLINE float eps() { return 1.1920929e-07f; }
};
template <> struct limits<double> {
    PFC_HOSTDEVICE static PFC_INLINE double max() { return 1.7976931348623157e+308; }
    PFC_HOSTDEVICE static PFC_INLINE double eps() { return 2.220446049250313e-16; }
};

/* softplus(a) = log(1 + e^a), without overflow for large a and without
 * losing the tiny value for very negative a. */
template <typename T> PFC_HOSTDEVICE PFC_INLINE T softplus(T a) {
    return a > T(0) ? a + pfc::log1p(pfc::exp(-a)) : pfc::log1p(pfc::exp(a));
}

/* The logistic sigmoid, the derivative of softplus. */
template <typename T> PFC_HOSTDEVICE PFC_INLINE T sigmoid(T a) {
    if (a >= T(0)) {
        return T(1) / (T(1) + pfc::exp(-a));
    }
    const T e = pfc::exp(a);
    return e / (T(1) + e);
}

}  // namespace pfc

#endif  /* PFC_CONFIG_H */
