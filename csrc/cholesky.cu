/*
 * cholesky.cu -- CUDA kernels of the Cholesky product flow, the GPU
 * counterpart of pyflowcore/_kernels/cholesky.pyx.
 *
 * One thread per row (one packed matrix).  A tile of rows is staged in the
 * threads' regions (pfc_cuda.cuh) with coalesced loads, each thread runs the
 * row function of csrc/cholesky.h on its region, and the tile is written out
 * coalesced.  The flow has no parameters, so there is nothing to reduce.
 *
 * Region of a thread: transform: row (ld); backward: row (ld) | cotangent
 * (ld); inverse backward: row | cotangent | factor scratch (ld each).
 */
#include "pfc_config.h"
#include "pfc_cuda.cuh"
#include "cholesky.h"

namespace pfc {

/* out, log_det = forward(v) or inverse(v); the row functions work in place. */
template <typename T>
__global__ void cholesky_transform(int inverse, int n_order, int dim, index_t n, const T* v,
                                   T* out, T* log_det, T* rows_g, int rows_in_smem, int stride) {
    const index_t B = blockDim.x;
    T* regions = rows_in_smem ? cuda::shared_array<T>()
                              : rows_g + static_cast<index_t>(blockIdx.x) * B * stride;
    T* row = regions + static_cast<index_t>(cuda::tid()) * stride;
    const index_t ntiles = (n + B - 1) / B;
    for (index_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
        const index_t row0 = tile * B;
        const int rows = cuda::tile_rows(row0, n);
        cuda::load_tile(v, row0, rows, dim, regions, stride);
        __syncthreads();
        if (cuda::tid() < rows) {
            log_det[row0 + cuda::tid()] = inverse ? cholesky_inverse_row(n_order, row, row)
                                                  : cholesky_forward_row(n_order, row, row);
        }
        __syncthreads();
        cuda::store_tile(out, row0, rows, dim, regions, stride);
        __syncthreads();
    }
}

/* grad_in = VJP of forward at v (inverse == 0) or of inverse at v (inverse != 0). */
template <typename T>
__global__ void cholesky_vjp(int inverse, int n_order, int dim, index_t n, const T* v,
                             const T* grad_out, const T* grad_log_det, T* grad_in, T* rows_g,
                             int rows_in_smem, int stride, int ld) {
    const index_t B = blockDim.x;
    T* regions = rows_in_smem ? cuda::shared_array<T>()
                              : rows_g + static_cast<index_t>(blockIdx.x) * B * stride;
    T* row = regions + static_cast<index_t>(cuda::tid()) * stride;
    const index_t ntiles = (n + B - 1) / B;
    for (index_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
        const index_t row0 = tile * B;
        const int rows = cuda::tile_rows(row0, n);
        cuda::load_tile(v, row0, rows, dim, regions, stride);
        cuda::load_tile(grad_out, row0, rows, dim, regions + ld, stride);
        __syncthreads();
        if (cuda::tid() < rows) {
            const T gld = grad_log_det[row0 + cuda::tid()];
            if (inverse) {
                cholesky_inverse_backward_row(n_order, row, row + ld, gld, row + ld, row + 2 * ld);
            } else {
                cholesky_backward_row(n_order, row, row + ld, gld, row + ld);
            }
        }
        __syncthreads();
        cuda::store_tile(grad_in, row0, rows, dim, regions + ld, stride);
        __syncthreads();
    }
}

}  // namespace pfc

#ifdef PFC_INSTANTIATE_ALL
#define PFC_CHOLESKY_INSTANTIATE(T)                                                           \
    template __global__ void pfc::cholesky_transform<T>(int, int, int, pfc::index_t,          \
                                                         const T*, T*, T*, T*, int, int);      \
    template __global__ void pfc::cholesky_vjp<T>(int, int, int, pfc::index_t, const T*,      \
                                                   const T*, const T*, T*, T*, int, int, int);
PFC_CHOLESKY_INSTANTIATE(float)
PFC_CHOLESKY_INSTANTIATE(double)
#undef PFC_CHOLESKY_INSTANTIATE
#endif
