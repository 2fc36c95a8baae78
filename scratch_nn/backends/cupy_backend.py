"""The GPU backend: CuPy arrays, cuBLAS GEMMs, and the hand-written kernels of cuda_kernels.py.

Each launcher below checks its arrays, allocates outputs from CuPy's memory pool, states its
grid and launches one kernel. Activations live channel-major, (C, N, H, W), behind NCHW-shaped
views (see cuda_kernels.py), so no layer pays for a transpose.

Precision (`precision=`):
- "fp32": strict float32, cuBLAS without TF32 (torch: allow_tf32 off for matmul and cuDNN).
- "tf32": float32 storage, GEMMs on TF32 tensor cores; needs compute capability 8.0+.
- "fp16": mixed precision: float16 activations and GEMM operands (fp32 accumulation), fp32
  master weights, BatchNorm statistics and optimizer; the trainer scales the loss.

Nothing is copied between host and device in a training step except the loss when it is read,
and nothing synchronises: the optimizer reads its learning rate from device memory, so a
captured CUDA graph (cuda_graph.py) can replay the step while the schedule moves on.
"""
import math
import os

import numpy as np

from .base import Backend, BackendUnavailable

PRECISIONS = ("fp32", "tf32", "fp16")
NULL = np.uint64(0)           # a null pointer argument
BLOCK = 256
_KERNELS = {}


class PrecisionUnavailable(BackendUnavailable):
    """The GPU cannot run the requested precision mode."""


def _import_cupy():
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


def compute_capability(cupy, device=None):
    dev = cupy.cuda.Device(device)
    cc = dev.compute_capability   # "75", "80", "90"
    return int(cc[:-1]), int(cc[-1])


def check_precision(precision, cupy, device=None):
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
    major, minor = compute_capability(cupy, device)
    if precision == "tf32" and major < 8:
        raise PrecisionUnavailable(
            f"precision 'tf32' needs a GPU of compute capability 8.0 or newer (Ampere+); this one is "
            f"{major}.{minor}. Use --precision fp32, or fp16 (mixed precision runs on {major}.{minor})")


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


