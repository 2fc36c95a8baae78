"""The dataset on the GPU for the whole run (as airbench keeps it): the uint8 images and the
labels are uploaded once, and every batch is gathered, cropped, flipped and normalised there.

    loader = DeviceBatchLoader(host_loader, CupyBatchOps(cupy, out_dtype))     # scratch cupy
    loader = DeviceBatchLoader(host_loader, TorchBatchOps(torch, "cuda", ...))  # torch cuda
    for x, y in loader.epoch(e): ...                                            # device arrays

The order and the crop/flip draws are the host BatchLoader's own (`order(epoch)` and
`aug_params(epoch)`, functions of (seed, epoch) alone), uploaded once per epoch, and the
normalisation repeats the host's float32 arithmetic (x * scale, then + shift, each rounded),
so a device batch is bitwise the host batch: runs with and without --host-data see the same
numbers, and scratch and torch see the same data. A step copies nothing from the host.
"""
import time

import numpy as np

from .data import CROP_PADDING, BatchLoader

CROP_FLIP_NORMALIZE = r"""
#include <cuda_fp16.h>
template <class T> __device__ __forceinline__ T from_float(float v) { return (T)v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

// out (B, C, H, W) = normalise(crop(pad(x[idx[b]]), dy[b], dx[b]), flipped if flip[b]).
// x: (N, C, H, W) uint8 on the device. Padding is zero in raw pixels (torchvision's RandomCrop).
// __fmul_rn/__fadd_rn: no fused multiply-add, so the result is the host's float32 x*scale + shift.
// grid: ceil(B*C*H*W / 256) blocks of 256; one thread per output value.
template <class T>
__global__ void crop_flip_normalize(const unsigned char* __restrict__ x, const long long* __restrict__ idx,
                                    const long long* __restrict__ dy, const long long* __restrict__ dx,
                                    const bool* __restrict__ flip, int B, int C, int H, int W, int pad,
                                    const float* __restrict__ scale, const float* __restrict__ shift,
                                    T* __restrict__ out) {
    long long total = (long long)B * C * H * W;
    long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (q >= total) return;
    int j = (int)(q % W), i = (int)((q / W) % H), c = (int)((q / ((long long)W * H)) % C);
    int b = (int)(q / ((long long)W * H * C));
    int h = i, w = j;
    if (dy) {
        h = i + (int)dy[b] - pad;
        w = (flip[b] ? W - 1 - j : j) + (int)dx[b] - pad;
    }
    unsigned char v = (h >= 0 && h < H && w >= 0 && w < W) ? x[(((long long)idx[b] * C + c) * H + h) * W + w] : 0;
    out[q] = from_float<T>(__fadd_rn(__fmul_rn((float)v, scale[c]), shift[c]));
}
"""


class CupyBatchOps:
    """The scratch side: one fused kernel per batch, writing the compute dtype (float16 in the
    fp16 mode: the host path's rounding of the same float32 value)."""

    def __init__(self, cupy, out_dtype=np.float32):
        self.cupy = cupy
        self.out_dtype = np.dtype(out_dtype)
        t = {"float32": "float", "float16": "__half", "float64": "double"}[self.out_dtype.name]
        mod = cupy.RawModule(code=CROP_FLIP_NORMALIZE, options=("--std=c++17",),
                             name_expressions=[f"crop_flip_normalize<{t}>"])
        self._fn = mod.get_function(f"crop_flip_normalize<{t}>")

    def upload(self, a):
        return self.cupy.asarray(a)

    def batch(self, x, idx, params, scale, shift):
        b = idx.shape[0]
        _, c, h, w = x.shape
        out = self.cupy.empty((b, c, h, w), dtype=self.out_dtype)
        dy, dx, flip = params if params is not None else (None, None, None)
        null = np.uint64(0)
        grid = (-(-out.size // 256),)
        self._fn(grid, (256,), (x, idx, dy if dy is not None else null, dx if dx is not None else null,
                                flip if flip is not None else null, np.int32(b), np.int32(c), np.int32(h),
                                np.int32(w), np.int32(CROP_PADDING), scale, shift, out))
        return out


class TorchBatchOps:
    """The torch side: the same arithmetic with torch's indexing ops (a few kernels a batch)."""

    def __init__(self, torch, device, out_dtype):
        self.torch, self.device, self.out_dtype = torch, torch.device(device), out_dtype

    def upload(self, a):
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def batch(self, x, idx, params, scale, shift):
        t = self.torch
        _, c, h, w = x.shape
        if params is None:
            raw = x[idx]
        else:
            dy, dx, flip = params
            ar_h, ar_w = t.arange(h, device=self.device), t.arange(w, device=self.device)
            rows = dy[:, None] + ar_h - CROP_PADDING                                     # (B, H)
            cols = dx[:, None] + t.where(flip[:, None], w - 1 - ar_w, ar_w) - CROP_PADDING  # (B, W)
            inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
            raw = x[idx[:, None, None, None], t.arange(c, device=self.device)[None, :, None, None],
                    rows.clamp(0, h - 1)[:, None, :, None], cols.clamp(0, w - 1)[:, None, None, :]]
            raw = raw * inside[:, None].to(raw.dtype)
        out = raw.to(scale.dtype) * scale.view(1, -1, 1, 1)
        out += shift.view(1, -1, 1, 1)
        return out.to(self.out_dtype)


class DeviceBatchLoader:
    """BatchLoader's interface (len, epoch(e), n_images, data_time_s) over device-resident data."""

    def __init__(self, host: BatchLoader, ops):
        self.host, self.ops = host, ops
        self.batch_size, self.drop_last = host.batch_size, host.drop_last
        self.x = ops.upload(host.x)                 # uint8: a quarter of float32's footprint
        self.y = ops.upload(host.y)
        self.scale = ops.upload(host.scale_shift()[0].astype(np.float32))
        self.shift = ops.upload(host.scale_shift()[1].astype(np.float32))
        self.data_time_s = 0.0

    def __len__(self):
        return len(self.host)

    @property
    def n_images(self):
        return self.host.n_images

    def epoch(self, epoch):
        """Device batches (x (B, C, H, W) normalised, y int64 (B,)). data_time_s counts the
        seconds spent launching them (the work itself is queued on the device)."""
        t0 = time.perf_counter()
        h = self.host
        order = self.ops.upload(h.order(epoch).astype(np.int64))
        params = None
        if h.augment:
            dy, dx, flip = h.aug_params(epoch)
            params = tuple(self.ops.upload(a) for a in (dy.astype(np.int64), dx.astype(np.int64), flip))
        self.data_time_s = time.perf_counter() - t0
        return self._batches(order, params)

    def _batches(self, order, params):
        for idx, p in self.host.slices(order, params):
            t0 = time.perf_counter()
            xb = self.ops.batch(self.x, idx, p, self.scale, self.shift)
            yb = self.y[idx]
            self.data_time_s += time.perf_counter() - t0
            yield xb, yb
