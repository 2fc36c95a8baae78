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

# fastmath off: the results must match the NumPy reference within float rounding.
par = njit(parallel=True, cache=True, fastmath=False, nogil=True)
ser = njit(parallel=False, cache=True, fastmath=False, nogil=True)


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


@par
def im2col(x, kh, kw, stride, pad, oh, ow, cols):
    """x (N, C, H, W) -> cols (C*kh*kw, N*OH*OW); one (row, image) segment per task."""
    n, c, h, w = x.shape
    rows = c * kh * kw
    for t in prange(rows * n):
        r = t // n
        i = t - r * n
        ci = r // (kh * kw)
        ki = (r // kw) % kh
        kj = r % kw
        lo, hi = _valid_range(kj, stride, pad, w, ow)
        base = i * oh * ow
        for oy in range(oh):
            iy = oy * stride + ki - pad
            o = base + oy * ow
            if iy < 0 or iy >= h:
                for ox in range(ow):
                    cols[r, o + ox] = 0
                continue
            for ox in range(lo):
                cols[r, o + ox] = 0
            ix0 = kj - pad
            for ox in range(lo, hi):
                cols[r, o + ox] = x[i, ci, iy, ox * stride + ix0]
            for ox in range(hi, ow):
                cols[r, o + ox] = 0


@par
def col2im(dcols, kh, kw, stride, pad, oh, ow, dx):
    """Adjoint of im2col: dx (N, C, H, W) = scatter-add of dcols. One (image, channel) plane
    per task, so the += never races; offsets are added in the reference's (ki, kj) order."""
    n, c, h, w = dx.shape
    for t in prange(n * c):
        i = t // c
        ci = t - i * c
        for y in range(h):
            for x in range(w):
                dx[i, ci, y, x] = 0
        base = i * oh * ow
        for ki in range(kh):
            for kj in range(kw):
                r = (ci * kh + ki) * kw + kj
                lo, hi = _valid_range(kj, stride, pad, w, ow)
                ix0 = kj - pad
                for oy in range(oh):
                    iy = oy * stride + ki - pad
                    if iy < 0 or iy >= h:
                        continue
                    o = base + oy * ow
                    for ox in range(lo, hi):
                        dx[i, ci, iy, ox * stride + ix0] += dcols[r, o + ox]


# ---------------------------------------------------------------------- conv epilogue / prologue
@par
def conv_out_nchw(ym, bias, has_bias, relu, out):
    """GEMM result (F, N*P) -> out (N, F, P), plus bias, then ReLU if asked."""
    n, f, p = out.shape
    for t in prange(n * f):
        i = t // f
        fi = t - i * f
        b = bias[fi] if has_bias else 0
        src = i * p
        for k in range(p):
            v = ym[fi, src + k] + b
            if relu and v < 0:
                v = 0
            out[i, fi, k] = v


@par
def conv_dy_gemm_layout(dy, y, relu, dym, db):
    """dy (N, F, P) -> dym (F, N*P) and db = its row sums. With relu, dy is first masked by
    the forward output y > 0 (the ReLU fused into the conv's forward)."""
    n, f, p = dy.shape
    for fi in prange(f):
        s = 0.0
        for i in range(n):
            dst = i * p
            for k in range(p):
                g = dy[i, fi, k]
                if relu and not y[i, fi, k] > 0:
                    g = 0
                dym[fi, dst + k] = g
                s += g
        db[fi] = s


# ---------------------------------------------------------------------- batch norm (+ residual + ReLU)
@par
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


@par
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
        y[t] = v if v > 0 else 0


@par
def relu_backward(dy, y, dx):
    for t in prange(dy.size):
        dx[t] = dy[t] if y[t] > 0 else 0


# ---------------------------------------------------------------------- pooling
@par
def maxpool_forward(x, k, stride, pad, y, idx):
    """Max over k x k windows for x (N, C, H, W); idx keeps the winning offset ki*k + kj
    (ties: the first in row-major window order, as torch). Padding never wins."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for t in prange(n * c):
        i = t // c
        ci = t - i * c
        for oy in range(oh):
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
                        v = x[i, ci, iy, ix]
                        if first or v > best or v != v:   # a NaN wins, as in torch
                            best = v
                            arg = ki * k + kj
                            first = False
                y[i, ci, oy, ox] = best
                idx[i, ci, oy, ox] = arg


@par
def maxpool_backward(dy, idx, k, stride, pad, dx):
    n, c, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    for t in prange(n * c):
        i = t // c
        ci = t - i * c
        for y in range(h):
            for x in range(w):
                dx[i, ci, y, x] = 0
        for oy in range(oh):
            for ox in range(ow):
                a = idx[i, ci, oy, ox]
                ki = a // k
                kj = a - ki * k
                dx[i, ci, oy * stride + ki - pad, ox * stride + kj - pad] += dy[i, ci, oy, ox]


@par
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
