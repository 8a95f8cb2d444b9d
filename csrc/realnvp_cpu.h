/*
 * realnvp_cpu.h -- the CPU's vectorised tanh layer of the Real NVP nets
 * (CPU only: it builds on pfc_vmath.h).
 *
 * A Real NVP forward pass evaluates num_masks * 2 * num_layers * units tanh
 * per row (134M for 8 masks of 2 x 64 units on 65,536 rows): with libm's
 * scalar tanh that is most of the run time, far more than the GEMMs.  The
 * branch-free pfc::vm::tanh (<= 2 ulp) runs a whole row of units in AVX2 or
 * AVX-512 lanes.  realnvp_tanh_row in realnvp.h stays the definition the
 * GPU uses.
 */
#ifndef PFC_REALNVP_CPU_H
#define PFC_REALNVP_CPU_H

#include "pfc_vmath.h"
#include "realnvp.h"

namespace pfc {
namespace cpu {

/* h[r * ld + i] = tanh(h[r * ld + i] + bias[i]) for r < rows, i < n. */
template <typename T>
inline void realnvp_bias_tanh_block(T* h, index_t ld, const T* bias, index_t rows, int n) {
    for (index_t r = 0; r < rows; ++r) {
        T* hr = h + r * ld;
        for (int i = 0; i < n; ++i) hr[i] += bias[i];
        vm::tanh_array(hr, hr, n);
    }
}

}  // namespace cpu
}  // namespace pfc

#endif  /* PFC_REALNVP_CPU_H */
