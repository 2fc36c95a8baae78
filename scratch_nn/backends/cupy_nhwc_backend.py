"""The GPU backend's 16-bit modes (fp16, bf16), and tf32 on an H100 / H200, in channels-last
layout, on the tensor-core convolutions of conv_igemm.py: no im2col buffer, BatchNorm
statistics from the convolution's epilogue.

tf32 (compute capability 9.0 only; elsewhere tf32 stays on CupyBackend's im2col and cuBLAS):
fp32 activations, whose products the tensor cores take as tf32, as torch's cuDNN does with
allow_tf32. Every convolution is a warpgroup one (cuda/conv_wgmma.cu's kernels on fp32
storage: wgmma tf32 for the forward and data gradient, conv_wgrad_tf32's mma.sync for the
weight gradient, since wgmma reads tf32 operands K-major only, or with
SCRATCH_NN_TF32_WGRAD=wgmma conv_wgrad_tfwg's transposing wgmma one), so channels are padded to a
multiple of 32 where a layer's input has fewer (the stem's 3, the CNN's 16). No loss scaling,
no 16-bit weight copies.

Layout. Activations live (N, H, W, C) contiguous in the 16-bit dtype behind NCHW-shaped views
(`buf.transpose(0, 3, 1, 2)`), so the layers and state dicts are unchanged. The network's
float32 input is converted once, its 3 channels padded with zeros to 16 (the K step of the
stem's GEMM). Everything else (the optimizer over flat fp32 arenas with their 16-bit copies,
the loss, Linear on cuBLAS, dynamic loss scaling for fp16, data parallelism) is CupyBackend's.

Per layer:
- Conv2d (on an H100 / H200, the layers whose channels are a multiple of 64 run the sm_90a
  warpgroup kernels of cuda/conv_wgmma.cu, their operands loaded by the copy engine (TMA) where
  that measured faster; SCRATCH_NN_NO_WGMMA=1 keeps them on mma.sync): the weights (fp32 masters) are packed to 16 bits per use, (F, KH*KW, Cp) for the
  forward and (C, KH*KW, F) for the data gradient; bias and ReLU in the epilogue (the CNN's);
  a convolution without them (every ResNet one, each followed by a BatchNorm) also writes its
  output's per-tile mean and squared deviations, which the BatchNorm after it merges instead
  of reading its input once more. The weight gradient lands in the fp32 gradient buffer.
- BatchNorm2d: apply (+ residual, ReLU) and backward as per-element kernels over (M, C); without
  a residual the backward recomputes the ReLU's mask from the input (bit for bit the forward's
  test) instead of reading the output.
- MaxPool2d 2x2 and the global average pool: channels-last kernels (cuda/nhwc.cu).
"""
import os

import numpy as np

from .base import BackendUnavailable, check_dx_add
from .cupy_backend import (HALF_PRECISIONS, NULL, SM75_ENV, CupyBackend, compute_capability, grid1, import_cupy)

STEM_CHANNELS = 16        # input channels are padded to a multiple of this (the smallest K step; tf32: 32)
STAT_ROWS = 256           # rows per partial of BatchNorm statistics computed apart from a convolution
BWD_ROWS = 256           # rows per partial of BatchNorm's backward sums (at most; see _bwd_rows)
BWD_MIN_ROWS = 32
MERGE_GROUP = 64         # statistics chunks merged per block in bn_merge_partial


