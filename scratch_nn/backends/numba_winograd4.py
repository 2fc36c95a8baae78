"""Winograd F(4x4, 3x3) convolutions for the numba backend: 3x3, stride 1, padding 1, H and W
multiples of 4. The same scheme as numba_winograd.py's F(2x2, 3x3) with 6x6 input patches
(interpolation points 0, 1, -1, 2, -2 and infinity, Lavin and Gray's matrices): a 4x4 output
tile costs 36 multiplies per (input, output) channel pair against 144 directly (4x fewer, where
F(2x2) saves 2.25x), and the transformed tiles hold 36 / 16 = 2.25x the input where F(2x2)'s
hold 4x, so the transforms also move fewer bytes. The price is rounding: float32 results lie
about 1e-5 of the output's scale from exact (F(2x2): a few 1e-7), the transforms' coefficients
(up to 8, and 1/24) amplifying each rounding; float64 stays near 1e-14.

    forward          M[xi] = U[xi] (F, C) @ V[xi] (C, T)          T = N * H/4 * W/4 tiles
    data gradient   dV[xi] = U[xi]^T (C, F) @ dM[xi] (F, T)
    weight gradient dU[xi] = dM[xi] (F, T) @ V[xi]^T (T, C)

for the 36 positions xi = 6a + b; U = G g G^T, V = B^T d B, y = A^T M A, and for the backward
their adjoints (dM = A dy A^T, dd = B dV B^T onto the overlapping patches, dg = G^T dU G).

The one-dimensional transforms are small inlined functions of six (or four, or three) values,
applied first along rows, then along columns. The data's transforms take their integer
coefficients from a small array in the data's dtype, so float32 stays float32 (a float literal
would make numba compute in float64, at half the vector width); the weights' (with 1/6 and 1/24) compute
in float64 and round once. Every parallel loop writes its own (channel,
images) block or its own filter's weights, so results do not depend on the thread count.
"""
import numpy as np
from numba import njit, prange

par = njit(parallel=True, cache=True, fastmath=False, nogil=True)
inline = njit(inline="always", cache=True)
PLANE_ELEMENTS = 1024   # elements of one channel a parallel task transforms, at least a plane
TILE = 4        # output rows and columns per tile
ALPHA = 6       # input rows and columns per patch
POSITIONS = 36  # transformed positions: GEMMs per pass
SUM_POSITION = 7    # (a, b) = (1, 1): A^T's column 1 is all ones, so dM there is the tile's sum of dy
# the weight transforms' scratch rows are padded so that they are not a power of two apart
# (512 channels: 2 KB, every row in the same cache set). Their staging loops repeat
# numba_winograd.py's on purpose: numba's on-disk cache does not see a change in a jitted
# helper defined in another module, so a shared one would leave these kernels stale.
_SKEW = 16


