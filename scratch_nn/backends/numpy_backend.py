"""The single-core reference backend: NumPy with BLAS pinned to one thread."""
import numpy as np

from .base import Backend, BackendUnavailable
from .heap import keep_freed_memory
from .threads import use_blas_threads


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    def __init__(self, threads=1):
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

    def gemm(self, a, b):
        use_blas_threads(1)   # another backend in this process may have set more
        return np.matmul(a, b)

    def describe(self):
        return dict(super().describe(), heap_kept=self.heap_kept, convolution=self.describe_convolution())

    def to_host(self, a):
        return np.asarray(a)
