"""What tests of every group share."""
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))     # the checkout


def rel_err(a, b):
    """||a - b|| / ||b|| on the host, in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / (denom if denom > 0 else 1.0))


def ref_conv(x, w, b, dy, relu=False, stride=1, pad=1):
    """float64 direct convolution (+ bias, ReLU) and its gradients (y, dx, dw, db), by loops
    over the taps only."""
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    s = stride
    oh, ow = (h + 2 * pad - kh) // s + 1, (wd + 2 * pad - kw) // s + 1
    xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    pre = np.zeros((n, f, oh, ow)) + b.reshape(1, -1, 1, 1)
    for a in range(kh):
        for bb in range(kw):
            pre += np.einsum("ncij,fc->nfij", xp_[:, :, a:a + s * oh:s, bb:bb + s * ow:s], w[:, :, a, bb])
    y = np.maximum(pre, 0) if relu else pre
    g = dy * (y > 0) if relu else dy
    dxp, dw = np.zeros_like(xp_), np.zeros_like(w)
    for a in range(kh):
        for bb in range(kw):
            win = xp_[:, :, a:a + s * oh:s, bb:bb + s * ow:s]
            dw[:, :, a, bb] = np.einsum("nfij,ncij->fc", g, win)
            dxp[:, :, a:a + s * oh:s, bb:bb + s * ow:s] += np.einsum("nfij,fc->ncij", g, w[:, :, a, bb])
    return y, dxp[:, :, pad:pad + h, pad:pad + wd], dw, g.sum(axis=(0, 2, 3))


def ref_conv3x3(x, w, b, dy, relu):
    """ref_conv for 3x3, stride 1, padding 1."""
    return ref_conv(x, w, b, dy, relu)


def check_conv_exact(be, y, cache, dy, w, refs):
    """A convolution's forward output y and backward from `cache` against float64 `refs`
    (ref_conv's y, dx, dw, db) to 1e-10, and a backward without dx giving the same dw, db."""
    got = be.conv2d_backward(dy, cache, w)
    for g, ref in zip((y,) + got, refs):
        assert g.shape == ref.shape
        np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-10)
    no_dx, dw, db = be.conv2d_backward(dy, cache, w, need_dx=False)
    assert no_dx is None and (dw == got[1]).all() and (db == got[2]).all()
