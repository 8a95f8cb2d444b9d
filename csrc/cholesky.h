/*
 * cholesky.h -- per-row math of the Cholesky product flow, which maps R^m,
 * m = n(n+1)/2, onto the lower triangles of the n x n positive-definite
 * matrices.  It has no parameters, so the row-wise contract of
 * elementwise.h shrinks to (n is the matrix order, not dim):
 *
 *   cholesky_forward_row(n, z, x)                        -> log_det      (x may alias z)
 *   cholesky_inverse_row(n, x, z)                        -> log_det_inv  (z may alias x)
 *   cholesky_backward_row(n, z, gx, gld, gz)                             (gz may alias gx)
 *   cholesky_inverse_backward_row(n, x, gz, gld, gx, scratch)           (gx may alias gz)
 *
 * Storage.  Every vector is a lower triangle packed row by row:
 * entry (i, j), 0 <= j <= i < n, sits at i(i+1)/2 + j.
 *
 * Forward.  L_ij = z_ij below the diagonal, L_ii = exp(z_ii);
 *   x_ij = Sigma_ij = sum_{k<=j} L_ik L_jk,
 *   log_det = n log 2 + sum_i (n - i + 1) z_ii     (0-based i)
 * i.e. n log 2 + sum_d (n - d + 1) log L_dd + sum_d z_dd with 1-based d.
 * Sigma_ij needs rows i and j of L up to column j, so the triangle is
 * written from its last entry backwards: nothing still to be read has been
 * overwritten, which makes x = z in place possible.  Only the k = j (and,
 * on the diagonal, k = i) term touches the exponentiated diagonal, so one
 * exp per output entry suffices.
 *
 * Inverse.  Cholesky-Banachiewicz on the lower triangle (the upper one is
 * never read), row by row, in place:
 *   s = Sigma_ij - sum_{k<j} L_ik L_jk,   L_ij = s / L_jj (j < i),  L_ii = sqrt(s),
 * then z_ii = log L_ii, log_det_inv = -(n log 2 + sum_i (n - i + 1) log L_ii).
 * A pivot s that is not a finite positive number (Sigma not positive
 * definite, or holding NaN or inf) makes the whole row of z and its
 * log_det_inv NaN: a per-row domain error, as a ufunc reports it, never an
 * exception, so the other rows of a batch are unaffected.
 *
 * Backward.  With G the lower-triangular cotangent of x,
 *   grad_L = (G + G^T) L,  i.e.  grad_L_ab = sum_{c=b}^{a} G_ac L_cb + sum_{c=a}^{n-1} G_ca L_cb,
 *   grad_z_ab = grad_L_ab (a > b),  grad_z_aa = grad_L_aa L_aa + grad_log_det (n - a + 1).
 * Entry (a, b) reads row a of G from column b on and column a of G below
 * row a; walking the rows and columns forwards, none of those is written
 * before it is read and row a of G is never read again, so grad_z may
 * overwrite grad_x.
 *
 * Inverse backward.  The cotangent of L is
 *   Lbar_ab = grad_z_ab (a > b),  Lbar_aa = (grad_z_aa - grad_log_det (n - a + 1)) / L_aa,
 * then the reverse mode of the factorisation above, its steps visited in
 * reverse order: at step (i, j), with sbar the cotangent of the pivot s,
 *   j < i:  sbar = Lbar_ij / L_jj,  Lbar_jj -= sbar L_ij     (dL_ij/dL_jj = -L_ij / L_jj)
 *   j = i:  sbar = Lbar_ii / (2 L_ii)
 *   grad_x_ij = sbar;  for k < j:  Lbar_ik -= sbar L_jk,  Lbar_jk -= sbar L_ik.
 * Every update lands on an entry whose step comes earlier, so Lbar_ij is
 * complete when step (i, j) reads it and grad_x_ij can take its place: the
 * sweep runs in the output buffer.  Because x holds only the lower triangle
 * and the factorisation reads only that, grad_x_ij is the plain partial
 * derivative with respect to x_ij (an off-diagonal x_ij stands for both
 * Sigma_ij and Sigma_ji).  L itself is needed throughout, in a caller-
 * provided scratch of cholesky_scratch_size(n) entries (per thread; the
 * header allocates nothing).
 */
#ifndef PFC_CHOLESKY_H
#define PFC_CHOLESKY_H

#include "pfc_config.h"

