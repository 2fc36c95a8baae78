"""Winograd F(2x2, 3x3) in NumPy operations, for the NumPy backend's small maps.

The algorithm of numba_winograd.py (Lavin and Gray): each 4x4 input patch d (stride 2) becomes
B^T d B, each filter G g G^T; the 16 positions of the transformed tiles multiply as 16 GEMMs
over channels, and A^T m A folds a product back into a 2x2 output tile. NumPy runs one pass
over an array per operation, and a pass whose innermost axis is short (a 4x4 map's two tiles a
row) costs its overhead per element, so the tiles here keep channels innermost: the NCHW
input is transposed once into a padded NHWC copy, the stacks are (16, tiles, C) and the
products V @ U, and the output is transposed back. Float64 stays exact to rounding; float32
results lie a few 1e-7 of their scale from a direct convolution, as im2col's do.
"""
import numpy as np

POSITIONS = 16
SUM_POSITION = 5    # (1, 1): A^T's column 1 is all ones, so dM there is each tile's sum of dy

_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
# K[(a, b), (i, j)] = G[i, a] G[j, b]: U = G g G^T for every filter at once is one GEMM with it
_K = np.einsum("ia,jb->abij", _G, _G).reshape(9, POSITIONS)


def weights(w, gemm):
    """U (16, C, F) of filters w (F, C, 3, 3)."""
    f, c = w.shape[:2]
    wt = np.ascontiguousarray(w.reshape(f, c, 9).transpose(2, 1, 0)).reshape(9, c * f)
    return gemm(_K.T.astype(w.dtype), wt).reshape(POSITIONS, c, f)


def weights_adjoint(du, w_shape, gemm):
    """dw (F, C, 3, 3) from dU (16, C, F): the adjoint of `weights`."""
    f, c = w_shape[:2]
    dw9 = gemm(_K.astype(du.dtype), du.reshape(POSITIONS, c * f))
    return np.ascontiguousarray(dw9.reshape(3, 3, c, f).transpose(3, 2, 0, 1))


def b_transpose(d0, d1, d2, d3, out):
    """out[0..3] = B^T (d0, d1, d2, d3): the rows (1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)."""
    np.subtract(d0, d2, out=out[0])
    np.add(d1, d2, out=out[1])
    np.subtract(d2, d1, out=out[2])
    np.subtract(d1, d3, out=out[3])


def inputs(x):
    """V (16, N*T, C) of x (N, C, H, W), H and W even: B^T d B of every tile's padded 4x4 patch,
    tiles in (image, tile row, tile column) order."""
    n, c, h, w = x.shape
    th, tw = h // 2, w // 2
    xp = np.zeros((n, h + 2, w + 2, c), dtype=x.dtype)
    xp[:, 1:-1, 1:-1] = x.transpose(0, 2, 3, 1)
    r = np.empty((4, n, th, w + 2, c), dtype=x.dtype)
    b_transpose(*(xp[:, k:k + 2 * th:2] for k in range(4)), r)
    v = np.empty((POSITIONS, n, th, tw, c), dtype=x.dtype)
    for i in range(4):
        b_transpose(*(r[i][:, :, k:k + 2 * tw:2] for k in range(4)), v[4 * i:4 * i + 4])
    return v.reshape(POSITIONS, n * th * tw, c)


def outputs(m, bias, relu, out):
    """out (N, F, H, W) = A^T m A of every tile of M (16, N*T, F), + bias, then ReLU if `relu`."""
    n, f, h, w = out.shape
    th, tw = h // 2, w // 2
    mm = m.reshape(4, 4, n, th, tw, f)
    s = np.empty((2, 4, n, th, tw, f), dtype=m.dtype)       # A^T's rows (1, 1, 1, 0), (0, 1, -1, -1)
    np.add(mm[0], mm[1], out=s[0])
    s[0] += mm[2]
    np.subtract(mm[1], mm[2], out=s[1])
    s[1] -= mm[3]
    yh = np.empty((n, h, w, f), dtype=m.dtype)
    for a in range(2):
        o0, o1 = yh[:, a::2, 0::2], yh[:, a::2, 1::2]
        np.add(s[a, 0], s[a, 1], out=o0)
        o0 += s[a, 2]
        np.subtract(s[a, 1], s[a, 2], out=o1)
        o1 -= s[a, 3]
    if bias is not None:
        yh += bias
    out[...] = yh.transpose(0, 3, 1, 2)
    if relu:
        np.maximum(out, 0, out=out)      # NaN passes, as in torch


def outputs_adjoint(g):
    """dM (16, N*T, F) from the output gradient g (N, F, H, W): the adjoint of `outputs`."""
    n, f, h, w = g.shape
    th, tw = h // 2, w // 2
    gh = np.ascontiguousarray(g.transpose(0, 2, 3, 1))
    p = np.empty((2, 4, n, th, tw, f), dtype=g.dtype)
    for a in range(2):
        g0, g1 = gh[:, a::2, 0::2], gh[:, a::2, 1::2]
        p[a, 0] = g0
        np.add(g0, g1, out=p[a, 1])
        np.subtract(g0, g1, out=p[a, 2])
        np.negative(g1, out=p[a, 3])
    dm = np.empty((4, 4, n, th, tw, f), dtype=g.dtype)
    dm[0] = p[0]
    np.add(p[0], p[1], out=dm[1])
    np.subtract(p[0], p[1], out=dm[2])
    np.negative(p[1], out=dm[3])
    return dm.reshape(POSITIONS, n * th * tw, f)


def inputs_adjoint(dv, dx):
    """dx (N, C, H, W) from dV (16, N*T, C): each tile's B dV B^T added onto its 4x4 patch, the
    padding ring dropped (the adjoint of `inputs`)."""
    n, c, h, w = dx.shape
    th, tw = h // 2, w // 2
    d = dv.reshape(4, 4, n, th, tw, c)
    r = np.zeros((4, n, th, w + 2, c), dtype=dv.dtype)
    for i in range(4):              # B's columns: patch column k gets B^T[j, k] of position j
        ri = r[i]
        ri[:, :, 0:2 * tw:2] += d[i, 0]
        s1 = ri[:, :, 1:1 + 2 * tw:2]
        s1 += d[i, 1]
        s1 -= d[i, 2]
        s1 += d[i, 3]
        s2 = ri[:, :, 2:2 + 2 * tw:2]
        s2 -= d[i, 0]
        s2 += d[i, 1]
        s2 += d[i, 2]
        ri[:, :, 3:3 + 2 * tw:2] -= d[i, 3]
    dxp = np.zeros((n, h + 2, w + 2, c), dtype=dv.dtype)
    dxp[:, 0:2 * th:2] += r[0]
    s1 = dxp[:, 1:1 + 2 * th:2]
    s1 += r[1]
    s1 -= r[2]
    s1 += r[3]
    s2 = dxp[:, 2:2 + 2 * th:2]
    s2 -= r[0]
    s2 += r[1]
    s2 += r[2]
    dxp[:, 3:3 + 2 * th:2] -= r[3]
    dx[...] = dxp[:, 1:-1, 1:-1].transpose(0, 3, 1, 2)
