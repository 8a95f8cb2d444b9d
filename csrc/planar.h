/*
 * planar.h -- per-row math of the planar flow (Rezende & Mohamed 2015, A.1),
 * in the row-wise contract shared with elementwise.h and radial.h (see
 * chain.pyx):
 *
 *   planar_prepare(params, dim, work)            derived coefficients, once per call
 *   planar_forward_row(work, dim, z, x)          -> log_det       (x may alias z)
 *   planar_inverse_row(work, dim, x, z)          -> log_det_inv   (z may alias x)
 *   planar_backward_row(work, dim, z, gx, gld, gz, acc)          (gz may alias gx)
 *   planar_inverse_backward_row(work, dim, x, gz, gld, gx, acc)  (gx may alias gz)
 *   planar_finish_grad(params, work, dim, acc, grad_params)
 *
 * Raw parameters: [u (dim), w (dim), b].
 *   uhat = u + k(w.u) w / |w|^2,   k(a) = m(a) - a = softplus(-a) - 1
 *   (m(a) = -1 + softplus(a); uhat = u when w = 0), so that
 *   c := w.uhat = m(w.u) = sp - 1,  sp := softplus(w.u) >= 0.
 *   s = w.z + b,  t = tanh(s),  hp = 1 - t^2 = tanh'(s)
 *   x = z + uhat t,   log_det = log D,   D = 1 + hp c = t^2 + hp sp.
 *
 * Numerics.  c and sp come from softplus directly (k uses the identity
 * softplus(a) - a = softplus(-a)), never from a dot product, so D is a sum
 * of two non-negative terms and has no cancellation even when c is -1 to
 * working precision (sp then still holds the tiny margin e^{w.u}).  t and
 * hp come from one exponential, e = exp(-2|s|): t = (1 - e)/(1 + e),
 * hp = 4e/(1 + e)^2, with 1 - e taken from expm1 for small |s|; hp keeps its
 * relative accuracy for large |s| where 1 - tanh^2 would round to 0.
 * log D uses log1p(hp c) while hp c > -1/2 and log(t^2 + hp sp) below.
 * |w|^2 is formed from w rescaled by max|w_i|, so tiny or huge w neither
 * under- nor overflows it, and uhat gets one refinement step along w so
 * that the computed w.uhat equals c to rounding (see planar_prepare).
 *
 * Inverse.  With Y = w.x + b, the pre-activation s = w.z + b is the root of
 *   G(s) = s + c tanh(s) - Y,   G'(s) = D(s) = t^2 + hp sp >= 0,
 * monotone because c >= -1, and inside [Y - |c|, Y + |c|].  Solving for s
 * rather than a = w.z keeps b out of the iteration.  Safeguarded Newton
 * (rtsafe) from a model-based start (planar_solve), each Newton step
 * q = G/G' taken to third order as Chebyshev's q (1 + q G''/(2 G')), where
 * G'' = -2 c t hp costs three multiplications and no division: 2.9 instead
 * of 3.5 evaluations per row on W6's layers, and 3.4 instead of 4.5 for the
 * slowest row of a 128-row block, which the block solve waits for.  Every
 * evaluation narrows the bracket by the sign of G; a step leaving the
 * bracket, or not halving the step before last (a slow, degenerate root:
 * c = -1 and s = 0 is a triple root), is replaced by bisection.  It stops
 * once |G| is at the level of its own rounding error (the result is
 * backward stable: it solves the equation for a Y perturbed by a few ulps,
 * which is all the rounding of x allows), at a step below a few ulps of s,
 * a bracket of a few ulps, or after PLANAR_MAX_ITER evaluations, and
 * returns the last evaluated s, whose t and hp are reused.  Where D is not
 * small that is s to a few ulps.  A non-finite Y skips the iteration, so a
 * NaN/inf row gives NaN/inf in its own outputs only.
 *
 * Gradients.  Per row the accumulator collects dL/duhat and dL/dw through
 * x = z + uhat t and s = w.z + b (uhat, w and c held fixed), dL/db and
 * dL/dc, c in D; planar_finish_grad applies the chain rule once, through
 * uhat(u, w) for the first part:
 *   duhat/du = I + k'(w.u) v w^T,
 *   duhat/dw = k'(w.u) v u^T + k (I - 2 v w^T) / |w|^2,   v = w / |w|^2,
 *   k'(a) = -sigmoid(-a),
 * and through c = m(w.u) for dL/dc: dc/du = sigmoid(w.u) w, dc/dw =
 * sigmoid(w.u) u.  Taken through uhat instead (c = w.uhat), c's part
 * would form sigmoid(w.u) as 1 + k'(w.u), which cancels to nothing once
 * e^{w.u} is below eps, near the boundary w.uhat = -1 where dL/dc = g hp / D
 * is large (w.u = -40, s = 0: dL/du 0 instead of 1).
 * The inverse VJP is implicit differentiation (J = I + hp uhat w^T at z):
 *   grad_x = J^{-T} (g_z + g grad_z log D) = g_z - d w,
 *   d = hp/D (uhat.g_z - 2 g c t / D),   g = grad of log_det_inv = -log D,
 * (Sherman-Morrison: J^{-T} = I - hp w uhat^T / D), and grad_params is minus
 * the forward VJP's parameter part at z with grad_x = grad_x and
 * grad_log_det = g (see planar.pyx for the algebra).
 *
 * work = [uhat (dim), w (dim), b, c, sp]
 * acc  = [dL/duhat (dim), dL/dw (dim), dL/db, dL/dc], summed over rows.
 */