# _task_count and _task_block are numba_winograd.py's, repeated for the reason given at _SKEW
@njit(cache=True)
def _task_count(n_, c_, h, w):
    """Parallel tasks of a data transform: one channel of about PLANE_ELEMENTS elements' worth
    of consecutive images each (one image at 32x32, 64 at 4x4), so small maps do not drown
    in per-task overhead and a task's tiles are one run of each V[xi, c]."""
    ib = max(1, PLANE_ELEMENTS // (h * w))
    return c_ * ((n_ + ib - 1) // ib)


@njit(cache=True)
def _task_block(task, n_, h, w):
    """(channel, first image, last image + 1) of task number `task` (see _task_count)."""
    ib = max(1, PLANE_ELEMENTS // (h * w))
    blocks = (n_ + ib - 1) // ib
    c = task // blocks
    b = task - c * blocks
    return c, b * ib, min(n_, (b + 1) * ib)


@njit(cache=True)
def _coefficients(a):
    """The data transforms' integer coefficients (2, 4, 5, 8) in a's dtype."""
    k = np.empty(4, dtype=a.dtype)
    k[0], k[1], k[2], k[3] = 2, 4, 5, 8
    return k


@inline
def _bt(d0, d1, d2, d3, d4, d5, k):
    """B^T d along one axis; k = (2, 4, 5, 8) in the data's dtype."""
    two, four, five = k[0], k[1], k[2]
    return (four * d0 - five * d2 + d4,
            d3 + d4 - four * (d1 + d2),
            four * (d1 - d2) - d3 + d4,
            two * (d3 - d1) - d2 + d4,
            two * (d1 - d3) - d2 + d4,
            four * d1 - five * d3 + d5)


@inline
def _b(v0, v1, v2, v3, v4, v5, k):
    """B v along one axis (the adjoint of _bt)."""
    two, four, five = k[0], k[1], k[2]
    return (four * v0,
            four * (v2 - v1 + v5) + two * (v4 - v3),
            -five * v0 - four * (v1 + v2) - v3 - v4,
            v1 - v2 + two * (v3 - v4) - five * v5,
            v0 + v1 + v2 + v3 + v4,
            v5)


@inline
def _at(e0, e1, e2, e3, e4, e5, k):
    """A^T e along one axis: six transformed values to four outputs."""
    two, four, eight = k[0], k[1], k[3]
    return (e0 + e1 + e2 + e3 + e4,
            e1 - e2 + two * (e3 - e4),
            e1 + e2 + four * (e3 + e4),
            e1 - e2 + eight * (e3 - e4) + e5)


@inline
def _a(g0, g1, g2, g3, k):
    """A g along one axis (the adjoint of _at): four output gradients to six."""
    two, four, eight = k[0], k[1], k[3]
    return (g0,
            g0 + g1 + g2 + g3,
            g0 - g1 + g2 - g3,
            g0 + two * g1 + four * g2 + eight * g3,
            g0 - two * g1 + four * g2 - eight * g3,
            g3)


# G's fractions as products (a division costs ~10x a multiply: at 512 channels the divisions
# were the weight transforms' whole time)
_SIXTH, _TWELFTH, _TWENTYFOURTH = 1.0 / 6.0, 1.0 / 12.0, 1.0 / 24.0


@inline
def _g(g0, g1, g2):
    """G g along one axis: three kernel taps to six."""
    return (0.25 * g0,
            -(g0 + g1 + g2) * _SIXTH,
            -(g0 - g1 + g2) * _SIXTH,
            g0 * _TWENTYFOURTH + g1 * _TWELFTH + g2 * _SIXTH,
            g0 * _TWENTYFOURTH - g1 * _TWELFTH + g2 * _SIXTH,
            1.0 * g2)


@inline
def _gt(u0, u1, u2, u3, u4, u5):
    """G^T u along one axis (the adjoint of _g)."""
    return (0.25 * u0 - (u1 + u2) * _SIXTH + (u3 + u4) * _TWENTYFOURTH,
            (u2 - u1) * _SIXTH + (u3 - u4) * _TWELFTH,
            (u3 + u4 - u1 - u2) * _SIXTH + u5)


@par
def weights(w, u):
    """w (F, C, 3, 3) -> u (36, F, C): u[6a + b, f, c] = (G w[f, c] G^T)[a, b]. A task per
    filter, staged in a (36, C) scratch and written out a whole row at a time (element by
    element, the 36 rows a power of two apart fought over the same cache sets); the tuples are
    unpacked by name (indexed in a loop, numba built them in memory: 10x slower)."""
    f_, c_ = w.shape[0], w.shape[1]
    for f in prange(f_):
        st = np.empty((36, c_ + _SKEW), dtype=u.dtype)
        for c in range(c_):
            c0 = _g(w[f, c, 0, 0], w[f, c, 1, 0], w[f, c, 2, 0])
            c1 = _g(w[f, c, 0, 1], w[f, c, 1, 1], w[f, c, 2, 1])
            c2 = _g(w[f, c, 0, 2], w[f, c, 1, 2], w[f, c, 2, 2])
            st[0, c], st[1, c], st[2, c], st[3, c], st[4, c], st[5, c] = _g(c0[0], c1[0], c2[0])
            st[6, c], st[7, c], st[8, c], st[9, c], st[10, c], st[11, c] = _g(c0[1], c1[1], c2[1])
            st[12, c], st[13, c], st[14, c], st[15, c], st[16, c], st[17, c] = _g(c0[2], c1[2], c2[2])
            st[18, c], st[19, c], st[20, c], st[21, c], st[22, c], st[23, c] = _g(c0[3], c1[3], c2[3])
            st[24, c], st[25, c], st[26, c], st[27, c], st[28, c], st[29, c] = _g(c0[4], c1[4], c2[4])
            st[30, c], st[31, c], st[32, c], st[33, c], st[34, c], st[35, c] = _g(c0[5], c1[5], c2[5])
        for xi in range(36):
            for c in range(c_):
                u[xi, f, c] = st[xi, c]


@par
def weights_adjoint(du, dw):
    """du (36, F, C) -> dw (F, C, 3, 3) = G^T du G (the adjoint of `weights`); a task per
    filter, its 36 rows of du read whole into a scratch first."""
    f_, c_ = dw.shape[0], dw.shape[1]
    for f in prange(f_):
        st = np.empty((36, c_ + _SKEW), dtype=du.dtype)
        for xi in range(36):
            for c in range(c_):
                st[xi, c] = du[xi, f, c]
        for c in range(c_):
            # G^T down each column b of the 6x6 block, then along the rows
            k0 = _gt(st[0, c], st[6, c], st[12, c], st[18, c], st[24, c], st[30, c])
            k1 = _gt(st[1, c], st[7, c], st[13, c], st[19, c], st[25, c], st[31, c])
            k2 = _gt(st[2, c], st[8, c], st[14, c], st[20, c], st[26, c], st[32, c])
            k3 = _gt(st[3, c], st[9, c], st[15, c], st[21, c], st[27, c], st[33, c])
            k4 = _gt(st[4, c], st[10, c], st[16, c], st[22, c], st[28, c], st[34, c])
            k5 = _gt(st[5, c], st[11, c], st[17, c], st[23, c], st[29, c], st[35, c])
            dw[f, c, 0, 0], dw[f, c, 0, 1], dw[f, c, 0, 2] = _gt(k0[0], k1[0], k2[0], k3[0], k4[0], k5[0])
            dw[f, c, 1, 0], dw[f, c, 1, 1], dw[f, c, 1, 2] = _gt(k0[1], k1[1], k2[1], k3[1], k4[1], k5[1])
            dw[f, c, 2, 0], dw[f, c, 2, 1], dw[f, c, 2, 2] = _gt(k0[2], k1[2], k2[2], k3[2], k4[2], k5[2])


@par
def inputs(x, v):
    """x (N, C, H, W) -> v (36, C, T): the 6x6 patch of tile (ty, tx) starts at row 4ty - 1,
    column 4tx - 1 (padding 1: outside reads zero); t = (n * H/4 + ty) * W/4 + tx. Per tile
    row: B^T's six row combinations as whole padded rows, then the column combinations per
    tile, so the inner loops run along memory without bounds tests."""
    n_, c_, h, w = x.shape
    th, tw = h // 4, w // 4
    k = _coefficients(x)
    for task in prange(_task_count(n_, c_, h, w)):
        c, n0, n1 = _task_block(task, n_, h, w)
        p = np.zeros((h + 2, w + 2), dtype=x.dtype)          # a plane, zero-padded by 1
        rr = np.empty((6, w + 2), dtype=x.dtype)
        for n in range(n0, n1):
            p[1:h + 1, 1:w + 1] = x[n, c]
            for ty in range(th):
                r0, r1, r2, r3, r4, r5 = p[4 * ty], p[4 * ty + 1], p[4 * ty + 2], p[4 * ty + 3], p[4 * ty + 4], \
                    p[4 * ty + 5]
                for j in range(w + 2):
                    e = _bt(r0[j], r1[j], r2[j], r3[j], r4[j], r5[j], k)
                    for a in range(6):
                        rr[a, j] = e[a]
                t0 = (n * th + ty) * tw
                for a in range(6):
                    row = rr[a]
                    for tx in range(tw):
                        j = 4 * tx
                        e = _bt(row[j], row[j + 1], row[j + 2], row[j + 3], row[j + 4], row[j + 5], k)
                        for b in range(6):
                            v[6 * a + b, c, t0 + tx] = e[b]


@par
def inputs_adjoint(dv, dx):
    """dv (36, C, T) -> dx (N, C, H, W) = each tile's B dv B^T added onto its 6x6 patch (the
    adjoint of `inputs`; neighbouring patches overlap by two rows or columns); one channel of
    several images a task, tile rows in order."""
    n_, c_, h, w = dx.shape
    th, tw = h // 4, w // 4
    k = _coefficients(dv)
    for task in prange(_task_count(n_, c_, h, w)):
        c, n0, n1 = _task_block(task, n_, h, w)
        p = np.empty((h + 2, w + 2), dtype=dv.dtype)
        rr = np.empty((6, w + 2), dtype=dv.dtype)
        for n in range(n0, n1):
            p[:, :] = 0
            for ty in range(th):
                t0 = (n * th + ty) * tw
                rr[:, :] = 0
                for a in range(6):          # the columns' adjoint into row a of the patch row band
                    row = rr[a]
                    o = 6 * a
                    for tx in range(tw):
                        t = t0 + tx
                        e = _b(dv[o, c, t], dv[o + 1, c, t], dv[o + 2, c, t], dv[o + 3, c, t], dv[o + 4, c, t],
                               dv[o + 5, c, t], k)
                        j = 4 * tx
                        for b in range(6):
                            row[j + b] += e[b]
                for j in range(w + 2):      # then the rows' adjoint
                    e = _b(rr[0, j], rr[1, j], rr[2, j], rr[3, j], rr[4, j], rr[5, j], k)
                    for i in range(6):
                        p[4 * ty + i, j] += e[i]
            for i in range(h):
                for j in range(w):
                    dx[n, c, i, j] = p[i + 1, j + 1]


@par
def outputs(m, bias, has_bias, relu, y):
    """m (36, F, T) -> y (N, F, H, W): each tile A^T m A (+ bias[f], ReLU if relu)."""
    n_, f_, h, w = y.shape
    th, tw = h // 4, w // 4
    k = _coefficients(m)
    zero = k[0] * 0
    for task in prange(_task_count(n_, f_, h, w)):
        f, n0, n1 = _task_block(task, n_, h, w)
        cc = np.empty((6, w), dtype=m.dtype)       # the column combinations, row a of each tile
        for n in range(n0, n1):
            bb = bias[f] if has_bias else zero
            for ty in range(th):
                t0 = (n * th + ty) * tw
                for a in range(6):
                    o = 6 * a
                    row = cc[a]
                    for tx in range(tw):
                        t = t0 + tx
                        e = _at(m[o, f, t], m[o + 1, f, t], m[o + 2, f, t], m[o + 3, f, t], m[o + 4, f, t],
                                m[o + 5, f, t], k)
                        for q2 in range(4):
                            row[4 * tx + q2] = e[q2]
                for j in range(w):
                    z = _at(cc[0, j], cc[1, j], cc[2, j], cc[3, j], cc[4, j], cc[5, j], k)
                    for i in range(4):
                        val = z[i] + bb
                        if relu:
                            val = zero if val < 0 else val      # a NaN passes, as in torch
                        y[n, f, 4 * ty + i, j] = val


@par
def outputs_adjoint(dy, yv, relu, dm):
    """dy (N, F, H, W), masked by yv > 0 where relu -> dm (36, F, T): each tile A dy A^T."""
    n_, f_, h, w = dy.shape
    th, tw = h // 4, w // 4
    k = _coefficients(dy)
    zero = k[0] * 0
    for task in prange(_task_count(n_, f_, h, w)):
        f, n0, n1 = _task_block(task, n_, h, w)
        rr = np.empty((6, w), dtype=dy.dtype)
        g = np.empty((4, w), dtype=dy.dtype)
        for n in range(n0, n1):
            for ty in range(th):
                for i in range(4):
                    for j in range(w):
                        val = dy[n, f, 4 * ty + i, j]
                        if relu and not yv[n, f, 4 * ty + i, j] > 0:
                            val = zero
                        g[i, j] = val
                for j in range(w):
                    e = _a(g[0, j], g[1, j], g[2, j], g[3, j], k)
                    for a in range(6):
                        rr[a, j] = e[a]
                t0 = (n * th + ty) * tw
                for a in range(6):
                    row = rr[a]
                    o = 6 * a
                    for tx in range(tw):
                        j = 4 * tx
                        e = _a(row[j], row[j + 1], row[j + 2], row[j + 3], k)
                        for b in range(6):
                            dm[o + b, f, t0 + tx] = e[b]
