"""GEMMs on numba's own threads: one single-threaded BLAS call per thread, on its slice.

Why not let BLAS thread itself: then two thread pools (BLAS's and numba's) take turns on the
same cores dozens of times per step, and each turn either waits for sleeping threads to wake
or fights threads still spinning from the last turn. On 16 cores that cost the non-GEMM
kernels 4x, or the GEMMs 1.5x, whichever pool was told to sleep. With every GEMM split over
numba's pool there is one pool, which can spin between kernels as OpenMP intends.

The BLAS is NumPy's own OpenBLAS (found through threadpoolctl), called through its CBLAS
entry point with row-major layout; every slice is a pointer into the operands plus their
leading dimension, so nothing is copied. Where NumPy's BLAS exposes no CBLAS sgemm/dgemm we
know (`find_cblas` returns None), the backend says so in describe() and uses np.matmul with
BLAS threads instead.
"""
import ctypes
import os

import numpy as np
from numba import njit, prange

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
# (symbol, integer width) for the OpenBLAS builds NumPy ships: ILP64 with its symbol suffix
# (NumPy >= 2.0: scipy_ prefix; 1.2x: none), then plain LP64 builds.
_SYMBOLS = [("scipy_cblas_{}gemm64_", ctypes.c_int64), ("cblas_{}gemm64_", ctypes.c_int64),
            ("scipy_cblas_{}gemm", ctypes.c_int), ("cblas_{}gemm", ctypes.c_int)]


def find_cblas():
    """(sgemm, dgemm) ctypes functions of NumPy's BLAS, or None."""
    found = _numpy_blas()
    return None if found is None else found[0]


def pin_one_blas_thread():
    """Set the BLAS that find_cblas() calls to one thread, if anything set it higher. Numba's
    threads each run a whole GEMM on their slice; with a count above one, OpenBLAS (pthreads)
    would hand every call to its own pool from inside numba's OpenMP region. One bench run on
    the 16-core Xeon (2026-12-07) printed OpenBLAS's 'Detect OpenMP Loop' warning per call and
    ran ResNet-18 at a quarter of its speed; the runs after it, with this pin, never found the
    count above one (32,538 pins), so what raised it there is not known. Reading the library's
    own count costs a microsecond, and threadpoolctl's limit is process-wide only from the
    thread that set it first. Returns the count found."""
    found = _numpy_blas()
    if found is None or found[1] is None:
        return None
    get, put = found[1]
    n = get()
    if n != 1:
        put(1)
    return n


_FOUND = []


def _numpy_blas():
    """((sgemm, dgemm), (get_num_threads, set_num_threads) or None) of NumPy's BLAS, or None."""
    if _FOUND:
        return _FOUND[0]
    _FOUND.append(_search_numpy_blas())
    return _FOUND[0]


def _search_numpy_blas():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    np_dir = os.path.dirname(os.path.dirname(np.__file__))
    for info in threadpool_info():
        path = info.get("filepath") or ""
        if info.get("user_api") != "blas" or not os.path.realpath(path).startswith(os.path.realpath(np_dir)):
            continue
        lib = ctypes.CDLL(path)
        for name, integer in _SYMBOLS:
            try:
                fns = [getattr(lib, name.format(p)) for p in "sd"]
            except AttributeError:
                continue
            for fn, real in zip(fns, (ctypes.c_float, ctypes.c_double)):
                fn.restype = None
                fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer, integer, real,
                               ctypes.c_void_p, integer, ctypes.c_void_p, integer, real, ctypes.c_void_p, integer]
            return tuple(fns), _thread_count_fns(lib)
    return None


def _thread_count_fns(lib):
    """(get, set) of an OpenBLAS's thread count, under any of its builds' symbol affixes."""
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            try:
                get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}")
                put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}")
            except AttributeError:
                continue
            get.restype, get.argtypes = ctypes.c_int, []
            put.restype, put.argtypes = None, [ctypes.c_int]
            return get, put
    return None


@njit(parallel=True, nogil=True, cache=True)
def sum_in_order(parts, out):
    """out[e] = parts[0, e] + parts[1, e] + ..., in that order: partial products summed the
    same way whatever the thread count."""
    for e in prange(out.shape[0]):
        s = parts[0, e]
        for g in range(1, parts.shape[0]):
            s += parts[g, e]
        out[e] = s


