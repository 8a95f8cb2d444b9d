/*
 * realnvp.cu -- the elementwise CUDA kernels of Real NVP, around the nets'
 * matrix products (which run in cuBLAS through CuPy's matmul; see
 * pyflowcore/cuda/realnvp.py).  The math is that of csrc/realnvp.h, shared
 * with the CPU kernels.
 *
 * Layouts (rows = the rows of the current chunk, p / c = passed / changed
 * entries of the mask, U = units):
 *   y, x, g         (rows, D)      row-major points and their cotangents
 *   zp              (rows, p)      the passed entries of y, gathered
 *   h, dh           (2, rows, U)   a hidden layer of the s-net [0] and t-net [1]
 *   st              (2, rows, c)   the output layers' values for the changed
 *                                  entries, without output bias: s [0], t [1];
 *                                  the coupling overwrites s with exp(+-s)
 *   dst             (2, rows, c)   their cotangents
 *
 * No arithmetic touches a mask zero: the first layer's product sees zp only
 * and the output layers produce the changed entries only.
 */
#include "pfc_config.h"
#include "pfc_cuda.cuh"
#include "realnvp.h"

namespace pfc {

__device__ __forceinline__ index_t realnvp_gid() {
    return static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ index_t realnvp_gstride() {
    return static_cast<index_t>(gridDim.x) * blockDim.x;
}

/* zp[r, i] = y[r, passed[i]]. */
template <typename T>
__global__ void realnvp_gather(const int* passed, int p, const T* y, int D, index_t rows, T* zp) {
    const index_t total = rows * p;
    for (index_t e = realnvp_gid(); e < total; e += realnvp_gstride()) {
        const index_t r = e / p;
        zp[e] = y[r * D + passed[e - r * p]];
    }
}

/* h = tanh(h + bias) for h (2, rows, U), bias (2, U). */
template <typename T>
__global__ void realnvp_bias_tanh(T* h, const T* bias, index_t rows, int units) {
    const index_t per_net = rows * units, total = 2 * per_net;
    for (index_t e = realnvp_gid(); e < total; e += realnvp_gstride()) {
        const index_t net = e / per_net;
        realnvp_tanh_row(h + e, bias + net * units + (e - net * per_net) % units, 1);
    }
}

/* d *= 1 - h^2, elementwise over total values. */
template <typename T>
__global__ void realnvp_tanh_grad(T* d, const T* h, index_t total) {
    for (index_t e = realnvp_gid(); e < total; e += realnvp_gstride()) {
        realnvp_tanh_grad_row(d + e, h + e, 1);
    }
}

/* One coupling, in place on x (rows, D), one thread per row; log_det is set
 * (first coupling of a pass) or added to. */
template <typename T>
__global__ void realnvp_coupling(int inverse, const int* changed, int c, T* st, const T* bias,
                                 T* x, int D, index_t rows, T* log_det, int accumulate) {
    const T* bias_s = bias;
    const T* bias_t = bias + c;
    for (index_t r = realnvp_gid(); r < rows; r += realnvp_gstride()) {
        T* s = st + r * c;
        const T* t = st + rows * c + r * c;
        const T ld =
            realnvp_coupling_row(inverse != 0, changed, c, s, t, bias_s, bias_t, x + r * D);
        log_det[r] = accumulate ? log_det[r] + ld : ld;
    }
}

/* VJP of one coupling, one thread per row.  e: exp(+-s) (rows, c) from
 * realnvp_coupling; y: the coupling's input (forward) or output (inverse);
 * g (rows, D): the output cotangent on entry, the input cotangent of the
 * changed entries on return; dst (2, rows, c): cotangents of s and t. */
template <typename T>
__global__ void realnvp_coupling_vjp(int inverse, const int* changed, int c, const T* e,
                                     const T* y, int D, const T* grad_log_det, T* g, T* dst,
                                     index_t rows) {
    for (index_t r = realnvp_gid(); r < rows; r += realnvp_gstride()) {
        T* ds = dst + r * c;
        T* dt = dst + rows * c + r * c;
        if (inverse) {
            realnvp_coupling_inverse_backward_row(changed, c, e + r * c, y + r * D,
                                                  grad_log_det[r], g + r * D, ds, dt);
        } else {
            realnvp_coupling_backward_row(changed, c, e + r * c, y + r * D, grad_log_det[r],
                                          g + r * D, ds, dt);
        }
    }
}

/* g[r, passed[i]] += dzp[0, r, i] + dzp[1, r, i]: the nets' part of the
 * passed entries' cotangent. */
template <typename T>
__global__ void realnvp_scatter_add(const int* passed, int p, const T* dzp, T* g, int D,
                                    index_t rows) {
    const index_t total = rows * p;
    for (index_t e = realnvp_gid(); e < total; e += realnvp_gstride()) {
        const index_t r = e / p;
        g[r * D + passed[e - r * p]] += dzp[e] + dzp[total + e];
    }
}

}  // namespace pfc

#ifdef PFC_INSTANTIATE_ALL
#define PFC_REALNVP_INSTANTIATE(T)                                                            \
    template __global__ void pfc::realnvp_gather<T>(const int*, int, const T*, int,           \
                                                     pfc::index_t, T*);                        \
    template __global__ void pfc::realnvp_bias_tanh<T>(T*, const T*, pfc::index_t, int);      \
    template __global__ void pfc::realnvp_tanh_grad<T>(T*, const T*, pfc::index_t);           \
    template __global__ void pfc::realnvp_coupling<T>(int, const int*, int, T*, const T*, T*, \
                                                       int, pfc::index_t, T*, int);            \
    template __global__ void pfc::realnvp_coupling_vjp<T>(int, const int*, int, const T*,     \
                                                           const T*, int, const T*, T*, T*,    \
                                                           pfc::index_t);                      \
    template __global__ void pfc::realnvp_scatter_add<T>(const int*, int, const T*, T*, int,  \
                                                          pfc::index_t);
PFC_REALNVP_INSTANTIATE(float)
PFC_REALNVP_INSTANTIATE(double)
#undef PFC_REALNVP_INSTANTIATE
#endif
