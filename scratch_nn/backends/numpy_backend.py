"""The single-core reference backend: NumPy with BLAS pinned to one thread."""
import numpy as np

from . import numpy_winograd as wino
from .base import Backend, BackendUnavailable
from .heap import keep_freed_memory
from .threads import use_blas_threads

# Winograd F(2x2, 3x3) (numpy_winograd.py) for the 3x3 stride-1 padding-1 convolutions on maps
# of at most WINOGRAD_MAX_SIZE rows (even) and at least WINOGRAD_MIN_CHANNELS input channels;
# im2col + GEMM for the rest. The table: ResNet-18's layers and the CNN's conv2, ms forward /
# backward at batch 64 on one thread of the 2-core Xeon, two runs (2026-12-01, session 13;
# this VM's speed wanders between runs, so compare within a run):
#   32x32,  64 ch: Winograd 120 / 200,  95 / 156   im2col 114 / 222,  86 / 165  (about a tie: im2col)
#   16x16, 128 ch: Winograd  74 / 116,  55 /  97   im2col  85 / 168,  68 / 119
#    8x8,  256 ch: Winograd  48 /  81,  35 /  72   im2col  68 / 142,  70 / 142
#    4x4,  512 ch: Winograd  46 /  78,  51 /  85   im2col  62 / 121,  64 / 100
#   16x16, 16 -> 32:  Winograd 10.2 / 11.8, 6.4 / 9.1   im2col 4.9 / 11.0, 4.5 / 8.9
# NumPy's transforms are one pass per operation; they pay where the GEMMs are big against the
# maps (the deep layers), not on 32x32 maps or few channels.
WINOGRAD_MAX_SIZE = 16
WINOGRAD_MIN_CHANNELS = 64
# V (16 x tiles x C, 4x the input) is kept for the weight gradient when the batch's fits
# WINOGRAD_KEEP_BYTES, else the batch goes in slices whose stacks fit WINOGRAD_SLICE_BYTES.
WINOGRAD_KEEP_BYTES = 96 * 2**20
WINOGRAD_SLICE_BYTES = 64 * 2**20


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    def __init__(self, threads=1, winograd=True):
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

    def gemm(self, a, b):
        use_blas_threads(1)   # another backend in this process may have set more
        return np.matmul(a, b)

    def describe(self):
        conv = self.describe_convolution()
        if self.winograd:
            conv["winograd"] = (f"F(2x2, 3x3) for 3x3 stride-1 padding-1 convolutions of >= {WINOGRAD_MIN_CHANNELS} "
                                f"channels on even maps of <= {WINOGRAD_MAX_SIZE} rows (numpy_winograd.py)")
        return dict(super().describe(), heap_kept=self.heap_kept, convolution=conv)

    # ------------------------------------------------------------------ Winograd
    def winograd_applies(self, w, x_shape, stride, pad):
        f, c, kh, kw = w.shape
        h, wd = x_shape[2], x_shape[3]
        return (self.winograd and kh == kw == 3 and stride == 1 and pad == 1 and c >= WINOGRAD_MIN_CHANNELS
                and h % 2 == 0 and wd % 2 == 0 and 2 <= min(h, wd) and max(h, wd) <= WINOGRAD_MAX_SIZE)

    @staticmethod
    def _winograd_slices(n, c, f, h, w, itemsize):
        per_image = wino.POSITIONS * max(c, f) * (h * w // 4) * itemsize
        if n * per_image <= WINOGRAD_KEEP_BYTES:
            return [(0, n)]
        step = max(1, WINOGRAD_SLICE_BYTES // per_image)
        return [(lo, min(n, lo + step)) for lo in range(0, n, step)]

    def conv2d_forward(self, x, w, b, stride, pad, relu=False):
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
        if not (isinstance(cache[0], str) and cache[0] == "winograd"):
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

    def to_host(self, a):
        return np.asarray(a)
