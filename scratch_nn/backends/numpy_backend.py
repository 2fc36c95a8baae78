"""The single-core reference backend: NumPy with BLAS pinned to one thread."""
import numpy as np

from . import numpy_per_image as per_image
from . import numpy_winograd as wino
from . import numpy_winograd_planes as planes
from .base import Backend, BackendUnavailable
from .heap import keep_freed_memory
from .threads import use_blas_threads

# Winograd F(2x2, 3x3) for the 3x3 stride-1 padding-1 convolutions on even maps, in one of two
# layouts. On maps of >= PLANES_MIN_SIZE rows and >= PLANES_MIN_CHANNELS input channels, on phase
# planes (numpy_winograd_planes.py: NCHW split once into its four row/column phases, each
# transform stage one flat pass, slices of images whose stacks fit PLANES_SLICE_BYTES so that
# passes and GEMMs run in cache). On maps of at most WINOGRAD_MAX_SIZE rows and >=
# WINOGRAD_MIN_CHANNELS input channels, channels innermost (numpy_winograd.py), whose passes
# have runs of C*W elements where the phase planes' edge rewrites and phase splits run one a
# tile row. im2col + GEMM for the rest. Batch 64, one thread of the 2-core EPYC, ms forward /
# backward (2026-12-07, session 16; torch's oneDNN in the same process; two runs where given):
#   32x32,  64 ch: phase planes 47 / 82, 42 / 79   channels 85 / 151   im2col 93 / 168   torch 45 / 99
#   16x16, 128 ch: phase planes 33 / 63, 33 / 72   channels 46 / 81    im2col 70 / 137   torch 41 / 89
#    8x8,  256 ch: phase planes 34 / 71, 34 / 70   channels 38 / 72    im2col 58 / 120   torch 37 / 81
#    4x4,  512 ch: phase planes 61 / 111, 56 / 114  channels 36 / 68   im2col 56 / 120   torch 35 / 79
#   16x16, 16 -> 32 (the CNN's conv2, bias and ReLU): phase planes 4.2 / 4.3, 2.9 / 3.3   per image 3.7 / 6.8
#   32x32,  3 -> 16 (the CNN's conv1, no data gradient): phase planes 3.97 / 2.30   per image 1.98 / 1.53
#   32x32,  3 -> 64 (ResNet-18's stem, no data gradient): phase planes 14.7 / 9.5   im2col 9.8 / 10.1
# (8x8 is a tie within this VM's noise, so it stays channels innermost.) Session 13's table on
# the 2-core Xeon (channels innermost against im2col): 32x32 a tie, the smaller maps as above.
PLANES_MIN_SIZE = 16
PLANES_MIN_CHANNELS = 16
PLANES_SLICE_BYTES = 5 * 2**19
BN_SLICE_BYTES = 1 << 20
WINOGRAD_MAX_SIZE = 8
# winograd_layout=: "auto" the table above; "planes" or "channels" one layout for every
# Winograd shape (3x3, stride 1, padding 1, even maps), to measure the table on a machine.
WINOGRAD_LAYOUTS = ("auto", "planes", "channels")
WINOGRAD_MIN_CHANNELS = 64
# im2col per image on the padded-width grid (numpy_per_image.py) for the other stride-1
# convolutions of at most PER_IMAGE_MAX_FILTERS output channels, one batch-wide im2col GEMM for
# the rest. Per image, an image's columns stay in cache through its GEMM, the output needs no
# transpose, and the data gradient no scatter loop; with more filters the per-image weight
# gradients (one F x C*9 product an image, then summed) cost more than that saves. Batch 64, one
# thread of the 2-core Xeon, ms forward / backward, best of 5 to 9 interleaved (2026-12-02):
#   32x32, 3 -> 16  (the CNN's conv1, no data gradient): batch 3.33 / 4.35   per image 1.95 / 3.10
#   16x16, 16 -> 32 (the CNN's conv2):                   batch 4.08 / 8.63   per image 3.40 / 8.28
#   32x32, 3 -> 64  (ResNet's stem, no data gradient):   batch 8.50 / 9.54   per image 8.23 / 12.4
#   32x32, 64 -> 64 (Winograd's tie, above):             batch 86 / 156      per image 89 / 142
PER_IMAGE_MAX_FILTERS = 32
# Within a batch slice, the data gradient's per-image GEMM output (C*k*k, rows*Wp), which its
# tap sum reads 9 times, is made and consumed a few images at a time so that it stays in cache:
# about PER_IMAGE_CACHE_BYTES of it a step. The CNN's conv2 data gradient, one thread: 4.62 ms
# whole, 3.19 / 3.38 / 3.79 ms in slices of 4 / 8 / 16 images (1 MB is 5 there); the forward's
# GEMM output, read once, measured no gain from it (1.77 -> 1.91 ms on conv1).
PER_IMAGE_CACHE_BYTES = 1 << 20
# V (16 x tiles x C, 4x the input) is kept for the weight gradient when the batch's fits
# WINOGRAD_KEEP_BYTES, else the batch goes in slices whose stacks fit WINOGRAD_SLICE_BYTES.
WINOGRAD_KEEP_BYTES = 96 * 2**20
WINOGRAD_SLICE_BYTES = 64 * 2**20


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    def __init__(self, threads=1, winograd=True, image_columns=True, winograd_layout="auto"):
        if threads not in (None, 1):
            raise ValueError("the numpy backend is the single-core reference and runs with threads=1; "
                             "use backend 'numba' for several cores")
        super().__init__(threads=1)
        try:
            import threadpoolctl  # noqa: F401
        except ImportError as e:  # a declared dependency; say so rather than run multi-threaded
            raise BackendUnavailable("the numpy backend needs threadpoolctl to pin BLAS to one thread: "
                                     "pip install threadpoolctl") from e
        use_blas_threads(1)
        self.heap_kept = keep_freed_memory()
        self.winograd = bool(winograd)
        self.image_columns = bool(image_columns)
        if winograd_layout not in WINOGRAD_LAYOUTS:
            raise ValueError(f"winograd_layout must be one of {', '.join(WINOGRAD_LAYOUTS)}, not {winograd_layout!r}")
        self.winograd_layout = winograd_layout

    def gemm(self, a, b):
        use_blas_threads(1)   # another backend in this process may have set more
        return np.matmul(a, b)

    def describe(self):
        conv = self.describe_convolution()
        if self.winograd:
            conv["winograd"] = (f"F(2x2, 3x3) for 3x3 stride-1 padding-1 convolutions on even maps: of >= "
                                f"{PLANES_MIN_SIZE} rows and >= {PLANES_MIN_CHANNELS} channels on phase planes, image slices in cache "
                                f"(numpy_winograd_planes.py); of >= {WINOGRAD_MIN_CHANNELS} channels on maps of <= "
                                f"{WINOGRAD_MAX_SIZE} rows channels innermost (numpy_winograd.py)")
            if self.winograd_layout != "auto":
                where = "phase planes" if self.winograd_layout == "planes" else "channels innermost"
                conv["winograd"] = (f"F(2x2, 3x3) for every 3x3 stride-1 padding-1 convolution on even maps, on "
                                    f"{where} (winograd_layout={self.winograd_layout!r})")
        if self.image_columns:
            conv["per_image"] = (f"im2col per image on the padded-width grid for the other stride-1 convolutions "
                                 f"of <= {PER_IMAGE_MAX_FILTERS} filters (numpy_per_image.py)")
        return dict(super().describe(), heap_kept=self.heap_kept, convolution=conv)

    # ------------------------------------------------------------------ im2col per image
    def per_image_columns(self, w, x_shape, stride, pad):
        f, _, kh, kw = w.shape
        return (self.image_columns and f <= PER_IMAGE_MAX_FILTERS and per_image.applies(kh, kw, stride, pad)
                and not self.winograd_applies(w, x_shape, stride, pad)
                and not self.planes_apply(w, x_shape, stride, pad))

    @staticmethod
    def _cache_step(image_bytes):
        """Images a cache slice takes (PER_IMAGE_CACHE_BYTES of the data gradient's product)."""
        return max(1, PER_IMAGE_CACHE_BYTES // max(1, image_bytes))

    def _conv_forward_per_image(self, x, w, b, pad, relu):
        f, c, k, _ = w.shape
        n, _, h, wd = x.shape
        oh, ow = self.conv_output_size(h, k, 1, pad), self.conv_output_size(wd, k, 1, pad)
        wp = wd + 2 * pad
        wb = per_image.weights(w, b)
        out = np.empty((n, f, oh, ow), dtype=x.dtype)
        slices = self.conv_slices(n, wb.shape[1], oh * wp, x.dtype.itemsize)
        cols = None
        for lo, hi in slices:
            cols = per_image.columns(x[lo:hi], k, k, pad)[0]
            per_image.outputs(self.gemm(wb, cols), ow, relu, out[lo:hi])
        kept = cols if len(slices) == 1 else None
        self.record_conv_algorithm(w, x.shape, 1, pad, "im2col GEMM per image")
        return out, ("per_image", x, kept, pad, out if relu else None)

    def _conv_backward_per_image(self, dy, cache, w, need_dx):
        _, x, kept, pad, relu_out = cache
        f, c, k, _ = w.shape
        n, oh = x.shape[0], dy.shape[2]
        wp = x.shape[3] + 2 * pad
        g = per_image.gradient(dy, relu_out, k, pad, wp)
        rows = per_image.interior(g, oh, k, pad)
        slices = [(0, n)] if kept is not None else self.conv_slices(n, c * k * k + 1, oh * wp, x.dtype.itemsize)
        wt = np.ascontiguousarray(w.reshape(f, -1).T) if need_dx else None
        dx = np.empty(x.shape, dtype=dy.dtype) if need_dx else None
        dwb = None                                   # dw and, against the ones row, db
        for lo, hi in slices:
            cols = kept if kept is not None else per_image.columns(x[lo:hi], k, k, pad)[0]
            part = self.gemm(cols, rows[lo:hi].transpose(0, 2, 1)).sum(axis=0)
            del cols
            dwb = part if dwb is None else dwb + part
            if need_dx:
                step = self._cache_step(wt.shape[0] * g.shape[2] * wp * dy.dtype.itemsize)
                for a in range(lo, hi, step):
                    b_ = min(hi, a + step)
                    dx[a:b_] = per_image.data_gradient(wt, g[a:b_], x[a:b_].shape, k, pad)
        dwb = dwb.T
        return dx, np.ascontiguousarray(dwb[:, :-1]).reshape(w.shape), dwb[:, -1].copy()

    # ------------------------------------------------------------------ Winograd
    def _winograd_shape(self, w, x_shape, stride, pad):
        kh, kw = w.shape[2:]
        h, wd = x_shape[2], x_shape[3]
        return self.winograd and kh == kw == 3 and stride == 1 and pad == 1 and h % 2 == 0 and wd % 2 == 0

    def planes_apply(self, w, x_shape, stride, pad):
        """Winograd on phase planes (numpy_winograd_planes.py): the large maps, or every
        Winograd shape with winograd_layout="planes"."""
        if self.winograd_layout != "auto":
            return self.winograd_layout == "planes" and self._winograd_shape(w, x_shape, stride, pad)
        return (self._winograd_shape(w, x_shape, stride, pad) and w.shape[1] >= PLANES_MIN_CHANNELS
                and min(x_shape[2], x_shape[3]) >= PLANES_MIN_SIZE)

    def winograd_applies(self, w, x_shape, stride, pad):
        """Winograd with channels innermost (numpy_winograd.py): the small maps, or every
        Winograd shape with winograd_layout="channels"."""
        h, wd = x_shape[2], x_shape[3]
        if self.winograd_layout != "auto":
            return self.winograd_layout == "channels" and self._winograd_shape(w, x_shape, stride, pad)
        return (self._winograd_shape(w, x_shape, stride, pad) and w.shape[1] >= WINOGRAD_MIN_CHANNELS
                and 2 <= min(h, wd) and max(h, wd) <= WINOGRAD_MAX_SIZE)

    @staticmethod
    def _planes_step(n, c, f, h, w, itemsize):
        """Images a phase-plane slice takes: its larger stack (V or M) about PLANES_SLICE_BYTES."""
        per_image = planes.POSITIONS * max(c, f) * planes.plane_size(h, w) * itemsize
        return max(1, min(n, PLANES_SLICE_BYTES // per_image))

    @staticmethod
    def _slice_buffers(make, step, *shape):
        """buffer(k): make(k, *shape), one per slice size (the full step and the last slice)."""
        made = {}

        def buffer(k):
            if k not in made:
                made[k] = make(k, *shape)
            return made[k]
        return buffer

    def _conv_forward_planes(self, x, w, b, relu):
        f, c = w.shape[:2]
        n, _, h, wd = x.shape
        ut = planes.weights(w, self.gemm)
        step = self._planes_step(n, c, f, h, wd, x.dtype.itemsize)
        keep = n * planes.POSITIONS * c * planes.plane_size(h, wd) * x.dtype.itemsize <= WINOGRAD_KEEP_BYTES
        phases = self._slice_buffers(planes.phase_buffer, step, c, h, wd, x.dtype)
        out = np.empty((n, f, h, wd), dtype=x.dtype)
        kept = [] if keep else None
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            v = planes.inputs(x[lo:hi], phases(hi - lo))
            planes.outputs(self.gemm(ut, v), out[lo:hi], b)
            if relu:
                np.maximum(out[lo:hi], 0, out=out[lo:hi])      # NaN passes, as in torch
            if keep:
                kept.append(v)
        self.record_conv_algorithm(w, x.shape, 1, 1, "Winograd F(2x2, 3x3) on phase planes")
        return out, ("planes", x, kept, ut, out if relu else None, step)

    def _conv_backward_planes(self, dy, cache, w, need_dx):
        _, x, kept, ut, relu_out, step = cache
        f, c = w.shape[:2]
        n, _, h, wd = x.shape
        phases = self._slice_buffers(planes.phase_buffer, step, c, h, wd, x.dtype)
        grads = self._slice_buffers(planes.gradient_buffer, step, f, h, wd, dy.dtype)
        utt = np.ascontiguousarray(ut.transpose(0, 2, 1)) if need_dx else None
        dx = np.empty(x.shape, dtype=dy.dtype) if need_dx else None
        dut = db = None
        for i, lo in enumerate(range(0, n, step)):
            hi = min(n, lo + step)
            g = self.relu_backward(dy[lo:hi], relu_out[lo:hi]) if relu_out is not None else dy[lo:hi]
            dm = planes.outputs_adjoint(g, grads(hi - lo))
            dbs = dm[planes.SUM_POSITION].sum(axis=1)
            v = kept[i] if kept is not None else planes.inputs(x[lo:hi], phases(hi - lo))
            duts = self.gemm(dm, v.transpose(0, 2, 1))
            if dut is None:
                dut, db = duts, dbs
            else:
                dut += duts
                db += dbs
            if need_dx:
                planes.inputs_adjoint(self.gemm(utt, dm), dx[lo:hi])
        return dx, planes.weights_adjoint(dut, w.shape, self.gemm), db

    @staticmethod
    def _winograd_slices(n, c, f, h, w, itemsize):
        per_image = wino.POSITIONS * max(c, f) * (h * w // 4) * itemsize
        if n * per_image <= WINOGRAD_KEEP_BYTES:
            return [(0, n)]
        step = max(1, WINOGRAD_SLICE_BYTES // per_image)
        return [(lo, min(n, lo + step)) for lo in range(0, n, step)]

    def conv2d_forward(self, x, w, b, stride, pad, relu=False):
        if self.planes_apply(w, x.shape, stride, pad):
            return self._conv_forward_planes(x, w, b, relu)
        if self.per_image_columns(w, x.shape, stride, pad):
            return self._conv_forward_per_image(x, w, b, pad, relu)
        if not self.winograd_applies(w, x.shape, stride, pad):
            return super().conv2d_forward(x, w, b, stride, pad, relu)
        f, c = w.shape[:2]
        n, _, h, wd = x.shape
        u = wino.weights(w, self.gemm)
        out = np.empty((n, f, h, wd), dtype=x.dtype)
        slices = self._winograd_slices(n, c, f, h, wd, x.dtype.itemsize)
        v = None
        for lo, hi in slices:
            v = wino.inputs(x[lo:hi])
            wino.outputs(self.gemm(v, u), b, relu, out[lo:hi])
        kept = v if len(slices) == 1 else None
        self.record_conv_algorithm(w, x.shape, stride, pad, "Winograd F(2x2, 3x3)")
        return out, ("winograd", x, kept, u, out if relu else None)

    def conv2d_backward(self, dy, cache, w, need_dx=True):
        kind = cache[0] if isinstance(cache[0], str) else None
        if kind == "per_image":
            return self._conv_backward_per_image(dy, cache, w, need_dx)
        if kind == "planes":
            return self._conv_backward_planes(dy, cache, w, need_dx)
        if kind != "winograd":
            return super().conv2d_backward(dy, cache, w, need_dx)
        _, x, kept, u, relu_out = cache
        f, c = w.shape[:2]
        n, _, h, wd = x.shape
        slices = [(0, n)] if kept is not None else self._winograd_slices(n, c, f, h, wd, x.dtype.itemsize)
        dx = np.empty(x.shape, dtype=dy.dtype) if need_dx else None
        du = db = None
        for lo, hi in slices:
            g = self.relu_backward(dy[lo:hi], relu_out[lo:hi]) if relu_out is not None else dy[lo:hi]
            dm = wino.outputs_adjoint(g)
            dbs = dm[wino.SUM_POSITION].sum(axis=0)
            v = kept if kept is not None else wino.inputs(x[lo:hi])
            dus = self.gemm(v.transpose(0, 2, 1), dm)
            del v
            du, db = (dus, dbs) if du is None else (du + dus, db + dbs)
            if need_dx:
                wino.inputs_adjoint(self.gemm(dm, u.transpose(0, 2, 1)), dx[lo:hi])
        return dx, wino.weights_adjoint(du, w.shape, self.gemm), db

    # ------------------------------------------------------------------ batch norm
    # The reference's arithmetic with fewer passes over the activations: per-channel sums as BLAS
    # dot products along each image's planes (NumPy's reduction over axes 0, 2, 3 runs at a
    # third of that speed), and the centred input kept for backward instead of x-hat, which
    # would cost a pass to make: xhat = xc * invstd is folded into per-channel factors.
    # Everything after the mean runs in batch slices of about BN_SLICE_BYTES, each slice's
    # chain of NumPy passes (centre and square-sum; scale, shift, residual, ReLU; the ReLU
    # mask and both sums; the four passes of dx) in cache, so that memory sees each array about
    # once per loop instead of once per pass. The per-image sums are added in batch order
    # whatever the slicing, so the results are those of the whole-batch passes. ms forward /
    # backward with ReLU, batch 64, whole batch -> 1 MB slices, best of 7 interleaved: 32x32x64
    # 7.55 / 8.93 -> 7.12 / 7.73 on this 2-core EPYC, 11.49 / 15.20 -> 10.24 / 13.75 on one core of
    # the 16-core Xeon (16x16x128 there 5.78 / 7.49 -> 5.70 / 6.82; with a residual the backward
    # measured 13.53 -> 14.60, noise of that shared machine); a whole step moved within its noise.
    def _plane_parts(self, a, b=None):
        """Per-image, per-channel sums over (H, W) of a, or of a * b: (N, C) for (N, C, H, W)."""
        n, c = a.shape[:2]
        a3 = a.reshape(n, c, -1)
        if b is None:
            return np.matmul(a3, np.ones(a3.shape[2], dtype=a.dtype))
        if a3.shape[2] >= 256:           # long planes: one dot product each
            return np.matmul(a3[:, :, None, :], b.reshape(n, c, -1, 1)).reshape(n, c)
        return np.einsum("nch,nch->nc", a3, b.reshape(n, c, -1))

    def _plane_sums(self, a, b=None):
        """Per-channel sums over (N, H, W) of a, or of a * b, for (N, C, H, W) arrays."""
        return self._plane_parts(a, b).sum(axis=0)

    @staticmethod
    def _bn_slices(x):
        n = x.shape[0]
        step = max(1, BN_SLICE_BYTES // max(1, x[:1].nbytes))
        return [slice(lo, min(n, lo + step)) for lo in range(0, n, step)]

    def batchnorm_forward_train(self, x, gamma, beta, eps, relu=False, residual=None, running=None):
        n, c = x.shape[:2]
        m = x.size // c
        bshape = (1, c, 1, 1)
        mean = self._plane_sums(x) / m
        mb = mean.reshape(bshape)
        xc = np.empty_like(x)
        parts = np.empty((n, c), dtype=x.dtype)
        slices = self._bn_slices(x)
        for s in slices:
            np.subtract(x[s], mb, out=xc[s])
            parts[s] = self._plane_parts(xc[s], xc[s])
        var = parts.sum(axis=0) / m
        invstd = 1.0 / np.sqrt(var + eps)
        scale, shift = (gamma * invstd).reshape(bshape), beta.reshape(bshape)
        y = np.empty_like(x)
        for s in slices:
            ys = y[s]
            np.multiply(xc[s], scale, out=ys)
            ys += shift
            if residual is not None:
                ys += residual[s]
            if relu:
                np.maximum(ys, 0, out=ys)       # NaN passes, as in torch
        self._update_running_stats(running, mean, var, m)
        return y, mean, var, (xc, invstd, gamma, y if relu else None, residual is not None)

    def batchnorm_backward(self, dy, cache):
        xc, invstd, gamma, relu_out, has_residual = cache
        n, c = dy.shape[:2]
        m = dy.size // c
        bshape = (1, c, 1, 1)
        g = dy if relu_out is None else np.empty_like(dy)
        p1, p2 = np.empty((n, c), dtype=dy.dtype), np.empty((n, c), dtype=dy.dtype)
        slices = self._bn_slices(dy)
        for s in slices:
            if relu_out is not None:
                np.multiply(dy[s], relu_out[s] > 0, out=g[s])     # relu_backward's arithmetic
            p1[s] = self._plane_parts(g[s])
            p2[s] = self._plane_parts(g[s], xc[s])
        dbeta = p1.sum(axis=0)
        dgamma = p2.sum(axis=0) * invstd
        # dx = gamma*invstd/m * (m*dy - dbeta - xhat*dgamma), xhat = xc*invstd
        k1, k2 = (-dgamma * invstd / m).reshape(bshape), (dbeta / m).reshape(bshape)
        k3 = (gamma * invstd).reshape(bshape)
        dx = np.empty_like(dy)
        for s in slices:
            d = dx[s]
            np.multiply(xc[s], k1, out=d)
            d += g[s]
            d -= k2
            d *= k3
        return dx, dgamma, dbeta, (g if has_residual else None)

    def maxpool2d_forward(self, x, k, stride, pad):
        """2x2 windows of stride 2 (the CNN's) as two pair maxima and one of pairs, the index
        of the first maximum in row-major order (as PyTorch) from three comparisons in uint8
        arithmetic: 20% faster than the base's k*k-view cascade (2.11 -> 1.67 ms on the CNN's
        first pool, one thread of the 2-core Xeon), the same results."""
        n, c, h, w = x.shape
        if not (k == stride == 2 and pad == 0 and h % 2 == 0 and w % 2 == 0):
            return super().maxpool2d_forward(x, k, stride, pad)
        x6 = x.reshape(n, c, h // 2, 2, w // 2, 2)
        v0, v1, v2, v3 = (x6[:, :, :, i, :, j] for i in (0, 1) for j in (0, 1))
        right_top = np.less(v0, v1).view(np.uint8)          # ties keep the first
        top = np.maximum(v0, v1)
        idx = np.less(v2, v3).view(np.uint8)
        bottom = np.maximum(v2, v3)
        lower = np.less(top, bottom).view(np.uint8)
        y = np.maximum(top, bottom, out=top)
        idx += np.uint8(2)                                   # idx = lower ? 2 + right_bottom : right_top
        idx -= right_top
        idx *= lower
        idx += right_top
        return y, (idx, (n, c, h, w), k, stride, pad)

    def to_host(self, a):
        return np.asarray(a)
