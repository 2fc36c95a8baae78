"""The multi-core CPU backend: NumPy arrays, parallel numba kernels, BLAS GEMMs.

Each launcher below checks and shapes its arrays, allocates the outputs and calls one kernel
from numba_kernels.py. GEMMs stay in BLAS (OpenBLAS outruns any loop nest numba can compile),
split over numba's `threads` threads with BLAS single-threaded in each (numba_gemm.py), so
one thread pool runs the whole step; all cores by default. Kernels compile on first
use and are cached on disk (`cache=True`), so the first training step of a fresh install is
slow: the trainer and the bench report it as warm-up, apart from images/s.
"""
import numpy as np

from .base import Backend, BackendUnavailable
from .heap import keep_freed_memory
from .numpy_per_image import weights as weights_and_bias
from .threads import numba_threads, usable_cores, use_blas_threads


def _flat(a):
    """A flat view of a contiguous array: an update through a copy would be lost."""
    if not a.flags.c_contiguous:
        raise ValueError("optimizer state and parameters must be C-contiguous arrays")
    return a.reshape(-1)


# Winograd for the 3x3 stride-1 convolutions of at least WINOGRAD_MIN_CHANNELS input channels,
# by the backend's winograd mode (its argument, else $SCRATCH_NN_WINOGRAD, else WINOGRAD):
#   "auto" (the default): "4x4" for fewer than WINOGRAD4_AUTO_CHANNELS input channels (the
#          CNN's conv2), "2x2" for the rest (every ResNet-18 layer);
#   "2x2": F(2x2, 3x3) (numba_winograd.py) over even sizes of at least WINOGRAD_MIN_SIZE rows;
#   "4x4": F(4x4, 3x3) (numba_winograd4.py) over multiples of 4 of at least WINOGRAD4_MIN_SIZE
#          rows, F(2x2) over other even sizes: faster, but less exact in float32 (below);
#   "off": im2col + GEMM everywhere (winograd=False).
# im2col + GEMM for the rest. The table, from ResNet-18's layers at batch 64 on 2 threads of
# the 2-core Xeon (ms, forward / backward, best of 7 with the three interleaved, 2026-12-01,
# session 12, after the transforms took one channel of several images a task and staged the
# weights' rows; this VM's timings wander by up to a third between runs, so compare within a row):
#   32x32,  64 ch: im2col 56.6 / 96.2   F(2x2) 34.0 / 59.5   F(4x4) 24.7 / 39.3
#   16x16, 128 ch: im2col 36.4 / 73.1   F(2x2) 21.6 / 39.5   F(4x4) 16.7 / 27.9
#    8x8,  256 ch: im2col 31.9 / 59.7   F(2x2) 14.6 / 27.4   F(4x4) 12.6 / 19.9
#    4x4,  512 ch: im2col 35.1 / 59.8   F(2x2) 21.1 / 33.6   F(4x4) 21.3 / 33.3 (a tie: F(2x2), more exact)
# (before those changes, 4x4 maps ran F(2x2) no faster than im2col: per-task overhead on
# 16-element planes and a 512-channel weight transform that took 14 ms). Few channels, same run:
#   16x16, 16 -> 32 (the CNN's conv2): im2col 3.44 / 5.36   F(2x2) 2.77 / 4.76   F(4x4) 2.14 / 2.96
#   32x32,  8 -> 8:                    im2col 3.38 / 6.43   F(2x2) 2.70 / 5.27   F(4x4) 2.04 / 2.88
#   32x32,  3 -> 64 (ResNet's stem):   im2col 4.61 / 5.48   F(2x2) 13.0 / 14.5   F(4x4) 8.38 / 7.50
#   32x32,  3 -> 16 (the CNN's conv1): im2col 2.04 / 2.33   F(2x2) 3.33 / 3.65   F(4x4) 2.40 / 2.66
# (stems without the data gradient): with 3 input channels the transforms cost more than the
# GEMM FLOPs they save, from 8 on they pay (before session 12's transforms, not below 64).
# F(4x4)'s float32 results lie up to 1e-5 of the output's scale from exact against F(2x2)'s and
# im2col's few 1e-7 (its transforms' coefficients amplify rounding; float64 stays near 1e-14).
# That is enough to move ResNet-18's float32 loss after one SGD step (batch 4) by 2.3e-4 from
# NumPy's with F(4x4) on every layer, and by 3.0e-5 within three steps with it from 8x8 rows
# only (this table), where the suite holds every float32 path to 1e-5; and to flip a ReLU mask
# on the torch-parity batch (input gradient 5.9e-3 off), so F(4x4) is opt-in there. On the
# CNN, whose one Winograd layer has 16 input channels, the same float32 checks hold with F(4x4)
# (torch parity of outputs, gradients and SGD steps; the 20-step loss curve within 1e-5 of
# NumPy's float64 one over 3 steps), and there it saves a third: 2 threads, batch 64, ms
# forward / backward, interleaved (2026-12-02): 16 -> 32 on 16x16 F(2x2) 1.78 / 3.08 against
# F(4x4) 1.33 / 2.03; 32 -> 32 on 16x16 2.38 / 4.62 against 1.74 / 3.59. Its float32 error there
# is no worse than on deep layers (batch 16 with ReLU, relative to the largest entry: 16 ch 4e-6
# on y, 2e-6 on dx and dw; 64-256 ch 4-8e-6; F(2x2) 1-8e-7 on all), so "auto" is a rule about
# which models stay within the suite's float32 bounds: below 64 channels, F(4x4).
WINOGRAD = "auto"
WINOGRAD_MODES = ("off", "auto", "2x2", "4x4")
WINOGRAD4_AUTO_CHANNELS = 64
WINOGRAD_MIN_CHANNELS = 8
WINOGRAD_MIN_SIZE = 4
WINOGRAD4_MIN_SIZE = 8
# The transformed input V (36 or 16 x C x tiles, 2.25x or 4x the input) is kept for the weight
# gradient when the whole batch's fits WINOGRAD_KEEP_BYTES (every layer at batch 64); otherwise
# the batch goes in slices whose V, M, dM and dV fit WINOGRAD_SLICE_BYTES each, V rebuilt in
# backward (with 256 MB slices and V kept up to 256 MB, ResNet-18 at batch 512 peaked at 4.8 GB
# of RSS).
WINOGRAD_KEEP_BYTES = 96 * 2**20
WINOGRAD_SLICE_BYTES = 64 * 2**20
# F(2x2) on maps of >= FUSED_MIN_SIZE rows: the passes fused a slice of images at a time
# (numba_winograd_fused.py), each slice's stacks about FUSED_SLICE_BYTES, so that V, M, dM and
# dV stay in cache and never go to memory (V is rebuilt in backward, none is kept); the weight
# gradient in FUSED_GROUPS partials, each a fixed run of slices, summed in order. Smaller maps
# have more channels, U (16 x F x C) would not fit beside them, and the unfused passes' GEMMs
# there have only 256 to 1,024 tiles. 2 threads of the 2-core EPYC, batch 64, ms forward /
# backward, unfused -> fused, best of 7, two interleaved runs (2026-12-07): 32x32x64 30.9 /
# 57.0 -> 22.4 / 50.9 and 40.8 / 76.3 -> 31.9 / 50.8; 16x16x128 20.2 / 38.6 -> 17.0 / 39.3 and
# 20.4 / 33.4 -> 14.6 / 35.8; a ResNet-18 step 1,070 -> 999 ms (medians of 4; 0.5-2 MB slices
# within 1%). The forward gains most: its GEMMs run at 78-87 GFLOP/s a thread on a slice in
# cache against 48-59 streaming the whole batch; the backward's weight-gradient GEMM (NT, K the
# slice's tiles) runs at 60-67 either way. Fusing the smaller maps too measured slower: a step
# 973 ms with 16x16 and up fused, 998 from 8x8, 1,117 from 4x4 (medians of 5, interleaved).
# Fused only where each thread gets at least FUSED_MIN_SLICES_PER_THREAD slices: a slice's 16
# GEMMs are small (K = C, N = its tiles), and with few slices a thread the unfused passes, each
# GEMM whole on one thread over the batch's tiles, measured faster. 16 threads of the 16-core
# Xeon (H200 host), batch 64, ms forward / backward, best of 3 (cpu_profile --convs, 2026-12-07):
# 16x16x128 (32 slices, 2 a thread) fused 5.1 / 9.3 against unfused 3.8 / 6.9; 32x32x64 (64
# slices, 4 a thread) fused 5.1 / 10.2 against 7.2 / 14.7. On 2 threads (16 and 32 slices a
# thread) fused wins on both (above). So the algorithm, and with it the float32 rounding, of a
# 16x16 layer at batch 64 depends on the thread count: 2 threads fuse it, 16 do not.
FUSED_MIN_SIZE = 16
FUSED_SLICE_BYTES = 1 << 20
FUSED_GROUPS = 16
FUSED_MIN_SLICES_PER_THREAD = 4
# The transformed tiles (V, M and their gradients) are stacks of 16 or 36 position planes of
# C x T elements, exactly 4 MB on every ResNet-18 layer at batch 64. A transform reads or writes
# all the planes at once, and planes a power of two apart compete for the same cache sets, so
# each plane starts PLANE_SKEW elements (4 KB + 64 B) further on. F(2x2) transforms, ms
# contiguous -> skewed (2 threads, batch 64, best of 11; inputs, inputs_adjoint, outputs,
# outputs_adjoint): 32x32x64 8.0 -> 5.9, 12.0 -> 8.8, 5.7 -> 4.0, 6.6 -> 5.0; 16x16x128 5.1 -> 2.7,
# 4.3 -> 4.1, 2.3 -> 1.9, 5.1 -> 2.5; 8x8x256 2.6 -> 1.6, 2.4 -> 2.7, 1.7 -> 1.4, 2.9 -> 1.7;
# 4x4x512 3.0 -> 1.1, 1.9 -> 2.8, 2.4 -> 2.1, 3.1 -> 2.0. Whole convolutions, forward / backward
# (best of 8, interleaved): on 2 threads 8x8x256 15.8 / 25.9 -> 12.8 / 23.4, 4x4x512 16.2 / 25.4
# -> 13.8 / 24.6, the CNN's 16 -> 32 2.16 / 3.72 -> 1.85 / 3.15, 32x32x64 unchanged; on the
# 16-core Xeon at 16 threads 32x32x64 7.8 / 12.5 -> 5.3 / 10.2, 16x16x128 4.3 / 8.0 -> 3.7 / 7.3,
# and a ResNet-18 step 266 -> 255 ms (medians of 6).
PLANE_SKEW = 1040
# The convolutions Winograd does not take run as im2col + GEMM, in one of two layouts:
# - "per image" where an image has at least IMAGE_COLUMNS_MIN_POSITIONS output positions:
#   each image's columns (C*kh*kw + 1, OH*OW) a block of their own, one GEMM per image spread
#   over the threads (numba_gemm's batched), the output landing in NCHW with no transpose, the
#   bias carried by a row of ones, and the weight gradient summed over the images in a fixed
#   order. An image's columns stay in cache through its GEMM, where one GEMM over the whole
#   batch streams them from memory, and with 3 input channels (K = 27) that GEMM is memory-bound;
# - "batch" (the base's) otherwise: one (C*kh*kw, N*OH*OW) GEMM, which small maps need to give
#   BLAS long rows.
# Measured on 2 threads of the 2-core Xeon, batch 64, ms forward / backward, best of 7 to 15
# interleaved (2026-12-02, session 15):
#   32x32,  3 -> 16 (the CNN's conv1, no data gradient): batch 1.32 / 1.35   per image 0.75 / 0.85
#   32x32,  3 -> 64 (ResNet's stem, with it):             batch 5.04 / 7.75   per image 2.83 / 6.37
#   32x32 -> 16x16, 64 -> 128, 1x1 stride 2:              batch 4.23 / 6.41   per image 3.17 / 6.25
#   32x32 -> 16x16, 64 -> 128, 3x3 stride 2:              batch 20.4 / 33.0   per image 18.9 / 33.0
#   16x16 ->  8x8, 128 -> 256, 3x3 stride 2 (64 positions): batch 20.0 / 33.4   per image 18.0 / 43.2
#    8x8  ->  4x4, 256 -> 512, 3x3 stride 2 (16 positions): batch 14.0 / 24.1   per image 21.7 / 92.4
IMAGE_COLUMNS_MIN_POSITIONS = 256
# The rest ("batch") build their columns with a row per output position, (tap, channel) inside
# a row (im2col_positions), where the (C*kh*kw, N*OH*OW) layout's rows are runs of OW strided
# elements, short on these maps. ms on 2 threads of this EPYC, batch 64, the column kernels
# alone (2026-12-07, session 19; the GEMM reads the columns transposed at the same speed):
#   8x8  -> 4x4, 256 ch, 3x3 stride 2: im2col 8.7 -> 0.35   col2im 5.4 -> 0.5
#   16x16 -> 8x8, 128 ch, 3x3 stride 2: im2col 5.7 -> 1.7    col2im 5.8 -> 1.8
#   16x16 -> 8x8, 128 ch, 1x1 stride 2: im2col 0.42 -> 0.20  col2im 0.55 -> 0.58
# (on 32x32 maps with 64 channels the two layouts cost the same, and those run per image).


