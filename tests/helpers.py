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


def ref_conv3x3(x, w, b, dy, relu):
    """float64 direct 3x3 stride-1 padding-1 convolution (+ bias, ReLU), its gradients."""
    n, c, h, wd = x.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    pre = np.zeros((n, w.shape[0], h, wd)) + b.reshape(1, -1, 1, 1)
    for a in range(3):
        for bb in range(3):
            pre += np.einsum("ncij,fc->nfij", xp_[:, :, a:a + h, bb:bb + wd], w[:, :, a, bb])
    y = np.maximum(pre, 0) if relu else pre
    g = dy * (y > 0) if relu else dy
    dxp, dw = np.zeros_like(xp_), np.zeros_like(w)
    for a in range(3):
        for bb in range(3):
            dw[:, :, a, bb] = np.einsum("nfij,ncij->fc", g, xp_[:, :, a:a + h, bb:bb + wd])
            dxp[:, :, a:a + h, bb:bb + wd] += np.einsum("nfij,fc->ncij", g, w[:, :, a, bb])
    return y, dxp[:, :, 1:h + 1, 1:wd + 1], dw, g.sum(axis=(0, 2, 3))
