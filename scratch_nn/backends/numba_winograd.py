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
Every parallel loop writes its own (image, channel) plane or its own row, so results do not
depend on the thread count.
"""
import numpy as np
from numba import njit, prange

par = njit(parallel=True, cache=True, fastmath=False, nogil=True)
PLANES = 16     # (image, channel) planes per parallel task: its scratch rows are allocated once
TILE = 2        # output rows and columns per tile
POSITIONS = 16  # transformed positions: GEMMs per pass
SUM_POSITION = 5    # (a, b) = (1, 1): A^T's column 1 is all ones, so dM there is the tile's sum of dy


@par
def weights(w, u):
    """w (F, C, 3, 3) -> u (16, F, C): u[4a + b, f, c] = (G w[f, c] G^T)[a, b]."""
    f_, c_ = w.shape[0], w.shape[1]
    for t in prange(f_ * c_):
        f = t // c_
        c = t - f * c_
        g = w[f, c]
        tmp = np.empty((4, 3), dtype=w.dtype)
        for j in range(3):
            tmp[0, j] = g[0, j]
            tmp[1, j] = 0.5 * (g[0, j] + g[1, j] + g[2, j])
            tmp[2, j] = 0.5 * (g[0, j] - g[1, j] + g[2, j])
            tmp[3, j] = g[2, j]
        for a in range(4):
            u[4 * a, f, c] = tmp[a, 0]
            u[4 * a + 1, f, c] = 0.5 * (tmp[a, 0] + tmp[a, 1] + tmp[a, 2])
            u[4 * a + 2, f, c] = 0.5 * (tmp[a, 0] - tmp[a, 1] + tmp[a, 2])
            u[4 * a + 3, f, c] = tmp[a, 2]


@par
def weights_adjoint(du, dw):
    """du (16, F, C) -> dw (F, C, 3, 3) = G^T du G (the adjoint of `weights`)."""
    f_, c_ = dw.shape[0], dw.shape[1]
    for t in prange(f_ * c_):
        f = t // c_
        c = t - f * c_
        tmp = np.empty((3, 4), dtype=du.dtype)
        for b in range(4):
            d0, d1, d2, d3 = du[b, f, c], du[4 + b, f, c], du[8 + b, f, c], du[12 + b, f, c]
            tmp[0, b] = d0 + 0.5 * d1 + 0.5 * d2
            tmp[1, b] = 0.5 * d1 - 0.5 * d2
            tmp[2, b] = 0.5 * d1 + 0.5 * d2 + d3
        for i in range(3):
            dw[f, c, i, 0] = tmp[i, 0] + 0.5 * tmp[i, 1] + 0.5 * tmp[i, 2]
            dw[f, c, i, 1] = 0.5 * tmp[i, 1] - 0.5 * tmp[i, 2]
            dw[f, c, i, 2] = 0.5 * tmp[i, 1] + 0.5 * tmp[i, 2] + tmp[i, 3]


@par
def inputs(x, v):
    """x (N, C, H, W) -> v (16, C, T): the 4x4 patch of tile (ty, tx) starts at row 2ty - 1,
    column 2tx - 1 (padding 1: outside reads zero); t = (n * H/2 + ty) * W/2 + tx. Per tile
    row: the four row combinations of B^T as whole padded rows, then the column combinations
    per tile, so the inner loops run along memory without bounds tests."""
    n_, c_, h, w = x.shape
    th, tw = h // 2, w // 2
    for task in prange((n_ * c_ + PLANES - 1) // PLANES):
        p = np.zeros((h + 2, w + 2), dtype=x.dtype)          # a plane, zero-padded by 1
        rr = np.empty((4, w + 2), dtype=x.dtype)
        for q in range(task * PLANES, min(n_ * c_, (task + 1) * PLANES)):
            n = q // c_
            c = q - n * c_
            p[1:h + 1, 1:w + 1] = x[n, c]
            for ty in range(th):
                r0, r1, r2, r3 = p[2 * ty], p[2 * ty + 1], p[2 * ty + 2], p[2 * ty + 3]
                for j in range(w + 2):
                    rr[0, j] = r0[j] - r2[j]
                    rr[1, j] = r1[j] + r2[j]
                    rr[2, j] = r2[j] - r1[j]
                    rr[3, j] = r1[j] - r3[j]
                t0 = (n * th + ty) * tw
                for i in range(4):
                    row = rr[i]
                    o0, o1, o2, o3 = v[4 * i, c], v[4 * i + 1, c], v[4 * i + 2, c], v[4 * i + 3, c]
                    for tx in range(tw):
                        a0, a1, a2, a3 = row[2 * tx], row[2 * tx + 1], row[2 * tx + 2], row[2 * tx + 3]
                        o0[t0 + tx] = a0 - a2
                        o1[t0 + tx] = a1 + a2
                        o2[t0 + tx] = a2 - a1
                        o3[t0 + tx] = a1 - a3


@par
def inputs_adjoint(dv, dx):
    """dv (16, C, T) -> dx (N, C, H, W) = each tile's B dv B^T added onto its 4x4 patch (the
    adjoint of `inputs`); one (image, channel) plane per task, tile rows in order."""
    n_, c_, h, w = dx.shape
    th, tw = h // 2, w // 2
    for task in prange((n_ * c_ + PLANES - 1) // PLANES):
        p = np.empty((h + 2, w + 2), dtype=dv.dtype)
        rr = np.empty((4, w + 2), dtype=dv.dtype)
        for q in range(task * PLANES, min(n_ * c_, (task + 1) * PLANES)):
            n = q // c_
            c = q - n * c_
            p[:, :] = 0
            for ty in range(th):
                t0 = (n * th + ty) * tw
                rr[:, :] = 0
                for i in range(4):          # the columns' adjoint into row i of the patch row band
                    row = rr[i]
                    d0, d1, d2, d3 = dv[4 * i, c], dv[4 * i + 1, c], dv[4 * i + 2, c], dv[4 * i + 3, c]
                    for tx in range(tw):
                        e0, e1, e2, e3 = d0[t0 + tx], d1[t0 + tx], d2[t0 + tx], d3[t0 + tx]
                        row[2 * tx] += e0
                        row[2 * tx + 1] += e1 - e2 + e3
                        row[2 * tx + 2] += e2 + e1 - e0
                        row[2 * tx + 3] -= e3
                r0, r1, r2, r3 = p[2 * ty], p[2 * ty + 1], p[2 * ty + 2], p[2 * ty + 3]
                for j in range(w + 2):      # then the rows' adjoint
                    r0[j] += rr[0, j]
                    r1[j] += rr[1, j] - rr[2, j] + rr[3, j]
                    r2[j] += rr[2, j] + rr[1, j] - rr[0, j]
                    r3[j] -= rr[3, j]
            dx[n, c] = p[1:h + 1, 1:w + 1]


@par
def outputs(m, bias, has_bias, relu, y):
    """m (16, F, T) -> y (N, F, H, W): each tile A^T m A (+ bias[f], ReLU if relu)."""
    n_, f_, h, w = y.shape
    th, tw = h // 2, w // 2
    for task in prange((n_ * f_ + PLANES - 1) // PLANES):
        cc = np.empty((4, 2 * tw), dtype=m.dtype)        # the column combinations, row a of each tile
        for q in range(task * PLANES, min(n_ * f_, (task + 1) * PLANES)):
            n = q // f_
            f = q - n * f_
            b = bias[f] if has_bias else 0.0
            for ty in range(th):
                t0 = (n * th + ty) * tw
                for a in range(4):
                    m0, m1, m2, m3 = m[4 * a, f], m[4 * a + 1, f], m[4 * a + 2, f], m[4 * a + 3, f]
                    row = cc[a]
                    for tx in range(tw):
                        e0, e1, e2, e3 = m0[t0 + tx], m1[t0 + tx], m2[t0 + tx], m3[t0 + tx]
                        row[2 * tx] = e0 + e1 + e2
                        row[2 * tx + 1] = e1 - e2 - e3
                y0, y1 = y[n, f, 2 * ty], y[n, f, 2 * ty + 1]
                for j in range(w):
                    o0 = cc[0, j] + cc[1, j] + cc[2, j] + b
                    o1 = cc[1, j] - cc[2, j] - cc[3, j] + b
                    if relu:
                        o0 = 0.0 if o0 < 0 else o0      # a NaN passes, as in torch
                        o1 = 0.0 if o1 < 0 else o1
                    y0[j] = o0
                    y1[j] = o1


@par
def outputs_adjoint(dy, yv, relu, dm):
    """dy (N, F, H, W), masked by yv > 0 where relu -> dm (16, F, T): each tile A dy A^T."""
    n_, f_, h, w = dy.shape
    th, tw = h // 2, w // 2
    for task in prange((n_ * f_ + PLANES - 1) // PLANES):
        rr = np.empty((4, w), dtype=dy.dtype)
        for q in range(task * PLANES, min(n_ * f_, (task + 1) * PLANES)):
            n = q // f_
            f = q - n * f_
            for ty in range(th):
                g0, g1 = dy[n, f, 2 * ty], dy[n, f, 2 * ty + 1]
                for j in range(w):
                    a0, a1 = g0[j], g1[j]
                    if relu:
                        if not yv[n, f, 2 * ty, j] > 0:
                            a0 = 0.0
                        if not yv[n, f, 2 * ty + 1, j] > 0:
                            a1 = 0.0
                    rr[0, j] = a0
                    rr[1, j] = a0 + a1
                    rr[2, j] = a0 - a1
                    rr[3, j] = -a1
                t0 = (n * th + ty) * tw
                for a in range(4):
                    row = rr[a]
                    o0, o1, o2, o3 = dm[4 * a, f], dm[4 * a + 1, f], dm[4 * a + 2, f], dm[4 * a + 3, f]
                    for tx in range(tw):
                        e0, e1 = row[2 * tx], row[2 * tx + 1]
                        o0[t0 + tx] = e0
                        o1[t0 + tx] = e0 + e1
                        o2[t0 + tx] = e0 - e1
                        o3[t0 + tx] = -e1