namespace pfc {

PFC_HOSTDEVICE PFC_INLINE int cholesky_tril_size(int n) { return n * (n + 1) / 2; }
PFC_HOSTDEVICE PFC_INLINE int cholesky_scratch_size(int n) { return n * (n + 1) / 2; }
PFC_HOSTDEVICE PFC_INLINE int cholesky_row_start(int i) { return i * (i + 1) / 2; }

/* n log 2 + sum_i (n - i + 1) d_i for the diagonal logs d_i = log L_ii. */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE T cholesky_log_det_of_diag_logs(int n, const T* packed) {
    T acc = T(n) * T(0.693147180559945309417232121458176568);
    for (int i = 0; i < n; ++i) acc += T(n - i + 1) * packed[cholesky_row_start(i) + i];
    return acc;
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE T cholesky_forward_row(int n, const T* z, T* x) {
    const T log_det = cholesky_log_det_of_diag_logs(n, z);
    for (int i = n - 1; i >= 0; --i) {
        const T* zi = z + cholesky_row_start(i);
        T* xi = x + cholesky_row_start(i);
        /* Diagonal: sum_{k<i} L_ik^2 + exp(2 z_ii). */
        T s = T(0);
        for (int k = 0; k < i; ++k) s += zi[k] * zi[k];
        const T lii = pfc::exp(zi[i]);
        xi[i] = s + lii * lii;
        for (int j = i - 1; j >= 0; --j) {
            const T* zj = z + cholesky_row_start(j);
            T t = T(0);
            for (int k = 0; k < j; ++k) t += zi[k] * zj[k];
            xi[j] = t + zi[j] * pfc::exp(zj[j]);
        }
    }
    return log_det;
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void cholesky_fill_nan(int n, T* out) {
    const T nan = T(0) / T(0);
    const int m = cholesky_tril_size(n);
    for (int k = 0; k < m; ++k) out[k] = nan;
}

/* The Cholesky factor of the packed lower triangle a into l (l may alias a).
 * Returns false, leaving l partly written, when a pivot is not a finite
 * positive number. */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE bool cholesky_factor(int n, const T* a, T* l) {
    for (int i = 0; i < n; ++i) {
        const T* ai = a + cholesky_row_start(i);
        T* li = l + cholesky_row_start(i);
        for (int j = 0; j <= i; ++j) {
            const T* lj = l + cholesky_row_start(j);
            T s = ai[j];
            for (int k = 0; k < j; ++k) s -= li[k] * lj[k];
            if (j < i) {
                li[j] = s / lj[j];
            } else {
                /* The negated test also rejects NaN. */
                if (!(s > T(0) && s <= pfc::limits<T>::max())) return false;
                li[i] = pfc::sqrt(s);
            }
        }
    }
    return true;
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE T cholesky_inverse_row(int n, const T* x, T* z) {
    if (!cholesky_factor(n, x, z)) {
        cholesky_fill_nan(n, z);
        return T(0) / T(0);
    }
    for (int i = 0; i < n; ++i) {
        T* zii = z + cholesky_row_start(i) + i;
        *zii = pfc::log(*zii);
    }
    return -cholesky_log_det_of_diag_logs(n, z);
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void cholesky_backward_row(int n, const T* z, const T* grad_x,
                                                     T grad_log_det, T* grad_z) {
    for (int a = 0; a < n; ++a) {
        const T* ga = grad_x + cholesky_row_start(a);
        T* gza = grad_z + cholesky_row_start(a);
        for (int b = 0; b <= a; ++b) {
            /* L_cb for c >= b: exp on the diagonal c = b, z below it. */
            const T lbb = pfc::exp(z[cholesky_row_start(b) + b]);
            T acc = ga[b] * lbb;
            for (int c = b + 1; c <= a; ++c) acc += ga[c] * z[cholesky_row_start(c) + b];
            /* Column a of G from the diagonal down; G_aa is counted twice. */
            const T lab = (a == b) ? lbb : z[cholesky_row_start(a) + b];
            acc += ga[a] * lab;
            for (int c = a + 1; c < n; ++c) {
                acc += grad_x[cholesky_row_start(c) + a] * z[cholesky_row_start(c) + b];
            }
            gza[b] = (a == b) ? acc * lbb + grad_log_det * T(n - a + 1) : acc;
        }
    }
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void cholesky_inverse_backward_row(int n, const T* x, const T* grad_z,
                                                             T grad_log_det, T* grad_x,
                                                             T* scratch) {
    T* l = scratch;
    if (!cholesky_factor(n, x, l)) {
        cholesky_fill_nan(n, grad_x);
        return;
    }
    /* Cotangent of L, elementwise, so grad_x may alias grad_z. */
    for (int a = 0; a < n; ++a) {
        const int r = cholesky_row_start(a);
        for (int b = 0; b < a; ++b) grad_x[r + b] = grad_z[r + b];
        grad_x[r + a] = (grad_z[r + a] - grad_log_det * T(n - a + 1)) / l[r + a];
    }
    T* lbar = grad_x;
    for (int i = n - 1; i >= 0; --i) {
        const int ri = cholesky_row_start(i);
        for (int j = i; j >= 0; --j) {
            const int rj = cholesky_row_start(j);
            T sbar;
            if (j == i) {
                sbar = lbar[ri + i] / (T(2) * l[ri + i]);
            } else {
                sbar = lbar[ri + j] / l[rj + j];
                lbar[rj + j] -= sbar * l[ri + j];
            }
            lbar[ri + j] = sbar;
            for (int k = 0; k < j; ++k) {
                lbar[ri + k] -= sbar * l[rj + k];
                lbar[rj + k] -= sbar * l[ri + k];
            }
        }
    }
}

}  // namespace pfc

#endif  /* PFC_CHOLESKY_H */
