"""Winograd F(2x2, 3x3) convolutions for the numba backend: 3x3, stride 1, padding 1, even H
and W. Each 2x2 output tile is A^T [ sum_c (G g_fc G^T) . (B^T d_c B) ] A over the 4x4 input
patch d around it, so the 9 multiplies a tap costs in a direct convolution become 16 for 4
outputs (2.25x fewer), done as 16 GEMMs (one per transformed position xi):

    forward          M[xi] = U[xi] (F, C) @ V[xi] (C, T)          T = N * H/2 * W/2 tiles
    data gradient   dV[xi] = U[xi]^T (C, F) @ dM[xi] (F, T)
    weight gradient dU[xi] = dM[xi] (F, T) @ V[xi]^T (T, C)

with U = G g G^T (weights), V = B^T d B (input), y = A^T M A (output), and the adjoints of the
three transforms for the backward (dM = A dy A^T, dd = B dV B^T scattered back onto the
overlapping patches, dg = G^T dU G). In exact arithmetic this is the convolution; in float64
it agrees to about 1e-15, in float32 to a few ulps more than a direct sum.

Kernels here only transform; numba_backend.py allocates, slices the batch and runs the GEMMs.
Every parallel loop writes its own (channel, images) block or one filter's weights, so results
do not depend on the thread count.
"""
import numpy as np
from numba import njit, prange

par = njit(parallel=True, cache=True, fastmath=False, nogil=True)
ser = njit(cache=True, fastmath=False, nogil=True)
PLANE_ELEMENTS = 1024   # elements of one channel a parallel task transforms, at least a plane
TILE = 2        # output rows and columns per tile
POSITIONS = 16  # transformed positions: GEMMs per pass
SUM_POSITION = 5    # (a, b) = (1, 1): A^T's column 1 is all ones, so dM there is the tile's sum of dy
# the weight transforms' scratch rows are padded so that they are not a power of two apart
# (512 channels: 2 KB, every row in the same cache set; 13x slower than at 256 channels)
_SKEW = 16


@ser
def filter_rows(u):
    """A scratch for one filter's rows of u (positions, C), its rows skewed by _SKEW."""
    return np.empty((u.shape[0], u.shape[2] + _SKEW), dtype=u.dtype)


@ser
def load_filter_rows(du, f):
    """Filter f's rows du[:, f, :] read whole into a filter_rows scratch."""
    st = filter_rows(du)
    for xi in range(du.shape[0]):
        for c in range(du.shape[2]):
            st[xi, c] = du[xi, f, c]
    return st


@ser
def store_filter_rows(st, u, f):
    """u[:, f, :] = the scratch's rows, each written whole."""
    for xi in range(u.shape[0]):
        for c in range(u.shape[2]):
            u[xi, f, c] = st[xi, c]


@ser
def _g_column(g0, g1, g2):
    """G (g0, g1, g2)^T: one column of G g (or, applied twice, a row of G g G^T)."""
    return g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2


@ser
def _gt_column(d0, d1, d2, d3):
    """G^T (d0, d1, d2, d3)^T, the adjoint of _g_column."""
    return d0 + 0.5 * d1 + 0.5 * d2, 0.5 * d1 - 0.5 * d2, 0.5 * d1 + 0.5 * d2 + d3


