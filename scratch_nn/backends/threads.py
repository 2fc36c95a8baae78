"""Who runs on which cores: BLAS's thread count, and the idle behaviour of thread pools.

The numba backend normally runs its GEMMs on numba's own threads (numba_gemm.py), BLAS on
one thread inside each, so only one pool exists and none of what follows is needed. Where
NumPy's BLAS cannot be called that way, BLAS threads itself and two thread pools share the cores in a multi-core scratch step, BLAS's (the GEMMs) and
numba's (every other kernel), taking turns dozens of times per step. By default each pool's
idle threads spin for a while (OpenBLAS ~0.1 s, GNU OpenMP ~ms) before they sleep, so every
turn starts with the other pool's threads still burning the cores: on 2 cores that cost the
numba backend a third of its throughput and made its GEMMs 3x slower. So:

- OpenBLAS is told to sleep at once (OPENBLAS_THREAD_TIMEOUT). It reads that when numpy loads
  it, so `bound_blas_spin()` runs when scratch_nn is first imported, before numpy if it can.
- numba's OpenMP pool is started with OMP_WAIT_POLICY=PASSIVE, set only while numba starts its
  threads (`numba_threads`) and restored after, so torch's own OpenMP pool in the same
  process keeps its default and the side-by-side comparison stays fair. That works only if
  torch is not imported yet: torch loads its own libgomp into the global symbol scope, numba's
  pool would then bind to it and spin with torch's settings (4x slower CNN steps measured).
  So when torch came first, numba gets its own non-spinning `workqueue` pool instead; the
  benchmarks start the numba pool before they import torch.
- BLAS's thread count belongs to the backend that runs the GEMM (`use_blas_threads`), so
  building a single-core NumPy backend never leaves a numba backend's GEMMs on one core.
"""
import os
import sys

_blas_threads = None


def usable_cores():
    """Cores this process may run on (what a container or taskset allows, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
blas_spin_bounded = None   # True: OpenBLAS's idle threads sleep at once (set before numpy loaded)


def bound_blas_spin():
    global blas_spin_bounded
    if blas_spin_bounded is None:
        if "numpy" not in sys.modules:
            os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")
        blas_spin_bounded = "OPENBLAS_THREAD_TIMEOUT" in os.environ
    return blas_spin_bounded


def use_blas_threads(n):
    """Set BLAS's thread count process-wide, only when it changes (threadpoolctl is slow)."""
    global _blas_threads
    if n != _blas_threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n, user_api="blas")
        _blas_threads = n


def numba_threads(n, passive=True):
    """Start numba's pool (once per process), with passive idle threads if it must share the
    cores with BLAS's pool; use n of its threads."""
    import numba
    from numba.np.ufunc import parallel

    launched = getattr(parallel, "_is_initialized", False)
    if passive and not launched and "torch" in sys.modules and "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"
    # the user's settings win
    ours = passive and "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
    if ours:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        numba.set_num_threads(n)   # launches the threading layer on first use
    finally:
        if ours:
            del os.environ["OMP_WAIT_POLICY"]
    return numba.threading_layer()


def start_numba_before_torch(threads):
    """For processes that will import torch: start numba's pool now, if numba is installed,
    so it gets its own OpenMP runtime (see above)."""
    if "torch" in sys.modules:
        return
    try:
        import numba

        from .numba_gemm import find_cblas
    except ImportError:
        return
    numba_threads(min(threads, numba.config.NUMBA_NUM_THREADS), passive=find_cblas() is None)
