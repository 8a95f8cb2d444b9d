/*
 * radial.h -- per-row math of the radial flow (Rezende & Mohamed 2015, A.2),
 * in the row-wise contract shared with elementwise.h and planar.h (see
 * chain.pyx):
 *
 *   radial_prepare(params, dim, work)            derived coefficients, once per call
 *   radial_forward_row(work, dim, z, x)          -> log_det       (x may alias z)
 *   radial_inverse_row(work, dim, x, z)          -> log_det_inv   (z may alias x)
 *   radial_backward_row(work, dim, z, gx, gld, gz, acc)          (gz may alias gx)
 *   radial_inverse_backward_row(work, dim, x, gz, gld, gx, acc)  (gx may alias gz)
 *   radial_finish_grad(params, work, dim, acc, grad_params)
 *
 * Raw parameters: [log_alpha, beta_raw, z0 (dim)].
 *   alpha = exp(log_alpha),  s = softplus(beta_raw),  beta = s - alpha >= -alpha.
 *   d = z - z0,  r = |d|,  A = alpha + r,  h = 1/A.
 *   x = z + beta h d = z0 + g d,              g  = 1 + beta h = (s + r) / A
 *   log_det = (dim - 1) log g + log g2,       g2 = 1 + beta alpha / A^2
 *                                                = (r (2 alpha + r) + s alpha) / A^2
 *
 * Numerics.  The map is written in terms of s = alpha + beta, which the
 * parameterisation gives without cancellation: g and g2 are then ratios of
 * sums of non-negative terms, accurate even when beta is close to -alpha
 * (where 1 + beta h would cancel).  With inv = 1/A, u = r inv, v = alpha inv
 * (u + v = 1) the factors are g = s inv + u and g2 = u (1 + v) + s inv v,
 * which stay finite for huge r.  log g uses log1p(beta h) while beta h >
 * -1/2 (g near 1) and log(g) below, likewise for g2.  Norms are rescaled
 * when the plain sum of squares over- or underflows.
 *
 * Inverse.  rho = |x - z0| = r g(r) gives r^2 + (s - rho) r - alpha rho = 0,
 * whose non-negative root is taken as (-b + D)/2 for b = s - rho <= 0 and as
 * 2 alpha rho / (b + D) for b > 0, D = sqrt(b^2 + 4 alpha rho) (a scaled
 * hypot), so neither form cancels.  Then z = z0 + (x - z0) / g(r); x = z0
 * gives z = x exactly.  d rho / d r = g2 (the radial eigenvalue of the
 * Jacobian), which the inverse VJP uses for implicit differentiation.
 *
 * Gradients.  At z = z0 (x = z0 for the inverse) the map itself is still
 * differentiable (Jacobian g(0) I = (s / alpha) I) but the log-determinant
 * has a kink; the radial term of the VJP (along d / r) is taken as 0 there.
 *
 * work = [alpha, s, beta, z0 (dim)]
 * acc  = [dL/dalpha (s fixed), dL/ds (alpha fixed), dL/dz0 (dim)], summed
 *        over rows; radial_finish_grad maps them to the raw parameters:
 *        dL/dlog_alpha = alpha dL/dalpha, dL/dbeta_raw = sigmoid(beta_raw) dL/ds.
 */
#ifndef PFC_RADIAL_H
#define PFC_RADIAL_H

#include "pfc_config.h"