def _grid1(n):
    return (max(1, min(-(-n // BLOCK), 65535 * 4)),)


def _grid_per_channel(m, c):
    return (max(1, min(-(-m // BLOCK), 4096)), c)


class CupyBackend(Backend):
    name = "cupy"
    supported_dtypes = ("float32", "float64")

    def __init__(self, threads=None, precision="fp32", device=None):
        cupy = _import_cupy()
        self.xp = cupy
        self.device_id = cupy.cuda.Device(device).id if device is not None else cupy.cuda.Device().id
        check_precision(precision, cupy, self.device_id)
        if precision == "fp16":
            raise PrecisionUnavailable("precision 'fp16' (mixed) is not implemented for backend 'cupy' yet; "
                                       "use fp32 or tf32")
        super().__init__(threads=threads)
        self.precision = precision
        self._sms = cupy.cuda.Device(self.device_id).attributes["MultiProcessorCount"]
        from .cublas_gemm import Gemm

        self._gemm = Gemm(cupy)
        self._tf32 = precision == "tf32"
        self._hyper = {}            # optimizer group key -> (host values, device float32[3])
        self._arenas = {}           # first array's pointer -> flat arrays (see _flat)
        self.debug_sync = os.environ.get("SCRATCH_NN_CUDA_SYNC") == "1"

    # ------------------------------------------------------------------ setup
    def describe(self):
        cupy = self.xp
        props = cupy.cuda.runtime.getDeviceProperties(self.device_id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        major, minor = compute_capability(cupy, self.device_id)
        return dict(super().describe(), precision=self.precision, gpu=name, compute_capability=f"{major}.{minor}",
                    cupy=cupy.__version__, cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(),
                    layout="CNHW behind NCHW views")

    def _k(self, dtype):
        return kernels(np.dtype(dtype).name)

    def _launch(self, fn, grid, args):
        fn(grid, (BLOCK,), args)
        if self.debug_sync:   # SCRATCH_NN_CUDA_SYNC=1: find the launch that faults
            self.xp.cuda.Device().synchronize()

    # ------------------------------------------------------------------ arrays
    def asarray(self, a, dtype=None):
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a):
        return self.xp.asnumpy(a)

    def synchronize(self):
        self.xp.cuda.get_current_stream().synchronize()

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

    def gemm(self, a, b, out=None, accumulate=False):
        """a @ b on cuBLAS (TF32 tensor cores in tf32 mode), optionally accumulated into out."""
        return self._gemm(a, b, out=out, accumulate=accumulate, tf32=self._tf32)

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

    def conv2d_forward(self, x, w, b, stride, pad, relu=False):
        f, c, kh, kw = w.shape
        if kh != kw:
            raise ValueError("the cupy backend's convolution takes square kernels")
        n, _, h, wd = x.shape
        oh = self.conv_output_size(h, kh, stride, pad)
        ow = self.conv_output_size(wd, kw, stride, pad)
        cols = self._cols(x, kh, stride, pad, oh, ow)
        y = self.gemm(w.reshape(f, -1), cols)          # (F, N*OH*OW): already CNHW
        del cols                                       # recomputed in backward: saves its memory
        if b is not None or relu:
            self._launch(self._k(y.dtype)("bias_relu"), _grid_per_channel(y.shape[1], f),
                         (y, b if b is not None else NULL, np.int32(y.shape[1]), np.int32(relu)))
        y = self._nchw(y.reshape(f, n, oh, ow))
        return y, (x, stride, pad, oh, ow, y if relu else None, b is not None)

    def conv2d_backward(self, dy, cache, w, need_dx=True):
        x, stride, pad, oh, ow, relu_out, has_bias = cache
        f, c, k, _ = w.shape
        n, _, h, wd = x.shape
        dym = self._cnhw(dy).reshape(f, -1)
        kt = self._k(dym.dtype)
        if relu_out is not None:
            masked = self.xp.empty_like(dym)
            self._launch(kt("relu_backward"), _grid1(dym.size),
                         (dym, self._cnhw(relu_out), masked, np.int64(dym.size)))
            dym = masked
        db = self._channel_sum(dym) if has_bias else None
        cols = self._cols(x, k, stride, pad, oh, ow)
        dw = self.gemm(dym, cols.T).reshape(w.shape)
        del cols
        dx = None
        if need_dx:
            dcols = self.gemm(w.reshape(f, -1).T, dym)    # (C*k*k, N*OH*OW)
            if k == 1 and stride == 1 and pad == 0:
                dx = self._nchw(dcols.reshape(c, n, h, wd))
            else:
                buf = self.xp.empty((c, n, h, wd), dtype=dcols.dtype)
                self._launch(kt("col2im"), _grid_per_channel(n * h * wd, c),
                             (dcols, buf, np.int32(n), np.int32(h), np.int32(wd), np.int32(k),
                              np.int32(stride), np.int32(pad), np.int32(oh), np.int32(ow)))
                dx = self._nchw(buf)
        return dx, dw, db

    # ------------------------------------------------------------------ per-channel reductions
    def _splits(self, c, m):
        """Chunks per channel: enough blocks to fill the GPU a few times over, each chunk at
        least a few thousand values."""
        return int(max(1, min(-(-8 * self._sms // c), -(-m // 2048), 1024)))

    def _acc_dtype(self, dtype):
        return np.float64 if np.dtype(dtype) == np.float64 else np.float32

    def _partials(self, mode, x, dy, y, mean, c, m):
        s = self._splits(c, m)
        acc = self._acc_dtype(x.dtype if x is not None else dy.dtype)
        p1 = self.xp.empty(c * s, dtype=acc)
        p2 = self.xp.empty(c * s, dtype=acc)
        dt = (x if x is not None else dy).dtype
        self._launch(self._k(dt)("channel_sums", mode), (s, c),
                     (x if x is not None else NULL, dy if dy is not None else NULL,
                      y if y is not None else NULL, mean if mean is not None else NULL, np.int32(m), p1, p2))
        return p1, p2, s

    def _channel_sum(self, a2):
        """Sum over the rows of a (C, M) array."""
        c, m = a2.shape
        p1, _, s = self._partials(2, None, a2, None, None, c, m)
        out = self.xp.empty(c, dtype=a2.dtype)
        self._launch(self._k(a2.dtype)("sum_partials"), (-(-c // BLOCK),), (p1, out, np.int32(c), np.int32(s)))
        return out

    # ------------------------------------------------------------------ batch norm
    def batchnorm_forward_train(self, x, gamma, beta, eps, relu=False, residual=None, running=None):
        xp = self.xp
        n, c, h, w = x.shape
        m = n * h * w
        xc = self._cnhw(x)
        k = self._k(x.dtype)
        p1, p2, s = self._partials(0, xc, None, None, None, c, m)
        pdt = gamma.dtype
        acc = self._acc_dtype(x.dtype)
        mean_ = xp.empty(c, dtype=acc)
        invstd_ = xp.empty(c, dtype=acc)
        scale, shift, bmean, bvar = (xp.empty(c, dtype=pdt) for _ in range(4))
        if running is None:   # statistics only: scratch buffers take the running update
            run_mean, run_var, mom = xp.zeros(c, dtype=pdt), xp.ones(c, dtype=pdt), 0.0
        else:
            run_mean, run_var, mom = running
        self._launch(k("bn_stats"), (-(-c // BLOCK),),
                     (xc, p1, p2, np.int32(c), np.int32(s), np.int32(m), gamma, beta, run_mean, run_var,
                      np.float64(eps), np.float64(mom), mean_, invstd_, scale, shift, bmean, bvar))
        yc = xp.empty_like(xc)
        res = self._cnhw(residual) if residual is not None else None
        self._launch(k("bn_apply"), _grid_per_channel(m, c),
                     (xc, res if res is not None else NULL, scale, shift, yc, np.int32(m), np.int32(relu)))
        y = self._nchw(yc)
        return y, bmean, bvar, (xc, mean_, invstd_, gamma, yc if relu else None, residual is not None)

    def batchnorm_forward_eval(self, x, gamma, beta, running_mean, running_var, eps, relu=False, residual=None):
        xp = self.xp
        n, c, h, w = x.shape
        xc = self._cnhw(x)
        scale = gamma / xp.sqrt(running_var + eps)
        shift = beta - running_mean * scale
        yc = xp.empty_like(xc)
        res = self._cnhw(residual) if residual is not None else None
        self._launch(self._k(x.dtype)("bn_apply"), _grid_per_channel(n * h * w, c),
                     (xc, res if res is not None else NULL, scale, shift, yc, np.int32(n * h * w), np.int32(relu)))
        return self._nchw(yc)

    def batchnorm_backward(self, dy, cache):
        xp = self.xp
        xc, mean_, invstd_, gamma, yc, has_res = cache
        c = xc.shape[0]
        m = xc.size // c
        dyc = self._cnhw(dy)
        k = self._k(dyc.dtype)
        p1, p2, s = self._partials(1, xc, dyc, yc, mean_, c, m)
        dgamma = xp.empty(c, dtype=gamma.dtype)
        dbeta = xp.empty(c, dtype=gamma.dtype)
        coef = xp.empty(3 * c, dtype=self._acc_dtype(dyc.dtype))
        self._launch(k("bn_grad_coeffs"), (-(-c // BLOCK),),
                     (p1, p2, np.int32(c), np.int32(s), np.int32(m), gamma, mean_, invstd_, dgamma, dbeta, coef))
        dx = xp.empty_like(xc)
        dres = xp.empty_like(xc) if has_res else None
        self._launch(k("bn_backward_apply"), _grid_per_channel(m, c),
                     (dyc, xc, yc if yc is not None else NULL, coef, dx, dres if has_res else NULL, np.int32(m)))
        return self._nchw(dx), dgamma, dbeta, (self._nchw(dres) if has_res else None)

    # ------------------------------------------------------------------ activations
    def relu_backward(self, dy, y):
        if not (dy.flags.c_contiguous and y.flags.c_contiguous and dy.shape == y.shape):
            return super().relu_backward(dy, y)
        dx = self.xp.empty_like(dy)
        self._launch(self._k(dy.dtype)("relu_backward"), _grid1(dy.size), (dy, y, dx, np.int64(dy.size)))
        return dx

    # ------------------------------------------------------------------ pooling
    def maxpool2d_forward(self, x, k, stride, pad):
        n, c, h, w = x.shape
        if not (k == 2 and stride == 2 and pad == 0 and h % 2 == 0 and w % 2 == 0):
            return super().maxpool2d_forward(x, k, stride, pad)
        xc = self._cnhw(x)
        yc = self.xp.empty((c, n, h // 2, w // 2), dtype=x.dtype)
        idx = self.xp.empty(yc.shape, dtype=np.uint8)
        self._launch(self._k(x.dtype)("maxpool2x2_forward"), _grid1(yc.size),
                     (xc, yc, idx, np.int64(c * n), np.int32(h), np.int32(w)))
        return self._nchw(yc), ("2x2", idx, (n, c, h, w))

    def maxpool2d_backward(self, dy, cache):
        if not isinstance(cache[0], str):
            return super().maxpool2d_backward(dy, cache)
        _, idx, (n, c, h, w) = cache
        dyc = self._cnhw(dy)
        dx = self.xp.empty((c, n, h, w), dtype=dy.dtype)
        self._launch(self._k(dy.dtype)("maxpool2x2_backward"), _grid1(dyc.size),
                     (dyc, idx, dx, np.int64(c * n), np.int32(h), np.int32(w)))
        return self._nchw(dx)

    def global_avgpool_forward(self, x):
        n, c, h, w = x.shape
        xc = self._cnhw(x)
        y = self.xp.empty((n, c), dtype=x.dtype)
        self._launch(self._k(x.dtype)("global_avgpool_forward"), _grid1(n * c),
                     (xc, y, np.int32(n), np.int32(c), np.int32(h * w)))
        return y

    def global_avgpool_backward(self, dy, x_shape):
        n, c, h, w = x_shape
        dy = self.xp.ascontiguousarray(dy)
        dx = self.xp.empty((c, n, h, w), dtype=dy.dtype)
        self._launch(self._k(dy.dtype)("global_avgpool_backward"), _grid1(dx.size),
                     (dy, dx, np.int32(n), np.int32(c), np.int32(h * w)))
        return self._nchw(dx)

    # ------------------------------------------------------------------ loss
    def softmax_cross_entropy(self, logits, labels, label_smoothing=0.0, loss_scale=1.0):
        xp = self.xp
        n, k = logits.shape
        logits = xp.ascontiguousarray(logits)
        labels = xp.ascontiguousarray(labels, dtype=np.int64)
        grad = xp.empty_like(logits)
        loss = xp.empty((), dtype=self._acc_dtype(logits.dtype))
        self._launch(self._k(logits.dtype)("softmax_xent"), (1,),
                     (logits, labels, np.int32(n), np.int32(k), np.float64(label_smoothing), grad, loss,
                      np.float32(loss_scale)))
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

    def zero_(self, arrays):
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
                   hyper_key=None):
        hyper = self.set_hyper(hyper_key or ("sgd", params[0].data.ptr), (lr,))
        fn = self._k(params[0].dtype)("sgd_update")
        for p, g, b in self._groups(params, grads, bufs if momentum else None):
            self._launch(fn, _grid1(p.size), (p, g, b if b is not None else NULL, np.int64(p.size), hyper,
                                              np.float64(momentum), np.float64(dampening), np.int32(nesterov),
                                              np.float64(weight_decay), np.int32(first_step)))

    def adam_update(self, params, grads, exp_avgs, exp_avg_sqs, *, step, lr, beta1, beta2, eps,
                    weight_decay, decoupled, hyper_key=None):
        hyper = self.set_hyper(hyper_key or ("adam", params[0].data.ptr), adam_hyper(lr, beta1, beta2, step))
        fn = self._k(params[0].dtype)("adam_update")
        for p, g, m, v in self._groups(params, grads, exp_avgs, exp_avg_sqs):
            self._launch(fn, _grid1(p.size), (p, g, m, v, np.int64(p.size), hyper, np.float64(beta1),
                                              np.float64(beta2), np.float64(eps), np.float64(weight_decay),
                                              np.int32(decoupled)))
