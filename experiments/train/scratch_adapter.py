"""The scratch side of the training-step interface (experiments/train/adapters.py): a
scratch_nn model, optimizer and loss on one backend, optionally data parallel and captured."""
import numpy as np

from .spec import GPU_PRECISIONS, OptimSpec, optimizer_kwargs, param_groups, precision_dtype


class ScratchAdapter:
    impl = "scratch"
    checkpoint_suffix = ".pkl"

    def __init__(self, model, backend="numpy", optimizer=None, seed=0, num_classes=10, dtype=None,
                 label_smoothing=0.0, threads=None, precision="fp32", cuda_graph=False, dist=None, sync_bn=False):
        from scratch_nn import backends, models, optim

        # data parallelism (experiments/dist/launch.py): one process per GPU, gradients averaged over
        # NCCL in buckets that start during backward (scratch_nn.distributed); with cuda_graph
        # each rank captures its step, all-reduces included
        self.dist = dist if dist is not None and dist.world_size > 1 else None
        if self.dist is not None and backend != "cupy":
            raise ValueError("scratch data parallelism runs on backend cupy")
        if sync_bn and self.dist is None:
            raise ValueError("sync_bn synchronises BatchNorm across processes: it needs a data-parallel job")

        dtype = dtype or precision_dtype(precision)
        opts = {} if threads is None else {"threads": threads}
        if backend == "cupy":
            opts["precision"] = "fp32" if precision == "fp64" else precision
            if cuda_graph:
                opts["allocator"] = "pool"      # what a capture needs (scratch_nn/backends/gpu_allocator.py)
            if self.dist is not None:
                import cupy

                cupy.cuda.Device(self.dist.local_rank).use()     # every allocation on this rank's GPU
                opts["device"] = self.dist.local_rank
        elif precision in GPU_PRECISIONS:
            raise ValueError(f"precision {precision} is a GPU mode: use backend cupy (or fp32 / fp64 here)")
        if cuda_graph and backend != "cupy":
            raise ValueError("CUDA graphs need backend cupy")
        self.precision = precision
        self.be = backends.get(backend, **opts)
        self.net = models.build(model, backend=self.be, num_classes=num_classes, seed=seed, dtype=dtype)
        self.dtype = np.dtype(dtype)
        self.label_smoothing = label_smoothing
        spec = optimizer or OptimSpec()
        cls = {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW}[spec.name]
        self.opt = cls(param_groups(list(self.net.named_parameters()), spec), **optimizer_kwargs(spec))
        self.device_name = self.be.name
        # fp16 in the channel-major layout: half batches from the loader; the channels-last 16-bit
        # modes convert the float32 batch in their first kernel. fp16 scales the loss on the device.
        half_input = precision == "fp16" and getattr(self.be, "layout", None) == "cnhw"
        self.input_dtype = np.dtype(np.float16) if half_input else self.dtype
        self.scaler = None
        if precision == "fp16":
            from scratch_nn import amp

            self.scaler = amp.GradScaler(self.be)
        self.comm = self._rendezvous = self.reducer = None
        if self.dist is not None:
            self._join_job(sync_bn)
        self.graph = None
        if cuda_graph:
            from scratch_nn.cuda_graph import CapturedStep

            self.graph = CapturedStep(self.be, self.net, self.opt, self._eager_step)

    def _join_job(self, sync_bn):
        """Meet the other ranks (experiments/dist/rendezvous.py) and build the NCCL communicator from
        rank 0's id. Every rank builds its weights from the same seed, so all start equal."""
        from scratch_nn.backends.nccl import NcclComm
        from scratch_nn.distributed import GradReducer

        from ..dist.rendezvous import Rendezvous

        self._rendezvous = Rendezvous(self.dist)
        uid = self._rendezvous.share(NcclComm.new_id() if self.dist.is_main else None)
        self.comm = NcclComm(self.dist.world_size, self.dist.rank, uid)
        self._rendezvous.watch()
        self.reducer = GradReducer(self.net, self.opt.param_groups, self.be, self.comm)
        if sync_bn:
            self.be.sync_batchnorm(self.comm)

    def close(self):
        if self.comm is not None:
            self.be.synchronize()
            if self.graph is not None:    # before the communicator: NCCL waits for its graphs to go
                self.graph.release()
                self.graph = None
            self.comm.close()
            self.comm = None
        if self._rendezvous is not None:
            self._rendezvous.close()
            self._rendezvous = None

    @property
    def reads_are_free(self):
        """True where reading a scalar result costs no device sync (host arrays)."""
        return self.be.xp is np

    def to_device(self, x, y):
        """Host batch -> device arrays (the input in the compute dtype); device batches pass."""
        return self.be.asarray(x, self.input_dtype), self.be.asarray(y)

    def host(self, a):
        return np.asarray(self.be.to_host(a))

    def device_loader(self, loader):
        """The loader's data resident on the GPU (cupy backend), batches in the input dtype."""
        if self.be.name != "cupy":
            raise ValueError("device-resident data needs backend cupy")
        from .device_data import CupyBatchOps, DeviceBatchLoader

        return DeviceBatchLoader(loader, CupyBatchOps(self.be.xp, self.input_dtype))

    def set_lr(self, lr):
        self.opt.set_lr(lr)

    def train_step(self, x, y):
        self.net.train()
        if self.graph is not None:
            loss = self.graph(x, y)
            self._last_logits = self.graph.logits
            return loss
        loss, self._last_logits = self._eager_step(x, y)
        return loss

    def _eager_step(self, x, y):
        from scratch_nn import losses

        self.opt.zero_grad()
        logits = self.net.forward(x)
        loss, dlogits = losses.softmax_cross_entropy(logits, y, self.label_smoothing, backend=self.be,
                                                     scaler=self.scaler)
        self.net.backward(dlogits, input_grad=False)
        if self.reducer is not None:    # the global batch's mean gradient on every rank
            self.reducer.finish()
            loss = self.comm.allreduce_(loss, average=True)      # a fresh array each step: in place
        if self.scaler is not None:
            self.scaler.step(self.opt)
        else:
            self.opt.step()
        return loss, logits

    def peak_gpu_mem_mb(self):
        """High-water mark of the GPU memory this side's allocator holds (CuPy's pools keep
        what they have taken, so their size now is their peak), or None off the GPU."""
        if self.be.name != "cupy":
            return None
        from scratch_nn.backends import gpu_allocator

        return gpu_allocator.held_bytes(self.be.xp) / 2**20

    def last_batch_correct(self, y):
        """Correct predictions in the last (global) training batch (reads the device)."""
        correct = (self._last_logits.argmax(axis=1) == y).sum()
        if self.comm is not None:
            correct = self.comm.allreduce_(correct.astype(np.int64).reshape(1))
        return int(self.be.to_host(correct).sum())

    def predict(self, x):
        self.net.eval()
        return self.be.to_host(self.net.forward(x))

    def any_rank(self, flag):
        """True on every rank when `flag` is true on any (one process: the flag itself)."""
        if self.comm is None:
            return bool(flag)
        v = self.be.xp.asarray([int(bool(flag))], dtype=np.int32)
        return bool(int(self.be.to_host(self.comm.allreduce_(v)).item()))

    def step_clock(self):
        from .step_clock import HostClock, cupy_clock

        return HostClock() if self.be.xp is np else cupy_clock(self.be.xp)

    def synchronize(self):
        self.be.synchronize()

    def state_dict(self):
        return self.net.state_dict()

    def save_checkpoint(self, path):
        """Model, optimizer (step count, learning rates, momentum/Adam buffers), loss scaler and
        NumPy's global RNG state, as host arrays in one pickle."""
        import pickle

        obj = {"model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
               "scaler": self.scaler.state_dict() if self.scaler is not None else None,
               "rng": {"numpy": np.random.get_state()}}
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=4)

    def load_checkpoint(self, path):
        import pickle

        with open(path, "rb") as f:
            obj = pickle.load(f)
        self.net.load_state_dict(obj["model"])
        self.opt.load_state_dict(obj["optimizer"])
        if self.scaler is not None and obj["scaler"] is not None:
            self.scaler.load_state_dict(obj["scaler"])
        np.random.set_state(obj["rng"]["numpy"])

