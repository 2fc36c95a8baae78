"""Winograd F(2x2, 3x3) passes fused a batch slice at a time, for the numba backend's large
maps (ResNet-18's 32x32 and 16x16 layers).

numba_winograd.py runs each pass as parallel kernels over the whole batch: the input
transform writes V (64 MB for layer1 at batch 64), the 16 GEMMs read it back, each whole on
one thread, and write M, which the output transform reads back. Every stack goes to memory
and back, and the GEMMs stream their operands from it: (64 x 64) @ (64 x T) runs at 48
GFLOP/s for T = 16,384 tiles on one thread of the 2-core EPYC, against 78-87 at T = 512 with
the operands in cache. Here each parallel task takes a slice of images and does every step
on it, the GEMMs through single-threaded CBLAS calls, so that no stack leaves its cache:

    forward   V_s = B^T d B -> M_s = U @ V_s -> y = A^T M_s A
    backward  dM_s = A dy A^T, db; V_s rebuilt; dU_g += dM_s @ V_s^T; dV_s = U^T @ dM_s -> dx

Nothing is kept between the passes but the input. The weight and bias gradients go into
len(parts) partials, each a fixed run of consecutive slices accumulated in order, then summed
in order: slices and runs follow from the batch and the shape, never from the thread count,
so neither do the results. The transforms are numba_winograd's own per-block loops.

The GEMMs are NumPy's CBLAS sgemm/dgemm (numba_gemm.find_cblas), passed in as `fn`: an
argument, not a constant, so the compiled kernels are cached on disk.
"""
import numpy as np
from numba import njit, prange

from . import numba_winograd as wk
from .numba_gemm import NO_TRANS, ROW_MAJOR, TRANS, sum_in_order

POSITIONS = wk.POSITIONS
_SKEW = 16      # elements after each position of a slice's scratch stack (64 KB apart otherwise)


@njit(parallel=True, nogil=True, cache=True)
def forward(fn, x, uf, bias, has_bias, relu, y, step):
    """y = the convolution of x by U (flat (16, F, C)) + bias, ReLU'd if relu."""
    n_, c_, h, w = x.shape
    f_ = y.shape[1]
    tpi = (h // 2) * (w // 2)
    for s in prange((n_ + step - 1) // step):
        n0 = s * step
        n1 = min(n_, n0 + step)
        ts = (n1 - n0) * tpi
        v3, vb, sv = _stack(c_, ts, x.dtype)
        rr = np.zeros((4, w + 2), dtype=x.dtype)
        for c in range(c_):
            wk.inputs_block(x, v3, c, n0, n1, 0, rr)
        m3, mb, sm = _stack(f_, ts, x.dtype)
        for p in range(POSITIONS):
            fn(ROW_MAJOR, NO_TRANS, NO_TRANS, f_, ts, c_, 1.0, uf[p * f_ * c_:].ctypes, c_,
               vb[p * sv:].ctypes, ts, 0.0, mb[p * sm:].ctypes, ts)
        cc = np.empty((4, w), dtype=x.dtype)
        for f in range(f_):
            wk.outputs_block(m3, bias, has_bias, relu, y, f, n0, n1, 0, cc)


@njit(parallel=True, nogil=True, cache=True)
def backward(fn, x, dy, yv, relu, uf, dx, need_dx, step, parts, db_parts, du, db):
    """du (flat (16, F, C)) and db (F,) of the convolution, and with need_dx its data
    gradient dx, from dy masked by yv > 0 where relu. Slices go to the G = len(parts)
    partials in consecutive runs, each run accumulated in order, then the partials are
    summed in order."""
    n_, c_, h, w = x.shape
    f_ = dy.shape[1]
    tpi = (h // 2) * (w // 2)
    slices = (n_ + step - 1) // step
    groups = parts.shape[0]
    run = (slices + groups - 1) // groups
    for g in prange(groups):
        part = parts[g]
        db_part = db_parts[g]
        part[:] = 0
        db_part[:] = 0
        for s in range(g * run, min(slices, (g + 1) * run)):
            n0 = s * step
            n1 = min(n_, n0 + step)
            ts = (n1 - n0) * tpi
            dm3, dmb, sdm = _stack(f_, ts, dy.dtype)
            rr = np.empty((4, w), dtype=dy.dtype)
            for f in range(f_):
                wk.outputs_adjoint_block(dy, yv, relu, dm3, f, n0, n1, 0, rr)
                acc = dm3[wk.SUM_POSITION, f, 0]
                for t in range(1, ts):
                    acc += dm3[wk.SUM_POSITION, f, t]
                db_part[f] += acc
            v3, vb, sv = _stack(c_, ts, dy.dtype)
            r2 = np.zeros((4, w + 2), dtype=dy.dtype)
            for c in range(c_):
                wk.inputs_block(x, v3, c, n0, n1, 0, r2)
            for p in range(POSITIONS):
                fn(ROW_MAJOR, NO_TRANS, TRANS, f_, c_, ts, 1.0, dmb[p * sdm:].ctypes, ts,
                   vb[p * sv:].ctypes, ts, 1.0, part[p * f_ * c_:].ctypes, c_)
            if need_dx:
                for p in range(POSITIONS):
                    fn(ROW_MAJOR, TRANS, NO_TRANS, c_, ts, f_, 1.0, uf[p * f_ * c_:].ctypes, c_,
                       dmb[p * sdm:].ctypes, ts, 0.0, vb[p * sv:].ctypes, ts)
                for c in range(c_):
                    wk.inputs_adjoint_block(v3, dx, c, n0, n1, 0, r2)
    sum_in_order(parts, du)
    sum_in_order(db_parts, db)



@njit(nogil=True, cache=True)
def _stack(rows, cols, dtype):
    """An uninitialised (16, rows, cols) scratch stack of C-contiguous planes _SKEW elements
    apart: (the stack, its flat storage, elements between positions)."""
    step = rows * cols + _SKEW
    buf = np.empty(POSITIONS * step, dtype=dtype)
    it = buf.itemsize
    return np.lib.stride_tricks.as_strided(buf, (POSITIONS, rows, cols), (step * it, cols * it, it)), buf, step
