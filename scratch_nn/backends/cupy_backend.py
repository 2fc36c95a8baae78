"""The GPU backend: CuPy arrays, cuBLAS GEMMs, and the hand-written kernels of cuda_kernels.py.

Each launcher below checks its arrays, allocates outputs from CuPy's memory pool, states its
grid and launches one kernel. Activations live channel-major, (C, N, H, W), behind NCHW-shaped
views (see cuda_kernels.py), so no layer pays for a transpose.

Precision (`precision=`):
- "fp32": strict float32, cuBLAS without TF32 (torch: allow_tf32 off for matmul and cuDNN).
- "tf32": float32 storage, GEMMs on TF32 tensor cores; needs compute capability 8.0+.
- "fp16": mixed precision, as torch's autocast + GradScaler: float16 activations and GEMM
  operands (fp32 accumulation on tensor cores), fp32 master weights, weight gradients,
  BatchNorm statistics and optimizer state; the loss is scaled dynamically (scratch_nn.amp).
  The half copy of the weights lives in a flat arena beside the fp32 one and is rewritten by
  the optimizer's update kernel, so it costs no pass of its own.
- "bf16": the same with bfloat16 (compute capability 8.0+, CuPy with ml_dtypes), and no loss
  scaling, as torch's bf16 autocast.
fp16 and bf16 train in channels-last layout on the tensor-core convolutions (cupy_nhwc_backend.py;
`layout="cnhw"` keeps this module's im2col path for fp16).

Nothing is copied between host and device in a training step except the loss when it is read,
and nothing synchronises: the optimizer reads its learning rate from device memory, so a
captured CUDA graph (cuda_graph.py) can replay the step while the schedule moves on.
"""
import math
import os

import numpy as np

from . import gpu_allocator
from .base import Backend, BackendUnavailable, check_dx_add

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
HALF_PRECISIONS = ("fp16", "bf16")     # 16-bit activations, fp32 masters
NULL = np.uint64(0)           # a null pointer argument
BLOCK = 256
COLS_BUDGET = 128 * 2**20     # bytes of im2col columns at a time when they are rebuilt in backward
KEEP_COLS_BYTES = 256 * 2**20  # recompute_cols="auto" (tf32): a convolution keeps its columns for backward up to this size
SIDE_FMAS = 2**28             # weight gradients up to this many multiply-adds run on the side stream
_KERNELS = {}
_KERNELS_BY_DTYPE = {}
_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


class PrecisionUnavailable(BackendUnavailable):
    """The GPU cannot run the requested precision mode."""


def import_cupy():
    try:
        import cupy
    except ImportError as e:
        raise BackendUnavailable(
            "backend 'cupy' needs CuPy and an NVIDIA GPU: pip install cupy-cuda12x for a CUDA 12 driver "
            "(Kaggle, Colab), cupy-cuda13x for CUDA 13, cupy-cuda11x for CUDA 11; or use backend 'numba'") from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, or a driver older than this CuPy's CUDA
        raise BackendUnavailable(f"backend 'cupy': CuPy is installed but cannot reach a GPU ({e}); "
                                 f"check nvidia-smi, or use backend 'numba'") from e
    if count == 0:
        raise BackendUnavailable("backend 'cupy': no CUDA GPU is visible here; use backend 'numba' or 'numpy'")
    return cupy


SM75_ENV = "SCRATCH_NN_SM75"   # =1: run as a T4 would (its kernel variants, no tf32 or bf16)


def compute_capability(cupy, device=None):
    """(major, minor) of the GPU, or (7, 5) under SCRATCH_NN_SM75=1: the sm_75 code paths and
    refusals run on a newer GPU, since no T4 is at hand."""
    if os.environ.get(SM75_ENV) == "1":
        return 7, 5
    dev = cupy.cuda.Device(device)
    cc = dev.compute_capability   # "75", "80", "90"
    return int(cc[:-1]), int(cc[-1])


def check_precision(precision, cupy, device=None):
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
    major, minor = compute_capability(cupy, device)
    if precision in ("tf32", "bf16") and major < 8:
        raise PrecisionUnavailable(
            f"precision '{precision}' needs a GPU of compute capability 8.0 or newer (Ampere+); this one is "
            f"{major}.{minor}. Use --precision fp32, or fp16 (mixed precision runs on {major}.{minor})")
    if precision == "bf16":
        bfloat16_dtype(cupy)


def bfloat16_dtype(cupy):
    """numpy's bfloat16 dtype from ml_dtypes, which CuPy 14+ computes with; PrecisionUnavailable
    with what to install where either is missing."""
    try:
        import ml_dtypes

        dt = np.dtype(ml_dtypes.bfloat16)
        (cupy.ones(2, dtype=dt) + cupy.ones(2, dtype=dt)).sum()
        return dt
    except Exception as e:      # ImportError, or a CuPy without bfloat16 kernels
        raise PrecisionUnavailable(f"precision 'bf16' needs CuPy 14 or newer with ml_dtypes (pip install ml-dtypes; "
                                   f"CuPy said: {type(e).__name__}: {e}); or use --precision fp16") from None


def half_dtype(precision, cupy):
    """The 16-bit activation dtype of a mixed-precision mode (None for fp32 / tf32)."""
    if precision == "fp16":
        return np.dtype(np.float16)
    if precision == "bf16":
        return bfloat16_dtype(cupy)
    return None


