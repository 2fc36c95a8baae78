"""Row-major GEMM on cuBLAS through our own handle (ctypes on the libcublas CuPy loaded).

Why not cupy.matmul: CuPy refuses every cuBLAS call while a stream is being captured into a
CUDA graph ("calling cuBLAS API during stream capture is currently unsupported"), although
cuBLAS itself supports capture; and a direct call can accumulate into its output (beta=1),
which saves a pass over weight gradients. The handle's default workspace is allocated when
it is created, so nothing is allocated during a capture.

C (m, n) = A (m, k) @ B (k, n) for C with contiguous rows and A, B each with contiguous rows
or contiguous columns (a transposed view), at any leading stride (a column block of a wider
matrix, which is how a convolution is split over the batch). cuBLAS is column-major, so it
computes C^T = B^T A^T, reading a row-major matrix as its column-major transpose.

float16 and bfloat16 operands accumulate in float32 (tensor cores) and may write a float32 C:
that is how the 16-bit modes' weight gradients land in their fp32 master buffers without a
rounding or a pass of their own.
"""
import ctypes

import numpy as np

# cublas_api.h / library_types.h enums (part of the ABI)
OP_N, OP_T = 0, 1
CUDA_R = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.float16): 2}
try:                                     # bfloat16 (CUDA_R_16BF) where ml_dtypes gives numpy the dtype
    import ml_dtypes

    CUDA_R[np.dtype(ml_dtypes.bfloat16)] = 14
except ImportError:
    pass
_F16, _F32, _F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
_HALVES = tuple(d for d in CUDA_R if d.itemsize == 2)
COMPUTE_32F, COMPUTE_32F_FAST_TF32, COMPUTE_64F = 68, 77, 70
GEMM_DEFAULT = -1


class CublasError(RuntimeError):
    pass


def _find_libcublas():
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            name = path.rsplit("/", 1)[-1]
            if name.startswith("libcublas.so"):
                return path
    return None


