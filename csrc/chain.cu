/*
 * chain.cu -- CUDA kernels for runs of row-wise flows (ElementwiseScale,
 * Shift, Planar, Radial), the GPU counterpart of pyflowcore/_kernels/chain.pyx.
 * A single row-wise layer is a run of one.
 *
 * Design
 * ------
 * One thread per row.  A layer is described as on the CPU: `kinds` (the
 * LayerKind codes of rowwise.h, whose layer_* functions dispatch on them),
 * `param_offsets`, and the work / accumulator offsets that `chain_plan`
 * derives from the headers' size functions.  `chain_prepare` turns the raw
 * parameters into every layer's derived coefficients (`work`) on the device,
 * one thread per layer, so parameters never travel to the host.
 *
 * `chain_transform` (forward or inverse) stages a tile of rows in the
 * threads' regions (pfc_cuda.cuh), carries each row through all K layers in
 * place, and writes it out once: a 16-layer chain reads and writes the batch
 * once.  The work coefficients are copied into shared memory when they fit
 * (every thread of a warp reads the same coefficient: a broadcast).
 *
 * `chain_vjp` (backward or inverse_backward) recomputes the layers per row
 * as chain.pyx does, keeping the inputs of layers 0..K-2 in a global
 * stack laid out thread-minor (entry j of slot s of thread t at
 * (s * dim + j) * nthreads + t, so a warp's accesses are coalesced), then runs
 * the layers' VJPs in reverse.  A thread's region holds its current row, its
 * cotangent and one layer's gradient scratch: before layer k's VJP the
 * scratch is zeroed, X_backward_row adds the row's contribution, and the
 * warp sums the scratch with shuffles in a fixed order; lane 0 adds the warp
 * total into that warp's accumulator for the whole kernel (shared memory when
 * it fits).  At the end each block writes one partial (or each warp, when the
 * accumulators live in global memory); `chain_reduce` sums the partials over
 * slots in slot order and `chain_finish` applies X_finish_grad per layer.
 * No per-row gradient is ever written to memory, and the result is the same
 * on every run with the same launch configuration.
 */
#include "pfc_config.h"
#include "pfc_cuda.cuh"
#include "rowwise.h"

namespace pfc {

/* -- kernels ---------------------------------------------------------------- */

/* The work and accumulator offsets of a run (K + 1 each) from the headers'
 * size functions, as the CPU's plan computes them.  One thread. */
__global__ void chain_plan(const int* kinds, int K, int dim, long long* work_off,
                           long long* acc_off) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    work_off[0] = 0;
    acc_off[0] = 0;
    for (int k = 0; k < K; ++k) {
        work_off[k + 1] = work_off[k] + layer_work_size(kinds[k], dim);
        acc_off[k + 1] = acc_off[k] + layer_grad_acc_size(kinds[k], dim);
    }
}

/* work[work_off[k]:] = derived coefficients of layer k, one thread per layer. */
template <typename T>
__global__ void chain_prepare(const int* kinds, int K, const T* params,
                              const long long* param_off, const long long* work_off, int dim,
                              T* work) {
    const int k = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    if (k < K) layer_prepare(kinds[k], params + param_off[k], dim, work + work_off[k]);
}

/*
 * out, log_det = forward(v) (inverse == 0) or inverse(v) (inverse != 0).
 * Shared memory: [work (work_total, if work_in_smem)] [regions (blockDim.x *
 * stride, if rows_g is not used)].  rows_g: gridDim.x * blockDim.x * stride
 * values, used when rows_in_smem == 0.
 */