def _planes(positions, rows, cols, dtype):
    """An uninitialised (positions, rows, cols) stack of C-contiguous planes, PLANE_SKEW
    elements of slack after each."""
    dtype = np.dtype(dtype)
    step = rows * cols + PLANE_SKEW
    buf = np.empty(positions * step, dtype=dtype)
    it = dtype.itemsize
    return np.lib.stride_tricks.as_strided(buf, (positions, rows, cols), (step * it, cols * it, it))

_PGEMM = []


def _winograd_mode(winograd):
    """The backend's Winograd mode from its argument (None: $SCRATCH_NN_WINOGRAD or WINOGRAD;
    True: the default table; False: off)."""
    import os

    if winograd is None:
        winograd = os.environ.get("SCRATCH_NN_WINOGRAD", WINOGRAD)
    elif winograd is True:
        winograd = WINOGRAD
    elif winograd is False:
        winograd = "off"
    if winograd not in WINOGRAD_MODES:
        raise ValueError(f"winograd mode {winograd!r} (argument or SCRATCH_NN_WINOGRAD) is not one of: "
                         f"{', '.join(WINOGRAD_MODES)}")
    return winograd


def _fused_winograd(dtype):
    """NumPy's CBLAS gemm of this dtype for numba_winograd_fused's kernels, or None where there
    is none (then the passes run unfused)."""
    if not _FUSED:
        from .numba_gemm import find_cblas

        cblas = find_cblas()
        _FUSED.append(None if cblas is None else {np.dtype(np.float32): cblas[0], np.dtype(np.float64): cblas[1]})
    return None if _FUSED[0] is None else _FUSED[0].get(np.dtype(dtype))