class Gemm:
    def __init__(self, cupy):
        self.cupy = cupy
        cupy.cuda.device.get_cublas_handle()       # makes CuPy load libcublas
        path = _find_libcublas()
        if path is None:
            raise CublasError("could not find the libcublas that CuPy loaded")
        lib = ctypes.CDLL(path)
        self.lib = lib
        self.handle = ctypes.c_void_p()
        self._check(lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        vp, i32 = ctypes.c_void_p, ctypes.c_int
        lib.cublasGemmEx.argtypes = [vp, i32, i32, i32, i32, i32, vp, vp, i32, i32, vp, i32, i32, vp, vp, i32, i32,
                                     i32, i32]
        lib.cublasGemmEx.restype = i32
        i64 = ctypes.c_longlong
        lib.cublasGemmStridedBatchedEx.argtypes = [vp, i32, i32, i32, i32, i32, vp, vp, i32, i32, i64, vp, i32, i32,
                                                   i64, vp, vp, i32, i32, i64, i32, i32, i32]
        lib.cublasGemmStridedBatchedEx.restype = i32
        lib.cublasSetStream_v2.argtypes = [vp, vp]
        lib.cublasSetStream_v2.restype = i32
        self._stream = None
        self._one32, self._zero32 = ctypes.c_float(1.0), ctypes.c_float(0.0)
        self._one64, self._zero64 = ctypes.c_double(1.0), ctypes.c_double(0.0)

    @staticmethod
    def _check(status, what):
        if status != 0:
            raise CublasError(f"{what} failed with cuBLAS status {status}")

    @staticmethod
    def _layout(a):
        """(op, leading dimension) of a 2-D operand read as its column-major transpose: rows
        (or, transposed, columns) contiguous, at any stride of whole elements, so a column
        block of a wider matrix is an operand too."""
        r, c = a.shape
        it = a.itemsize
        s0, s1 = a.strides
        if s1 == it and (r == 1 or (s0 >= c * it and s0 % it == 0)):
            return OP_N, max(c, s0 // it if r > 1 else c, 1)
        if s0 == it and (c == 1 or (s1 >= r * it and s1 % it == 0)):
            return OP_T, max(r, s1 // it if c > 1 else r, 1)
        return None

    def __call__(self, a, b, out=None, accumulate=False, tf32=False, out_dtype=None, batch=None):
        """out = a @ b, or out += a @ b with accumulate=True (out given: rows contiguous, at
        any row stride). The output has the operands' dtype, or float32 for float16 operands.

        batch=(count, stride_a, stride_b, stride_out), in elements: `count` products at once
        (cublasGemmStridedBatchedEx), a, b and out being the first one's matrices."""
        cupy = self.cupy
        m, k = a.shape
        k2, n = b.shape
        if k != k2:
            raise ValueError(f"gemm shapes {a.shape} @ {b.shape} do not match")
        if a.dtype != b.dtype:
            raise TypeError(f"gemm operands differ in dtype: {a.dtype} and {b.dtype}")
        la, lb = self._layout(a), self._layout(b)
        if la is None:
            a, la = cupy.ascontiguousarray(a), (OP_N, max(k, 1))
        if lb is None:
            b, lb = cupy.ascontiguousarray(b), (OP_N, max(n, 1))
        if out is None:
            if accumulate:
                raise ValueError("accumulate needs an output array")
            out = cupy.empty((m, n), dtype=out_dtype or a.dtype)
        elif out.shape != (m, n) or not (out.strides[1] == out.itemsize and (m == 1 or out.strides[0] >= n * out.itemsize)):
            raise ValueError(f"gemm output must be {(m, n)} with contiguous rows, got {out.shape} {out.strides}")
        if out.dtype != a.dtype and not (a.dtype in _HALVES and out.dtype == _F32):
            raise TypeError(f"gemm of {a.dtype} operands cannot write {out.dtype}")
        if m == 0 or n == 0:
            return out
        if k == 0:
            if not accumulate:
                out.fill(0)
            return out
        stream = cupy.cuda.get_current_stream().ptr
        if stream != self._stream:
            self._check(self.lib.cublasSetStream_v2(self.handle, stream), "cublasSetStream")
            self._stream = stream
        dt = a.dtype
        if dt == _F64:
            compute, one, beta = COMPUTE_64F, self._one64, (self._one64 if accumulate else self._zero64)
        else:   # float32 (strict or TF32) and 16-bit operands accumulate in float32
            compute = COMPUTE_32F_FAST_TF32 if (tf32 and dt == _F32) else COMPUTE_32F
            one, beta = self._one32, (self._one32 if accumulate else self._zero32)
        ct, oct_ = CUDA_R[dt], CUDA_R[out.dtype]
        ldc = max(n, out.strides[0] // out.itemsize if m > 1 else n)
        # column-major: C^T (n, m) = B^T (n, k) @ A^T (k, m)
        if batch is None:
            status = self.lib.cublasGemmEx(self.handle, lb[0], la[0], n, m, k, ctypes.addressof(one), b.data.ptr, ct,
                                           lb[1], a.data.ptr, ct, la[1], ctypes.addressof(beta), out.data.ptr, oct_,
                                           ldc, compute, GEMM_DEFAULT)
        else:
            count, sa, sb, sc = batch
            status = self.lib.cublasGemmStridedBatchedEx(
                self.handle, lb[0], la[0], n, m, k, ctypes.addressof(one), b.data.ptr, ct, lb[1], sb, a.data.ptr, ct,
                la[1], sa, ctypes.addressof(beta), out.data.ptr, oct_, ldc, sc, count, compute, GEMM_DEFAULT)
        if status != 0:    # the message is built only on failure: formatting a dtype costs host time
            self._check(status, f"cublasGemm{'StridedBatched' if batch else ''}Ex ({m}x{k} @ {k}x{n}, {dt})")
        return out
