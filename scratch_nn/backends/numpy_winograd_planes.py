"""Winograd F(2x2, 3x3) on phase planes, a cache-sized slice of images at a time, for the NumPy
backend's 32x32 maps (ResNet-18's layer1).

The algorithm of numpy_winograd.py (B^T d B of each tile's padded 4x4 patch, 16 GEMMs, A^T m A
back to 2x2 outputs), laid out for NumPy's cost model: a pass costs about 15 ns for each run
of its innermost loop, so what matters is how long the runs are. numpy_winograd.py keeps
channels innermost, behind an NCHW -> NHWC transpose that costs 12 ms on layer1's 16 MB input
(one thread of the 2-core EPYC); stride-2 views of the NCHW planes cost a run per tile row.

Here the input is split once into its four phases (even/odd rows x even/odd columns of the
padded image), each a (th + 1) x (tw + 1) plane per channel and image with a zero border:

    Q[pr, pc]  (C, k, th + 1, tw + 1)    padded pixel (2s + pr, 2u + pc) at (s, u)

Tile (t, u)'s patch rows are then E[t], O[t], E[t + 1], O[t + 1] of the even and odd row
phases, and its columns likewise, so both stages of B^T d B are passes over whole flattened
arrays at flat offsets 0 and +1 row (+tw + 1), then 0 and +1: one run each. Every
phase-plane position is a tile, tw x th of them real and the last row and column of each
plane garbage, which the GEMMs carry along ((17/16)^2 = 1.13x the work at 32x32, 1.27x at
16x16, hence large maps only); the output gradient is zero there, so they add nothing to
the weight or data gradient. Only the phase split and its adjoints (the outputs written
back, the output gradient read) run a tile row at a time: four passes each.

Stacks, for a slice of k images (N = C*k*S flat positions, S = (th + 1)(tw + 1)):
    V  (16, C, k*S)    UT (16, F, C)    M = UT @ V  (16, F, k*S)
Float64 stays exact to rounding; float32 as numpy_winograd.py.
"""
import numpy as np

from . import numpy_winograd as wino

POSITIONS = wino.POSITIONS
SUM_POSITION = wino.SUM_POSITION


def weights(w, gemm):
    """UT (16, F, C) of filters w (F, C, 3, 3)."""
    return np.ascontiguousarray(wino.weights(w, gemm).transpose(0, 2, 1))


def weights_adjoint(dut, w_shape, gemm):
    """dw (F, C, 3, 3) from dUT (16, F, C): the adjoint of `weights`."""
    return wino.weights_adjoint(np.ascontiguousarray(dut.transpose(0, 2, 1)), w_shape, gemm)


def _plane(h, w):
    """(th, tw, row length, plane size) of the phase planes of an h x w map."""
    th, tw = h // 2, w // 2
    return th, tw, tw + 1, (th + 1) * (tw + 1)


def plane_size(h, w):
    """S: the tiles (real and garbage) of one image's phase plane."""
    return _plane(h, w)[3]


def phase_buffer(k, c, h, w, dtype):
    """Q (2, 2, C*k*S + tw + 2) for `inputs`: zero borders, which `inputs` keeps (it rewrites
    only the interior, so one buffer serves every slice of k images), and zero slack after
    the planes for the shifted passes' overrun."""
    _, _, row, size = _plane(h, w)
    return np.zeros((2, 2, c * k * size + row + 1), dtype=dtype)


def _interior(flat, c, k, h, w, pr, pc):
    """The (C, k, th, tw) view of phase (pr, pc)'s planes that holds real pixels: the even
    padded rows (pr = 0) hold image rows 1, 3, ... from plane row 1, the odd ones image rows
    0, 2, ... from plane row 0; columns alike."""
    th, tw, row, size = _plane(h, w)
    planes = flat[:c * k * size].reshape(c, k, th + 1, row)
    return planes[:, :, 1 - pr:1 - pr + th, 1 - pc:1 - pc + tw]


def _b_flat(even, odd, shift, n, out):
    """out[0..3] = B^T (d0, d1, d2, d3) for every flat position q < n, the patch's d0..d3
    being even[q], odd[q], even[q + shift], odd[q + shift]."""
    wino.b_transpose(even[..., :n], odd[..., :n], even[..., shift:shift + n], odd[..., shift:shift + n], out)


def _b_flat_adjoint(d0, d1, d2, d3, even, odd, shift):
    """The adjoint of _b_flat: even and odd (n + shift positions, n those of d0..d3) written
    whole, every position, from the four stacks' contributions at q and q - shift."""
    n = d0.shape[-1]
    even[..., :n] = d0                      # B^T's column 0: (1, 0, 0, 0) at q
    even[..., n:] = 0
    t = np.add(d1, d2)                      # column 2: (-1, 1, 1, 0), reached from q - shift
    t -= d0
    even[..., shift:] += t
    np.subtract(d1, d2, out=odd[..., :n])   # column 1: (0, 1, -1, 1) at q
    odd[..., :n] += d3
    odd[..., n:] = 0
    odd[..., shift:] -= d3                  # column 3: (0, 0, 0, -1), from q - shift


