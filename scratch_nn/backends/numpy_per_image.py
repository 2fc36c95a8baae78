"""im2col per image for the NumPy backend: stride-1 convolutions on the padded-width grid.

Why a grid as wide as the padded input: on it, tap (i, j) of every output position of a
channel is one contiguous span of the flattened padded image, starting i*Wp + j in, so the
columns are a copy of long runs (NumPy's fast case) rather than of OW-element rows, and the
GEMM per image writes (F, OH*Wp), NCHW once its last KW-1 columns per row (garbage) are cut.
The data gradient runs the same spans the other way: W^T @ dy per image, then the KH*KW taps
summed through one strided view of that product, with no scatter loop.

Layouts, per image (n):
    xpad  (C, Hp + 1, Wp)         the input padded, one spare row for the last taps' overrun
    cols  (C*KH*KW + 1, OH*Wp)    the taps' spans, then a row of ones that carries the bias
    g     (F, KH-1-P + OH + KH-1-P, Wp)  the output gradient, zero in the garbage columns and in
                                  KH-1-P rows above and below, so taps falling outside the map
                                  read zeros (see inputs_adjoint)
"""
import numpy as np

_as_strided = np.lib.stride_tricks.as_strided


def applies(kh, kw, stride, pad):
    """Square kernels, stride 1, 0 <= pad <= k - 1: then the garbage columns and zero rows
    cover every tap that falls outside the map (inputs_adjoint)."""
    return kh == kw and stride == 1 and 0 <= pad <= kh - 1


def columns(x, kh, kw, pad):
    """x (N, C, H, W) -> (cols (N, C*kh*kw + 1, OH*Wp), OH, OW, Wp)."""
    n, c, h, w = x.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    oh, ow = hp - kh + 1, wp - kw + 1
    xpad = np.zeros((n, c, hp + 1, wp), dtype=x.dtype)
    xpad[:, :, pad:pad + h, pad:pad + w] = x
    flat = xpad.reshape(n, c, -1)
    s0, s1, it = flat.strides[0], flat.strides[1], flat.itemsize
    taps = c * kh * kw
    cols = np.empty((n, taps + 1, oh * wp), dtype=x.dtype)
    cols[:, :taps].reshape(n, c, kh, kw, oh * wp)[...] = _as_strided(
        flat, (n, c, kh, kw, oh * wp), (s0, s1, wp * it, it, it))
    cols[:, taps] = 1
    return cols, oh, ow, wp


def weights(w, b):
    """(F, C*kh*kw + 1): the weights, then the bias (zeros without one) against the ones row."""
    f = w.shape[0]
    wb = np.empty((f, w[0].size + 1), dtype=w.dtype)
    wb[:, :-1] = w.reshape(f, -1)
    wb[:, -1] = b if b is not None else 0
    return wb


def outputs(y, ow, relu, out):
    """out (N, F, OH, OW) = the GEMM's (N, F, OH*Wp) without its garbage columns (+ ReLU)."""
    n, f, oh, _ = out.shape
    wide = y.reshape(n, f, oh, -1)[..., :ow]
    if relu:
        np.maximum(wide, 0, out=out)      # NaN passes, as in torch
    else:
        out[...] = wide


def gradient(dy, relu_out, kh, pad, wp):
    """g (N, F, e + OH + e, Wp) with e = kh - 1 - pad zero rows above and below and zero
    garbage columns, the output gradient (masked by relu_out > 0 where a ReLU was fused)
    in between."""
    n, f, oh, ow = dy.shape
    e = kh - 1 - pad
    g = np.zeros((n, f, e + oh + e, wp), dtype=dy.dtype)    # one pass: the garbage columns are 2-element runs
    inner = g[:, :, e:e + oh, :ow]
    if relu_out is not None:
        np.multiply(dy, relu_out > 0, out=inner)
    else:
        inner[...] = dy
    return g


def interior(g, oh, kh, pad):
    """The (N, F, OH*Wp) rows of g that the forward's columns line up with (a view)."""
    n, f, rows, wp = g.shape
    e = kh - 1 - pad
    flat = g.reshape(n, f, rows * wp)
    return flat[:, :, e * wp:(e + oh) * wp]


def data_gradient(wt, g, x_shape, kh, pad):
    """dx (N, C, H, W) from wt = W^T (C*kh*kw, F) and g as `gradient` made it."""
    n, f, rows, wp = g.shape
    taps = wt.shape[0]
    slack = wp + kh                                  # inputs_adjoint reads up to this far outside
    buf = np.empty(2 * slack + n * taps * rows * wp, dtype=g.dtype)
    buf[:slack] = 0
    buf[-slack:] = 0
    dcols = buf[slack:-slack].reshape(n, taps, rows * wp)
    np.matmul(wt, g.reshape(n, f, rows * wp), out=dcols)
    return inputs_adjoint(dcols, x_shape, kh, pad, wp)


def inputs_adjoint(dcols, x_shape, k, pad, wp):
    """dx (N, C, H, W) from dcols (N, C*k*k, rows*Wp) = W^T @ g (g as `gradient` made it),
    sitting in a flat buffer with Wp + k elements to spare before and after.

    Input pixel (h, w) takes tap (i, j) of output position (h+pad-i, w+pad-j), which lies
    (h + e + pad - i)*Wp + (w + pad - j) into g's flat rows; over (h, w) on the padded-width
    grid that is one strided view of dcols per tap, so the k*k taps are one sum over two axes
    of a view. A tap outside the map reads zero: one of g's zero rows or garbage columns (a
    column left of 0 wraps onto the garbage of the row above, the first image's first onto the
    buffer's spare zeros). The dx columns past W read anything and are cut."""
    n, c, h, w = x_shape
    taps = k * k
    s0, s1, it = dcols.strides[0], dcols.strides[1], dcols.itemsize
    base = dcols.reshape(-1)[(k - 1) * wp + pad:]     # (e + pad) * Wp + pad, e + pad = k - 1
    view = _as_strided(base, (k, k, n, c, h * wp), (k * s1 - wp * it, s1 - it, s0, taps * s1, it))
    dx_wide = view.sum(axis=(0, 1)).reshape(n, c, h, wp)
    return np.ascontiguousarray(dx_wide[..., :w])