@par
def weights(w, u):
    """w (F, C, 3, 3) -> u (16, F, C): u[4a + b, f, c] = (G w[f, c] G^T)[a, b]. A task per
    filter, staged in a (16, C) scratch and written out a whole row at a time: stored element
    by element, the 16 rows (1 MB apart at 512 channels, the same cache sets) ran 3.7x slower."""
    f_, c_ = w.shape[0], w.shape[1]
    for f in prange(f_):
        st = filter_rows(u)
        for c in range(c_):
            # columns j of G g: rows a = 0..3
            t00, t10, t20, t30 = _g_column(w[f, c, 0, 0], w[f, c, 1, 0], w[f, c, 2, 0])
            t01, t11, t21, t31 = _g_column(w[f, c, 0, 1], w[f, c, 1, 1], w[f, c, 2, 1])
            t02, t12, t22, t32 = _g_column(w[f, c, 0, 2], w[f, c, 1, 2], w[f, c, 2, 2])
            st[0, c], st[1, c], st[2, c], st[3, c] = _g_column(t00, t01, t02)
            st[4, c], st[5, c], st[6, c], st[7, c] = _g_column(t10, t11, t12)
            st[8, c], st[9, c], st[10, c], st[11, c] = _g_column(t20, t21, t22)
            st[12, c], st[13, c], st[14, c], st[15, c] = _g_column(t30, t31, t32)
        store_filter_rows(st, u, f)


@par
def weights_adjoint(du, dw):
    """du (16, F, C) -> dw (F, C, 3, 3) = G^T du G (the adjoint of `weights`); a task per
    filter, its 16 rows of du read whole into a scratch first (as `weights` writes them)."""
    f_, c_ = dw.shape[0], dw.shape[1]
    for f in prange(f_):
        st = load_filter_rows(du, f)
        for c in range(c_):
            # G^T along a for each column b: s[i][b], i = 0..2
            s00, s10, s20 = _gt_column(st[0, c], st[4, c], st[8, c], st[12, c])
            s01, s11, s21 = _gt_column(st[1, c], st[5, c], st[9, c], st[13, c])
            s02, s12, s22 = _gt_column(st[2, c], st[6, c], st[10, c], st[14, c])
            s03, s13, s23 = _gt_column(st[3, c], st[7, c], st[11, c], st[15, c])
            dw[f, c, 0, 0], dw[f, c, 0, 1], dw[f, c, 0, 2] = _gt_column(s00, s01, s02, s03)
            dw[f, c, 1, 0], dw[f, c, 1, 1], dw[f, c, 1, 2] = _gt_column(s10, s11, s12, s13)
            dw[f, c, 2, 0], dw[f, c, 2, 1], dw[f, c, 2, 2] = _gt_column(s20, s21, s22, s23)


