"""The numba backend's parallel CPU kernels, each forward beside its backward.

Every kernel writes into arrays its launcher (numba_backend.py) allocated and checked, and
splits its outer loop with `prange` into pieces that never write the same element: a
(image, channel) plane, a channel, or a row of the im2col matrix. So no kernel needs atomics
or a reduction across threads, and each result is the same at every thread count.
Reductions (batch-norm statistics, the loss) accumulate in float64 whatever the array dtype.

Arrays arrive contiguous and reshaped by the launcher so that the inner loops index at most
three dimensions and run along memory.
"""
import math

import numpy as np
from numba import njit, prange

# fastmath off: the results must match the NumPy reference within float rounding...
par = njit(parallel=True, cache=True, fastmath=False, nogil=True)
ser = njit(parallel=False, cache=True, fastmath=False, nogil=True)
# ...except that sums may be reassociated: without it LLVM must add one element at a time in
# order, a chain of dependent adds that ran the channel sums 8x slower than memory allows.
# Only the order of additions changes (no nnan/ninf: NaNs and infinities still propagate).
par_sum = njit(parallel=True, cache=True, fastmath={"reassoc"}, nogil=True)


# ---------------------------------------------------------------------- im2col / col2im
@ser
def _valid_range(k, stride, pad, size, out):
    """The output positions o whose input position o*stride + k - pad lies inside [0, size)."""
    lo = 0
    if pad - k > 0:
        lo = (pad - k + stride - 1) // stride
    hi = (size - 1 + pad - k) // stride + 1
    if hi > out:
        hi = out
    if hi < lo:
        hi = lo
    return lo, hi


@ser
def _gather(plane, ki, kj, stride, pad, oh, ow, dst):
    """dst (OH*OW) = the input plane (H, W) as tap (ki, kj) of every output position sees it,
    zeros where that falls in the padding. The inner loops run over 1-D views with the loop
    counter as index, the form that numba compiles to vector code."""
    h, w = plane.shape
    lo, hi = _valid_range(kj, stride, pad, w, ow)
    x0 = lo * stride + kj - pad
    L = hi - lo
    for oy in range(oh):
        iy = oy * stride + ki - pad
        row = dst[oy * ow:(oy + 1) * ow]
        if iy < 0 or iy >= h or L <= 0:
            for q in range(ow):
                row[q] = 0
            continue
        for q in range(lo):
            row[q] = 0
        for q in range(hi, ow):
            row[q] = 0
        d2 = row[lo:hi]
        src = plane[iy]
        if stride == 1:
            s2 = src[x0:x0 + L]
            for q in range(L):
                d2[q] = s2[q]
        else:
            for q in range(L):
                d2[q] = src[x0 + q * stride]


@ser
def _scatter(src, ki, kj, stride, pad, oh, ow, plane):
    """Adjoint of _gather: the plane (H, W) += src (OH*OW), tap (ki, kj)'s share."""
    h, w = plane.shape
    lo, hi = _valid_range(kj, stride, pad, w, ow)
    L = hi - lo
    if L <= 0:
        return
    x0 = lo * stride + kj - pad
    for oy in range(oh):
        iy = oy * stride + ki - pad
        if iy < 0 or iy >= h:
            continue
        d = plane[iy]
        s = src[oy * ow + lo:oy * ow + hi]
        if stride == 1:
            d2 = d[x0:x0 + L]
            for q in range(L):
                d2[q] += s[q]
        else:
            for q in range(L):
                d[x0 + q * stride] += s[q]