def _padded(c, unit=STEM_CHANNELS):
    return -(-c // unit) * unit


def channels_last_tf32(cupy, device=None):
    """Whether tf32 runs channels-last on this GPU: the warpgroup kernels with TMA loads
    (compute capability 9.0, SCRATCH_NN_NO_WGMMA / NO_TMA / SM75 unset); else on CupyBackend's
    im2col and cuBLAS."""
    from .conv_igemm import NO_TMA_ENV, wgmma_available
    return wgmma_available(cupy, device) and os.environ.get(NO_TMA_ENV) != "1"


class CupyChannelsLastBackend(CupyBackend):
    layout = "nhwc"

    def __init__(self, threads=None, precision="fp16", device=None, tune=True, allocator=None):
        if precision not in HALF_PRECISIONS + ("tf32",):
            raise ValueError(f"the channels-last backend runs precision fp16, bf16 or tf32, not {precision!r}")
        super().__init__(threads=threads, precision=precision, device=device, allocator=allocator)
        from .conv_igemm import ConvKernels

        if precision == "tf32" and not channels_last_tf32(self.xp, self.device_id):
            raise BackendUnavailable("tf32 runs channels-last on compute capability 9.0 (H100, H200) with the "
                                     "warpgroup kernels and TMA; elsewhere use layout='auto' (the im2col backend)")
        major, _ = compute_capability(self.xp, self.device_id)
        self.async_copy = major >= 8          # cp.async pipelines; the sm_75 variant otherwise
        # the activations' dtype: 16-bit, or fp32 whose products the tensor cores take as tf32
        self.act = self.half if self.mixed else np.dtype(np.float32)
        self.conv = ConvKernels(self.xp, self.act.name, self.async_copy, self._sms, tune=tune, dtype=self.act)
        # the network input's channels are padded to the stem's K step: mma.sync's 16, or (tf32,
        # where every GEMM is a warpgroup one) a 128-byte row of 32
        self._stem_unit = STEM_CHANNELS if self.mixed else self.conv.bk
        # the last convolution's output statistics, for the BatchNorm right after it: (pointer, shape, stats, rows)
        self._stats = None

    def describe(self):
        d = super().describe()
        if self.conv.tf32:
            conv = ("implicit GEMM on tensor cores (fp32 storage, tf32 products: wgmma (sm_90a) forward and data "
                    f"gradient, {'wgmma' if self.conv.tf32_wgrad == 'wgmma' else 'mma.sync'} weight gradient, "
                    "operands by TMA)")
        else:
            conv = ("implicit GEMM on tensor cores ("
                    + ("wgmma (sm_90a) for 64-channel multiples" + (", operands by TMA where timed faster"
                                                                     if self.conv.maps else "") + ", mma.sync otherwise, "
                       if self.conv.wgmma else "mma.sync, ")
                    + ("cp.async pipeline" if self.async_copy else "sm_75 register-staged") + ")")
        d.update(layout="NHWC behind NCHW views", convolution=conv,
                 sm75_variant=os.environ.get(SM75_ENV) == "1", wgmma_groups_in_flight=self.conv.inflight)
        d.pop("recompute_cols", None)
        return d

    def conv_choices(self):
        """The tile each convolution shape measured fastest (pass, shape...) -> tile."""
        return {"/".join(map(str, k)): list(v) for k, v in self.conv.choices.items()}

    # ------------------------------------------------------------------ layout
    BUFFER_AXES = (0, 2, 3, 1)      # CupyBackend.add_ adds the NHWC buffers

    def add_(self, a, b):
        """a += b for two activation gradients: 16-byte vectors over the NHWC buffers (CuPy's
        float16 add ran at a third of the copy rate on the H200)."""
        if a.ndim == 4 and b.shape == a.shape and a.dtype == b.dtype == self.act and a.size % 8 == 0:
            ab, bb = a.transpose(self.BUFFER_AXES), b.transpose(self.BUFFER_AXES)
            if ab.flags.c_contiguous and bb.flags.c_contiguous:
                self._launch(self._k(ab.dtype)("add_nhwc"), grid1(ab.size // 8), (ab, bb, np.int64(ab.size)))
                return a
        return super().add_(a, b)

    @staticmethod
    def _view(buf):
        return buf.transpose(0, 3, 1, 2)

    def _nhwc(self, x):
        """The (N, H, W, C) contiguous buffer of the activation dtype behind an NCHW-shaped x (a copy, and a cast,
        when x is not such a view)."""
        t = x.transpose(0, 2, 3, 1)
        if x.dtype != self.act:
            t = t.astype(self.act)
        return t if t.flags.c_contiguous else self.xp.ascontiguousarray(t)

    def _input(self, x, cp):
        """A convolution's input as (N, H, W, cp): the network's fp32 (or other) NCHW batch
        converted in one kernel, channels zero-padded to cp; an activation as it is."""
        if x.dtype == self.act and x.shape[1] == cp:
            return self._nhwc(x)
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        return self.conv.to_nhwc(x, cp)

    def _remember(self, y, stats, rows):
        # only the latest convolution's: a BatchNorm takes its statistics right after it, and an
        # older pointer may have been freed and handed to another array since
        self._stats = (y.data.ptr, y.shape, stats, rows)

    # ------------------------------------------------------------------ convolution
    def conv2d_forward(self, x, w, b, stride, pad, relu=False):
        f, c, kh, kw = w.shape
        if kh != kw:
            raise ValueError("the cupy backend's convolution takes square kernels")
        cp = _padded(c, self._stem_unit)
        xb = self._input(x, cp)
        n, h, wd, _ = xb.shape
        oh, ow = self.conv_output_size(h, kh, stride, pad), self.conv_output_size(wd, kw, stride, pad)
        out = self.xp.empty((n, oh, ow, f), dtype=self.act)
        wp = self.conv.pack_forward(w, cp)
        with_stats = b is None and not relu
        self._stats = None
        res = self.conv.forward(xb, wp, kh, stride, pad, bias=b, relu=relu, stats=with_stats, out=out)
        if with_stats:
            self._remember(out, res[1], res[2])
        cache = (xb, c, kh, stride, pad, out if relu else None, b is not None, (h, wd))
        return self._view(out), cache

    # conv2d_backward is CupyBackend's: both caches hold has_bias at [6]
    def conv2d_backward_into(self, dy, cache, w, wgrad, bgrad, need_dx=True, add=None):
        """CupyBackend's, with add summed into dx by the data-gradient kernel's store where it
        is a view of an NHWC buffer of the activation dtype (a residual block's shortcut
        gradient always is): no add_nhwc pass."""
        check_dx_add(add, need_dx)
        addb = None
        if add is not None and add.dtype == self.act and add.ndim == 4:
            t = add.transpose(self.BUFFER_AXES)
            addb = t if t.flags.c_contiguous else None
        dx = self._conv_backward(dy, cache, w, wgrad, bgrad, need_dx, accumulate=True, add=addb)
        return self.add_(dx, add) if add is not None and addb is None else dx

    def _conv_backward(self, dy, cache, w, wgrad, bgrad, need_dx, accumulate, add=None):
        xb, c, k, stride, pad, relu_out, has_bias, hw = cache
        dyb = self._nhwc(dy)
        if relu_out is not None:
            masked = self.xp.empty_like(dyb)
            self._launch(self._k(dyb.dtype)("relu_backward"), grid1(dyb.size),
                         (dyb, relu_out, masked, np.int64(dyb.size)))
            dyb = masked
        if has_bias:
            self._column_sums(dyb, bgrad, accumulate)
        self.conv.wgrad(dyb, xb, k, stride, pad, wgrad, accumulate=accumulate, creal=c)
        if not need_dx:
            return None
        if c % 8:       # the data gradient's GEMM writes 8 channels a 16-byte store
            raise ValueError(f"no input gradient for a {c}-channel input (the network's): pass input_grad=False")
        dx = self.conv.dgrad(dyb, self.conv.pack_dgrad(w), k, stride, pad, hw, add=add)
        return self._view(dx)

    def _bwd_rows(self, m):
        """Rows per partial of bn_bwd_sums_nhwc: BWD_ROWS, halved (down to BWD_MIN_ROWS) while
        that leaves fewer than 4 blocks an SM: at batch 512 layer4's 8,192 rows made 32 blocks
        for the H100's 132 SMs. Depends on the shape and the GPU alone, so runs repeat bitwise.
        ResNet-18 b512 fp16 on the H100 (CUPTI, 2026-12-07): the 20 calls 1.12 -> 0.86 ms a
        step (BWD_MIN_ROWS 64 the same), the eager step 10.90 -> 10.66 ms; more rows than 256
        measured slower everywhere (1,024: 2.43 ms)."""
        rows = BWD_ROWS
        while rows > BWD_MIN_ROWS and -(-m // rows) < 4 * self._sms:
            rows //= 2
        return rows

    def _column_sums(self, g, out, accumulate):
        """out[f] (+)= sum of g (M, F) over its rows: a bias gradient."""
        f = g.shape[-1]
        m = g.size // f
        rows = self._bwd_rows(m)
        s = -(-m // rows)
        part = self.xp.empty(f * s, dtype=np.float32)
        self._launch(self._k(g.dtype)("bn_bwd_sums_nhwc"), (s,),
                     (g, NULL, NULL, NULL, NULL, NULL, np.int32(m), np.int32(f), np.int32(rows), part, NULL))
        self._launch(self._k(np.float32)("sum_partials"), (f,),
                     (part, np.int32(s), np.int32(f), out, np.int32(accumulate)))

    # ------------------------------------------------------------------ batch norm
    def batchnorm_forward_train(self, x, gamma, beta, eps, relu=False, residual=None, running=None):
        xp = self.xp
        xb = self._nhwc(x)
        n, h, w, c = xb.shape
        m = n * h * w
        hit, self._stats = self._stats, None
        if hit is not None and hit[0] == xb.data.ptr and hit[1] == xb.shape:
            stats, rows = hit[2], hit[3]
        else:
            rows = STAT_ROWS
            stats = xp.empty((-(-m // rows), 2, c), dtype=np.float32)
            self._launch(self._k(xb.dtype)("nhwc_stats"), (stats.shape[0],),
                         (xb, np.int32(m), np.int32(c), np.int32(rows), stats))
        chunks, per_rank, total = stats.shape[0], stats.shape[0], m
        if self.bn_comm is not None:          # every rank's chunks, merged as one batch
            stats = self.bn_comm.allgather(stats).reshape(-1, 2, c)
            chunks, total = stats.shape[0], m * self.bn_comm.world_size
        buf = xp.empty(6 * c, dtype=np.float32)
        mean_, invstd_, scale, shift, bmean, bvar = (buf[i * c:(i + 1) * c] for i in range(6))
        if running is None:
            run_mean, run_var, mom = xp.zeros(c, dtype=gamma.dtype), xp.ones(c, dtype=gamma.dtype), 0.0
        else:
            run_mean, run_var, mom = running
        groups = -(-chunks // MERGE_GROUP)
        part = xp.empty(3 * groups * c, dtype=np.float64)
        k32 = self._k(np.float32)
        self._launch(k32("bn_merge_partial"), (-(-c // 32), groups),
                     (stats, np.int32(chunks), np.int32(per_rank), np.int32(rows), np.int32(m), np.int32(c),
                      np.int32(MERGE_GROUP), part))
        self._launch(k32("bn_merge_stats"), (-(-c // 32),),
                     (part, np.int32(groups), np.int32(c), gamma, beta, run_mean, run_var, np.float64(eps),
                      np.float64(mom), np.float64(total / (total - 1)), mean_, invstd_, scale, shift, bmean, bvar))
        yb = xp.empty_like(xb)
        res = self._nhwc(residual) if residual is not None else None
        self._launch(self._k(xb.dtype)("bn_apply_nhwc"), grid1(xb.size // 8),
                     (xb, res if res is not None else NULL, scale, shift, yb, np.int64(xb.size), np.int32(c),
                      np.int32(relu)))
        # the backward's ReLU mask: from y after a residual add, else recomputed from x (one read fewer)
        mask = (yb, None) if relu and residual is not None else (None, (scale, shift)) if relu else (None, None)
        return self._view(yb), bmean, bvar, (xb, mean_, invstd_, gamma, mask, residual is not None)

    def batchnorm_forward_eval(self, x, gamma, beta, running_mean, running_var, eps, relu=False, residual=None):
        xp = self.xp
        xb = self._nhwc(x)
        c = xb.shape[3]
        scale = (gamma / xp.sqrt(running_var + eps)).astype(np.float32)
        shift = (beta - running_mean * scale).astype(np.float32)
        yb = xp.empty_like(xb)
        res = self._nhwc(residual) if residual is not None else None
        self._launch(self._k(xb.dtype)("bn_apply_nhwc"), grid1(xb.size // 8),
                     (xb, res if res is not None else NULL, scale, shift, yb, np.int64(xb.size), np.int32(c),
                      np.int32(relu)))
        return self._view(yb)

    def _bn_backward(self, dy, cache, dgamma, dbeta, accumulate):
        xp = self.xp
        xb, mean_, invstd_, gamma, (yb, affine), has_res = cache
        relu_args = (yb if yb is not None else NULL,) + (affine if affine is not None else (NULL, NULL))
        c = xb.shape[3]
        m = xb.size // c
        dyb = self._nhwc(dy)
        k = self._k(dyb.dtype)
        rows = self._bwd_rows(m)
        s = -(-m // rows)
        p = xp.empty(2 * c * s + 3 * c, dtype=np.float32)
        p1, p2, coef = p[:c * s], p[c * s:2 * c * s], p[2 * c * s:]
        self._launch(k("bn_bwd_sums_nhwc"), (s,),
                     (dyb, xb) + relu_args + (mean_, np.int32(m), np.int32(c), np.int32(rows), p1, p2))
        coeffs = self._k(np.float32)("bn_grad_coeffs_nhwc")
        self._launch(coeffs, (c,),
                     (p1, p2, np.int32(c), np.int32(s), np.int32(m), gamma, mean_, invstd_, dgamma, dbeta, coef,
                      np.int32(accumulate)))
        if self.bn_comm is not None:
            self._synced_bn_coeffs(coeffs, (c,), p1, p2, c, s, m, gamma, mean_, invstd_, coef)
        dx = xp.empty_like(xb)
        dres = xp.empty_like(xb) if has_res else None
        self._launch(k("bn_bwd_apply_nhwc"), grid1(xb.size // 8),
                     (dyb, xb) + relu_args + (coef, dx, dres if has_res else NULL, np.int64(xb.size), np.int32(c)))
        return self._view(dx), (self._view(dres) if has_res else None)

    # ------------------------------------------------------------------ pooling
    def maxpool2d_forward(self, x, k, stride, pad):
        n, c, h, w = x.shape
        if not (k == 2 and stride == 2 and pad == 0 and h % 2 == 0 and w % 2 == 0):
            raise ValueError("the channels-last backend pools 2x2 windows with stride 2 over even sizes")
        xb = self._nhwc(x)
        y = self.xp.empty((n, h // 2, w // 2, c), dtype=xb.dtype)
        idx = self.xp.empty(y.shape, dtype=np.uint8)
        self._launch(self._k(xb.dtype)("maxpool2x2_nhwc_forward"), grid1(y.size),
                     (xb, y, idx, np.int32(n), np.int32(h), np.int32(w), np.int32(c)))
        return self._view(y), ("2x2nhwc", idx, (n, c, h, w))

    def maxpool2d_backward(self, dy, cache):
        _, idx, (n, c, h, w) = cache
        if dy.dtype != self.act:
            dy = dy.astype(self.act)
        dx = self.xp.empty((n, h, w, c), dtype=dy.dtype)
        it = dy.itemsize
        sn, sc, sh, sw = (st // it for st in dy.strides)
        self._launch(self._k(dy.dtype)("maxpool2x2_nhwc_backward"), grid1(idx.size),
                     (dy, np.int64(sn), np.int64(sc), np.int64(sh), np.int64(sw), idx, dx, np.int32(n), np.int32(h),
                      np.int32(w), np.int32(c)))
        return self._view(dx)

    def global_avgpool_forward(self, x):
        n, c, h, w = x.shape
        xb = self._nhwc(x)
        y = self.xp.empty((n, c), dtype=xb.dtype)
        self._launch(self._k(xb.dtype)("avgpool_nhwc_forward"), grid1(n * c),
                     (xb, y, np.int32(n), np.int32(h * w), np.int32(c)))
        return y

    def global_avgpool_backward(self, dy, x_shape):
        n, c, h, w = x_shape
        dy = self.xp.ascontiguousarray(dy, dtype=self.act)
        dx = self.xp.empty((n, h, w, c), dtype=dy.dtype)
        self._launch(self._k(dy.dtype)("avgpool_nhwc_backward"), grid1(dx.size),
                     (dy, dx, np.int32(n), np.int32(h * w), np.int32(c)))
        return self._view(dx)


def make_cupy_backend(threads=None, precision="fp32", device=None, layout="auto", **options):
    """backends.get("cupy", ...): the channels-last tensor-core backend for fp16 and bf16, and for
    tf32 where the GPU runs the warpgroup kernels (H100, H200); the channel-major im2col one
    (CupyBackend) for fp32, tf32 elsewhere, or with layout="cnhw" for fp16 and tf32."""
    if layout not in ("auto", "nhwc", "cnhw"):
        raise ValueError(f"layout {layout!r} is not one of: auto, nhwc, cnhw")
    nhwc = layout != "cnhw" and (precision in HALF_PRECISIONS or (precision == "tf32" and (
        layout == "nhwc" or channels_last_tf32(import_cupy(), device))))
    if nhwc:
        tune = options.pop("tune", True)
        allocator = options.pop("allocator", None)
        if options:
            raise TypeError(f"unexpected options for the channels-last backend: {', '.join(options)}")
        return CupyChannelsLastBackend(threads=threads, precision=precision, device=device, tune=tune,
                                       allocator=allocator)
    if layout == "nhwc":
        raise BackendUnavailable(f"the channels-last backend runs fp16, bf16 and tf32, not {precision}")
    if precision == "bf16":
        raise ValueError("bf16 runs in the channels-last layout only (layout auto or nhwc)")
    return CupyBackend(threads=threads, precision=precision, device=device, **options)
