/*
 * pfc_cuda.cuh -- device-side plumbing shared by the CUDA sources (the csrc .cu files).
 *
 * The per-row math comes from the family headers, exactly as on the CPU; what
 * is here moves rows between global memory and the threads that work on them.
 *
 * Row regions.  A kernel that runs one thread per row gives each thread of a
 * block a *region*: `stride` consecutive values holding its row (and, for the
 * vector-Jacobian products, the row's cotangent and a gradient scratch).  The
 * regions of a block lie in dynamic shared memory when they fit, otherwise in
 * a global scratch buffer of gridDim.x * blockDim.x regions; the kernel code
 * is the same either way.  A block moves a tile of blockDim.x rows in and out
 * of its regions with `load_tile` / `store_tile`, whose consecutive threads
 * touch consecutive addresses of the row-major (n, dim) arrays, so global
 * traffic is coalesced although each thread then walks its own row.  An odd
 * stride keeps the threads' j-th entries in distinct shared-memory banks.
 *
 * Kernels loop over tiles with a block-uniform grid-stride loop, so every
 * thread of a block reaches every __syncthreads and every warp shuffle.
 */
#ifndef PFC_CUDA_CUH
#define PFC_CUDA_CUH

#include "pfc_config.h"

namespace pfc {
namespace cuda {

/* The dynamic shared memory of a launch, typed by the caller (one untyped
 * declaration, since templates over T may not each declare their own). */
extern __shared__ __align__(16) unsigned char smem_bytes[];

template <typename T>
__device__ __forceinline__ T* shared_array() {
    return reinterpret_cast<T*>(smem_bytes);
}

__device__ __forceinline__ int tid() { return static_cast<int>(threadIdx.x); }
__device__ __forceinline__ int nthreads_block() { return static_cast<int>(blockDim.x); }

/* Rows in the tile starting at row0 of an n-row batch. */
__device__ __forceinline__ int tile_rows(index_t row0, index_t n) {
    const index_t left = n - row0;
    return left < static_cast<index_t>(blockDim.x) ? static_cast<int>(left)
                                                   : static_cast<int>(blockDim.x);
}

/* regions[r * stride + j] = src[(row0 + r) * dim + j] for the tile's rows. */
template <typename T>
__device__ __forceinline__ void load_tile(const T* PFC_RESTRICT src, index_t row0, int rows,
                                          int dim, T* PFC_RESTRICT regions, int stride) {
    const T* s = src + row0 * dim;
    const int total = rows * dim;
    for (int e = tid(); e < total; e += nthreads_block()) {
        const int r = e / dim;
        regions[static_cast<index_t>(r) * stride + (e - r * dim)] = s[e];
    }
}

template <typename T>
__device__ __forceinline__ void store_tile(T* PFC_RESTRICT dst, index_t row0, int rows, int dim,
                                           const T* PFC_RESTRICT regions, int stride) {
    T* d = dst + row0 * dim;
    const int total = rows * dim;
    for (int e = tid(); e < total; e += nthreads_block()) {
        const int r = e / dim;
        d[e] = regions[static_cast<index_t>(r) * stride + (e - r * dim)];
    }
}

/* Copy n values into shared memory, cooperatively. */
template <typename T>
__device__ __forceinline__ void copy_block(const T* PFC_RESTRICT src, long long n,
                                           T* PFC_RESTRICT dst) {
    for (long long i = tid(); i < n; i += nthreads_block()) dst[i] = src[i];
}

/* Sum of v over the 32 lanes of a warp, in a fixed tree order (deterministic);
 * lane 0 receives the total.  Every lane must call it. */
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

}  // namespace cuda
}  // namespace pfc

#endif  /* PFC_CUDA_CUH */