def inputs(x, q):
    """V (16, C, k*S) of x (k, C, H, W), H and W even, through q (phase_buffer(k, C, H, W))."""
    k, c, h, w = x.shape
    _, _, row, size = _plane(h, w)
    n = c * k * size
    for pr in range(2):
        for pc in range(2):
            _interior(q[pr, pc], c, k, h, w, pr, pc)[...] = x[:, :, 1 - pr::2, 1 - pc::2].transpose(1, 0, 2, 3)
    r = np.empty((4, 2, n + 1), dtype=x.dtype)                 # B^T along the rows, both column phases
    _b_flat(q[0], q[1], row, n + 1, r)
    v = np.empty((POSITIONS, n), dtype=x.dtype)
    for i in range(4):                                         # then along the columns
        _b_flat(r[i, 0], r[i, 1], 1, n, v[4 * i:4 * i + 4])
    return v.reshape(POSITIONS, c, k * size)


def outputs(m, out, bias=None):
    """out (k, F, H, W) = A^T m A of every real tile of M (16, F, k*S), + bias (added to M
    at SUM_POSITION, which A^T m A spreads over the tile's four outputs)."""
    k, f, h, w = out.shape
    th, tw, row, size = _plane(h, w)
    if bias is not None:
        m[SUM_POSITION] += bias.reshape(f, 1)
    mm = m.reshape(4, 4, -1)
    s = np.empty((2, 4, mm.shape[2]), dtype=m.dtype)          # A^T's rows (1, 1, 1, 0), (0, 1, -1, -1)
    np.add(mm[0], mm[1], out=s[0])
    s[0] += mm[2]
    np.subtract(mm[1], mm[2], out=s[1])
    s[1] -= mm[3]
    t = np.empty(mm.shape[2], dtype=m.dtype)
    ot = out.transpose(1, 0, 2, 3)

    def tiles(a):
        return a.reshape(f, k, th + 1, row)[:, :, :th, :tw]
    for a in range(2):
        np.add(s[a, 0], s[a, 1], out=t)
        np.add(tiles(t), tiles(s[a, 2]), out=ot[:, :, a::2, 0::2])
        np.subtract(s[a, 1], s[a, 2], out=t)
        np.subtract(tiles(t), tiles(s[a, 3]), out=ot[:, :, a::2, 1::2])


def gradient_buffer(k, f, h, w, dtype):
    """dM (16, F*k*S) for `outputs_adjoint`: zero at the garbage tiles, which it keeps."""
    return np.zeros((POSITIONS, f * k * _plane(h, w)[3]), dtype=dtype)


def outputs_adjoint(g, dm):
    """dM (16, F, k*S) from the output gradient g (k, F, H, W), written into dm
    (gradient_buffer(k, F, H, W)): the adjoint of `outputs`, zero at the garbage tiles."""
    k, f, h, w = g.shape
    th, tw, row, size = _plane(h, w)
    d = dm.reshape(4, 4, -1)
    gt = g.transpose(1, 0, 2, 3)
    for (i, j), (a, b) in (((0, 0), (0, 0)), ((0, 3), (0, 1)), ((3, 0), (1, 0)), ((3, 3), (1, 1))):
        d[i, j].reshape(f, k, th + 1, row)[:, :, :th, :tw] = gt[:, :, a::2, b::2]
    # dM_ij = sum_ab A^T[a, i] A^T[b, j] G_ab; row 0 (A^T[:, 0] = (1, 0)) and row 3 ((0, -1)):
    g00, g01, g10, g11 = d[0, 0], d[0, 3], d[3, 0], d[3, 3]
    np.add(g00, g01, out=d[0, 1])
    np.subtract(g00, g01, out=d[0, 2])
    np.subtract(g11, g10, out=d[3, 2])
    np.add(g10, g11, out=d[3, 1])
    np.negative(d[3, 1], out=d[3, 1])
    np.negative(g01, out=g01)
    np.negative(g10, out=g10)
    np.subtract(d[0], d[3], out=d[1])      # rows 1 ((1, 1)) and 2 ((1, -1)) from rows 0 and 3
    np.add(d[0], d[3], out=d[2])
    return dm.reshape(POSITIONS, f, k * size)


def inputs_adjoint(dv, dx):
    """dx (k, C, H, W) from dV (16, C, k*S), zero at the garbage tiles: each tile's B dV B^T
    added onto its padded 4x4 patch, the padding ring dropped (the adjoint of `inputs`)."""
    k, c, h, w = dx.shape
    _, _, row, size = _plane(h, w)
    n = c * k * size
    d = dv.reshape(4, 4, n)
    dr = np.empty((4, 2, n + 1), dtype=dv.dtype)
    for i in range(4):
        _b_flat_adjoint(*d[i], dr[i, 0], dr[i, 1], 1)
    dq = np.empty((2, 2, n + 1 + row), dtype=dv.dtype)
    _b_flat_adjoint(*dr, dq[0], dq[1], row)
    for pr in range(2):
        for pc in range(2):
            dx[:, :, 1 - pr::2, 1 - pc::2] = _interior(dq[pr, pc], c, k, h, w, pr, pc).transpose(1, 0, 2, 3)