#ifndef PFC_PLANAR_H
#define PFC_PLANAR_H

#include "pfc_config.h"

namespace pfc {

/* Bound on Newton/bisection evaluations per row.  Rows take 1-6, degenerate
 * ones (w.uhat = -1, s near 0) up to ~15 and absurd scales (|c| ~ 1e30) a
 * few dozen; the bound only guarantees termination, above the ~110
 * bisections that shrink a bracket of width 2|c| to one ulp. */
#define PLANAR_MAX_ITER 160

PFC_HOSTDEVICE PFC_INLINE int planar_work_size(int dim) { return 2 * dim + 3; }
PFC_HOSTDEVICE PFC_INLINE int planar_grad_acc_size(int dim) { return 2 * dim + 2; }

/* t = tanh(s) and hp = 1 - tanh(s)^2 from one exponential, both to a few
 * ulps of relative accuracy (hp too, for large |s|).  NaN propagates; s = inf
 * gives t = 1, hp = 0. */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE void planar_act(T s, T& t, T& hp) {
    const T as = pfc::fabs(s);
    T e, one_minus_e;
    if (as < T(0.55)) {
        /* e >= 1/3: 1 + expm1 is exact enough, and 1 - e must not cancel. */
        const T em = pfc::expm1(T(-2) * as);
        e = T(1) + em;
        one_minus_e = -em;
    } else {
        e = pfc::exp(T(-2) * as);
        one_minus_e = T(1) - e;
    }
    const T inv = T(1) / (T(1) + e);
    const T ta = one_minus_e * inv;
    t = s < T(0) ? -ta : ta;
    hp = T(4) * e * inv * inv;
}

/* log D, D = 1 + hp c = t^2 + hp sp. */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE T planar_log_d(T t, T hp, T c, T sp) {
    const T q = hp * c;
    return q > T(-0.5) ? pfc::log1p(q) : pfc::log(t * t + hp * sp);
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void planar_prepare(const T* params, int dim, T* work) {
    const T* u = params;
    const T* w = params + dim;
    T* uhat = work;
    T wu = T(0), wmax = T(0);
    for (int i = 0; i < dim; ++i) {
        wu += w[i] * u[i];
        const T aw = pfc::fabs(w[i]);
        if (aw > wmax) wmax = aw;
    }
    T sp = pfc::softplus(wu);
    if (wmax > T(0) && wmax <= pfc::limits<T>::max()) {
        /* w / |w|^2 = (w / wmax) / (wmax |w / wmax|^2), safe from over/underflow. */
        T nn = T(0);
        for (int i = 0; i < dim; ++i) {
            const T wi = w[i] / wmax;
            nn += wi * wi;
        }
        const T k = pfc::softplus(-wu) - T(1);
        const T scale = k / (wmax * nn);
        T wd = T(0);   /* (w / wmax).uhat */
        for (int i = 0; i < dim; ++i) {
            uhat[i] = u[i] + scale * (w[i] / wmax);
            wd += (w[i] / wmax) * uhat[i];
        }
        /* u + k w/|w|^2 cancels when u is nearly -lambda w with lambda large,
         * leaving w.uhat off by ~eps lambda |w|^2, so the map would not be
         * the one whose w.uhat = c the inverse and log_det use (and could
         * dip below -1).  One refinement step along w restores w.uhat = c to
         * rounding. */
        const T fix = (sp - T(1)) / wmax - wd;
        const T scale2 = fix / nn;
        for (int i = 0; i < dim; ++i) uhat[i] += scale2 * (w[i] / wmax);
    } else {
        /* w = 0: no correction (SPEC), uhat = u, and w.uhat = 0, not m(0),
         * so the Jacobian is I.  A NaN or infinite w (or u) poisons all. */
        const T poison = (wmax - wmax) + (wu - wu);   /* 0 or NaN */
        for (int i = 0; i < dim; ++i) uhat[i] = u[i] + poison;
        sp = T(1) + poison;
    }
    for (int i = 0; i < dim; ++i) work[dim + i] = w[i];
    work[2 * dim] = params[2 * dim];
    work[2 * dim + 1] = sp - T(1);
    work[2 * dim + 2] = sp;
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE T planar_forward_row(const T* work, int dim, const T* z, T* x) {
    const T* uhat = work;
    const T* w = work + dim;
    T s = work[2 * dim];
    for (int i = 0; i < dim; ++i) s += w[i] * z[i];
    T t, hp;
    planar_act(s, t, hp);
    for (int i = 0; i < dim; ++i) x[i] = z[i] + uhat[i] * t;
    return planar_log_d(t, hp, work[2 * dim + 1], work[2 * dim + 2]);
}

/* The root s of s + c tanh(s) = Y (see the header comment); returns s and
 * sets t = tanh(s), hp = 1 - t^2 at the returned s.
 *
 * G is odd in (s, Y), so the iteration runs on |Y| (root >= 0) and the sign
 * is restored at the end.  The start and bracket use the sign of the
 * curvature: for c > 0, G is concave on s >= 0 and the root lies in
 * [max(|Y| - c, |Y| / (1 + c)), |Y|]; Newton from the left end approaches
 * it monotonically (and the left end is the root itself when tanh is
 * saturated, or linear).  For -1 <= c < 0, G is convex there and the root
 * lies in [|Y|, |Y| + |c|]; the start min(|Y| + |c|, |Y| / (1 + c),
 * cbrt(3|Y| / |c|)) is the root of the saturated, linear or cubic model,
 * each at or near the root where that model holds (the cubic one is only
 * needed, and only computed, when 1 + c is small).  Typical rows take 2-4
 * evaluations (2-6 with Newton's plain steps); the degenerate ones no more
 * than about 10. */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE T planar_solve(T Y, T c, T sp, T& t, T& hp) {
    const T ya = pfc::fabs(Y);
    const T ac = pfc::fabs(c);
    const T big = pfc::limits<T>::max();
    if (!(ac <= big)) {
        planar_act(c - c, t, hp);   /* non-finite parameters: NaN */
        return t;
    }
    if (c == T(0) || ya == T(0) || !(ya <= big)) {
        /* the identity in s, the root s = 0 (a triple root when c = -1, so
         * it is not left to Newton), or a non-finite row */
        planar_act(Y, t, hp);
        return Y;
    }
    const T eps = pfc::limits<T>::eps();
    const T tiny = T(4) / big;   /* about the smallest normal number */
    T lo, hi, s;
    if (c > T(0)) {
        const T lin = ya / sp;
        lo = ya - c > lin ? ya - c : lin;
        hi = ya;
        s = lo;
    } else {
        lo = ya;
        hi = ya + ac;
        s = hi;
        if (sp > T(0)) {
            const T lin = ya / sp;
            if (lin < s) s = lin;
        }
        if (ya < ac && sp < T(0.25)) {
            /* Strong contraction: the cubic term matters near s = 0. */
            const T cub = pfc::exp(pfc::log(T(3) * ya / ac) * T(1.0 / 3.0));
            if (cub < s) s = cub;
        }
        if (!(s >= lo)) s = lo;
    }
    T dx_old = hi - lo, dx = dx_old;
    for (int it = 0; it < PLANAR_MAX_ITER; ++it) {
        planar_act(s, t, hp);
        const T ct = c * t, sy = s - ya;
        const T g = sy + ct;
        /* Stop once g is at the level of its own rounding error (t carries a
         * few ulps); this also ends a NaN row (bad parameters). */
        if (!(pfc::fabs(g) > eps * (T(4) * pfc::fabs(ct) + pfc::fabs(sy)))) break;
        if (g < T(0)) lo = s; else hi = s;
        /* Chebyshev's step: Newton's q = G / G' with the curvature's term,
         * q (1 - q k), k = c t hp / G' = -G'' / (2 G').  inf or NaN where
         * G' = 0: rejected below. */
        const T inv_gp = T(1) / (t * t + hp * sp);
        const T q = g * inv_gp;
        const T step = q - q * q * (ct * hp * inv_gp);
        T next = s - step;
        if (!(next >= lo && next <= hi) || !(pfc::fabs(T(2) * step) <= pfc::fabs(dx_old))) {
            dx_old = dx;
            dx = T(0.5) * (hi - lo);
            next = lo + dx;
        } else {
            dx_old = dx;
            dx = step;
        }
        if (pfc::fabs(next - s) <= T(2) * eps * (s > tiny ? s : tiny)) break;
        if (!(hi - lo > T(2) * eps * (hi > tiny ? hi : tiny))) break;
        s = next;
    }
    if (Y < T(0)) {
        t = -t;
        return -s;
    }
    return s;
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE T planar_inverse_row(const T* work, int dim, const T* x, T* z) {
    const T* uhat = work;
    const T* w = work + dim;
    T y = work[2 * dim];
    for (int i = 0; i < dim; ++i) y += w[i] * x[i];
    const T c = work[2 * dim + 1], sp = work[2 * dim + 2];
    T t, hp;
    planar_solve(y, c, sp, t, hp);
    for (int i = 0; i < dim; ++i) z[i] = x[i] - uhat[i] * t;
    return -planar_log_d(t, hp, c, sp);
}

/* L = g_x.x + g_ld log D:
 *   dL/ds = hp (g_x.uhat - 2 g_ld c t / D)       (d hp/ds = -2 t hp)
 *   grad_z = g_x + dL/ds w,  dL/duhat = t g_x,  dL/dw = dL/ds z,
 *   dL/db = dL/ds,  dL/dc = g_ld hp / D. */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE void planar_backward_row(const T* work, int dim, const T* z,
                                                   const T* grad_x, T grad_log_det,
                                                   T* grad_z, T* acc) {
    const T* uhat = work;
    const T* w = work + dim;
    const T c = work[2 * dim + 1], sp = work[2 * dim + 2];
    T s = work[2 * dim], gu = T(0);
    for (int i = 0; i < dim; ++i) {
        s += w[i] * z[i];
        gu += grad_x[i] * uhat[i];
    }
    T t, hp;
    planar_act(s, t, hp);
    const T inv_d = T(1) / (t * t + hp * sp);
    const T gc = grad_log_det * hp * inv_d;            /* dL/dc */
    const T ds = hp * gu - T(2) * gc * c * t;          /* dL/ds */
    T* acc_u = acc;
    T* acc_w = acc + dim;
    for (int i = 0; i < dim; ++i) {
        const T gx = grad_x[i];
        acc_u[i] += t * gx;
        acc_w[i] += ds * z[i];
        grad_z[i] = gx + ds * w[i];
    }
    acc[2 * dim] += ds;
    acc[2 * dim + 1] += gc;
}

/* x -> (z, -log D), g = grad_log_det (of log_det_inv):
 *   grad_x = J^{-T} (g_z + g grad_z log D) = g_z - d w,
 *   d = hp/D (uhat.g_z - 2 g c t / D),
 * and the parameter part is minus the forward one at (z, grad_x, g): here
 * uhat.grad_x = (uhat.q)/D makes the forward dL/ds equal d. */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE void planar_inverse_backward_row(const T* work, int dim, const T* x,
                                                           const T* grad_z, T grad_log_det,
                                                           T* grad_x, T* acc) {
    const T* uhat = work;
    const T* w = work + dim;
    const T c = work[2 * dim + 1], sp = work[2 * dim + 2];
    T y = work[2 * dim], gu = T(0);
    for (int i = 0; i < dim; ++i) {
        y += w[i] * x[i];
        gu += grad_z[i] * uhat[i];
    }
    T t, hp;
    planar_solve(y, c, sp, t, hp);
    const T inv_d = T(1) / (t * t + hp * sp);
    const T gc = grad_log_det * hp * inv_d;
    const T d = inv_d * (hp * gu - T(2) * gc * c * t);
    T* acc_u = acc;
    T* acc_w = acc + dim;
    for (int i = 0; i < dim; ++i) {
        const T r = grad_z[i] - d * w[i];
        const T zi = x[i] - uhat[i] * t;
        acc_u[i] -= t * r;
        acc_w[i] -= d * zi;
        grad_x[i] = r;
    }
    acc[2 * dim] -= d;
    acc[2 * dim + 1] -= gc;
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void planar_finish_grad(const T* params, const T* work, int dim,
                                                  const T* acc, T* grad_params) {
    (void)work;
    const T* u = params;
    const T* w = params + dim;
    const T* g_uhat = acc;
    const T* g_w = acc + dim;
    const T g_c = acc[2 * dim + 1];
    T wu = T(0), wmax = T(0);
    for (int i = 0; i < dim; ++i) {
        wu += w[i] * u[i];
        const T aw = pfc::fabs(w[i]);
        if (aw > wmax) wmax = aw;
    }
    if (!(wmax > T(0))) {
        /* w = 0: uhat = u, and the correction term is taken as constant 0,
         * so c = w.u: dc/du = w = 0, dc/dw = u. */
        for (int i = 0; i < dim; ++i) {
            grad_params[i] = g_uhat[i];
            grad_params[dim + i] = g_w[i] + g_c * u[i];
        }
        grad_params[2 * dim] = acc[2 * dim];
        return;
    }
    T nn = T(0), gv = T(0);
    for (int i = 0; i < dim; ++i) {
        const T wi = w[i] / wmax;
        nn += wi * wi;
        gv += g_uhat[i] * wi;
    }
    /* v = w / |w|^2 = (w / wmax) / (wmax nn); gv = g_uhat.v.  k / |w|^2 =
     * (k / (wmax nn)) / wmax is applied in that order, the vector between
     * the two factors: for a tiny w, 1 / |w|^2 alone overflows where the
     * gradient (g_uhat tiny too) does not. */
    const T inv_norm = T(1) / (wmax * nn);
    gv *= inv_norm;
    const T k = pfc::softplus(-wu) - T(1);
    const T dk = -pfc::sigmoid(-wu);
    const T kn = k * inv_norm;
    const T two_gv = T(2) * gv;
    const T gc_dc = g_c * pfc::sigmoid(wu);   /* dL/dc dc/d(w.u) */
    for (int i = 0; i < dim; ++i) {
        grad_params[i] = g_uhat[i] + (dk * gv + gc_dc) * w[i];
        grad_params[dim + i] = g_w[i] + (dk * gv + gc_dc) * u[i]
                               + kn * (g_uhat[i] - two_gv * w[i]) / wmax;
    }
    grad_params[2 * dim] = acc[2 * dim];
}

}  // namespace pfc

#endif  /* PFC_PLANAR_H */
