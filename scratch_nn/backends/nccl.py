"""Collectives over NCCL through CuPy, for data-parallel training with one process per GPU.

    uid = NcclComm.new_id() on rank 0, handed to every rank as bytes (experiments.rendezvous)
    comm = NcclComm(world_size, rank, uid)
    comm.allreduce_(a, average=True)       # in place; the current stream sees the result
    comm.allreduce_async(bucket)           # in place; runs beside the work queued after it
    comm.wait()                            # the current stream waits for every queued collective

Every collective runs on the communicator's own stream, in the order the host issues them.
NCCL needs every rank to issue its collectives in one order, and one stream keeps it so even
where gradient buckets and BatchNorm statistics interleave. Each collective first waits for
the work queued so far on the caller's stream (an event, no host sync), so it reads finished
data; the synchronous form makes the caller's stream wait for the result in turn.

Inside a CUDA graph capture (scratch_nn.cuda_graph) the same calls are captured: the events
fork the comm stream off the capturing stream and join it back, and NCCL (>= 2.9) records
its kernels in the graph, so a replayed step all-reduces without the host.
"""
import numpy as np


class NcclUnavailable(RuntimeError):
    pass


def _nccl():
    try:
        from cupy.cuda import nccl
    except Exception as e:     # CuPy without its NCCL bindings
        raise NcclUnavailable(f"data parallelism on the scratch side needs NCCL through CuPy ({e}); install "
                              f"NCCL (pip install nvidia-nccl-cu12 for CUDA 12, -cu13 for CUDA 13) "
                              f"or run one GPU") from None
    if not getattr(nccl, "available", True):
        raise NcclUnavailable("CuPy finds no NCCL library (cupy.cuda.nccl.available is False): install it "
                              "(pip install nvidia-nccl-cu12 for CUDA 12, -cu13 for CUDA 13) or run one GPU")
    return nccl


class NcclComm:
    def __init__(self, world_size, rank, uid_bytes):
        import cupy

        self.nccl = nccl = _nccl()
        self.cupy = cupy
        self.world_size, self.rank = world_size, rank
        try:                     # CuPy 14 takes the id as bytes, older versions as 128 signed chars
            self.comm = nccl.NcclCommunicator(world_size, bytes(uid_bytes), rank)
        except TypeError:
            self.comm = nccl.NcclCommunicator(world_size, tuple(b - 256 if b > 127 else b for b in uid_bytes), rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)
        # timing-free events: the cheapest kind, and what a CUDA graph capture records
        self._ev_in = cupy.cuda.Event(disable_timing=True)
        self._ev_out = cupy.cuda.Event(disable_timing=True)
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
                       np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.int64): nccl.NCCL_INT64,
                       np.dtype(np.int32): nccl.NCCL_INT32}
        self._avg = getattr(nccl, "NCCL_AVG", None)     # NCCL >= 2.10 averages in the reduction itself

    @staticmethod
    def new_id():
        """A fresh job id (rank 0), as the bytes the other ranks receive."""
        uid = _nccl().get_unique_id()
        return uid if isinstance(uid, bytes) else bytes(b & 0xFF for b in uid)

    def _enter(self, *arrays):
        """Queue the comm stream behind the caller's stream; the arrays must be contiguous."""
        for a in arrays:
            if not a.flags.c_contiguous:
                raise ValueError("NCCL collectives need contiguous arrays")
        self.stream.wait_event(self.cupy.cuda.get_current_stream().record(self._ev_in))

    def wait(self):
        """The caller's stream waits for every collective queued so far."""
        self.cupy.cuda.get_current_stream().wait_event(self.stream.record(self._ev_out))

    def allreduce_async(self, a, average=False):
        """a = the sum (or mean) of every rank's a, in place, on the comm stream: the caller's
        later work runs beside it until wait()."""
        self._enter(a)
        op = self._avg if average and self._avg is not None else self.nccl.NCCL_SUM
        self.comm.allReduce(a.data.ptr, a.data.ptr, a.size, self._types[a.dtype], op, self.stream.ptr)
        if average and self._avg is None:
            with self.stream:
                a *= a.dtype.type(1.0 / self.world_size)
        return a

    def allreduce_(self, a, average=False):
        """As allreduce_async, and the caller's stream waits for the result."""
        self.allreduce_async(a, average)
        self.wait()
        return a

    def allgather(self, a):
        """Every rank's a stacked: shape (world_size, *a.shape), rank order."""
        out = self.cupy.empty((self.world_size,) + a.shape, dtype=a.dtype)
        self._enter(a)
        self.comm.allGather(a.data.ptr, out.data.ptr, a.size, self._types[a.dtype], self.stream.ptr)
        self.wait()
        return out

    def close(self):
        if self.comm is not None:
            self.stream.synchronize()
            self.comm.destroy()
            self.comm = None