@par
def im2col(x, kh, kw, stride, pad, oh, ow, cols):
    """x (N, C, H, W) -> cols (C*kh*kw, N*OH*OW); one (row, image) segment per task."""
    n, c, h, w = x.shape
    rows = c * kh * kw
    p = oh * ow
    for t in prange(rows * n):
        r = t // n
        i = t - r * n
        _gather(x[i, r // (kh * kw)], (r // kw) % kh, r % kw, stride, pad, oh, ow, cols[r, i * p:(i + 1) * p])


@par
def col2im(dcols, image_major, kh, kw, stride, pad, oh, ow, dx):
    """Adjoint of im2col (dcols (C*kh*kw, N, OH*OW)) or, image_major, of im2col_images without
    its ones row (dcols (N, C*kh*kw, OH*OW)): dx (N, C, H, W) = the scatter-add of dcols. One
    (image, channel) plane per task, so the += never races; offsets are added in the
    reference's (ki, kj) order."""
    n, c, h, w = dx.shape
    for t in prange(n * c):
        i = t // c
        ci = t - i * c
        plane = dx[i, ci]
        plane[:] = 0
        for ki in range(kh):
            for kj in range(kw):
                r = (ci * kh + ki) * kw + kj
                _scatter(dcols[i, r] if image_major else dcols[r, i], ki, kj, stride, pad, oh, ow, plane)


@par
def im2col_images(x, kh, kw, stride, pad, oh, ow, cols):
    """x (N, C, H, W) -> cols (N, C*kh*kw + 1, OH*OW): each image's columns a block of their
    own (a GEMM per image keeps them in cache), closed by a row of ones that carries the bias
    through the GEMM. One (image, channel) plane per task. Element by element with the bounds
    test inside: 2.2-2.4x faster here than _gather's row views (0.21 against 0.47 ms for the
    CNN's conv1 on 2 threads), whose per-row slices cost more than these few-channel planes'
    copies."""
    n, c, h, w = x.shape
    rows = c * kh * kw
    for t in prange(n * c):
        i = t // c
        ci = t - i * c
        for ki in range(kh):
            for kj in range(kw):
                r = (ci * kh + ki) * kw + kj
                for oy in range(oh):
                    iy = oy * stride + ki - pad
                    o = oy * ow
                    if iy < 0 or iy >= h:
                        for q in range(ow):
                            cols[i, r, o + q] = 0
                    else:
                        for q in range(ow):
                            ix = q * stride + kj - pad
                            cols[i, r, o + q] = x[i, ci, iy, ix] if 0 <= ix < w else 0
        if ci == 0:
            cols[i, rows, :] = 1


@par
def im2col_positions(x, kh, kw, stride, pad, oh, ow, cols):
    """x (N, C, H, W) -> cols (N*OH*OW, kh*kw*C): a row per output position, taps outer and
    channels inner, so that a tap's C values are one contiguous run. One (image, output row)
    per task: each input row it reads is turned channels-last once, into a (W, C) buffer that
    stays in L1, and every tap is then a copy of C values. The (C*kh*kw, N*OH*OW) layout's
    rows of OW strided elements cost 20x this on the small maps (ResNet-18's 8x8 stride-2
    layer at batch 64, 2 EPYC threads: 8.7 against 0.35 ms)."""
    n, c, h, w = x.shape
    for t in prange(n * oh):
        i = t // oh
        oy = t - i * oh
        r0 = t * ow
        buf = np.empty((w, c), dtype=x.dtype)
        for ki in range(kh):
            iy = oy * stride + ki - pad
            if iy < 0 or iy >= h:
                for ox in range(ow):
                    row = cols[r0 + ox]
                    for q in range(ki * kw * c, (ki + 1) * kw * c):
                        row[q] = 0
                continue
            for ci in range(c):
                src = x[i, ci, iy]
                for xx in range(w):
                    buf[xx, ci] = src[xx]
            for ox in range(ow):
                row = cols[r0 + ox]
                for kj in range(kw):
                    ix = ox * stride + kj - pad
                    o = (ki * kw + kj) * c
                    if 0 <= ix < w:
                        b = buf[ix]
                        for q in range(c):
                            row[o + q] = b[q]
                    else:
                        for q in range(c):
                            row[o + q] = 0


@par
def col2im_positions(dcols, kh, kw, stride, pad, oh, ow, dx):
    """Adjoint of im2col_positions: dx (N, C, H, W) = the scatter-add of dcols (N*OH*OW,
    kh*kw*C). One (image, input row) per task, gathering the rows' taps that land on it into a
    channels-last (W, C) buffer, so no two tasks write one element; an element's terms are
    added in (ki, ox, kj) order."""
    n, c, h, w = dx.shape
    for t in prange(n * h):
        i = t // h
        iy = t - i * h
        acc = np.zeros((w, c), dtype=dx.dtype)
        for ki in range(kh):
            num = iy + pad - ki
            if num < 0 or num % stride != 0 or num // stride >= oh:
                continue
            r0 = (i * oh + num // stride) * ow
            for ox in range(ow):
                row = dcols[r0 + ox]
                for kj in range(kw):
                    ix = ox * stride + kj - pad
                    if 0 <= ix < w:
                        a = acc[ix]
                        o = (ki * kw + kj) * c
                        for q in range(c):
                            a[q] += row[o + q]
        for ci in range(c):
            d = dx[i, ci, iy]
            for ix in range(w):
                d[ix] = acc[ix, ci]


# ---------------------------------------------------------------------- conv epilogue / prologue
@par
def conv_out_nchw(ym, bias, has_bias, relu, out):
    """GEMM result (F, N*P) -> out (N, F, P), plus bias, then ReLU if asked."""
    n, f, p = out.shape
    for t in prange(n * f):
        i = t // f
        fi = t - i * f
        src = ym[fi, i * p:(i + 1) * p]
        dst = out[i, fi]
        b = bias[fi] if has_bias else 0.0
        if relu:
            for k in range(p):
                v = src[k] + b
                dst[k] = 0 if v < 0 else v    # a NaN passes, as in torch
        else:
            for k in range(p):
                dst[k] = src[k] + b


@par_sum
def conv_dy_gemm_layout(dy, y, relu, dym, db):
    """dy (N, F, P) -> dym (F, N*P) and db = its row sums. With relu, dy is first masked by
    the forward output y > 0 (the ReLU fused into the conv's forward)."""
    n, f, p = dy.shape
    for fi in prange(f):
        s = 0.0
        for i in range(n):
            src = dy[i, fi]
            dst = dym[fi, i * p:(i + 1) * p]
            if relu:
                yr = y[i, fi]
                for k in range(p):
                    g = src[k] if yr[k] > 0 else 0
                    dst[k] = g
                    s += g
            else:
                for k in range(p):
                    dst[k] = src[k]
                    s += src[k]
        db[fi] = s


# ---------------------------------------------------------------------- batch norm (+ residual + ReLU)
@par_sum
def batchnorm_train_forward(x, gamma, beta, eps, res, has_res, relu, y, mean, var, invstd):
    """y = relu?(gamma * (x - mean) / sqrt(var + eps) + beta + res?) with batch statistics,
    for x (N, C, P). One channel per task: two passes over the channel for the statistics
    (mean first, then the centred sum of squares), a third to write y."""
    n, c, p = x.shape
    m = n * p
    for ci in prange(c):
        s = 0.0
        for i in range(n):
            for k in range(p):
                s += x[i, ci, k]
        mu = s / m
        ss = 0.0
        for i in range(n):
            for k in range(p):
                d = x[i, ci, k] - mu
                ss += d * d
        v = ss / m
        inv = 1.0 / math.sqrt(v + eps)
        mean[ci] = mu
        var[ci] = v
        invstd[ci] = inv
        scale = gamma[ci] * inv
        shift = beta[ci] - mu * scale
        for i in range(n):
            for k in range(p):
                o = x[i, ci, k] * scale + shift
                if has_res:
                    o += res[i, ci, k]
                if relu and o < 0:
                    o = 0
                y[i, ci, k] = o


@par
def batchnorm_eval_forward(x, scale, shift, res, has_res, relu, y):
    n, c, p = x.shape
    for t in prange(n * c):
        i = t // c
        ci = t - i * c
        a = scale[ci]
        b = shift[ci]
        for k in range(p):
            o = x[i, ci, k] * a + b
            if has_res:
                o += res[i, ci, k]
            if relu and o < 0:
                o = 0
            y[i, ci, k] = o


@par_sum
def batchnorm_train_backward(dy, x, y, mean, invstd, gamma, relu, has_res, dx, dres, dgamma, dbeta):
    """Backward of batchnorm_train_forward. dz = dy masked by y > 0 (with relu) is the
    gradient at the sum; it is also the residual's gradient, written to dres when asked.
    dx = gamma*invstd/m * (m*dz - sum(dz) - xhat*sum(dz*xhat)), one channel per task."""
    n, c, p = dy.shape
    m = n * p
    for ci in prange(c):
        mu = mean[ci]
        inv = invstd[ci]
        s = 0.0
        sx = 0.0
        for i in range(n):
            for k in range(p):
                g = dy[i, ci, k]
                if relu and not y[i, ci, k] > 0:
                    g = 0
                s += g
                sx += g * ((x[i, ci, k] - mu) * inv)
        dbeta[ci] = s
        dgamma[ci] = sx
        a = gamma[ci] * inv
        mean_g = s / m
        mean_gx = sx / m
        for i in range(n):
            for k in range(p):
                g = dy[i, ci, k]
                if relu and not y[i, ci, k] > 0:
                    g = 0
                if has_res:
                    dres[i, ci, k] = g
                xh = (x[i, ci, k] - mu) * inv
                dx[i, ci, k] = a * (g - mean_g - xh * mean_gx)


# ---------------------------------------------------------------------- elementwise
@par
def relu_forward(x, y):
    for t in prange(x.size):
        v = x[t]
        y[t] = 0 if v < 0 else v    # a NaN passes, as in torch


@par
def relu_backward(dy, y, dx):
    for t in prange(dy.size):
        dx[t] = dy[t] if y[t] > 0 else 0


# ---------------------------------------------------------------------- pooling
@par
def maxpool_forward(x, k, stride, pad, y, idx):
    """Max over k x k windows for x (N, C, H, W); idx keeps the winning offset ki*k + kj
    (ties: the first in row-major window order; a NaN wins; both as torch's CPU kernel). Padding never wins."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for t in prange(n * c):
        i = t // c
        ci = t - i * c
        xp = x[i, ci]
        for oy in range(oh):
            yr = y[i, ci, oy]
            ir = idx[i, ci, oy]
            if pad == 0:   # every window lies inside the image: no bounds tests
                for ox in range(ow):
                    best = xp[oy * stride, ox * stride]
                    arg = 0
                    for ki in range(k):
                        row = xp[oy * stride + ki]
                        for kj in range(k):
                            v = row[ox * stride + kj]
                            if (v > best) | (v != v):
                                best = v
                                arg = ki * k + kj
                    yr[ox] = best
                    ir[ox] = arg
                continue
            for ox in range(ow):
                best = -np.inf
                arg = 0
                first = True
                for ki in range(k):
                    iy = oy * stride + ki - pad
                    if iy < 0 or iy >= h:
                        continue
                    for kj in range(k):
                        ix = ox * stride + kj - pad
                        if ix < 0 or ix >= w:
                            continue
                        v = xp[iy, ix]
                        if first or v > best or v != v:
                            best = v
                            arg = ki * k + kj
                            first = False
                yr[ox] = best
                ir[ox] = arg


@par
def maxpool2x2_forward(x, y, idx):
    """maxpool_forward for k = stride = 2, pad = 0 (the CNN's pools), unrolled: 10x faster
    than the general loop nest. Plain > comparisons vectorise and a NaN test per element does
    not (6x slower), so NaNs are looked for once per window, through the window's sum."""
    n, c = x.shape[0], x.shape[1]
    oh, ow = y.shape[2], y.shape[3]
    for t in prange(n * c):
        i = t // c
        ci = t - i * c
        xp = x[i, ci]
        for oy in range(oh):
            r0 = xp[2 * oy]
            r1 = xp[2 * oy + 1]
            yr = y[i, ci, oy]
            ir = idx[i, ci, oy]
            for ox in range(ow):
                a = r0[2 * ox]
                b = r0[2 * ox + 1]
                d = r1[2 * ox]
                e = r1[2 * ox + 1]
                best = a
                arg = 0
                if b > best:
                    best = b
                    arg = 1
                if d > best:
                    best = d
                    arg = 2
                if e > best:
                    best = e
                    arg = 3
                total = a + b + d + e
                if total != total:   # a NaN (or inf - inf): redo the window as torch does
                    best = a
                    arg = 0
                    for o in range(1, 4):
                        v = b if o == 1 else (d if o == 2 else e)
                        if v > best or v != v:
                            best = v
                            arg = o
                yr[ox] = best
                ir[ox] = arg


@par
def maxpool2x2_backward(dy, idx, dx):
    """maxpool_backward for k = stride = 2, pad = 0: windows tile the input (when H and W are
    even), so each input element is written once, with no zeroing pass."""
    n, c = dx.shape[0], dx.shape[1]
    oh, ow = dy.shape[2], dy.shape[3]
    for t in prange(n * c):
        i = t // c
        ci = t - i * c
        for oy in range(oh):
            r0 = dx[i, ci, 2 * oy]
            r1 = dx[i, ci, 2 * oy + 1]
            g = dy[i, ci, oy]
            ir = idx[i, ci, oy]
            for ox in range(ow):
                a = ir[ox]
                v = g[ox]
                r0[2 * ox] = v if a == 0 else 0
                r0[2 * ox + 1] = v if a == 1 else 0
                r1[2 * ox] = v if a == 2 else 0
                r1[2 * ox + 1] = v if a == 3 else 0


@par
def maxpool_backward(dy, idx, k, stride, pad, dx):
    n, c, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    for t in prange(n * c):
        i = t // c
        ci = t - i * c
        dx[i, ci] = 0
        for oy in range(oh):
            for ox in range(ow):
                a = idx[i, ci, oy, ox]
                ki = a // k
                kj = a - ki * k
                dx[i, ci, oy * stride + ki - pad, ox * stride + kj - pad] += dy[i, ci, oy, ox]


@par_sum
def global_avgpool_forward(x, y):
    """x (N, C, P) -> y (N, C): the mean over P."""
    n, c, p = x.shape
    for t in prange(n * c):
        i = t // c
        ci = t - i * c
        s = 0.0
        for k in range(p):
            s += x[i, ci, k]
        y[i, ci] = s / p


@par
def global_avgpool_backward(dy, dx):
    n, c, p = dx.shape
    for t in prange(n * c):
        i = t // c
        ci = t - i * c
        g = dy[i, ci] / p
        for k in range(p):
            dx[i, ci, k] = g


# ---------------------------------------------------------------------- loss
@ser
def softmax_cross_entropy(logits, labels, smoothing, grad):
    """Mean (label-smoothed) cross-entropy over the rows; writes dloss/dlogits to grad.
    Serial: at (64, 10) a parallel region would cost more than the work."""
    n, k = logits.shape
    total = 0.0
    for i in range(n):
        mx = logits[i, 0]
        for j in range(1, k):
            if logits[i, j] > mx:
                mx = logits[i, j]
        se = 0.0
        for j in range(k):
            se += math.exp(logits[i, j] - mx)
        lse = math.log(se) + mx
        sum_logp = 0.0
        for j in range(k):
            lp = logits[i, j] - lse
            sum_logp += lp
            grad[i, j] = (math.exp(lp) - smoothing / k) / n
        lab = labels[i]
        total += -(1.0 - smoothing) * (logits[i, lab] - lse) - smoothing * sum_logp / k
        grad[i, lab] -= (1.0 - smoothing) / n
    return total / n


# ---------------------------------------------------------------------- optimizer updates
@par
def sgd_update(p, g, buf, lr, momentum, dampening, nesterov, weight_decay, first_step):
    """torch.optim.SGD on one flat parameter: d = g + wd*p; buf = d on the first step, else
    momentum*buf + (1-dampening)*d; step along d + momentum*buf (nesterov) or buf."""
    for t in prange(p.size):
        d = g[t] + weight_decay * p[t]
        if momentum != 0:
            if first_step:
                b = d
            else:
                b = momentum * buf[t] + (1.0 - dampening) * d
            buf[t] = b
            d = d + momentum * b if nesterov else b
        p[t] -= lr * d


@par
def adam_update(p, g, m, v, lr_over_bc1, bc2_sqrt, beta1, beta2, eps, weight_decay, decay_factor, decoupled):
    """torch.optim.Adam (L2 added to the gradient) or AdamW (decoupled decay) on one flat
    parameter."""
    for t in prange(p.size):
        pt = p[t]
        gt = g[t]
        if decoupled:
            pt *= decay_factor
        else:
            gt = gt + weight_decay * pt
        mt = beta1 * m[t] + (1.0 - beta1) * gt
        vt = beta2 * v[t] + (1.0 - beta2) * gt * gt
        m[t] = mt
        v[t] = vt
        p[t] = pt - lr_over_bc1 * (mt / (math.sqrt(vt) / bc2_sqrt + eps))
