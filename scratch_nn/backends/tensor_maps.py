"""CUDA tensor maps (CUtensorMap) for the copy engine (TMA) of Hopper GPUs: the descriptors
cuda/conv_wgmma.cu's conv_tma reads its operands through, made by the CUDA driver
(cuTensorMapEncodeIm2col / cuTensorMapEncodeTiled, called through ctypes: CuPy does not expose
them) and handed to the kernel by value, as a one-element NumPy array of 128 bytes (CuPy copies
such an array's bytes into the kernel's parameter).

A map holds the tensor's address, so one is made per (address, shape) and kept: the CuPy
memory pool hands a training step the same addresses every step, so after the first step
every lookup hits.
"""
import ctypes

import numpy as np

# cuda.h's enum values (CUDA 12 / 13)
U16 = 1                     # CU_TENSOR_MAP_DATA_TYPE_UINT16: the 16-bit bits as they are
U32 = 2                     # CU_TENSOR_MAP_DATA_TYPE_UINT32: fp32 bits as they are (the tensor cores read tf32 from them)
DATA_TYPES = {2: U16, 4: U32}
INTERLEAVE_NONE = 0
SWIZZLE_128B = 3            # what the wgmma descriptors of conv_wgmma.cu name
L2_PROMOTION_128B = 2
OOB_FILL_ZERO = 0           # CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE: outside the tensor reads zeros
MAP_BYTES = 128
CACHE_LIMIT = 4096          # maps kept (a ResNet-18 step makes about 60)
# CUTLASS 4.3.4 clears this bit of a map's second word on drivers up to 13.1 for tensors under
# 128 KB, working around a driver bug that made such loads fail now and then; so do we
SMALL_TENSOR_BYTES = 128 * 1024
SMALL_TENSOR_DRIVER_MAX = 13010
SMALL_TENSOR_BIT = 1 << 21


class TensorMapError(RuntimeError):
    """The driver refused to make a tensor map (its CUresult in the message); the message says
    how to run without the copy-engine kernels."""

    def __init__(self, what):
        super().__init__(f"{what} (SCRATCH_NN_NO_TMA=1 runs the convolutions without the copy engine's loads)")


class TensorMaps:
    """Tensor maps for 16-bit or fp32 channels-last activations (im2col mode) and packed weights
    (tiled)."""

    def __init__(self, cupy):
        try:
            self._cuda = ctypes.CDLL("libcuda.so.1")
        except OSError as e:
            raise TensorMapError(f"the CUDA driver library is not loadable: {e}") from None
        c_int, c_u32, ptr = ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p
        u64p, u32p, intp = ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(c_int)
        self._im2col = self._cuda.cuTensorMapEncodeIm2col
        self._im2col.restype = c_int
        self._im2col.argtypes = [ptr, c_int, c_u32, ptr, u64p, u64p, intp, intp, c_u32, c_u32, u32p, c_int, c_int,
                                 c_int, c_int]
        self._tiled = self._cuda.cuTensorMapEncodeTiled
        self._tiled.restype = c_int
        self._tiled.argtypes = [ptr, c_int, c_u32, ptr, u64p, u64p, u32p, u32p, c_int, c_int, c_int, c_int]
        self._driver = cupy.cuda.runtime.driverGetVersion()
        # 64-byte aligned room for one map
        self._buf = (ctypes.c_uint64 * (MAP_BYTES // 8 + 8))()
        off = (-ctypes.addressof(self._buf)) % 64
        self._out = ctypes.addressof(self._buf) + off
        self._maps = {}

    def _finish(self, rc, what, nbytes):
        if rc != 0:
            raise TensorMapError(f"cuTensorMapEncode{what} failed with CUresult {rc}")
        words = np.frombuffer(ctypes.string_at(self._out, MAP_BYTES), dtype=np.uint64).copy()
        if self._driver <= SMALL_TENSOR_DRIVER_MAX and nbytes < SMALL_TENSOR_BYTES:
            words[1] &= np.uint64(~SMALL_TENSOR_BIT & 0xFFFFFFFFFFFFFFFF)
        return words.view(np.dtype((np.void, MAP_BYTES)))      # shape (1,): passed by value

    def _keep(self, key, make):
        m = self._maps.get(key)
        if m is None:
            if len(self._maps) >= CACHE_LIMIT:
                self._maps.clear()
            m = self._maps[key] = make()
        return m

    @staticmethod
    def _type(a):
        e = a.dtype.itemsize
        if e not in DATA_TYPES:
            raise TensorMapError(f"no tensor map for {e}-byte elements")
        return e, DATA_TYPES[e]

    def im2col(self, x, k, stride, pad, pixels=128, channels=None):
        """x (N, H, W, C) 16-bit or fp32, C-contiguous, for a k x k convolution (stride, pad): `pixels`
        positions by `channels` channels a load, filter bases from -pad to H-1+pad-(k-1) (W
        alike) every `stride` rows and columns (the output positions, in order), zeros outside."""
        n, h, w, c = x.shape
        ptr = x.data.ptr
        e, dtype = self._type(x)
        channels = channels or 128 // e            # default: a 128-byte row

        def make():
            if ptr % 16 or (c * e) % 16:
                raise TensorMapError("an im2col tensor map needs a 16-byte aligned address and rows")
            dims = (ctypes.c_uint64 * 4)(c, w, h, n)
            strides = (ctypes.c_uint64 * 3)(c * e, w * c * e, h * w * c * e)
            lower = (ctypes.c_int * 2)(-pad, -pad)
            upper = (ctypes.c_int * 2)(pad - (k - 1), pad - (k - 1))
            estr = (ctypes.c_uint32 * 4)(1, stride, stride, 1)
            rc = self._im2col(self._out, dtype, 4, ptr, dims, strides, lower, upper, channels, pixels, estr,
                              INTERLEAVE_NONE, SWIZZLE_128B, L2_PROMOTION_128B, OOB_FILL_ZERO)
            return self._finish(rc, "Im2col", x.nbytes)

        return self._keep(("im2col", ptr, e, x.shape, k, stride, pad, pixels, channels), make)

    def rows(self, a, box_rows, box_cols=None):
        """a (R, K) 16-bit or fp32, C-contiguous: boxes of box_rows rows by box_cols columns
        (default: a 128-byte row), zeros past its ends."""
        r, k = a.shape
        ptr = a.data.ptr
        e, dtype = self._type(a)
        box_cols = box_cols or 128 // e

        def make():
            if ptr % 16 or (k * e) % 16:
                raise TensorMapError("a tiled tensor map needs a 16-byte aligned address and rows")
            dims = (ctypes.c_uint64 * 2)(k, r)
            strides = (ctypes.c_uint64 * 1)(k * e)
            box = (ctypes.c_uint32 * 2)(box_cols, box_rows)
            estr = (ctypes.c_uint32 * 2)(1, 1)
            rc = self._tiled(self._out, dtype, 2, ptr, dims, strides, box, estr, INTERLEAVE_NONE, SWIZZLE_128B,
                             L2_PROMOTION_128B, OOB_FILL_ZERO)
            return self._finish(rc, "Tiled", a.nbytes)

        return self._keep(("rows", ptr, e, a.shape, box_rows, box_cols), make)
