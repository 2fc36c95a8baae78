"""Winograd F(2x2, 3x3) on phase planes, a cache-sized slice of images at a time, for the NumPy
backend's large maps (ResNet-18's 32x32 and 16x16 layers, the CNN's conv2).

The algorithm of numpy_winograd.py (B^T d B of each tile's padded 4x4 patch, 16 GEMMs, A^T m A
back to 2x2 outputs), laid out for NumPy's cost model: a pass costs about 15 ns for each run
of its innermost loop, so what matters is how long the runs are. numpy_winograd.py keeps
channels innermost, behind an NCHW -> NHWC transpose that costs 12 ms on layer1's 16 MB input
(one thread of the 2-core EPYC); stride-2 views of the NCHW planes cost a run per tile row.

Here the input is split once into its four phases, x[:, :, 1 - a::2, 1 - b::2]: a = 0 the odd
rows (padded rows 2, 4, ..), a = 1 the even ones (padded rows 1, 3, ..), b likewise for columns,

    Q[a, b]  (C, k, H/2, W/2)    each flattened, channel planes one after another

and tile (t, u)'s patch rows are then Q[0][t - 1], Q[1][t], Q[0][t], Q[1][t + 1] (the first and
last zero padding at t = 0 and t = H/2 - 1), its columns likewise. So both stages of B^T d B are
passes over whole flattened arrays at flat offsets of -1, 0 and +1 row, then -1, 0 and +1
column: one run each. At the edges of each plane those offsets read a neighbour's row or column
instead of the padding; a few strided assignments then rewrite the edge tiles' rows and columns
without the padding's terms (_fix_edges), and the adjoints take the wrong terms back out. The
only passes that run a tile row at a time are the phase split and its adjoints (the outputs
written back, the output gradient read): four each.

Stacks, for a slice of k images (N = C*k*T flat positions, T = H/2 * W/2 tiles an image):
    V  (16, C, k*T)    UT (16, F, C)    M = UT @ V  (16, F, k*T)
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


def plane_size(h, w):
    """T: the tiles of one image's map."""
    return (h // 2) * (w // 2)


def phase_buffer(k, c, h, w, dtype):
    """Q (2, 2, W/2 + C*k*T + W/2) for `inputs`: the phases with a row of zero slack before and
    after, where the shifted passes overrun (their results there are rewritten)."""
    return np.zeros((2, 2, c * k * plane_size(h, w) + 2 * (w // 2)), dtype=dtype)


def _rows(a, tw):
    """A flat stack of tile rows (..., R*tw) as (..., R, tw)."""
    return a.reshape(a.shape[:-1] + (-1, tw))


def _planes(a, th, tw):
    """A flat stack of planes (..., P*th*tw) as (..., P, th, tw)."""
    return a.reshape(a.shape[:-1] + (-1, th, tw))


def _negate(a, out):
    """out = -a for strided views. Not np.negative: in NumPy 2.4.6 its loop reads a float32 input
    of a 16-byte stride, or a float64 one of 64 bytes, as if it were contiguous whenever the
    output is strided too (found here: tile columns 8 apart in float64)."""
    np.multiply(a, -1, out=out)


def inputs(x, q):
    """V (16, C, k*T) of x (k, C, H, W), H and W even, through q (phase_buffer(k, C, H, W))."""
    k, c, h, w = x.shape
    th, tw = h // 2, w // 2
    n = c * k * th * tw
    for a in range(2):
        for b in range(2):
            q[a, b, tw:tw + n].reshape(c, k, th, tw)[...] = x[:, :, 1 - a::2, 1 - b::2].transpose(1, 0, 2, 3)
    odd, even = q[0], q[1]                                    # (2 column phases, tw + n + tw)
    r = np.empty((4, 2, n + 2), dtype=x.dtype)                # B^T along the rows, a column of slack each side
    r[:, :, 0] = r[:, :, -1] = 0
    rows = r[:, :, 1:1 + n]
    wino.b_transpose(odd[:, :n], even[:, tw:tw + n], odd[:, tw:tw + n], even[:, 2 * tw:], rows)
    # at t = 0 the patch's first row is the padding, at t = H/2 - 1 its last
    _negate(_planes(odd[:, tw:tw + n], th, tw)[:, :, 0], _planes(rows[0], th, tw)[:, :, 0])
    _planes(rows[3], th, tw)[:, :, th - 1] = _planes(even[:, tw:tw + n], th, tw)[:, :, th - 1]
    v = np.empty((POSITIONS, n), dtype=x.dtype)
    for i in range(4):                                        # then along the columns, likewise
        ro, re = r[i, 0], r[i, 1]
        vi = v[4 * i:4 * i + 4]
        wino.b_transpose(ro[:n], re[1:1 + n], ro[1:1 + n], re[2:], vi)
        _negate(_rows(ro[1:1 + n], tw)[:, 0], _rows(vi[0], tw)[:, 0])
        _rows(vi[3], tw)[:, tw - 1] = _rows(re[1:1 + n], tw)[:, tw - 1]
    return v.reshape(POSITIONS, c, k * th * tw)


def outputs(m, out, bias=None):
    """out (k, F, H, W) = A^T m A of every tile of M (16, F, k*T), + bias (added to M at
    SUM_POSITION, which A^T m A spreads over the tile's four outputs)."""
    k, f, h, w = out.shape
    th, tw = h // 2, w // 2
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
        return a.reshape(f, k, th, tw)
    for a in range(2):
        np.add(s[a, 0], s[a, 1], out=t)
        np.add(tiles(t), tiles(s[a, 2]), out=ot[:, :, a::2, 0::2])
        np.subtract(s[a, 1], s[a, 2], out=t)
        np.subtract(tiles(t), tiles(s[a, 3]), out=ot[:, :, a::2, 1::2])


def gradient_buffer(k, f, h, w, dtype):
    """dM (16, F*k*T) for `outputs_adjoint`, reused by every slice of k images."""
    return np.empty((POSITIONS, f * k * plane_size(h, w)), dtype=dtype)


def outputs_adjoint(g, dm):
    """dM (16, F, k*T) from the output gradient g (k, F, H, W), written into dm
    (gradient_buffer(k, F, H, W)): the adjoint of `outputs`."""
    k, f, h, w = g.shape
    th, tw = h // 2, w // 2
    d = dm.reshape(4, 4, -1)
    gt = g.transpose(1, 0, 2, 3)
    for (i, j), (a, b) in (((0, 0), (0, 0)), ((0, 3), (0, 1)), ((3, 0), (1, 0)), ((3, 3), (1, 1))):
        d[i, j].reshape(f, k, th, tw)[...] = gt[:, :, a::2, b::2]
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
    return dm.reshape(POSITIONS, f, k * th * tw)


def _b_adjoint(d0, d1, d2, d3, odd, even, shift, edges):
    """The adjoint of one B^T stage over flat stacks (..., n): odd and even (..., n) from the
    four stacks, the patch's rows (or columns) 0..3 having been odd[q - shift], even[q], odd[q],
    even[q + shift]. `edges(a)` views a stack as (..., edge units, positions along the
    shift's axis, the rest): the shifted terms that crossed an edge (which the forward rewrote
    without) are taken back out."""
    np.add(d1, d2, out=odd)                 # B^T's column 2, (-1, 1, 1, 0), at q
    odd -= d0
    odd[..., :-shift] += d0[..., shift:]    # column 0, (1, 0, 0, 0), from q + shift
    eo, e0 = edges(odd), edges(d0)
    eo[..., :-1, -1, :] -= e0[..., 1:, 0, :]
    np.subtract(d1, d2, out=even)           # column 1, (0, 1, -1, 1), at q
    even += d3
    even[..., shift:] -= d3[..., :-shift]   # column 3, (0, 0, 0, -1), from q - shift
    ee, e3 = edges(even), edges(d3)
    ee[..., 1:, 0, :] += e3[..., :-1, -1, :]


def inputs_adjoint(dv, dx):
    """dx (k, C, H, W) from dV (16, C, k*T): each tile's B dV B^T added onto its padded 4x4
    patch, the padding ring dropped (the adjoint of `inputs`)."""
    k, c, h, w = dx.shape
    th, tw = h // 2, w // 2
    n = c * k * th * tw
    d = dv.reshape(4, 4, n)
    dr = np.empty((4, 2, n), dtype=dv.dtype)

    def columns(a):
        return a.reshape(a.shape[:-1] + (-1, tw, 1))
    for i in range(4):
        _b_adjoint(*d[i], dr[i, 0], dr[i, 1], 1, columns)
    dq = np.empty((2, 2, n), dtype=dv.dtype)
    _b_adjoint(*dr, dq[0], dq[1], tw, lambda a: _planes(a, th, tw))
    for a in range(2):
        for b in range(2):
            dx[:, :, 1 - a::2, 1 - b::2] = dq[a, b].reshape(c, k, th, tw).transpose(1, 0, 2, 3)
