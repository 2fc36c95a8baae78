"""Where CuPy arrays get their memory: CUDA's stream-ordered pool or CuPy's own.

CuPy's pool (`cupy.get_default_memory_pool()`) keeps every block it takes from the driver and
hands a cached block only to a request it fits (split, never merged across blocks). A
training step allocates and frees hundreds of activation-sized arrays, in a different order
in forward and in backward, so the pool ends up holding blocks that no request of the
moment fits: ResNet-18 at batch 512 in fp16 kept 1,778 MB for a live peak of 1,372.
CUDA's stream-ordered allocator (cudaMallocAsync, "async") serves the same step from 1,440 MB,
and the process's whole GPU footprint (NVML) fell from 2,945 to 2,581 MB, against torch
channels-last's 2,829, the eager step from 13.4 to 11.1 ms (H100, 2026-12-07,
`.data/dev/gpu_alloc_ab.py`). CuPy's async pool keeps what it reserved after a free (its
release threshold is the maximum), so what it holds after a step is the step's peak, as with
CuPy's pool; the allocator is process-wide, as CuPy's `set_allocator` is.

The default is "auto": the stream-ordered pool where the GPU and driver have it, CuPy's pool
elsewhere (the GPU suite passed with it on the H100, 2026-12-07). `allocator="pool"`, or
SCRATCH_NN_GPU_ALLOCATOR=pool for every backend built without the argument, keeps CuPy's.

A CUDA graph replays the addresses of its capture, and capture here relies on CuPy's pool
keeping the capture stream's freed blocks for that stream (scratch_nn.cuda_graph), where an
async allocation made during capture would belong to the graph: a backend that will be
captured is built with allocator="pool" (the experiments do so under --cuda-graph).
"""
import os

ALLOCATORS = ("auto", "async", "pool")
ENV = "SCRATCH_NN_GPU_ALLOCATOR"   # the allocator of backends built without allocator=
DEFAULT = "auto"
_async_pool = _async_malloc = None


def async_supported(cupy, device_id):
    rt = cupy.cuda.runtime
    return bool(rt.deviceGetAttribute(rt.cudaDevAttrMemoryPoolsSupported, device_id))


def install(cupy, kind, device_id):
    """Make `kind` ("auto": async where the GPU and driver have it, else pool; None: $ENV, else
    DEFAULT) the allocator of every CuPy array allocated from now on; returns the kind installed.
    "pool" replaces only the async pool, not an allocator the user installed."""
    global _async_pool, _async_malloc
    if kind is None:
        kind = os.environ.get(ENV) or DEFAULT
    if kind not in ALLOCATORS:
        raise ValueError(f"allocator {kind!r} is not one of: {', '.join(ALLOCATORS)}")
    if kind != "pool":
        supported = async_supported(cupy, device_id)
        if kind == "auto":
            kind = "async" if supported else "pool"
    if kind == "async":
        if not supported:
            from .base import BackendUnavailable

            raise BackendUnavailable("allocator 'async' needs CUDA's stream-ordered allocator (CUDA 11.2+ on a GPU "
                                     "and driver that have it), which this one lacks: use allocator='pool'")
        if _async_pool is None:
            _async_pool = cupy.cuda.MemoryAsyncPool()
            _async_malloc = _async_pool.malloc
        cupy.cuda.set_allocator(_async_malloc)
    elif _async_pool is not None and cupy.cuda.get_allocator() is _async_malloc:
        # back from the async pool; otherwise leave the allocator as it is (CuPy's pool, or one
        # the user installed), so the default changes nothing
        cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc)
    return kind


def _pools(cupy):
    return [cupy.get_default_memory_pool()] + ([_async_pool] if _async_pool is not None else [])


def held_bytes(cupy):
    """Bytes the process's CuPy pools hold from the driver (both kinds: arrays allocated before
    a switch stay in the pool they came from)."""
    return sum(p.total_bytes() for p in _pools(cupy))


def release_free_blocks(cupy):
    """Hand the pools' free blocks back to the driver."""
    cupy.cuda.get_current_stream().synchronize()
    for p in _pools(cupy):
        p.free_all_blocks()