def _make_kernels(fn):
    """Split kernels around one CBLAS gemm. Not cached on disk: they hold the function's
    address, which differs from process to process. Operands come as flat storage (the
    C-contiguous array or, for a transposed operand, its contiguous transpose), so a slice is
    an offset into it."""

    @njit(parallel=True, nogil=True)
    def split_cols(ta, tb, m, n, k, a, lda, b, ldb, c, chunks):
        """C (m, n) = op(A) op(B); each task computes a block of C's columns."""
        for t in prange(chunks):
            lo = t * n // chunks
            hi = (t + 1) * n // chunks
            if hi > lo:
                boff = lo * ldb if tb == TRANS else lo
                fn(ROW_MAJOR, ta, tb, m, hi - lo, k, 1.0, a.ctypes, lda, b[boff:].ctypes, ldb, 0.0,
                   c[lo:].ctypes, n)

    @njit(parallel=True, nogil=True)
    def split_rows(ta, tb, m, n, k, a, lda, b, ldb, c, chunks):
        """C (m, n) = op(A) op(B); each task computes a block of C's rows."""
        for t in prange(chunks):
            lo = t * m // chunks
            hi = (t + 1) * m // chunks
            if hi > lo:
                aoff = lo if ta == TRANS else lo * lda
                fn(ROW_MAJOR, ta, tb, hi - lo, n, k, 1.0, a[aoff:].ctypes, lda, b.ctypes, ldb, 0.0,
                   c[lo * n:].ctypes, n)

    @njit(parallel=True, nogil=True)
    def split_inner(ta, tb, m, n, k, a, lda, b, ldb, parts, c, chunks):
        """C (m, n) = op(A) op(B) for a small C and a long inner dimension k: each task
        multiplies one block of k into its own partial C, then the partials are summed."""
        for t in prange(chunks):
            lo = t * k // chunks
            hi = (t + 1) * k // chunks
            aoff = lo * lda if ta == TRANS else lo
            boff = lo if tb == TRANS else lo * ldb
            p = parts[t]
            if hi > lo:
                fn(ROW_MAJOR, ta, tb, m, n, hi - lo, 1.0, a[aoff:].ctypes, lda, b[boff:].ctypes, ldb, 0.0,
                   p.ctypes, n)
            else:
                p[:] = 0
        sum_in_order(parts, c[:m * n])

    @njit(parallel=True, nogil=True)
    def batched(ta, tb, m, n, k, a, lda, sa, b, ldb, sb, c, sc, count):
        """C[t] (m, n) = op(A[t]) op(B[t]) for t < count, whole products spread over the
        threads (A[t] at offset t * sa of a's storage, B[t] at t * sb, C[t] at t * sc)."""
        for t in prange(count):
            fn(ROW_MAJOR, ta, tb, m, n, k, 1.0, a[t * sa:].ctypes, lda, b[t * sb:].ctypes, ldb, 0.0,
               c[t * sc:].ctypes, n)

    @njit(parallel=True, nogil=True)
    def batched_sum(ta, tb, m, n, k, a, lda, sa, b, ldb, sb, parts, c, count, group):
        """C (m, n) = sum over t < count of op(A[t]) op(B[t]): each task accumulates `group`
        consecutive products into its own partial in order, then the partials are summed in
        order, so the result does not depend on the thread count."""
        chunks = parts.shape[0]
        for g in prange(chunks):
            p = parts[g]
            for t in range(g * group, min(count, (g + 1) * group)):
                fn(ROW_MAJOR, ta, tb, m, n, k, 1.0, a[t * sa:].ctypes, lda, b[t * sb:].ctypes, ldb,
                   0.0 if t == g * group else 1.0, p.ctypes, n)
        sum_in_order(parts, c[:m * n])

    return split_cols, split_rows, split_inner, batched, batched_sum