_FUSED = []


def _partitioned_gemm():
    """One PartitionedGemm per process (its kernels compile once), or None where NumPy's
    BLAS has no CBLAS entry point we can call."""
    if not _PGEMM:
        from .numba_gemm import PartitionedGemm, find_cblas

        cblas = find_cblas()
        _PGEMM.append(PartitionedGemm(cblas) if cblas else None)
    return _PGEMM[0]


class NumbaBackend(Backend):
    name = "numba"
    xp = np

    def __init__(self, threads=None, winograd=None, image_columns=True, fused=True, position_columns=True):
        try:
            import numba
        except ImportError as e:
            raise BackendUnavailable("backend 'numba' needs numba: pip install numba "
                                     "(or pip install -e '.[numba]')") from e
        try:
            import threadpoolctl  # noqa: F401
        except ImportError as e:
            raise BackendUnavailable("the numba backend needs threadpoolctl to set the BLAS thread count: "
                                     "pip install threadpoolctl") from e
        self._numba = numba
        limit = numba.config.NUMBA_NUM_THREADS
        threads = threads or min(usable_cores(), limit)
        if not 1 <= threads <= limit:
            raise ValueError(f"the numba backend can run 1 to {limit} threads here, not {threads} "
                             f"(numba's pool is sized by NUMBA_NUM_THREADS, default: the number of cores)")
        super().__init__(threads=threads)
        self._pgemm = _partitioned_gemm()
        from .numba_gemm import pin_one_blas_thread

        self._pin_blas = pin_one_blas_thread
        self.gemm_mode = "numba-split" if self._pgemm else "blas-threads"
        self.threading_layer = numba_threads(threads, passive=self._pgemm is None)
        use_blas_threads(1 if self._pgemm else threads)
        self.heap_kept = keep_freed_memory()
        from . import numba_kernels, numba_winograd, numba_winograd4, numba_winograd_fused

        self.k = numba_kernels
        self._winograd_kernels = {2: numba_winograd, 4: numba_winograd4}
        self._fused = numba_winograd_fused
        self.winograd_mode = _winograd_mode(winograd)
        self.image_columns = bool(image_columns)
        self.fused = bool(fused)
        self.position_columns = bool(position_columns)

    @property
    def winograd(self):
        return self.winograd_mode != "off"

    def describe(self):
        from . import threads

        conv = self.describe_convolution()
        if self.winograd:
            f4_rows = (f"F(4x4, 3x3) over multiples of 4 of >= {WINOGRAD4_MIN_SIZE} rows (36 GEMMs per pass, "
                       "numba_winograd4.py), F(2x2, 3x3) over other even sizes")
            f4 = {"4x4": f4_rows, "auto": f"below {WINOGRAD4_AUTO_CHANNELS} input channels {f4_rows}; "
                                          "F(2x2, 3x3) over even sizes from there on"}.get(
                self.winograd_mode, "F(2x2, 3x3) over even sizes")
            conv["winograd"] = (f"mode {self.winograd_mode}: Winograd for 3x3 stride-1 padding-1 convolutions of "
                                f">= {WINOGRAD_MIN_CHANNELS} channels, {f4} (F(2x2): >= {WINOGRAD_MIN_SIZE} rows, "
                                "16 GEMMs per pass, numba_winograd.py; from "
                                f"{FUSED_MIN_SIZE} rows fused a slice of images at a time where CBLAS is callable and each "
                                f"thread gets >= {FUSED_MIN_SLICES_PER_THREAD} slices, "
                                "numba_winograd_fused.py)" + ("" if self.fused else "; fusion off (fused=False)"))
        if self.image_columns:
            conv["per_image"] = (f"im2col per image (one GEMM an image, NCHW out) where an image has >= "
                                 f"{IMAGE_COLUMNS_MIN_POSITIONS} output positions, else over the batch")
        if self.position_columns:
            conv["batch_columns"] = ("the other im2col convolutions: columns with a row per output position, "
                                     "(tap, channel) inside it (im2col_positions)")
        return dict(super().describe(), heap_kept=self.heap_kept, threading_layer=self.threading_layer,
                    gemm=self.gemm_mode, blas_spin_bounded=threads.blas_spin_bounded, convolution=conv)

    def _threads_for_blas(self):
        """Re-assert the thread counts (numba's is per calling thread and BLAS's process-wide;
        another backend in this process may have changed them); True where GEMMs run split over
        numba's threads, False where BLAS threads itself."""
        if self._numba.get_num_threads() != self.threads:
            self._numba.set_num_threads(self.threads)
        use_blas_threads(1 if self._pgemm is not None else self.threads)
        if self._pgemm is not None:
            self._pin_blas()
        return self._pgemm is not None

    def gemm(self, a, b, out=None):
        if not self._threads_for_blas():
            return np.matmul(a, b, out=out)
        return self._pgemm(a, b, self.threads, out=out)

    def gemm_batched(self, a, b, out):
        """out[t] = a[t] @ b[t] for stacks of products (Winograd's 16), each product whole on
        one thread: one parallel region for all of them, none split."""
        if not self._threads_for_blas():
            return np.matmul(a, b, out=out)
        return self._pgemm.batched(a, b, out)

    def gemm_batched_sum(self, a, b, out):
        """out = sum over t of a[t] @ b[t] (a may be one block for every item), summed in a
        fixed order."""
        if not self._threads_for_blas():
            return np.matmul(a, b).sum(axis=0, out=out)
        return self._pgemm.batched_sum(a, b, out)

    def to_host(self, a):
        return np.asarray(a)

    # ------------------------------------------------------------------ convolution
    def im2col(self, x, kh, kw, stride, pad):
        n, c, h, w = x.shape
        oh = self.conv_output_size(h, kh, stride, pad)
        ow = self.conv_output_size(w, kw, stride, pad)
        cols = np.empty((c * kh * kw, n * oh * ow), dtype=x.dtype)
        self.k.im2col(np.ascontiguousarray(x), kh, kw, stride, pad, oh, ow, cols)
        return cols, oh, ow

    def col2im(self, cols, x_shape, kh, kw, stride, pad, oh, ow):
        dx = np.empty(x_shape, dtype=cols.dtype)
        self.k.col2im(np.ascontiguousarray(cols).reshape(cols.shape[0], x_shape[0], oh * ow), False, kh, kw, stride,
                      pad, oh, ow, dx)
        return dx

    # ------------------------------------------------------------------ Winograd
    def winograd_tile(self, w, x_shape, stride, pad):
        """The Winograd tile (4: F(4x4, 3x3), 2: F(2x2, 3x3)) the table picks for this
        convolution, or None for im2col (3x3, stride 1, padding 1, WINOGRAD's channels and sizes)."""
        f, c, kh, kw = w.shape
        h, wd = x_shape[2], x_shape[3]
        if not (self.winograd and kh == kw == 3 and stride == 1 and pad == 1 and c >= WINOGRAD_MIN_CHANNELS):
            return None
        f4 = self.winograd_mode == "4x4" or (self.winograd_mode == "auto" and c < WINOGRAD4_AUTO_CHANNELS)
        if f4 and h % 4 == 0 and wd % 4 == 0 and min(h, wd) >= WINOGRAD4_MIN_SIZE:
            return 4
        if h % 2 == 0 and wd % 2 == 0 and min(h, wd) >= WINOGRAD_MIN_SIZE:
            return 2
        return None

    def winograd_applies(self, w, x_shape, stride, pad):
        return self.winograd_tile(w, x_shape, stride, pad) is not None

    @staticmethod
    def _winograd_slices(wk, n, c, f, h, w, itemsize):
        per_image = wk.POSITIONS * max(c, f) * (h * w // wk.TILE ** 2) * itemsize
        if n * per_image <= WINOGRAD_KEEP_BYTES:
            return [(0, n)]
        step = max(1, WINOGRAD_SLICE_BYTES // per_image)
        return [(lo, min(n, lo + step)) for lo in range(0, n, step)]

    def per_image_columns(self, w, x_shape, stride, pad):
        """Whether this convolution's im2col runs per image (IMAGE_COLUMNS_MIN_POSITIONS)
        rather than over the batch; never where Winograd takes it."""
        kh, kw = w.shape[2:]
        positions = (self.conv_output_size(x_shape[2], kh, stride, pad)
                     * self.conv_output_size(x_shape[3], kw, stride, pad))
        return (self.image_columns and positions >= IMAGE_COLUMNS_MIN_POSITIONS
                and not self.winograd_applies(w, x_shape, stride, pad))

    def _conv_forward_per_image(self, x, w, b, stride, pad, relu):
        f, c, kh, kw = w.shape
        n, _, h, wd = x.shape
        oh, ow = self.conv_output_size(h, kh, stride, pad), self.conv_output_size(wd, kw, stride, pad)
        p, rows = oh * ow, c * kh * kw + 1
        x = np.ascontiguousarray(x)
        wb = weights_and_bias(w, b)                       # against the columns' ones row
        out = np.empty((n, f, oh, ow), dtype=x.dtype)
        out3 = out.reshape(n, f, p)
        slices = self.conv_slices(n, rows, p, x.dtype.itemsize)
        cols = None
        for lo, hi in slices:
            cols = np.empty((hi - lo, rows, p), dtype=x.dtype)
            self.k.im2col_images(x[lo:hi], kh, kw, stride, pad, oh, ow, cols)
            self.gemm_batched(wb, cols, out3[lo:hi])
        if relu:
            self.k.relu_forward(out.reshape(-1), out.reshape(-1))
        kept = cols if len(slices) == 1 else None
        self.record_conv_algorithm(w, x.shape, stride, pad, "im2col GEMM per image")
        return out, ("per_image", x, kept, stride, pad, oh, ow, out if relu else None)

    def _conv_backward_per_image(self, dy, cache, w, need_dx):
        _, x, kept, stride, pad, oh, ow, relu_out = cache
        f, c, kh, kw = w.shape
        n = x.shape[0]
        p, rows = oh * ow, c * kh * kw + 1
        g = np.ascontiguousarray(dy).reshape(n, f, p)
        if relu_out is not None:
            masked = np.empty_like(g)
            self.k.relu_backward(g.reshape(-1), relu_out.reshape(-1), masked.reshape(-1))
            g = masked
        slices = [(0, n)] if kept is not None else self.conv_slices(n, rows, p, x.dtype.itemsize)
        dwb = np.empty((f, rows), dtype=w.dtype)       # dw and, against the ones row, db
        part = np.empty_like(dwb) if len(slices) > 1 else dwb
        wt = np.ascontiguousarray(w.reshape(f, -1).T) if need_dx else None
        dx = np.empty(x.shape, dtype=dy.dtype) if need_dx else None
        for s, (lo, hi) in enumerate(slices):
            cols = kept
            if cols is None:
                cols = np.empty((hi - lo, rows, p), dtype=x.dtype)
                self.k.im2col_images(x[lo:hi], kh, kw, stride, pad, oh, ow, cols)
            self.gemm_batched_sum(g[lo:hi], cols.transpose(0, 2, 1), dwb if s == 0 else part)
            if s:
                dwb += part
            del cols
            if need_dx:
                dcols = self.gemm_batched(wt, g[lo:hi], np.empty((hi - lo, rows - 1, p), dtype=dy.dtype))
                self.k.col2im(dcols, True, kh, kw, stride, pad, oh, ow, dx[lo:hi])
        return dx, np.ascontiguousarray(dwb[:, :-1]).reshape(w.shape), dwb[:, -1].copy()

    def _conv_forward_positions(self, x, w, b, stride, pad, relu):
        f, c, kh, kw = w.shape
        n, _, h, wd = x.shape
        oh, ow = self.conv_output_size(h, kh, stride, pad), self.conv_output_size(wd, kw, stride, pad)
        rows = c * kh * kw
        x = np.ascontiguousarray(x)
        wt = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(f, rows)   # the columns' (tap, channel) order
        out = np.empty((n, f, oh, ow), dtype=x.dtype)
        slices = self.conv_slices(n, rows, oh * ow, x.dtype.itemsize)
        cols = None
        for lo, hi in slices:
            cols = np.empty(((hi - lo) * oh * ow, rows), dtype=x.dtype)
            self.k.im2col_positions(x[lo:hi], kh, kw, stride, pad, oh, ow, cols)
            self._conv_out(self.gemm(wt, cols.T), b, relu, out[lo:hi])
        kept = cols if len(slices) == 1 else None
        self.record_conv_algorithm(w, x.shape, stride, pad, "im2col GEMM, a row per position")
        return out, ("positions", x, kept, wt, stride, pad, oh, ow, out if relu else None)

    def _conv_backward_positions(self, dy, cache, w, need_dx):
        _, x, kept, wt, stride, pad, oh, ow, relu_out = cache
        f, c, kh, kw = w.shape
        n = x.shape[0]
        rows = c * kh * kw
        slices = [(0, n)] if kept is not None else self.conv_slices(n, rows, oh * ow, x.dtype.itemsize)
        dx = np.empty(x.shape, dtype=dy.dtype) if need_dx else None
        dwt = db = None
        for lo, hi in slices:
            dym, dbs = self._conv_grad_rows(dy[lo:hi], relu_out[lo:hi] if relu_out is not None else None)
            cols = kept
            if cols is None:
                cols = np.empty(((hi - lo) * oh * ow, rows), dtype=x.dtype)
                self.k.im2col_positions(x[lo:hi], kh, kw, stride, pad, oh, ow, cols)
            if dwt is None:
                dwt, db = self.gemm(dym, cols), dbs
            else:
                dwt += self.gemm(dym, cols)
                db += dbs
            del cols
            if need_dx:
                self.k.col2im_positions(self.gemm(dym.T, wt), kh, kw, stride, pad, oh, ow, dx[lo:hi])
        return dx, np.ascontiguousarray(dwt.reshape(f, kh, kw, c).transpose(0, 3, 1, 2)), db

    def conv2d_forward(self, x, w, b, stride, pad, relu=False):
        tile = self.winograd_tile(w, x.shape, stride, pad)
        if tile is None:
            if self.per_image_columns(w, x.shape, stride, pad):
                return self._conv_forward_per_image(x, w, b, stride, pad, relu)
            if self.position_columns:
                return self._conv_forward_positions(x, w, b, stride, pad, relu)
            return super().conv2d_forward(x, w, b, stride, pad, relu)
        wk = self._winograd_kernels[tile]
        f, c = w.shape[:2]
        n, _, h, wd = x.shape
        x = np.ascontiguousarray(x)
        u = np.empty((wk.POSITIONS, f, c), dtype=w.dtype)
        wk.weights(np.ascontiguousarray(w), u)
        out = np.empty((n, f, h, wd), dtype=x.dtype)
        bias = b if b is not None else u[0, 0, :0]
        fused = self._fused_step(tile, n, c, f, h, wd, x.dtype)
        if fused:
            self._threads_for_blas()
            self._fused.forward(_fused_winograd(x.dtype), x, u.reshape(-1), bias, b is not None, relu, out, fused)
            self.record_conv_algorithm(w, x.shape, stride, pad, "Winograd F(2x2, 3x3), fused per image slice")
            return out, ("winograd", x, None, u, out if relu else None, wk, fused)
        slices = self._winograd_slices(wk, n, c, f, h, wd, x.dtype.itemsize)
        v = None
        for lo, hi in slices:
            t = (hi - lo) * h * wd // tile ** 2
            v = _planes(wk.POSITIONS, c, t, x.dtype)
            wk.inputs(x[lo:hi], v)
            m = self.gemm_batched(u, v, _planes(wk.POSITIONS, f, t, x.dtype))
            wk.outputs(m, bias, b is not None, relu, out[lo:hi])
        kept = v if len(slices) == 1 else None
        self.record_conv_algorithm(w, x.shape, stride, pad, f"Winograd F({tile}x{tile}, 3x3)")
        return out, ("winograd", x, kept, u, out if relu else None, wk, 0)

    def conv2d_backward(self, dy, cache, w, need_dx=True):
        kind = cache[0] if isinstance(cache[0], str) else None
        if kind == "per_image":
            return self._conv_backward_per_image(dy, cache, w, need_dx)
        if kind == "positions":
            return self._conv_backward_positions(dy, cache, w, need_dx)
        if kind != "winograd":
            return super().conv2d_backward(dy, cache, w, need_dx)
        _, x, kept, u, relu_out, wk, fused = cache
        f, c = w.shape[:2]
        n, _, h, wd = x.shape
        dy = np.ascontiguousarray(dy)
        dx = np.empty(x.shape, dtype=dy.dtype) if need_dx else None
        if fused:
            return self._winograd_backward_fused(dy, x, u, relu_out, wk, fused, w, dx)
        slices = [(0, n)] if kept is not None else self._winograd_slices(wk, n, c, f, h, wd, x.dtype.itemsize)
        yv = relu_out if relu_out is not None else dy
        du = (np.empty if len(slices) == 1 else np.zeros)((wk.POSITIONS, f, c), dtype=w.dtype)
        db = np.zeros(f, dtype=w.dtype)
        for lo, hi in slices:
            t = (hi - lo) * h * wd // wk.TILE ** 2
            dm = _planes(wk.POSITIONS, f, t, dy.dtype)
            wk.outputs_adjoint(dy[lo:hi], yv[lo:hi], relu_out is not None, dm)
            db += dm[wk.SUM_POSITION].sum(axis=1)
            v = kept
            if v is None:
                v = _planes(wk.POSITIONS, c, t, x.dtype)
                wk.inputs(x[lo:hi], v)
            vt = v.transpose(0, 2, 1)
            if len(slices) == 1:
                self.gemm_batched(dm, vt, du)
            else:
                du += self.gemm_batched(dm, vt, np.empty_like(du))
            del v
            if need_dx:
                dv = self.gemm_batched(u.transpose(0, 2, 1), dm, _planes(wk.POSITIONS, c, t, dy.dtype))
                wk.inputs_adjoint(dv, dx[lo:hi])
        dw = np.empty(w.shape, dtype=w.dtype)
        wk.weights_adjoint(du, dw)
        return dx, dw, db

    def _fused_step(self, tile, n, c, f, h, w, dtype):
        """Images a fused slice takes (numba_winograd_fused.py), or 0 where the passes run
        unfused: F(4x4), small maps, too few slices a thread, or no CBLAS to call from numba's
        threads."""
        if not self.fused or tile != 2 or min(h, w) < FUSED_MIN_SIZE or _fused_winograd(dtype) is None:
            return 0
        per_image = self._fused.POSITIONS * max(c, f) * (h * w // 4) * np.dtype(dtype).itemsize
        step = max(1, min(n, FUSED_SLICE_BYTES // per_image))
        return step if -(-n // step) >= FUSED_MIN_SLICES_PER_THREAD * self.threads else 0

    def _winograd_backward_fused(self, dy, x, u, relu_out, wk, step, w, dx):
        f, c = w.shape[:2]
        groups = min(FUSED_GROUPS, -(-x.shape[0] // step))
        parts = np.empty((groups, u.size), dtype=dy.dtype)
        db_parts = np.empty((groups, f), dtype=dy.dtype)
        du = np.empty(u.shape, dtype=w.dtype)
        db = np.empty(f, dtype=w.dtype)
        yv = relu_out if relu_out is not None else dy
        self._threads_for_blas()
        self._fused.backward(_fused_winograd(dy.dtype), x, dy, yv, relu_out is not None, u.reshape(-1),
                             dx if dx is not None else x[:0], dx is not None, step, parts, db_parts, du.reshape(-1), db)
        dw = np.empty(w.shape, dtype=w.dtype)
        wk.weights_adjoint(du, dw)
        return dx, dw, db

    # conv2d_forward / conv2d_backward otherwise are the base's (batch slices of columns); these are its hooks
    def _conv_out(self, ym, b, relu, out):
        n, f, oh, ow = out.shape
        bias = b if b is not None else ym[:0, 0]
        self.k.conv_out_nchw(ym, bias, b is not None, relu, out.reshape(n, f, oh * ow))

    def _conv_grad_rows(self, dy, y):
        n, f, oh, ow = dy.shape
        dy3 = np.ascontiguousarray(dy).reshape(n, f, oh * ow)
        dym = np.empty((f, n * oh * ow), dtype=dy.dtype)
        db = np.empty(f, dtype=dy.dtype)
        y3 = np.ascontiguousarray(y).reshape(n, f, oh * ow) if y is not None else dy3[:0]
        self.k.conv_dy_gemm_layout(dy3, y3, y is not None, dym, db)
        return dym, db

    # ------------------------------------------------------------------ batch norm
    @staticmethod
    def _flat3(a):
        n, c = a.shape[:2]
        return np.ascontiguousarray(a).reshape(n, c, -1)

    def batchnorm_forward_train(self, x, gamma, beta, eps, relu=False, residual=None, running=None):
        c = x.shape[1]
        x3 = self._flat3(x)
        res3 = self._flat3(residual) if residual is not None else x3[:0]
        y = np.empty(x.shape, dtype=x.dtype)
        mean, var, invstd = (np.empty(c, dtype=x.dtype) for _ in range(3))
        self.k.batchnorm_train_forward(x3, gamma, beta, eps, res3, residual is not None, relu,
                                       y.reshape(x3.shape), mean, var, invstd)
        cache = (x3, y if relu else None, mean, invstd, gamma, residual is not None)
        self._update_running_stats(running, mean, var, x3.size // c)
        return y, mean, var, cache

    def batchnorm_forward_eval(self, x, gamma, beta, running_mean, running_var, eps, relu=False, residual=None):
        scale = gamma / np.sqrt(running_var + eps)
        shift = beta - running_mean * scale
        x3 = self._flat3(x)
        res3 = self._flat3(residual) if residual is not None else x3[:0]
        y = np.empty(x.shape, dtype=x.dtype)
        self.k.batchnorm_eval_forward(x3, scale, shift, res3, residual is not None, relu, y.reshape(x3.shape))
        return y

    def batchnorm_backward(self, dy, cache):
        x3, y, mean, invstd, gamma, has_res = cache
        dy3 = self._flat3(dy)
        c = dy3.shape[1]
        dx = np.empty(dy.shape, dtype=dy.dtype)
        dres = np.empty(dy.shape, dtype=dy.dtype) if has_res else None
        dgamma = np.empty(c, dtype=dy.dtype)
        dbeta = np.empty(c, dtype=dy.dtype)
        y3 = y.reshape(dy3.shape) if y is not None else dy3[:0]
        self.k.batchnorm_train_backward(dy3, x3, y3, mean, invstd, gamma, y is not None, has_res,
                                        dx.reshape(dy3.shape), dres.reshape(dy3.shape) if has_res else dy3[:0],
                                        dgamma, dbeta)
        return dx, dgamma, dbeta, dres

    # ------------------------------------------------------------------ activations
    def relu_forward(self, x):
        x = np.ascontiguousarray(x)
        y = np.empty_like(x)
        self.k.relu_forward(x.reshape(-1), y.reshape(-1))
        return y

    def relu_backward(self, dy, y):
        dy = np.ascontiguousarray(dy)
        dx = np.empty_like(dy)
        self.k.relu_backward(dy.reshape(-1), np.ascontiguousarray(y).reshape(-1), dx.reshape(-1))
        return dx

    # ------------------------------------------------------------------ pooling
    def maxpool2d_forward(self, x, k, stride, pad):
        n, c, h, w = x.shape
        oh = self.conv_output_size(h, k, stride, pad)
        ow = self.conv_output_size(w, k, stride, pad)
        y = np.empty((n, c, oh, ow), dtype=x.dtype)
        idx = np.empty((n, c, oh, ow), dtype=np.uint8 if k * k <= 255 else np.int32)
        if k == stride == 2 and pad == 0:
            self.k.maxpool2x2_forward(np.ascontiguousarray(x), y, idx)
        else:
            self.k.maxpool_forward(np.ascontiguousarray(x), k, stride, pad, y, idx)
        return y, (idx, (n, c, h, w), k, stride, pad)

    def maxpool2d_backward(self, dy, cache):
        idx, shape, k, stride, pad = cache
        dx = np.empty(shape, dtype=dy.dtype)
        n, c, h, w = shape
        if k == stride == 2 and pad == 0 and h % 2 == 0 and w % 2 == 0:
            self.k.maxpool2x2_backward(np.ascontiguousarray(dy), idx, dx)
        else:
            self.k.maxpool_backward(np.ascontiguousarray(dy), idx, k, stride, pad, dx)
        return dx

    def global_avgpool_forward(self, x):
        x3 = self._flat3(x)
        y = np.empty(x3.shape[:2], dtype=x.dtype)
        self.k.global_avgpool_forward(x3, y)
        return y

    def global_avgpool_backward(self, dy, x_shape):
        dx = np.empty(x_shape, dtype=dy.dtype)
        self.k.global_avgpool_backward(np.ascontiguousarray(dy), dx.reshape(x_shape[0], x_shape[1], -1))
        return dx

    # ------------------------------------------------------------------ loss
    def softmax_cross_entropy(self, logits, labels, label_smoothing=0.0):
        logits = np.ascontiguousarray(logits)
        grad = np.empty_like(logits)
        loss = self.k.softmax_cross_entropy(logits, np.ascontiguousarray(labels, dtype=np.int64),
                                            float(label_smoothing), grad)
        return np.asarray(loss, dtype=logits.dtype), grad

    # ------------------------------------------------------------------ optimizer updates
    def sgd_update(self, params, grads, bufs, *, lr, momentum, dampening, nesterov, weight_decay, first_step,
                   hyper_key=None):
        for p, g, buf in zip(params, grads, bufs):
            pf = _flat(p)
            self.k.sgd_update(pf, _flat(g), _flat(buf) if buf is not None else pf[:0],
                              float(lr), float(momentum), float(dampening), bool(nesterov),
                              float(weight_decay), bool(first_step))

    def adam_update(self, params, grads, exp_avgs, exp_avg_sqs, *, step, lr, beta1, beta2, eps,
                    weight_decay, decoupled, hyper_key=None):
        bc1 = 1.0 - beta1 ** step
        bc2_sqrt = (1.0 - beta2 ** step) ** 0.5
        decay = 1.0 - lr * weight_decay if decoupled else 1.0
        for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
            self.k.adam_update(_flat(p), _flat(g), _flat(m), _flat(v), float(lr / bc1),
                               float(bc2_sqrt), float(beta1), float(beta2), float(eps), float(weight_decay),
                               float(decay), bool(decoupled))