template <typename T>
__global__ void chain_transform(int inverse, const int* kinds, int K, const long long* work_off,
                                const T* work_g, long long work_total, int work_in_smem,
                                int dim, index_t n, const T* v, T* out, T* log_det,
                                T* rows_g, int rows_in_smem, int stride) {
    T* sm = cuda::shared_array<T>();
    const T* work = work_g;
    long long used = 0;
    if (work_in_smem) {
        cuda::copy_block(work_g, work_total, sm);
        work = sm;
        used = work_total;
    }
    const index_t B = blockDim.x;
    T* regions = rows_in_smem ? sm + used : rows_g + static_cast<index_t>(blockIdx.x) * B * stride;
    T* row = regions + static_cast<index_t>(cuda::tid()) * stride;
    __syncthreads();
    const index_t ntiles = (n + B - 1) / B;
    for (index_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
        const index_t row0 = tile * B;
        const int rows = cuda::tile_rows(row0, n);
        cuda::load_tile(v, row0, rows, dim, regions, stride);
        __syncthreads();
        if (cuda::tid() < rows) {
            T ld;
            if (!inverse) {
                ld = layer_forward_row(kinds[0], work + work_off[0], dim, row, row);
                for (int k = 1; k < K; ++k) {
                    ld = ld + layer_forward_row(kinds[k], work + work_off[k], dim, row, row);
                }
            } else {
                ld = layer_inverse_row(kinds[K - 1], work + work_off[K - 1], dim, row, row);
                for (int k = K - 2; k >= 0; --k) {
                    ld = ld + layer_inverse_row(kinds[k], work + work_off[k], dim, row, row);
                }
            }
            log_det[row0 + cuda::tid()] = ld;
        }
        __syncthreads();
        cuda::store_tile(out, row0, rows, dim, regions, stride);
        __syncthreads();
    }
}

/*
 * Backward (inverse == 0): v = z, grad_out = grad_x, grad_in = grad_z.
 * Inverse backward (inverse != 0): v = x, grad_out = grad_z, grad_in = grad_x.
 *
 * Region of a thread (stride values): row (ld) | cotangent (ld) | gradient
 * scratch (the largest layer accumulator).  stack: (K - 1) * dim * nthreads
 * values, thread-minor.  Shared memory: [work (if work_in_smem)] [per-warp
 * accumulators, nwarps * acc_total (if acc_in_smem)] [regions (if
 * rows_in_smem)].  partial: gridDim.x slots of acc_total values when
 * acc_in_smem, else gridDim.x * nwarps slots, zeroed by the caller.
 */
template <typename T>
__global__ void chain_vjp(int inverse, const int* kinds, int K, const long long* work_off,
                          const long long* acc_off, const T* work_g, long long work_total,
                          int work_in_smem, int dim, index_t n, const T* v, const T* grad_out,
                          const T* grad_log_det, T* grad_in, T* stack, T* partial,
                          int acc_in_smem, T* rows_g, int rows_in_smem, int stride, int ld) {
    T* sm = cuda::shared_array<T>();
    const long long acc_total = acc_off[K];
    const int nwarps = static_cast<int>(blockDim.x) / 32;
    const int warp = cuda::tid() / 32, lane = cuda::tid() % 32;
    const T* work = work_g;
    long long used = 0;
    if (work_in_smem) {
        cuda::copy_block(work_g, work_total, sm);
        work = sm;
        used = work_total;
    }
    T* warp_acc;
    if (acc_in_smem) {
        warp_acc = sm + used + warp * acc_total;
        for (long long j = cuda::tid(); j < nwarps * acc_total; j += blockDim.x) sm[used + j] = T(0);
        used += nwarps * acc_total;
    } else {
        warp_acc = partial + (static_cast<index_t>(blockIdx.x) * nwarps + warp) * acc_total;
    }
    const index_t B = blockDim.x;
    T* regions = rows_in_smem ? sm + used : rows_g + static_cast<index_t>(blockIdx.x) * B * stride;
    T* row = regions + static_cast<index_t>(cuda::tid()) * stride;
    T* grad = row + ld;
    T* scratch = row + 2 * ld;
    const index_t nthreads = static_cast<index_t>(gridDim.x) * B;
    const index_t gtid = static_cast<index_t>(blockIdx.x) * B + cuda::tid();
    __syncthreads();

    const index_t ntiles = (n + B - 1) / B;
    for (index_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
        const index_t row0 = tile * B;
        const int rows = cuda::tile_rows(row0, n);
        const bool active = cuda::tid() < rows;
        cuda::load_tile(v, row0, rows, dim, regions, stride);
        cuda::load_tile(grad_out, row0, rows, dim, regions + ld, stride);
        __syncthreads();
        const T gld = active ? grad_log_det[row0 + cuda::tid()] : T(0);
        /* Recompute: stack slot s gets the input of the s-th map applied
         * (layer s forward, layer K-1-s inverse); row ends as the last input. */
        if (active) {
            for (int s = 0; s < K - 1; ++s) {
                for (int j = 0; j < dim; ++j) stack[(static_cast<index_t>(s) * dim + j) * nthreads + gtid] = row[j];
                if (!inverse) {
                    layer_forward_row(kinds[s], work + work_off[s], dim, row, row);
                } else {
                    layer_inverse_row(kinds[K - 1 - s], work + work_off[K - 1 - s], dim, row, row);
                }
            }
        }
        /* VJPs in reverse application order: layers K-1..0 for the forward
         * map, 0..K-1 for the inverse; slot K-1-q holds the input of the q-th. */
        for (int q = 0; q < K; ++q) {
            const int k = inverse ? q : K - 1 - q;
            const int na = static_cast<int>(acc_off[k + 1] - acc_off[k]);
            for (int j = 0; j < na; ++j) scratch[j] = T(0);
            if (active) {
                if (q > 0) {
                    const index_t s = K - 1 - q;
                    for (int j = 0; j < dim; ++j) row[j] = stack[(s * dim + j) * nthreads + gtid];
                }
                if (!inverse) {
                    layer_backward_row(kinds[k], work + work_off[k], dim, row, grad, gld, grad,
                                       scratch);
                } else {
                    layer_inverse_backward_row(kinds[k], work + work_off[k], dim, row, grad, gld,
                                               grad, scratch);
                }
            }
            T* wa = warp_acc + acc_off[k];
            for (int j = 0; j < na; ++j) {
                const T total = cuda::warp_sum(scratch[j]);
                if (lane == 0) wa[j] += total;
            }
        }
        __syncthreads();
        cuda::store_tile(grad_in, row0, rows, dim, regions + ld, stride);
        __syncthreads();
    }
    if (acc_in_smem) {
        /* Warps' totals in warp order: one partial per block. */
        const T* acc_s = sm + (work_in_smem ? work_total : 0);
        T* dst = partial + static_cast<index_t>(blockIdx.x) * acc_total;
        for (long long j = cuda::tid(); j < acc_total; j += blockDim.x) {
            T s = acc_s[j];
            for (int w = 1; w < nwarps; ++w) s += acc_s[w * acc_total + j];
            dst[j] = s;
        }
    }
}