def kernels(storage):
    """The compiled kernels for a storage dtype name (compiled once per process; CuPy caches
    the binaries on disk)."""
    if storage not in _KERNELS:
        from .cuda_kernels import Kernels

        _KERNELS[storage] = Kernels(storage)
    return _KERNELS[storage]


def adam_hyper(lr, beta1, beta2, step):
    """(lr, bias correction 1, sqrt(bias correction 2)) at a 1-based step."""
    return lr, 1.0 - beta1 ** step, math.sqrt(1.0 - beta2 ** step)


def grid1(n):
    return (max(1, min(-(-n // BLOCK), 65535 * 4)),)


def grid_per_channel(m, c):
    return (max(1, min(-(-m // BLOCK), 4096)), c)


class CupyBackend(Backend):
    name = "cupy"
    layout = "cnhw"
    supported_dtypes = ("float32", "float64")

    def __init__(self, threads=None, precision="fp32", device=None, recompute_cols=None, allocator=None):
        cupy = import_cupy()
        self.xp = cupy
        self.device_id = cupy.cuda.Device(device).id if device is not None else cupy.cuda.Device().id
        check_precision(precision, cupy, self.device_id)
        # CuPy's pool, or CUDA's stream-ordered one (opt-in so far; gpu_allocator.py)
        self.allocator = gpu_allocator.install(cupy, allocator, self.device_id)
        super().__init__(threads=threads)
        self.precision = precision
        self._sms = cupy.cuda.Device(self.device_id).attributes["MultiProcessorCount"]
        from .cublas_gemm import Gemm

        self._gemm = Gemm(cupy)
        self._tf32 = precision == "tf32"
        self.half = half_dtype(precision, cupy)          # the 16-bit activation dtype, or None
        self.mixed = self.half is not None
        self._half_kind = np.int32(1 if precision == "bf16" else 0)
        if self.mixed:
            self.supported_dtypes = ("float32",)   # the master weights; compute is 16-bit
        # Keep each convolution's im2col columns for its backward (one pass less over the
        # largest arrays of a step), or rebuild them there, a slice of the batch at a time
        # (less memory). Default: rebuild in the fp16 mode, whose point is a small footprint;
        # in tf32 ("auto") keep a convolution's columns when the whole batch's fit
        # KEEP_COLS_BYTES, else rebuild them (ResNet-18 at batch 512 kept 14.3 GB, against
        # torch's 5.7; now 5.0); keep in strict fp32, the mode measured for speed against torch
        # at batch 128, where "auto" cost 6% (rebuilding layer1's 302 MB columns).
        if recompute_cols is None:
            recompute_cols = True if self.mixed else "auto" if precision == "tf32" else False
        self.recompute_cols = recompute_cols if recompute_cols == "auto" else bool(recompute_cols)
        # fp16 mode: (pointer, size) of an fp32 parameter arena, or of one parameter in it -> its
        # float16 copy (a view into the arena's copy); the (arena, copy) pairs for refreshing
        self._halves = {}
        self._half_arenas = []
        self._ones = {}             # (length, dtype) -> ones vector (bias gradients as GEMVs)
        # Small layers' weight gradients run on a second stream, beside the input-gradient chain
        # (see _side_gemms); _keep holds what they read until the streams are joined.
        self._side = self._side_gemm = None
        self._side_pending = False
        self._keep = []
        self._hyper = {}            # optimizer group key -> (host values, device float32[3])
        self._arenas = {}           # first array's pointer -> flat arrays (see _flat)
        self.debug_sync = os.environ.get("SCRATCH_NN_CUDA_SYNC") == "1"
        self.bn_comm = None         # sync_batchnorm: BatchNorm statistics over every rank's batch

    # ------------------------------------------------------------------ setup
    def describe(self):
        cupy = self.xp
        props = cupy.cuda.runtime.getDeviceProperties(self.device_id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        major, minor = compute_capability(cupy, self.device_id)
        return dict(super().describe(), precision=self.precision, gpu=name, compute_capability=f"{major}.{minor}",
                    cupy=cupy.__version__, cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(),
                    layout="CNHW behind NCHW views", recompute_cols=self.recompute_cols, allocator=self.allocator)

    def require_pool_allocator(self, what):
        """Refuse `what` (a CUDA-graph capture) on a backend whose arrays come from CUDA's
        stream-ordered pool: see gpu_allocator.py."""
        if self.allocator != "pool":
            raise ValueError(f"{what} needs the backend built with allocator='pool' (this one allocates from CUDA's "
                             f"stream-ordered pool, whose allocations during a capture would belong to the graph): "
                             f"backends.get('cupy', ..., allocator='pool'); the experiments do this under --cuda-graph")

    def check_dtype(self, dtype):
        if self.mixed and self.xp.dtype(dtype).name != "float32":
            raise ValueError(f"precision {self.precision} keeps float32 master weights: build the model with dtype "
                             f"float32")
        return super().check_dtype(dtype)

    def _act(self, x):
        """An activation in the compute dtype (the fp16 mode casts a float32 input once)."""
        return x.astype(self.half) if self.mixed and x.dtype != self.half else x

    def _w(self, w):
        """The weight a GEMM reads: in the fp16 mode its half copy (kept up to date by the
        optimizer), or a fresh cast for a parameter no optimizer owns."""
        if not self.mixed or w.dtype == self.half:
            return w
        h = self._halves.get((w.data.ptr, w.size))
        if h is None:
            return w.astype(self.half)
        return h if h.shape == w.shape else h.reshape(w.shape)

    def _ones_vec(self, n, dtype):
        key = (n, np.dtype(dtype).str)
        v = self._ones.get(key)
        if v is None:
            v = self._ones[key] = self.xp.ones((n, 1), dtype=dtype)
        return v

    def _k(self, dtype):
        # keyed by the dtype object: numpy builds dtype.name in Python, and an eager step
        # asks ~120 times
        ks = _KERNELS_BY_DTYPE.get(dtype)
        if ks is None:
            ks = _KERNELS_BY_DTYPE[dtype] = kernels(np.dtype(dtype).name)
        return ks

    def _launch(self, fn, grid, args, block=BLOCK):
        fn(grid, (block,), args)
        if self.debug_sync:   # SCRATCH_NN_CUDA_SYNC=1: find the launch that faults
            self.xp.cuda.Device().synchronize()

    # ------------------------------------------------------------------ arrays
    def asarray(self, a, dtype=None):
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a):
        self._join()
        return self.xp.asnumpy(a)

    def synchronize(self):
        self._join()
        self.xp.cuda.get_current_stream().synchronize()

    # ------------------------------------------------------------------ the weight-gradient side stream
    # A small layer's weight-gradient GEMMs (the CNN's: a 16x27 or 32x144 result reduced over tens
    # of thousands of positions) leave most of the GPU idle; nothing downstream needs them before
    # the optimizer, so in a captured step they run on a second stream (its own cuBLAS handle and
    # workspace) while the main stream goes on with the input gradients. Eager steps keep one
    # stream: there the host's launches are the bottleneck, and a fork and join only add to them. The streams fork with an event, and join before anything reads gradients:
    # the optimizer update, amp_check, zero_, to_host, synchronize. Inside a CUDA-graph capture
    # the fork and join become graph edges. CuPy's pool hands a freed block back to the stream
    # that allocated it, so the arrays the side stream reads are kept alive until the join.
    def _side_gemms(self, calls, keep):
        """Run calls, each fn(gemm) given the side stream's Gemm, on the side stream after
        everything queued so far."""
        cupy = self.xp
        if self._side is None:
            from .cublas_gemm import Gemm

            self._side = cupy.cuda.Stream(non_blocking=True)
            self._side_gemm = Gemm(cupy)
        main = cupy.cuda.get_current_stream()
        self._side.wait_event(main.record())
        with self._side:
            for fn in calls:
                fn(self._side_gemm)
        self._side_pending = True
        self._keep.extend(keep)

    def _capturing(self):
        return self.xp.cuda.get_current_stream().is_capturing()

    def _join(self):
        if self._side_pending:
            self.xp.cuda.get_current_stream().wait_event(self._side.record())
            self._side_pending = False
            self._keep.clear()

    def grads_ready_on(self, stream):
        """`stream` waits for the side stream's weight gradients queued so far (a data-parallel
        bucket's all-reduce reads them; NcclComm itself waits for the caller's stream only).
        The main stream does not join, so its input gradients go on beside both."""
        if self._side_pending:
            stream.wait_event(self._side.record())

    def rng(self, seed):
        return self.xp.random.default_rng(seed)

    @staticmethod
    def _cnhw(x):
        """The (C, N, H, W) contiguous array behind an NCHW-shaped array (a copy only when x
        is not such a view)."""
        t = x.transpose(1, 0, 2, 3)
        return t if t.flags.c_contiguous else t.copy()

    @staticmethod
    def _nchw(buf):
        return buf.transpose(1, 0, 2, 3)

    BUFFER_AXES = (1, 0, 2, 3)      # an NCHW view -> the contiguous buffer behind it

    def add_(self, a, b):
        """a += b over the contiguous buffers behind the two NCHW views: CuPy walks a
        non-contiguous view in its own index order, uncoalesced (0.86 ms instead of 0.05 for a
        67 MB fp16 add on the H200)."""
        if a.ndim == 4 and b.shape == a.shape and b.dtype == a.dtype:
            ab, bb = a.transpose(self.BUFFER_AXES), b.transpose(self.BUFFER_AXES)
            if ab.flags.c_contiguous and bb.flags.c_contiguous:
                ab += bb
                return a
        a += b
        return a

    def gemm(self, a, b, out=None, accumulate=False, out_dtype=None):
        """a @ b on cuBLAS (TF32 tensor cores in tf32 mode), optionally accumulated into out
        (which may be float32 for float16 operands)."""
        return self._gemm(a, b, out=out, accumulate=accumulate, tf32=self._tf32, out_dtype=out_dtype)

    # ------------------------------------------------------------------ convolution
    def _im2col(self, x, k, stride, pad, oh, ow):
        n, c, h, w = x.shape
        if x.strides[3] != x.itemsize or x.strides[2] != w * x.itemsize:
            x = self._nchw(self._cnhw(x))
        cols = self.xp.empty((c * k * k, n * oh * ow), dtype=x.dtype)
        sn, sc = x.strides[0] // x.itemsize, x.strides[1] // x.itemsize
        self._launch(self._k(x.dtype)("im2col"), (-(-(n * oh * ow) // BLOCK), c),
                     (x, cols, np.int32(n), np.int32(h), np.int32(w), np.int64(sn), np.int64(sc),
                      np.int32(k), np.int32(stride), np.int32(pad), np.int32(oh), np.int32(ow)))
        return cols

    def _cols(self, x, k, stride, pad, oh, ow):
        if k == 1 and stride == 1 and pad == 0:
            n, c, h, w = x.shape
            return self._cnhw(x).reshape(c, n * h * w)   # a 1x1 conv's columns are its input
        return self._im2col(x, k, stride, pad, oh, ow)

    def _rebuilds_cols(self, x, k, stride, oh, ow):
        """Whether this convolution's backward rebuilds its columns (else the forward keeps them)."""
        if k == 1 and stride == 1:
            return False
        if self.recompute_cols == "auto":
            n, c = x.shape[:2]
            return n * c * k * k * oh * ow * x.itemsize > KEEP_COLS_BYTES
        return self.recompute_cols

    def _batch_slices(self, x, k, stride, oh, ow):
        """Batch slices whose im2col columns fit COLS_BUDGET bytes each (the whole batch when
        columns are kept for backward, or for a 1x1 stride-1 conv, whose columns are its input)."""
        n, c = x.shape[:2]
        per_image = c * k * k * oh * ow * x.itemsize
        if not self._rebuilds_cols(x, k, stride, oh, ow):
            return [(0, n)]
        step = max(1, min(n, COLS_BUDGET // max(per_image, 1)))
        return [(a, min(n, a + step)) for a in range(0, n, step)]

    def conv2d_forward(self, x, w, b, stride, pad, relu=False):
        f, c, kh, kw = w.shape
        if kh != kw:
            raise ValueError("the cupy backend's convolution takes square kernels")
        x = self._act(x)
        n, _, h, wd = x.shape
        oh = self.conv_output_size(h, kh, stride, pad)
        ow = self.conv_output_size(wd, kw, stride, pad)
        wm = self._w(w).reshape(f, -1)
        slices = self._batch_slices(x, kh, stride, oh, ow)
        if len(slices) == 1:
            cols = self._cols(x, kh, stride, pad, oh, ow)
            y = self.gemm(wm, cols)                        # (F, N*OH*OW): already CNHW
        else:
            cols, p = None, oh * ow
            y = self.xp.empty((f, n * p), dtype=x.dtype)
            for a, e in slices:                            # a column block of y per batch slice
                self.gemm(wm, self._cols(x[a:e], kh, stride, pad, oh, ow), out=y[:, a * p:e * p])
        if b is not None or relu:
            self._launch(self._k(y.dtype)("bias_relu"), grid_per_channel(y.shape[1], f),
                         (y, b if b is not None else NULL, np.int32(y.shape[1]), np.int32(relu)))
        y = self._nchw(y.reshape(f, n, oh, ow))
        saved = (x, None) if self._rebuilds_cols(x, kh, stride, oh, ow) else (x.shape, cols)
        return y, (saved, stride, pad, oh, ow, y if relu else None, b is not None)

    def conv2d_backward(self, dy, cache, w, need_dx=True):
        dw = self.xp.empty(w.shape, dtype=w.dtype)
        db = self.xp.empty(w.shape[0], dtype=w.dtype) if cache[6] else None
        dx = self._conv_backward(dy, cache, w, dw, db, need_dx, accumulate=False)
        return dx, dw, db

    def conv2d_backward_into(self, dy, cache, w, wgrad, bgrad, need_dx=True, add=None):
        check_dx_add(add, need_dx)
        dx = self._conv_backward(dy, cache, w, wgrad, bgrad, need_dx, accumulate=True)
        return self.add_(dx, add) if add is not None else dx

    def _conv_backward(self, dy, cache, w, wgrad, bgrad, need_dx, accumulate):
        """dx (or None); dw and db written, or added, into wgrad and bgrad by the GEMMs."""
        (x_or_shape, cols), stride, pad, oh, ow, relu_out, has_bias = cache
        f, c, k, _ = w.shape
        x = x_or_shape if cols is None else None
        n, _, h, wd = x.shape if x is not None else x_or_shape
        dym = self._cnhw(self._act(dy)).reshape(f, -1)
        kt = self._k(dym.dtype)
        if relu_out is not None:
            masked = self.xp.empty_like(dym)
            self._launch(kt("relu_backward"), grid1(dym.size),
                         (dym, self._cnhw(relu_out), masked, np.int64(dym.size)))
            dym = masked
        wm = self._w(w).reshape(f, -1)
        p = oh * ow
        one_by_one = k == 1 and stride == 1 and pad == 0
        dx = None if not need_dx or one_by_one else self.xp.empty((c, n, h, wd), dtype=dym.dtype)
        slices = [(0, n)] if cols is not None else self._batch_slices(x, k, stride, oh, ow)
        # db = dym @ ones: a GEMV that accumulates like the weight gradient
        bias = [self._gemm_call(dym, self._ones_vec(dym.shape[1], dym.dtype), bgrad.reshape(f, 1), accumulate)
                ] if has_bias else []
        on_side = len(slices) == 1 and f * wm.shape[1] * dym.shape[1] <= SIDE_FMAS and self._capturing()
        if on_side:
            if cols is None:
                cols = self._cols(x, k, stride, pad, oh, ow)
            self._side_gemms([self._wgrad_call(dym, cols, wgrad.reshape(f, -1), accumulate)] + bias, keep=[dym, cols])
        else:
            for fn in bias:
                fn(self._gemm)
        for i, (a, e) in enumerate(slices):
            dys = dym[:, a * p:e * p]
            if not on_side:
                cs = cols if cols is not None else self._cols(x[a:e], k, stride, pad, oh, ow)
                self._wgrad_call(dys, cs, wgrad.reshape(f, -1), accumulate or i > 0)(self._gemm)
                del cs
            if not need_dx:
                continue
            dcols = self.gemm(wm.T, dys)                  # (C*k*k, slice*OH*OW)
            if one_by_one:
                return self._nchw(dcols.reshape(c, n, h, wd))
            self._launch(kt("col2im"), grid_per_channel((e - a) * h * wd, c),
                         (dcols, dx[:, a:e], np.int32(e - a), np.int32(h), np.int32(wd), np.int32(k),
                          np.int32(stride), np.int32(pad), np.int32(oh), np.int32(ow), np.int64(n * h * wd)))
        return None if dx is None else self._nchw(dx)

    def _gemm_call(self, a, b, out, accumulate):
        """out (+)= a @ b, to run on a given Gemm (the main stream's or the side stream's)."""
        return lambda gemm: gemm(a, b, out=out, accumulate=accumulate, tf32=self._tf32)

    def _wgrad_call(self, dy, cols, out, accumulate):
        """out (F, J) (+)= dy (F, K) @ cols (J, K)^T. A small result over a long K (the CNN's
        16x27 over 65,536 positions) runs as S batched GEMMs over K slices of >= 512 and a
        (1, S) @ (S, F*J) GEMV that sums them (and accumulates): cuBLAS's own split-K picks
        32x32 tiles and one CTA per split for these shapes and takes ~5x longer."""
        f, k = dy.shape
        j = cols.shape[0]
        s = 1
        if f * j <= 8192:
            while s < 128 and k % (2 * s) == 0 and k // (2 * s) >= 512:
                s *= 2
        if s == 1:
            return self._gemm_call(dy, cols.T, out, accumulate)
        ck = k // s

        def run(gemm):
            part = self.xp.empty((s, f, j), dtype=out.dtype)
            gemm(dy[:, :ck], cols.T[:ck], out=part[0], tf32=self._tf32, out_dtype=out.dtype, batch=(s, ck, ck, f * j))
            gemm(self._ones_vec(s, out.dtype).T, part.reshape(s, f * j), out=out.reshape(1, f * j),
                 accumulate=accumulate, tf32=self._tf32)
        return run

    # ------------------------------------------------------------------ linear
    def linear_forward(self, x, w, b, relu=False):
        y = self.gemm(self._act(x), self._w(w).T)
        if b is not None or relu:
            self._launch(self._k(y.dtype)("bias_rows"), grid1(y.size),
                         (y, b if b is not None else NULL, np.int64(y.size), np.int32(y.shape[1]), np.int32(relu)))
        return y

    def linear_backward(self, dy, x, w, need_dx=True):
        dw = self.xp.empty(w.shape, dtype=w.dtype)
        db = self.xp.empty(w.shape[0], dtype=w.dtype)
        dx = self._linear_backward(dy, x, w, dw, db, need_dx, accumulate=False)
        return dx, dw, db

    def linear_backward_into(self, dy, x, w, wgrad, bgrad, need_dx=True):
        return self._linear_backward(dy, x, w, wgrad, bgrad, need_dx, accumulate=True)

    def _linear_backward(self, dy, x, w, wgrad, bgrad, need_dx, accumulate):
        dy, x = self._act(dy), self._act(x)
        calls = [self._gemm_call(dy.T, x, wgrad, accumulate)]
        if bgrad is not None:
            calls.append(self._gemm_call(dy.T, self._ones_vec(dy.shape[0], dy.dtype), bgrad.reshape(-1, 1), accumulate))
        if wgrad.size * dy.shape[0] <= SIDE_FMAS and self._capturing():
            self._side_gemms(calls, keep=[dy, x])
        else:
            for fn in calls:
                fn(self._gemm)
        return self.gemm(dy, self._w(w)) if need_dx else None

    # ------------------------------------------------------------------ per-channel reductions
    def _splits(self, c, m):
        """Chunks per channel: enough blocks to fill the GPU a few times over, each chunk at
        least a few thousand values."""
        return int(max(1, min(-(-8 * self._sms // c), -(-m // 2048), 1024)))

    @staticmethod
    def _acc_dtype(dtype):
        return _F64 if dtype == _F64 else _F32

    def _partials(self, mode, x, dy, y, mean, c, m, extra):
        """Per-split channel sums, and a float32/64 buffer of `extra` values after them (one
        allocation: host time per launch is what eager steps spend)."""
        s = self._splits(c, m)
        acc = self._acc_dtype(x.dtype if x is not None else dy.dtype)
        p = self.xp.empty(2 * c * s + extra, dtype=acc)
        p1, p2 = p[:c * s], p[c * s:2 * c * s]
        dt = (x if x is not None else dy).dtype
        self._launch(self._k(dt)("channel_sums", mode), (s, c),
                     (x if x is not None else NULL, dy if dy is not None else NULL,
                      y if y is not None else NULL, mean if mean is not None else NULL, np.int32(m), p1, p2))
        return p1, p2, s, p[2 * c * s:]

    # ------------------------------------------------------------------ batch norm
    def batchnorm_forward_train(self, x, gamma, beta, eps, relu=False, residual=None, running=None):
        xp = self.xp
        x = self._act(x)
        n, c, h, w = x.shape
        m = n * h * w
        xc = self._cnhw(x)
        k = self._k(x.dtype)
        pdt = gamma.dtype
        same = pdt == self._acc_dtype(x.dtype)    # coefficients share the statistics' buffer
        p1, p2, s, stats = self._partials(0, xc, None, None, None, c, m, 6 * c if same else 2 * c)
        unbias = m / (m - 1)
        if self.bn_comm is not None:
            p1, p2, s, unbias = self._synced_partials(xc, p1, p2, c, s, m)
        mean_, invstd_ = stats[:c], stats[c:2 * c]
        coef = stats[2 * c:] if same else xp.empty(4 * c, dtype=pdt)
        scale, shift, bmean, bvar = (coef[i * c:(i + 1) * c] for i in range(4))
        if running is None:   # statistics only: scratch buffers take the running update
            run_mean, run_var, mom = xp.zeros(c, dtype=pdt), xp.ones(c, dtype=pdt), 0.0
        else:
            run_mean, run_var, mom = running
        self._launch(k("bn_stats"), (-(-c // BLOCK),),
                     (xc, p1, p2, np.int32(c), np.int32(s), np.int32(m), gamma, beta, run_mean, run_var,
                      np.float64(eps), np.float64(mom), np.float64(unbias), mean_, invstd_, scale, shift, bmean,
                      bvar))
        yc = xp.empty_like(xc)
        res = self._cnhw(residual) if residual is not None else None
        self._launch(k("bn_apply"), grid_per_channel(m, c),
                     (xc, res if res is not None else NULL, scale, shift, yc, np.int32(m), np.int32(relu)))
        y = self._nchw(yc)
        return y, bmean, bvar, (xc, mean_, invstd_, gamma, yc if relu else None, residual is not None)

    def sync_batchnorm(self, comm):
        """Training-mode BatchNorm normalises with the statistics of every rank's batch (comm:
        backends.nccl.NcclComm; None: this process's batch), as torch's SyncBatchNorm."""
        self.bn_comm = comm

    def _synced_partials(self, xc, p1, p2, c, s, m):
        """This rank's per-channel mean and variance, gathered from every rank (all hold m
        values) and merged; handed back as one partial per channel that bn_stats reads as it
        reads its own (shifted by this rank's x[c, 0]), with the global count's unbias."""
        xp, comm = self.xp, self.bn_comm
        x0 = xc.reshape(c, m)[:, 0].astype(p1.dtype)
        d = p1.reshape(c, s).sum(axis=1) / m
        local = xp.stack([x0 + d, p2.reshape(c, s).sum(axis=1) / m - d * d])
        every = comm.allgather(local)                           # (world, 2, c)
        mean = every[:, 0].mean(axis=0)
        var = (every[:, 1] + (every[:, 0] - mean) ** 2).mean(axis=0)
        shift = mean - x0
        n = m * comm.world_size
        return shift * m, (var + shift * shift) * m, 1, n / (n - 1)

    def _synced_bn_coeffs(self, fn, grid, p1, p2, c, s, m, gamma, mean_, invstd_, coef):
        """dx's coefficients from every rank's sums, over the global count (the dgamma and dbeta
        already written are this rank's: the gradient all-reduce averages them)."""
        xp = self.xp
        sums = xp.stack([p1.reshape(c, s).sum(axis=1), p2.reshape(c, s).sum(axis=1)])
        self.bn_comm.allreduce_(sums)
        unused = xp.empty(2 * c, dtype=gamma.dtype)
        self._launch(fn, grid, (sums[0], sums[1], np.int32(c), np.int32(1), np.int32(m * self.bn_comm.world_size),
                                gamma, mean_, invstd_, unused[:c], unused[c:], coef, np.int32(0)))

    def batchnorm_forward_eval(self, x, gamma, beta, running_mean, running_var, eps, relu=False, residual=None):
        xp = self.xp
        x = self._act(x)
        n, c, h, w = x.shape
        xc = self._cnhw(x)
        scale = gamma / xp.sqrt(running_var + eps)
        shift = beta - running_mean * scale
        yc = xp.empty_like(xc)
        res = self._cnhw(residual) if residual is not None else None
        self._launch(self._k(x.dtype)("bn_apply"), grid_per_channel(n * h * w, c),
                     (xc, res if res is not None else NULL, scale, shift, yc, np.int32(n * h * w), np.int32(relu)))
        return self._nchw(yc)

    def batchnorm_backward(self, dy, cache):
        gamma = cache[3]
        dgb = self.xp.empty(2 * gamma.shape[0], dtype=gamma.dtype)
        dgamma, dbeta = dgb[:gamma.shape[0]], dgb[gamma.shape[0]:]
        dx, dres = self._bn_backward(dy, cache, dgamma, dbeta, accumulate=False)
        return dx, dgamma, dbeta, dres

    def batchnorm_backward_into(self, dy, cache, wgrad, bgrad):
        return self._bn_backward(dy, cache, wgrad, bgrad, accumulate=True)

    def _bn_backward(self, dy, cache, dgamma, dbeta, accumulate):
        """(dx, dresidual); dgamma and dbeta written, or added, by the coefficients kernel."""
        xp = self.xp
        xc, mean_, invstd_, gamma, yc, has_res = cache
        c = xc.shape[0]
        m = xc.size // c
        dyc = self._cnhw(self._act(dy))
        k = self._k(dyc.dtype)
        p1, p2, s, coef = self._partials(1, xc, dyc, yc, mean_, c, m, 3 * c)
        self._launch(k("bn_grad_coeffs"), (-(-c // BLOCK),),
                     (p1, p2, np.int32(c), np.int32(s), np.int32(m), gamma, mean_, invstd_, dgamma, dbeta, coef,
                      np.int32(accumulate)))
        if self.bn_comm is not None:
            self._synced_bn_coeffs(k("bn_grad_coeffs"), (-(-c // BLOCK),), p1, p2, c, s, m, gamma, mean_, invstd_,
                                   coef)
        dx = xp.empty_like(xc)
        dres = xp.empty_like(xc) if has_res else None
        self._launch(k("bn_backward_apply"), grid_per_channel(m, c),
                     (dyc, xc, yc if yc is not None else NULL, coef, dx, dres if has_res else NULL, np.int32(m)))
        return self._nchw(dx), (self._nchw(dres) if has_res else None)

    # ------------------------------------------------------------------ activations
    def relu_backward(self, dy, y):
        if not (dy.flags.c_contiguous and y.flags.c_contiguous and dy.shape == y.shape):
            return super().relu_backward(dy, y)
        dx = self.xp.empty_like(dy)
        self._launch(self._k(dy.dtype)("relu_backward"), grid1(dy.size), (dy, y, dx, np.int64(dy.size)))
        return dx

    # ------------------------------------------------------------------ pooling
    def maxpool2d_forward(self, x, k, stride, pad):
        n, c, h, w = x.shape
        if not (k == 2 and stride == 2 and pad == 0 and h % 2 == 0 and w % 2 == 0):
            return super().maxpool2d_forward(x, k, stride, pad)
        if x.strides[3] != x.itemsize or x.strides[2] != w * x.itemsize:
            x = self.xp.ascontiguousarray(x)
        y = self.xp.empty((n, c, h // 2, w // 2), dtype=x.dtype)    # NCHW: see the kernel
        idx = self.xp.empty(y.shape, dtype=np.uint8)
        it = x.itemsize
        self._launch(self._k(x.dtype)("maxpool2x2_forward"), grid1(y.size),
                     (x, np.int64(x.strides[0] // it), np.int64(x.strides[1] // it), y, idx,
                      np.int32(n), np.int32(c), np.int32(h), np.int32(w)))
        return y, ("2x2", idx, (n, c, h, w))

    def maxpool2d_backward(self, dy, cache):
        if not isinstance(cache[0], str):
            return super().maxpool2d_backward(dy, cache)
        _, idx, (n, c, h, w) = cache
        if dy.strides[3] != dy.itemsize or dy.strides[2] != dy.shape[3] * dy.itemsize:
            dy = self.xp.ascontiguousarray(dy)
        dx = self.xp.empty((c, n, h, w), dtype=dy.dtype)
        it = dy.itemsize
        self._launch(self._k(dy.dtype)("maxpool2x2_backward"), grid1(idx.size),
                     (dy, np.int64(dy.strides[0] // it), np.int64(dy.strides[1] // it), idx, dx,
                      np.int32(n), np.int32(c), np.int32(h), np.int32(w)))
        return self._nchw(dx)

    def global_avgpool_forward(self, x):
        n, c, h, w = x.shape
        xc = self._cnhw(x)
        y = self.xp.empty((n, c), dtype=x.dtype)
        self._launch(self._k(x.dtype)("global_avgpool_forward"), grid1(n * c),
                     (xc, y, np.int32(n), np.int32(c), np.int32(h * w)))
        return y

    def global_avgpool_backward(self, dy, x_shape):
        n, c, h, w = x_shape
        dy = self.xp.ascontiguousarray(dy)
        dx = self.xp.empty((c, n, h, w), dtype=dy.dtype)
        self._launch(self._k(dy.dtype)("global_avgpool_backward"), grid1(dx.size),
                     (dy, dx, np.int32(n), np.int32(c), np.int32(h * w)))
        return self._nchw(dx)

    # ------------------------------------------------------------------ loss
    def softmax_cross_entropy(self, logits, labels, label_smoothing=0.0, amp_state=None):
        """As the reference; with amp_state (a GradScaler's device state) the gradient is
        multiplied by the current loss scale, read on the device."""
        xp = self.xp
        n, k = logits.shape
        logits = xp.ascontiguousarray(logits)
        labels = xp.ascontiguousarray(labels, dtype=np.int64)
        grad = xp.empty_like(logits)
        loss = xp.empty((), dtype=self._acc_dtype(logits.dtype))
        self._launch(self._k(logits.dtype)("softmax_xent"), (1,),
                     (logits, labels, np.int32(n), np.int32(k), np.float64(label_smoothing), grad, loss,
                      amp_state if amp_state is not None else NULL))
        return loss, grad

    # ------------------------------------------------------------------ parameters in flat arenas
    def pack_parameters(self, params):
        """Move a group's parameters and gradients into one flat buffer each, so the optimizer
        updates (and zero_grad clears) the whole group in one launch. p.data and p.grad become
        views; everything that reads them (layers, state dicts) is unchanged."""
        xp = self.xp
        if not params or len({p.data.dtype for p in params}) != 1:
            return
        sizes = [p.data.size for p in params]
        flat_p = xp.empty(sum(sizes), dtype=params[0].data.dtype)
        flat_g = xp.zeros_like(flat_p)
        for p, v, g in zip(params, self._split(flat_p, sizes), self._split(flat_g, sizes)):
            v[...] = p.data.reshape(-1)
            p.data = v.reshape(p.data.shape)
            p.grad = g.reshape(p.data.shape)
        if self.mixed and flat_p.dtype == np.float32:
            flat_h = flat_p.astype(self.half)
            self._half_arenas.append((flat_p, flat_h))
            self._halves[(flat_p.data.ptr, flat_p.size)] = flat_h
            for p, hv in zip(params, self._split(flat_h, sizes)):
                self._halves[(p.data.data.ptr, p.data.size)] = hv.reshape(p.data.shape)

    def params_changed(self):
        for flat_p, flat_h in self._half_arenas:
            flat_h[...] = flat_p

    def _half_of(self, p):
        """The float16 copy an update kernel rewrites beside fp32 parameters p (flat or one)."""
        h = self._halves.get((p.data.ptr, p.size))
        return NULL if h is None else h

    @staticmethod
    def _split(flat, sizes):
        out, o = [], 0
        for s in sizes:
            out.append(flat[o:o + s])
            o += s
        return out

    def zeros_like_params(self, arrays):
        sizes = [a.size for a in arrays]
        flat = self.xp.zeros(sum(sizes), dtype=arrays[0].dtype)
        return [v.reshape(a.shape) for v, a in zip(self._split(flat, sizes), arrays)]

    def _flat(self, arrays):
        """The flat buffer that `arrays` tile back to back, in order, or None."""
        if not arrays or arrays[0] is None:
            return None
        first = arrays[0]
        key = (first.data.ptr, len(arrays), first.dtype.str)
        hit = self._arenas.get(key)
        if hit is not None and hit[1] == arrays[-1].data.ptr:
            return hit[0]
        ptr, total = first.data.ptr, 0
        for a in arrays:
            if a.dtype != first.dtype or not a.flags.c_contiguous or a.data.ptr != ptr:
                return None
            ptr += a.nbytes
            total += a.size
        flat = self.xp.ndarray((total,), dtype=first.dtype, memptr=first.data)
        self._arenas[key] = (flat, arrays[-1].data.ptr)
        return flat

    def flat_grads(self, params):
        """The flat gradient buffer of a packed parameter group (pack_parameters), or the
        separate gradients where the group is not packed: what a data-parallel step
        all-reduces."""
        flat = self._flat([p.grad for p in params])
        return [flat] if flat is not None else [p.grad for p in params]

    def zero_(self, arrays):
        self._join()
        flat = self._flat(arrays)
        if flat is not None:
            flat.fill(0)
        else:
            super().zero_(arrays)

    # ------------------------------------------------------------------ optimizer updates
    def set_hyper(self, key, values):
        """Write an update's step-dependent scalars (learning rate, bias corrections) to device
        memory: one small launch when they change, none otherwise; a captured graph reads them."""
        vals = tuple(float(v) for v in values) + (0.0,) * (3 - len(values))
        entry = self._hyper.get(key)
        if entry is None:
            entry = self._hyper[key] = [None, self.xp.empty(3, dtype=np.float64)]
        if entry[0] != vals:
            self._k(np.float32)("set_scalars")((1,), (1,), (entry[1], *map(np.float64, vals)))
            entry[0] = vals
        return entry[1]

    def _groups(self, *lists):
        """Flat buffers for the lists when all tile one arena each, else per-array pairs."""
        flats = [self._flat(list(a)) if a is not None and a[0] is not None else None for a in lists]
        if all(f is not None or a is None or a[0] is None for f, a in zip(flats, lists)):
            return [tuple(flats)]
        n = len(lists[0])
        return [tuple((a[i].reshape(-1) if a is not None and a[i] is not None else None) for a in lists)
                for i in range(n)]

    def sgd_update(self, params, grads, bufs, *, lr, momentum, dampening, nesterov, weight_decay, first_step,
                   hyper_key=None, amp_state=None):
        self._join()
        hyper = self.set_hyper(hyper_key or ("sgd", params[0].data.ptr), (lr,))
        fn = self._k(params[0].dtype)("sgd_update")
        for p, g, b in self._groups(params, grads, bufs if momentum else None):
            self._launch(fn, grid1(p.size), (p, g, b if b is not None else NULL, np.int64(p.size), hyper,
                                              np.float64(momentum), np.float64(dampening), np.int32(nesterov),
                                              np.float64(weight_decay), np.int32(first_step),
                                              amp_state if amp_state is not None else NULL, self._half_of(p),
                                              self._half_kind))

    def adam_update(self, params, grads, exp_avgs, exp_avg_sqs, *, step, lr, beta1, beta2, eps,
                    weight_decay, decoupled, hyper_key=None, amp_state=None):
        self._join()
        hyper = self.set_hyper(hyper_key or ("adam", params[0].data.ptr), adam_hyper(lr, beta1, beta2, step))
        fn = self._k(params[0].dtype)("adam_update")
        for p, g, m, v in self._groups(params, grads, exp_avgs, exp_avg_sqs):
            self._launch(fn, grid1(p.size), (p, g, m, v, np.int64(p.size), hyper, np.float64(beta1),
                                              np.float64(beta2), np.float64(eps), np.float64(weight_decay),
                                              np.int32(decoupled), amp_state if amp_state is not None else NULL,
                                              self._half_of(p), self._half_kind))

    # ------------------------------------------------------------------ dynamic loss scaling (scratch_nn.amp)
    def amp_state(self, init_scale):
        """Device memory for [scale, found_inf, growth_tracker]."""
        return self.xp.asarray(np.array([init_scale, 0.0, 0.0], np.float32))

    def amp_check(self, grad_lists, amp_state):
        """Flag an inf/NaN in any gradient (the groups' flat buffers: one launch each)."""
        self._join()
        for grads in grad_lists:
            for (g,) in self._groups(grads):
                self._launch(self._k(g.dtype)("amp_check"), grid1(g.size), (g, np.int64(g.size), amp_state))

    def amp_update(self, amp_state, growth, backoff, interval):
        self._k(np.float32)("amp_update")((1,), (1,), (amp_state, np.float32(growth), np.float32(backoff),
                                                      np.int32(interval)))