def _batch_storage(x, shared=False):
    """(flat storage, trans flag, leading dimension, batch stride) of a stack (B, r, s) whose
    items are C-contiguous blocks or transposes of C-contiguous blocks, the items at any
    stride of at least a block apart (the Winograd planes' is skewed: numba_backend.py), or
    None. The storage is a flat view from the first item on, nothing copied. With `shared`,
    x may also be one 2-D block that every item uses (batch stride 0): an operand, never an
    output."""
    if shared and x.ndim == 2:
        if x.flags.c_contiguous:
            return x.reshape(-1), NO_TRANS, x.shape[1], 0
        if x.T.flags.c_contiguous:
            return x.T.reshape(-1), TRANS, x.shape[0], 0
        return None
    if x.ndim != 3:
        return None
    bsz, r, s_ = x.shape
    it = x.itemsize
    step, rest = x.strides[0], x.strides[1:]
    if rest == (s_ * it, it):
        trans, ld = NO_TRANS, s_
    elif rest == (it, r * it):                           # each item the transpose of an (s, r) block
        trans, ld = TRANS, r
    else:
        return None
    if step % it or (bsz > 1 and step < r * s_ * it):
        return None
    size = (bsz - 1) * (step // it) + r * s_
    return np.lib.stride_tricks.as_strided(x, (size,), (it,)), trans, ld, step // it


def _storage(x):
    """(flat contiguous storage, trans flag, leading dimension) of a 2-D operand."""
    if x.flags.c_contiguous:
        return x.reshape(-1), NO_TRANS, x.shape[1]
    if x.T.flags.c_contiguous:
        return x.T.reshape(-1), TRANS, x.shape[0]
    x = np.ascontiguousarray(x)
    return x.reshape(-1), NO_TRANS, x.shape[1]


class PartitionedGemm:
    """a @ b for 2-D float32/float64 arrays, split over `threads` numba threads; `batched`
    for stacks of products (Winograd's 16), whole products a thread."""

    def __init__(self, cblas):
        self.kernels = {np.dtype(np.float32): _make_kernels(cblas[0]), np.dtype(np.float64): _make_kernels(cblas[1])}

    def __call__(self, a, b, threads, out=None):
        """a @ b, into out (C-contiguous, (m, n)) when given."""
        if a.dtype != b.dtype or a.dtype not in self.kernels or a.ndim != 2 or b.ndim != 2:
            return np.matmul(a, b, out=out)
        m, k = a.shape
        k2, n = b.shape
        if k != k2:
            raise ValueError(f"gemm: shapes {a.shape} and {b.shape} do not chain")
        if out is not None and (out.shape != (m, n) or out.dtype != a.dtype or not out.flags.c_contiguous):
            raise ValueError(f"gemm: out must be a C-contiguous {a.dtype} array of shape {(m, n)}")
        c = out if out is not None else np.empty((m, n), dtype=a.dtype)
        if m == 0 or n == 0:
            return c
        if k == 0:
            c[...] = 0
            return c
        sa, ta, lda = _storage(a)
        sb, tb, ldb = _storage(b)
        cols, rows, inner = self.kernels[a.dtype][:3]
        # Give each thread a slice that keeps BLAS efficient (>= 64 columns or rows, >= 256 of
        # the inner dimension), preferring a split that feeds every thread.
        by_cols, by_rows, by_inner = n // 64, m // 64, k // 256
        if by_cols >= threads or (by_cols >= by_rows and by_cols >= by_inner and by_cols > 1):
            cols(ta, tb, m, n, k, sa, lda, sb, ldb, c.reshape(-1), max(1, min(threads, by_cols)))
        elif by_rows >= threads or (by_rows >= by_inner and by_rows > 1):
            rows(ta, tb, m, n, k, sa, lda, sb, ldb, c.reshape(-1), max(1, min(threads, by_rows)))
        else:
            chunks = max(1, min(threads, by_inner))
            parts = np.empty((chunks, m * n), dtype=a.dtype)
            inner(ta, tb, m, n, k, sa, lda, sb, ldb, parts, c.reshape(-1), chunks)
        return c

    def _stacks(self, a, b, out_shape, what):
        """The storage of a batched product's operands: a (B, m, k) or one (m, k) block for
        every item, b (B, k, n); raises where they do not chain."""
        sa, sb = _batch_storage(a, shared=True), _batch_storage(b)
        bsz = b.shape[0] if b.ndim == 3 else -1
        if (sa is None or sb is None or a.dtype != b.dtype or a.dtype not in self.kernels
                or (a.ndim == 3 and a.shape[0] != bsz) or a.shape[-1] != b.shape[1]
                or out_shape != (a.shape[-2], b.shape[2])):
            raise ValueError(f"{what}: stacks {a.shape} @ {b.shape} do not fit {out_shape}")
        return sa, sb

    def batched(self, a, b, out):
        """out[t] = a[t] @ b[t] for stacks a (B, m, k), b (B, k, n), out (B, m, n); a may be
        one (m, k) block for every item; items of a and b may be transposed blocks (a stack's
        .transpose(0, 2, 1)), out's C-contiguous blocks; the items of each may lie any stride
        apart (_batch_storage)."""
        so = _batch_storage(out)
        if so is None or so[1] != NO_TRANS or out.dtype != a.dtype or out.shape[0] != b.shape[0]:
            raise ValueError(f"batched gemm: stacks {a.shape} @ {b.shape} -> {out.shape} do not fit")
        (fa, ta, lda, stra), (fb, tb, ldb, strb) = self._stacks(a, b, out.shape[1:], "batched gemm")
        bsz, m, n = out.shape
        k = b.shape[1]
        (fo, _, _, stro) = so
        self.kernels[a.dtype][3](ta, tb, m, n, k, fa, lda, stra, fb, ldb, strb, fo, stro, bsz)
        return out

    def batched_sum(self, a, b, out, group=8):
        """out (m, n, C-contiguous) = sum over t of a[t] @ b[t] (a may be one block for every
        item, as in `batched`), summed in an order fixed by `group` whatever the thread count."""
        if out.dtype != a.dtype or not out.flags.c_contiguous:
            raise ValueError(f"batched sum: out must be a C-contiguous {a.dtype} array")
        (fa, ta, lda, stra), (fb, tb, ldb, strb) = self._stacks(a, b, out.shape, "batched sum")
        m, n = out.shape
        bsz, k = b.shape[0], b.shape[1]
        if bsz == 0 or k == 0:
            out[...] = 0
            return out
        parts = np.empty((-(-bsz // group), m * n), dtype=a.dtype)
        self.kernels[a.dtype][4](ta, tb, m, n, k, fa, lda, stra, fb, ldb, strb, parts, out.reshape(-1), bsz, group)
        return out
