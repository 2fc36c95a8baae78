"""The single-core reference backend: NumPy with BLAS pinned to one thread."""
import numpy as np

from .base import Backend, BackendUnavailable
from .heap import keep_freed_memory


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    def __init__(self, threads=1):
        if threads not in (None, 1):
            raise ValueError("the numpy backend is the single-core reference and runs with threads=1; "
                             "use backend 'numba' for several cores")
        super().__init__(threads=1)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError as e:  # a declared dependency; say so rather than run multi-threaded
            raise BackendUnavailable("the numpy backend needs threadpoolctl to pin BLAS to one thread: "
                                     "pip install threadpoolctl") from e
        # Process-wide on purpose: a single-core measurement must not let BLAS use more.
        self._blas_limit = threadpool_limits(limits=1, user_api="blas")
        self.heap_kept = keep_freed_memory()

    def describe(self):
        return dict(super().describe(), heap_kept=self.heap_kept)

    def to_host(self, a):
        return np.asarray(a)
