"""Collectives over NCCL through CuPy, for data-parallel training with one process per GPU.

    uid = NcclComm.new_id() on rank 0, handed to every rank as bytes (experiments.rendezvous)
    comm = NcclComm(world_size, rank, uid)
    comm.allreduce_(flat_grads, average=True)     # in place, on the current stream

The all-reduce is queued on the calling stream like any kernel, so it needs no host sync:
the optimizer's update, queued after it, reads the reduced gradients.
"""
import numpy as np


class NcclUnavailable(RuntimeError):
    pass


def _nccl():
    try:
        from cupy.cuda import nccl
    except Exception as e:     # CuPy without its NCCL bindings, or no libnccl
        raise NcclUnavailable(f"data parallelism on the scratch side needs NCCL through CuPy ({e}); install "
                              f"NCCL (pip install nvidia-nccl-cu12 for CUDA 12) or run one GPU") from None
    return nccl


class NcclComm:
    def __init__(self, world_size, rank, uid_bytes):
        self.nccl = nccl = _nccl()
        self.world_size, self.rank = world_size, rank
        uid = tuple(b - 256 if b > 127 else b for b in uid_bytes)   # ncclUniqueId is 128 signed chars
        self.comm = nccl.NcclCommunicator(world_size, uid, rank)
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
                       np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.int64): nccl.NCCL_INT64,
                       np.dtype(np.int32): nccl.NCCL_INT32}

    @staticmethod
    def new_id():
        """A fresh job id (rank 0), as the bytes the other ranks receive."""
        return bytes(b & 0xFF for b in _nccl().get_unique_id())

    def allreduce_(self, a, average=False):
        """a = the sum (or mean) of every rank's a, in place; a contiguous CuPy array."""
        import cupy

        if not a.flags.c_contiguous:
            raise ValueError("allreduce_ needs a contiguous array")
        stream = cupy.cuda.get_current_stream().ptr
        self.comm.allReduce(a.data.ptr, a.data.ptr, a.size, self._types[a.dtype], self.nccl.NCCL_SUM, stream)
        if average:
            a *= a.dtype.type(1.0 / self.world_size)
        return a

    def close(self):
        if self.comm is not None:
            self.comm.destroy()
            self.comm = None