namespace pfc {

PFC_HOSTDEVICE PFC_INLINE int radial_work_size(int dim) { return dim + 3; }
PFC_HOSTDEVICE PFC_INLINE int radial_grad_acc_size(int dim) { return dim + 2; }

/* |a - b| over dim entries.  The plain sum of squares is used unless it
 * overflows or falls where squares lose precision; then the differences are
 * rescaled by their largest magnitude.  NaN stays NaN. */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE T radial_dist(const T* a, const T* b, int dim) {
    T ss = T(0);
    for (int i = 0; i < dim; ++i) {
        const T di = a[i] - b[i];
        ss += di * di;
    }
    const T big = pfc::limits<T>::max();
    const T small = (T(1) / big) / pfc::limits<T>::eps();
    if (!(ss > big) && !(ss < small)) {
        return pfc::sqrt(ss);  /* the common case, and NaN */
    }
    T m = T(0);
    for (int i = 0; i < dim; ++i) {
        const T ad = pfc::fabs(a[i] - b[i]);
        if (ad > m) m = ad;
    }
    if (m == T(0) || !(m <= big)) {
        return m;  /* every difference 0, or an infinite one */
    }
    ss = T(0);
    for (int i = 0; i < dim; ++i) {
        const T di = (a[i] - b[i]) / m;
        ss += di * di;
    }
    return m * pfc::sqrt(ss);
}

/* sqrt(p^2 + q^2) for p, q >= 0 without overflow or underflow. */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE T radial_hypot(T p, T q) {
    const T m = p > q ? p : q;
    const T n = p > q ? q : p;
    if (!(m > T(0)) || !(m <= pfc::limits<T>::max())) {
        return m + n;  /* 0, inf or NaN */
    }
    const T t = n / m;
    return m * pfc::sqrt(T(1) + t * t);
}

/* The radial factors at distance r: g = 1 + beta h, g2 = 1 + beta alpha h^2,
 * with inv = h, u = r h, v = alpha h; returns log_det. */
template <typename T>
struct radial_factors {
    T inv, u, v, g, g2, log_det;
};

template <typename T>
PFC_HOSTDEVICE PFC_INLINE radial_factors<T> radial_eval(const T* work, int dim, T r) {
    const T alpha = work[0], s = work[1], beta = work[2];
    radial_factors<T> f;
    f.inv = T(1) / (alpha + r);
    f.u = r * f.inv;
    f.v = alpha * f.inv;
    f.g = s * f.inv + f.u;
    f.g2 = f.u * (T(1) + f.v) + s * f.inv * f.v;
    const T q = beta * f.inv;        /* g - 1 */
    const T q2 = q * f.v;            /* g2 - 1 */
    const T log_g = q > T(-0.5) ? pfc::log1p(q) : pfc::log(f.g);
    const T log_g2 = q2 > T(-0.5) ? pfc::log1p(q2) : pfc::log(f.g2);
    f.log_det = (dim > 1 ? T(dim - 1) * log_g : T(0)) + log_g2;
    return f;
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void radial_prepare(const T* params, int dim, T* work) {
    const T alpha = pfc::exp(params[0]);
    const T s = pfc::softplus(params[1]);
    work[0] = alpha;
    work[1] = s;
    work[2] = s - alpha;
    for (int i = 0; i < dim; ++i) work[3 + i] = params[2 + i];
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE T radial_forward_row(const T* work, int dim, const T* z, T* x) {
    const T* z0 = work + 3;
    const T r = radial_dist(z, z0, dim);
    const radial_factors<T> f = radial_eval(work, dim, r);
    for (int i = 0; i < dim; ++i) x[i] = z0[i] + f.g * (z[i] - z0[i]);
    return f.log_det;
}

/* The non-negative root r of r^2 + (s - rho) r - alpha rho = 0. */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE T radial_solve_r(T alpha, T s, T rho) {
    const T b = s - rho;
    const T t = T(2) * pfc::sqrt(alpha) * pfc::sqrt(rho);   /* sqrt(4 alpha rho) */
    const T disc = radial_hypot(pfc::fabs(b), t);
    if (b <= T(0)) {
        return T(0.5) * disc - T(0.5) * b;
    }
    /* 2 alpha rho / (b + disc) = t^2 / (2 (b + disc)), halved first against overflow */
    const T den = T(0.5) * b + T(0.5) * disc;
    return den > T(0) ? (T(0.25) * t) * (t / den) : T(0);
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE T radial_inverse_row(const T* work, int dim, const T* x, T* z) {
    const T* z0 = work + 3;
    const T rho = radial_dist(x, z0, dim);
    const T r = radial_solve_r(work[0], work[1], rho);
    const radial_factors<T> f = radial_eval(work, dim, r);
    /* x = z0 maps to z = z0 = x; written directly because 1/g = alpha/s is
     * infinite when s = 0. */
    const T m = T(1) / f.g;
    if (rho == T(0)) {
        for (int i = 0; i < dim; ++i) z[i] = x[i];
    } else {
        for (int i = 0; i < dim; ++i) z[i] = z0[i] + m * (x[i] - z0[i]);
    }
    return -f.log_det;
}

/* The radial term k d_i / r of a VJP (d = z - z0, r = |d|; 0 at r = 0,
 * the kink, see the header), with kr = k / r precomputed: kr d_i, or where
 * kr overflows although k does not (a tiny length scale: k ~ 1/alpha,
 * r ~ alpha ~ 1e-155 and the term ~ k), k (d_i / r). */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE T radial_term(T k, T kr, T r, T d) {
    const T big = pfc::limits<T>::max();
    return !(pfc::fabs(kr) <= big) && pfc::fabs(k) <= big ? k * (d / r) : kr * d;
}

/*
 * VJP of z -> (x, L), with P = grad_x . d:
 *   grad_z  = g grad_x + (c / r) d,
 *     c     = -beta h [P h + gld ((dim-1)/(s+r) + 2 alpha h^2 / g2)]
 *   dL/dalpha = -g h P + gld [(2 r + s) h^2 / g2 - (dim+1) h]
 *   dL/ds     = h P + gld [(dim-1)/(s+r) + alpha h^2 / g2]
 *   dL/dz0    = grad_x - grad_z
 */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE void radial_backward_row(const T* work, int dim, const T* z,
                                                   const T* grad_x, T grad_log_det,
                                                   T* grad_z, T* acc) {
    const T s = work[1], beta = work[2];
    const T* z0 = work + 3;
    const T r = radial_dist(z, z0, dim);
    const radial_factors<T> f = radial_eval(work, dim, r);
    T P = T(0);
    for (int i = 0; i < dim; ++i) P += grad_x[i] * (z[i] - z0[i]);
    const T gld = grad_log_det;
    const T w1 = dim > 1 ? T(dim - 1) / (s + r) : T(0);
    const T vh_g2 = f.v * f.inv / f.g2;                       /* alpha h^2 / g2 */
    const T c = -beta * f.inv * (P * f.inv + gld * (w1 + T(2) * vh_g2));
    const T cr = r > T(0) ? c / r : T(0);
    /* h P and h / g2 before the factors of order h: g h and h^2 overflow for
     * tiny length scales (alpha ~ r ~ 1e-155). */
    acc[0] += -f.g * (f.inv * P)
              + gld * ((T(2) * f.u + s * f.inv) * (f.inv / f.g2) - T(dim + 1) * f.inv);
    acc[1] += f.inv * P + gld * (w1 + vh_g2);
    for (int i = 0; i < dim; ++i) {
        const T gx = grad_x[i];
        const T gz = f.g * gx + radial_term(c, cr, r, z[i] - z0[i]);
        acc[2 + i] += gx - gz;
        grad_z[i] = gz;
    }
}

/*
 * VJP of x -> (z, L_inv), z = z0 + e / g(r), L_inv = -(dim-1) log g - log g2,
 * e = x - z0, rho = |e|, r = r(rho, alpha, s) from rho = r g(r).
 * Implicitly, dr/drho = 1/g2, dr/dalpha = u g / g2, dr/ds = -u / g2.
 * With P = grad_z . e and m = 1/g, the loss depends on (r, alpha, s) through
 * log g (weight a1 = -(m P + (dim-1) gld)) and log g2 (weight a2 = -gld):
 *   d/dr:     log g: -beta h/(s+r)          log g2: -2 beta h alpha h^2 / g2
 *   d/dalpha: log g: -h                     log g2: (2r + s) h^2 / g2 - 2h
 *   d/ds:     log g: 1/(s+r)                log g2: alpha h^2 / g2
 *   grad_x = m grad_z + (l_r / g2) e / rho,   dL/dz0 = grad_z - grad_x,
 *   dL/dalpha = l_alpha + l_r u g / g2,       dL/ds = l_s - l_r u / g2.
 */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE void radial_inverse_backward_row(const T* work, int dim, const T* x,
                                                           const T* grad_z, T grad_log_det,
                                                           T* grad_x, T* acc) {
    const T s = work[1], beta = work[2];
    const T* z0 = work + 3;
    const T rho = radial_dist(x, z0, dim);
    const T r = radial_solve_r(work[0], s, rho);
    const radial_factors<T> f = radial_eval(work, dim, r);
    /* At x = z0 the map z(x) is still differentiable, dz/dx = (alpha/s) I = I/g(0). */
    const T m = T(1) / f.g;
    T P = T(0);
    for (int i = 0; i < dim; ++i) P += grad_z[i] * (x[i] - z0[i]);
    const T gld = grad_log_det;
    const T inv_sr = T(1) / (s + r);
    const T a1 = -(m * P + T(dim - 1) * gld);
    const T a2 = -gld;
    const T vh_g2 = f.v * f.inv / f.g2;                       /* alpha h^2 / g2 */
    const T l_r = -beta * f.inv * (a1 * inv_sr + T(2) * a2 * vh_g2);
    const T l_alpha = -a1 * f.inv
                      + a2 * ((T(2) * f.u + s * f.inv) * (f.inv / f.g2) - T(2) * f.inv);
    const T l_s = a1 * inv_sr + a2 * vh_g2;
    /* The radial term, taken as 0 at x = z0 (where u = 0): l_r / g2 can
     * overflow there, 1 / s^2 for a tiny s, and inf u would be NaN. */
    const T rho_bar = rho > T(0) ? l_r / f.g2 : T(0);
    const T cr = rho > T(0) ? rho_bar / rho : T(0);
    acc[0] += l_alpha + rho_bar * f.u * f.g;
    acc[1] += l_s - rho_bar * f.u;
    for (int i = 0; i < dim; ++i) {
        const T gz = grad_z[i];
        const T gx = m * gz + radial_term(rho_bar, cr, rho, x[i] - z0[i]);
        acc[2 + i] += gz - gx;
        grad_x[i] = gx;
    }
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void radial_finish_grad(const T* params, const T* work, int dim,
                                                  const T* acc, T* grad_params) {
    grad_params[0] = work[0] * acc[0];
    grad_params[1] = pfc::sigmoid(params[1]) * acc[1];
    for (int i = 0; i < dim; ++i) grad_params[2 + i] = acc[2 + i];
}

}  // namespace pfc

#endif  /* PFC_RADIAL_H */