@ser
def _task_count(n_, c_, h, w):
    """Parallel tasks of a data transform: one channel of about PLANE_ELEMENTS elements' worth
    of consecutive images each (one image at 32x32, 64 at 4x4), so small maps do not drown
    in per-task overhead and a task's tiles are one run of each V[xi, c]."""
    ib = max(1, PLANE_ELEMENTS // (h * w))
    return c_ * ((n_ + ib - 1) // ib)


@ser
def _task_block(task, n_, h, w):
    """(channel, first image, last image + 1) of task number `task` (see _task_count)."""
    ib = max(1, PLANE_ELEMENTS // (h * w))
    blocks = (n_ + ib - 1) // ib
    c = task // blocks
    b = task - c * blocks
    return c, b * ib, min(n_, (b + 1) * ib)


@ser
def inputs_block(x, v, c, n0, n1, t_off, rr):
    """Channel c of images n0..n1 - 1 into v (16, C, T): image n's tiles from column
    t_off + (n - n0) * H/2 * W/2 on (so a slice's own stack has t_off 0). rr (4, W + 2) is a
    scratch whose columns 0 and W + 1 are zero (the padding)."""
    h, w = x.shape[2], x.shape[3]
    th, tw = h // 2, w // 2
    for n in range(n0, n1):
        for ty in range(th):
            y0 = 2 * ty - 1
            for j in range(w):
                a0 = x[n, c, y0, j] if y0 >= 0 else 0.0
                a1 = x[n, c, y0 + 1, j]
                a2 = x[n, c, y0 + 2, j]
                a3 = x[n, c, y0 + 3, j] if y0 + 3 < h else 0.0
                rr[0, j + 1] = a0 - a2
                rr[1, j + 1] = a1 + a2
                rr[2, j + 1] = a2 - a1
                rr[3, j + 1] = a1 - a3
            t0 = t_off + ((n - n0) * th + ty) * tw
            for i in range(4):
                for tx in range(tw):
                    a0, a1, a2, a3 = rr[i, 2 * tx], rr[i, 2 * tx + 1], rr[i, 2 * tx + 2], rr[i, 2 * tx + 3]
                    v[4 * i, c, t0 + tx] = a0 - a2
                    v[4 * i + 1, c, t0 + tx] = a1 + a2
                    v[4 * i + 2, c, t0 + tx] = a2 - a1
                    v[4 * i + 3, c, t0 + tx] = a1 - a3


@par
def inputs(x, v):
    """x (N, C, H, W) -> v (16, C, T): the 4x4 patch of tile (ty, tx) starts at row 2ty - 1,
    column 2tx - 1 (padding 1: outside reads zero); t = (n * H/2 + ty) * W/2 + tx. A task
    takes one channel of consecutive images, so its tiles are one run of each v[xi, c]
    (staging them in a scratch to store whole runs measured no faster). Per tile
    row: the four row combinations of B^T as whole padded rows, then the column combinations
    per tile."""
    n_, c_, h, w = x.shape
    th, tw = h // 2, w // 2
    for task in prange(_task_count(n_, c_, h, w)):
        c, n0, n1 = _task_block(task, n_, h, w)
        rr = np.zeros((4, w + 2), dtype=x.dtype)         # columns 0 and w + 1 stay zero (padding)
        inputs_block(x, v, c, n0, n1, n0 * th * tw, rr)


@ser
def inputs_adjoint_block(dv, dx, c, n0, n1, t_off, rr):
    """Channel c of dx for images n0..n1 - 1 from dv, tiles as in inputs_block; rr (4, W + 2)
    is a scratch."""
    h, w = dx.shape[2], dx.shape[3]
    th, tw = h // 2, w // 2
    for n in range(n0, n1):
        for iy in range(h):
            for j in range(w):
                dx[n, c, iy, j] = 0
        for ty in range(th):
            t0 = t_off + ((n - n0) * th + ty) * tw
            rr[:, :] = 0
            for i in range(4):          # the columns' adjoint into row i of the patch row band
                for tx in range(tw):
                    e0, e1, e2, e3 = dv[4 * i, c, t0 + tx], dv[4 * i + 1, c, t0 + tx], \
                        dv[4 * i + 2, c, t0 + tx], dv[4 * i + 3, c, t0 + tx]
                    rr[i, 2 * tx] += e0
                    rr[i, 2 * tx + 1] += e1 - e2 + e3
                    rr[i, 2 * tx + 2] += e2 + e1 - e0
                    rr[i, 2 * tx + 3] -= e3
            y0 = 2 * ty - 1
            for j in range(w):          # then the rows' adjoint (padded column j + 1 is dx's j)
                if y0 >= 0:
                    dx[n, c, y0, j] += rr[0, j + 1]
                dx[n, c, y0 + 1, j] += rr[1, j + 1] - rr[2, j + 1] + rr[3, j + 1]
                dx[n, c, y0 + 2, j] += rr[2, j + 1] + rr[1, j + 1] - rr[0, j + 1]
                if y0 + 3 < h:
                    dx[n, c, y0 + 3, j] -= rr[3, j + 1]


@par
def inputs_adjoint(dv, dx):
    """dv (16, C, T) -> dx (N, C, H, W) = each tile's B dv B^T added onto its 4x4 patch (the
    adjoint of `inputs`, the padding ring dropped); tasks as in `inputs`, tile rows in order."""
    n_, c_, h, w = dx.shape
    th, tw = h // 2, w // 2
    for task in prange(_task_count(n_, c_, h, w)):
        c, n0, n1 = _task_block(task, n_, h, w)
        rr = np.empty((4, w + 2), dtype=dv.dtype)
        inputs_adjoint_block(dv, dx, c, n0, n1, n0 * th * tw, rr)


@ser
def outputs_block(m, bias, has_bias, relu, y, f, n0, n1, t_off, cc):
    """Filter f of images n0..n1 - 1 of y from m, tiles as in inputs_block; cc (4, W) is a
    scratch."""
    h, w = y.shape[2], y.shape[3]
    th, tw = h // 2, w // 2
    bv = bias[f] if has_bias else 0.0
    for n in range(n0, n1):
        for ty in range(th):
            t0 = t_off + ((n - n0) * th + ty) * tw
            for a in range(4):
                for tx in range(tw):
                    e0, e1, e2, e3 = m[4 * a, f, t0 + tx], m[4 * a + 1, f, t0 + tx], \
                        m[4 * a + 2, f, t0 + tx], m[4 * a + 3, f, t0 + tx]
                    cc[a, 2 * tx] = e0 + e1 + e2
                    cc[a, 2 * tx + 1] = e1 - e2 - e3
            for j in range(w):
                o0 = cc[0, j] + cc[1, j] + cc[2, j] + bv
                o1 = cc[1, j] - cc[2, j] - cc[3, j] + bv
                if relu:
                    o0 = 0.0 if o0 < 0 else o0      # a NaN passes, as in torch
                    o1 = 0.0 if o1 < 0 else o1
                y[n, f, 2 * ty, j] = o0
                y[n, f, 2 * ty + 1, j] = o1


@par
def outputs(m, bias, has_bias, relu, y):
    """m (16, F, T) -> y (N, F, H, W): each tile A^T m A (+ bias[f], ReLU if relu); a task
    takes one filter of consecutive images, so its reads run along each m[xi, f]."""
    n_, f_, h, w = y.shape
    th, tw = h // 2, w // 2
    for task in prange(_task_count(n_, f_, h, w)):
        f, n0, n1 = _task_block(task, n_, h, w)
        cc = np.empty((4, 2 * tw), dtype=m.dtype)        # the column combinations, row a of each tile
        outputs_block(m, bias, has_bias, relu, y, f, n0, n1, n0 * th * tw, cc)


@ser
def outputs_adjoint_block(dy, yv, relu, dm, f, n0, n1, t_off, rr):
    """Filter f of dm for images n0..n1 - 1, tiles as in inputs_block; rr (4, W) is a scratch."""
    h, w = dy.shape[2], dy.shape[3]
    th, tw = h // 2, w // 2
    for n in range(n0, n1):
        for ty in range(th):
            for j in range(w):
                a0, a1 = dy[n, f, 2 * ty, j], dy[n, f, 2 * ty + 1, j]
                if relu:
                    if not yv[n, f, 2 * ty, j] > 0:
                        a0 = 0.0
                    if not yv[n, f, 2 * ty + 1, j] > 0:
                        a1 = 0.0
                rr[0, j] = a0
                rr[1, j] = a0 + a1
                rr[2, j] = a0 - a1
                rr[3, j] = -a1
            t0 = t_off + ((n - n0) * th + ty) * tw
            for a in range(4):
                for tx in range(tw):
                    e0, e1 = rr[a, 2 * tx], rr[a, 2 * tx + 1]
                    dm[4 * a, f, t0 + tx] = e0
                    dm[4 * a + 1, f, t0 + tx] = e0 + e1
                    dm[4 * a + 2, f, t0 + tx] = e0 - e1
                    dm[4 * a + 3, f, t0 + tx] = -e1


@par
def outputs_adjoint(dy, yv, relu, dm):
    """dy (N, F, H, W), masked by yv > 0 where relu -> dm (16, F, T): each tile A dy A^T;
    tasks as in `outputs`."""
    n_, f_, h, w = dy.shape
    th, tw = h // 2, w // 2
    for task in prange(_task_count(n_, f_, h, w)):
        f, n0, n1 = _task_block(task, n_, h, w)
        rr = np.empty((4, w), dtype=dy.dtype)
        outputs_adjoint_block(dy, yv, relu, dm, f, n0, n1, n0 * th * tw, rr)