/* acc[j] = sum over slots of partial[slot, j], in slot order. */
template <typename T>
__global__ void chain_reduce(const T* partial, long long nslots, long long acc_total, T* acc) {
    for (long long j = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; j < acc_total;
         j += static_cast<long long>(gridDim.x) * blockDim.x) {
        T s = T(0);
        for (long long slot = 0; slot < nslots; ++slot) s += partial[slot * acc_total + j];
        acc[j] = s;
    }
}

/* grad_params of layer k from its batch-summed accumulator, one thread per layer. */
template <typename T>
__global__ void chain_finish(const int* kinds, int K, const T* params, const long long* param_off,
                             const T* work, const long long* work_off, const T* acc,
                             const long long* acc_off, int dim, T* grad_params) {
    const int k = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    if (k < K) {
        layer_finish_grad(kinds[k], params + param_off[k], work + work_off[k], dim,
                           acc + acc_off[k], grad_params + param_off[k]);
    }
}

}  // namespace pfc

#ifdef PFC_INSTANTIATE_ALL
#define PFC_CHAIN_INSTANTIATE(T)                                                              \
    template __global__ void pfc::chain_prepare<T>(const int*, int, const T*,                 \
                                                    const long long*, const long long*, int,   \
                                                    T*);                                       \
    template __global__ void pfc::chain_transform<T>(int, const int*, int, const long long*,  \
                                                      const T*, long long, int, int,           \
                                                      pfc::index_t, const T*, T*, T*, T*, int, \
                                                      int);                                    \
    template __global__ void pfc::chain_vjp<T>(int, const int*, int, const long long*,        \
                                                const long long*, const T*, long long, int,    \
                                                int, pfc::index_t, const T*, const T*,         \
                                                const T*, T*, T*, T*, int, T*, int, int, int); \
    template __global__ void pfc::chain_reduce<T>(const T*, long long, long long, T*);        \
    template __global__ void pfc::chain_finish<T>(const int*, int, const T*,                  \
                                                   const long long*, const T*,                 \
                                                   const long long*, const T*,                 \
                                                   const long long*, int, T*);
PFC_CHAIN_INSTANTIATE(float)
PFC_CHAIN_INSTANTIATE(double)
#undef PFC_CHAIN_INSTANTIATE
#endif
