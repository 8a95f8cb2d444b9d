# distutils: language = c++
"""Test and benchmark entry points of the vectorisable math in ``csrc/pfc_vmath.h``.

Design
------
The flow kernels call ``pfc::vm::exp``, ``log``, ``tanh``, ... inline inside
their own ``omp simd`` loops; this module only exposes the same functions on
contiguous 1-D arrays so that their accuracy and speed can be checked from
Python:

* ``exp, expm1, log, log1p, tanh(x, out, level=-1)`` run the header's
  ``*_array`` helpers, i.e. the loop pattern the kernels use: one copy built
  for baseline x86-64, one for AVX2+FMA and one for AVX-512, picked at run
  time from the CPU's features (``cpu_level``).  ``level`` forces a lower copy
  (0 baseline, 1 AVX2, 2 AVX-512) so that the tests cover every one the
  machine can run; a level the CPU lacks falls back to the best it has.
* ``tanh_sech2(x, t, hp, level=-1)`` is the planar kernels' fused pair,
  tanh and 1 - tanh^2, by the same dispatch.
* ``exp_libm`` ... ``tanh_libm`` are the plain scalar loops over the C
  library (``pfc::exp`` etc. from ``pfc_config.h``), the baseline for the
  benchmark.

All functions are fused over float32/float64, release the GIL, run on the
calling thread (the benchmark measures one core) and write only ``out``,
which may be ``x`` itself.
"""

from cython cimport floating


cdef extern from "pfc_config.h" namespace "pfc" nogil:
    ctypedef long long index_t
    float libm_exp "pfc::exp"(float)
    double libm_exp "pfc::exp"(double)
    float libm_expm1 "pfc::expm1"(float)
    double libm_expm1 "pfc::expm1"(double)
    float libm_log "pfc::log"(float)
    double libm_log "pfc::log"(double)
    float libm_log1p "pfc::log1p"(float)
    double libm_log1p "pfc::log1p"(double)
    float libm_tanh "pfc::tanh"(float)
    double libm_tanh "pfc::tanh"(double)


cdef extern from "pfc_vmath.h" namespace "pfc::vm" nogil:
    int cpu_level "pfc::vm::cpu_level"()
    int LEVEL_BASELINE "pfc::vm::LEVEL_BASELINE"
    int LEVEL_AVX2 "pfc::vm::LEVEL_AVX2"
    int LEVEL_AVX512 "pfc::vm::LEVEL_AVX512"
    void vm_exp_array "pfc::vm::exp_array"[T](const T* x, T* out, index_t n, int level)
    void vm_expm1_array "pfc::vm::expm1_array"[T](const T* x, T* out, index_t n, int level)
    void vm_log_array "pfc::vm::log_array"[T](const T* x, T* out, index_t n, int level)
    void vm_log1p_array "pfc::vm::log1p_array"[T](const T* x, T* out, index_t n, int level)
    void vm_tanh_array "pfc::vm::tanh_array"[T](const T* x, T* out, index_t n, int level)
    void vm_tanh_sech2_array "pfc::vm::tanh_sech2_array"[T](const T* x, T* t, T* hp, index_t n,
                                                          int level)


BASELINE = LEVEL_BASELINE
AVX2 = LEVEL_AVX2
AVX512 = LEVEL_AVX512


def best_level():
    """The widest instruction set this CPU runs: 0 baseline, 1 AVX2+FMA, 2 AVX-512."""
    return cpu_level()


cdef enum Fn:
    EXP
    EXPM1
    LOG
    LOG1P
    TANH


cdef void vm_array(Fn fn, const floating* x, floating* out, index_t n, int level) noexcept nogil:
    if fn == EXP:
        vm_exp_array(x, out, n, level)
    elif fn == EXPM1:
        vm_expm1_array(x, out, n, level)
    elif fn == LOG:
        vm_log_array(x, out, n, level)
    elif fn == LOG1P:
        vm_log1p_array(x, out, n, level)
    else:
        vm_tanh_array(x, out, n, level)


cdef inline floating libm(Fn fn, floating v) noexcept nogil:
    if fn == EXP:
        return libm_exp(v)
    if fn == EXPM1:
        return libm_expm1(v)
    if fn == LOG:
        return libm_log(v)
    if fn == LOG1P:
        return libm_log1p(v)
    return libm_tanh(v)


def _apply(Fn fn, const floating[::1] x, floating[::1] out, int level, bint use_libm):
    cdef Py_ssize_t n = x.shape[0], i
    if n != out.shape[0]:
        raise ValueError(f"x and out must have the same length, got {n} and {out.shape[0]}")
    if n == 0:
        return
    with nogil:
        if use_libm:
            for i in range(n):
                out[i] = libm(fn, x[i])
        else:
            vm_array(fn, &x[0], &out[0], n, level)


def exp(x, out, int level=-1):
    """out[i] = e^x[i] (vectorised pfc::vm::exp)."""
    _apply(EXP, x, out, level, False)


def expm1(x, out, int level=-1):
    """out[i] = e^x[i] - 1 (vectorised pfc::vm::expm1)."""
    _apply(EXPM1, x, out, level, False)


def log(x, out, int level=-1):
    """out[i] = log(x[i]) (vectorised pfc::vm::log)."""
    _apply(LOG, x, out, level, False)


def log1p(x, out, int level=-1):
    """out[i] = log(1 + x[i]) (vectorised pfc::vm::log1p)."""
    _apply(LOG1P, x, out, level, False)


def tanh(x, out, int level=-1):
    """out[i] = tanh(x[i]) (vectorised pfc::vm::tanh)."""
    _apply(TANH, x, out, level, False)


def tanh_sech2(const floating[::1] x, floating[::1] t, floating[::1] hp, int level=-1):
    """t[i] = tanh(x[i]), hp[i] = 1 - tanh(x[i])^2 (pfc::vm::tanh_sech2, the
    planar kernels' fused pair; for doubles on AVX-512 their tabled copy)."""
    cdef Py_ssize_t n = x.shape[0]
    if t.shape[0] != n or hp.shape[0] != n:
        raise ValueError(f"x, t and hp must have the same length, got {n}, {t.shape[0]} "
                         f"and {hp.shape[0]}")
    if n == 0:
        return
    with nogil:
        vm_tanh_sech2_array(&x[0], &t[0], &hp[0], n, level)


def exp_libm(x, out):
    """out[i] = exp(x[i]) through the C library, one scalar call per element."""
    _apply(EXP, x, out, -1, True)


def expm1_libm(x, out):
    """out[i] = expm1(x[i]) through the C library."""
    _apply(EXPM1, x, out, -1, True)


def log_libm(x, out):
    """out[i] = log(x[i]) through the C library."""
    _apply(LOG, x, out, -1, True)


def log1p_libm(x, out):
    """out[i] = log1p(x[i]) through the C library."""
    _apply(LOG1P, x, out, -1, True)


def tanh_libm(x, out):
    """out[i] = tanh(x[i]) through the C library."""
    _apply(TANH, x, out, -1, True)
