"""Thin adapters that give both implementations one training-step interface, so the trainer
and the benchmarks run the same loop on either side:

    m = make_adapter("scratch", model="cnn", backend="numpy", optimizer=OptimSpec(...), seed=0)
    xb, yb = m.to_device(x_host_float32, y_host_int64)
    loss = m.train_step(xb, yb)        # a lazy scalar: float(loss) only when logging
    logits = m.predict(xb)             # eval-mode forward, host numpy array
    m.synchronize()                    # wait for queued device work before reading a clock

Both sides start from the same weights: the torch twin loads the scratch model's state dict
built from `seed`, so "same initial weights" holds by construction.
"""
from dataclasses import dataclass, field

import numpy as np

IMPLS = ("scratch", "torch")
PRECISIONS = ("fp32", "fp64", "tf32", "fp16")
GPU_PRECISIONS = ("tf32", "fp16")   # modes that exist only on a GPU


def precision_dtype(precision):
    """The parameters' (master) dtype of a precision mode."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
    return "float64" if precision == "fp64" else "float32"


@dataclass
class OptimSpec:
    name: str = "sgd"                 # sgd | adam | adamw
    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    decay_norm_and_bias: bool = True  # False: no weight decay on BN parameters and biases
    betas: tuple = field(default=(0.9, 0.999))


def param_groups(named, spec):
    """Split (name, param) pairs into decay / no-decay groups the same way on both sides."""
    if spec.decay_norm_and_bias or not spec.weight_decay:
        return [{"params": [p for _, p in named]}]
    decay, no_decay = [], []
    for name, p in named:
        (no_decay if name.endswith("bias") or len(p.shape) == 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer_kwargs(spec):
    if spec.name == "sgd":
        return dict(lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=spec.weight_decay)
    if spec.name in ("adam", "adamw"):
        return dict(lr=spec.lr, betas=tuple(spec.betas), weight_decay=spec.weight_decay)
    raise ValueError(f"unknown optimizer {spec.name!r}; choose sgd, adam or adamw")


class ScratchAdapter:
    impl = "scratch"
    checkpoint_suffix = ".pkl"

    def __init__(self, model, backend="numpy", optimizer=None, seed=0, num_classes=10, dtype=None,
                 label_smoothing=0.0, threads=None, precision="fp32", cuda_graph=False, dist=None, sync_bn=False):
        from scratch_nn import backends, models, optim

        # data parallelism (experiments.launch): one process per GPU, gradients averaged over
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
        self.opt = cls(param_groups(list(self.net.named_parameters()), spec), **_optimizer_kwargs(spec))
        self.device_name = self.be.name
        # fp16: half activations from the first layer on; the loss is scaled on the device
        self.input_dtype = np.dtype(np.float16) if precision == "fp16" else self.dtype
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
        """Meet the other ranks (experiments.rendezvous) and build the NCCL communicator from
        rank 0's id. Every rank builds its weights from the same seed, so all start equal."""
        from scratch_nn.backends.nccl import NcclComm
        from scratch_nn.distributed import GradReducer

        from .rendezvous import Rendezvous

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
        """High-water mark of the GPU memory this side's allocator holds (CuPy's pool keeps
        what it has taken, so its size now is its peak), or None off the GPU."""
        if self.be.name != "cupy":
            return None
        return self.be.xp.get_default_memory_pool().total_bytes() / 2**20

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


def set_torch_threads(n):
    """Intra- and inter-op threads. torch accepts the inter-op count only before its first
    parallel work, once per process; a later call keeps the earlier setting."""
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:
        pass


class TorchAdapter:
    impl = "torch"
    checkpoint_suffix = ".pt"

    def __init__(self, model, device="cpu", optimizer=None, seed=0, num_classes=10, dtype=None,
                 label_smoothing=0.0, threads=None, initial_state=None, precision="fp32", cuda_graph=False,
                 dist=None, sync_bn=False, dist_timeout_s=300):
        import torch

        import torch_impl

        self.torch = torch
        # data parallelism (experiments.launch): one process per device, gradients averaged by
        # DistributedDataParallel (NCCL on GPUs, gloo on CPUs)
        self.dist = dist if dist is not None and dist.world_size > 1 else None
        dtype = dtype or precision_dtype(precision)
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda needs a CUDA GPU and a CUDA build of torch; none is visible here")
        if device != "cuda" and (precision in GPU_PRECISIONS or cuda_graph):
            raise ValueError(f"precision {precision} and CUDA graphs are GPU modes: use --device cuda")
        self.precision = precision
        if device == "cuda":
            set_torch_cuda_precision(precision)
        if threads is not None:
            set_torch_threads(threads)
        self.device = torch.device(device)
        if self.dist is not None and device == "cuda":
            torch.cuda.set_device(self.dist.local_rank)
            self.device = torch.device("cuda", self.dist.local_rank)
        # the stream a captured step warms up and captures on
        self._side = torch.cuda.Stream(self.device) if cuda_graph else None
        self.tdtype = getattr(torch, dtype)
        self.net = torch_impl.models.build(model, num_classes=num_classes, dtype=self.tdtype)
        if initial_state is None:
            from scratch_nn import backends, models

            # the reference kernels: a NumpyBackend here would pin BLAS to one thread process-wide
            initial_state = models.build(model, backend=backends.reference("numpy"), num_classes=num_classes,
                                         seed=seed, dtype=dtype).state_dict()
        self.net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in initial_state.items()})
        self.net.to(self.device)
        self.model = self.net       # what a step calls: the network, or its DDP wrapper
        if self.dist is not None:
            import datetime

            import torch.distributed as td

            td.init_process_group("nccl" if device == "cuda" else "gloo", init_method="env://",
                                  rank=self.dist.rank, world_size=self.dist.world_size,
                                  timeout=datetime.timedelta(seconds=dist_timeout_s))
            if sync_bn:     # same parameters and buffers, so state dicts stay interchangeable
                self.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
            # broadcast_buffers=False: each GPU keeps its own BatchNorm running statistics, as
            # the scratch side does (torch's default re-sends rank 0's before every forward);
            # gradients as views into DDP's buckets, as the scratch side's flat arena, no copies.
            # A captured DDP step (torch's CUDA graph notes) needs DDP built on the side stream
            # that warms up and captures.
            with torch.cuda.stream(self._side):
                self.model = torch.nn.parallel.DistributedDataParallel(
                    self.net, device_ids=[self.dist.local_rank] if device == "cuda" else None,
                    broadcast_buffers=False, gradient_as_bucket_view=True)
        self.amp = precision == "fp16"
        spec = optimizer or OptimSpec()
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[spec.name]
        # a captured fp16 step takes the fused optimizer: GradScaler hands it found_inf on the
        # GPU, where the other optimizers make GradScaler read it on the host (a capture error)
        fused = {"fused": True} if cuda_graph and self.amp else {}
        self.opt = cls(param_groups(list(self.net.named_parameters()), spec), **_optimizer_kwargs(spec), **fused)
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.device_name = device
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.graph = None
        self._graph_calls = 0
        # eager steps before capture: DDP needs 11 (torch's CUDA graph notes), one process 3
        self._graph_warmup = 11 if self.dist is not None else 3
        self.use_graph = cuda_graph

    def to_device(self, x, y):
        t = self.torch
        if isinstance(x, t.Tensor):     # a device loader's batch
            return x.to(self.device, self.tdtype), y.to(self.device)
        return (t.from_numpy(np.ascontiguousarray(x)).to(self.device, self.tdtype),
                t.from_numpy(np.ascontiguousarray(y)).to(self.device))

    def host(self, a):
        return a.cpu().numpy() if isinstance(a, self.torch.Tensor) else np.asarray(a)

    def device_loader(self, loader):
        """The loader's data resident on this device, augmented there with torch ops."""
        from .device_data import DeviceBatchLoader, TorchBatchOps

        return DeviceBatchLoader(loader, TorchBatchOps(self.torch, self.device, self.tdtype))

    @property
    def reads_are_free(self):
        return self.device.type == "cpu"

    def set_lr(self, lr):
        for g in self.opt.param_groups:
            g["lr"] = lr

    def _eager_step(self, x, y):
        t = self.torch
        self.opt.zero_grad(set_to_none=True)
        if self.amp:    # a capture must not keep autocast's cast weights (torch's CUDA graph notes)
            with t.autocast("cuda", dtype=t.float16, cache_enabled=not self.use_graph):
                logits = self.model(x)
                loss = self.loss_fn(logits, y)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            logits = self.model(x)
            loss = self.loss_fn(logits, y)
            loss.backward()
            self.opt.step()
        loss = loss.detach()
        if self.dist is not None:       # the global batch's loss: the mean of the ranks' means
            self.torch.distributed.all_reduce(loss)
            loss /= self.dist.world_size
        return loss, logits.detach()

    def train_step(self, x, y):
        self.net.train()
        if not self.use_graph:
            loss, self._last_logits = self._eager_step(x, y)
            return loss
        return self._graph_step(x, y)

    def _graph_step(self, x, y):
        """torch's whole-network capture (CUDA graph notes): warm up on a side stream, capture
        the eager step (forward, backward, DDP's all-reduces, GradScaler and optimizer) once,
        then copy inputs in and replay."""
        t = self.torch
        if self.graph is not None:
            if [g["lr"] for g in self.opt.param_groups] != self._graph_lr:
                raise ValueError("torch with --cuda-graph replays the learning rate it captured; use a "
                                 "constant schedule (the scratch side follows any schedule)")
            self.static_x.copy_(x)
            self.static_y.copy_(y)
            self.graph.replay()
            return self.static_loss
        if self._graph_calls == 0:
            self.static_x, self.static_y = x.clone(), y.clone()
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self._graph_calls += 1
        s = self._side
        s.wait_stream(t.cuda.current_stream())
        with t.cuda.stream(s):
            if self._graph_calls <= self._graph_warmup:
                loss, self._last_logits = self._eager_step(self.static_x, self.static_y)
            else:
                graph = t.cuda.CUDAGraph()
                with t.cuda.graph(graph, stream=s):
                    self.static_loss, self._last_logits = self._eager_step(self.static_x, self.static_y)
                self.graph = graph
                self._graph_lr = [g["lr"] for g in self.opt.param_groups]
        t.cuda.current_stream().wait_stream(s)
        if self.graph is None:
            return loss
        self.graph.replay()      # capture recorded the step without running it
        return self.static_loss

    def peak_gpu_mem_mb(self):
        """High-water mark of the memory torch's caching allocator reserved, or None on CPU."""
        if self.device.type != "cuda":
            return None
        return self.torch.cuda.max_memory_reserved(self.device) / 2**20

    def last_batch_correct(self, y):
        """Correct predictions in the last global batch (every rank's share)."""
        correct = (self._last_logits.argmax(dim=1) == y).sum()
        if self.dist is not None:
            self.torch.distributed.all_reduce(correct)
        return int(correct)

    def any_rank(self, flag):
        """True on every rank when `flag` is true on any (a collective: every rank must ask)."""
        if self.dist is None:
            return bool(flag)
        t = self.torch
        v = t.tensor([1 if flag else 0], dtype=t.int32, device=self.device)
        t.distributed.all_reduce(v, op=t.distributed.ReduceOp.MAX)
        return bool(v.item())

    def close(self):
        """Leave the job together: a rank that left while rank 0 still evaluates would close
        its connections under rank 0 (gloo aborts the process on a lost peer)."""
        td = self.torch.distributed
        if self.dist is not None and td.is_initialized():
            try:
                td.barrier()
            finally:
                if self.graph is not None:    # NCCL's teardown waits for graphs that captured its collectives
                    self.torch.cuda.synchronize()
                    self.graph.reset()
                    self.graph = None
                td.destroy_process_group()

    def predict(self, x):
        self.net.eval()
        with self.torch.no_grad(), self.torch.autocast("cuda", dtype=self.torch.float16, enabled=self.amp):
            return self.net(x).float().cpu().numpy()

    def synchronize(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def state_dict(self):
        return {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}

    def save_checkpoint(self, path):
        t = self.torch
        obj = {"model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
               "scaler": self.scaler.state_dict() if self.scaler is not None else None,
               "rng": {"torch": t.get_rng_state(), "numpy": np.random.get_state(),
                       "cuda": t.cuda.get_rng_state_all() if self.device.type == "cuda" else None}}
        t.save(obj, path)

    def load_checkpoint(self, path):
        t = self.torch
        obj = t.load(path, map_location="cpu", weights_only=False)
        self.net.load_state_dict(obj["model"])
        self.opt.load_state_dict(obj["optimizer"])
        if self.scaler is not None and obj["scaler"] is not None:
            self.scaler.load_state_dict(obj["scaler"])
        t.set_rng_state(obj["rng"]["torch"])
        np.random.set_state(obj["rng"]["numpy"])
        if obj["rng"]["cuda"] is not None and self.device.type == "cuda":
            t.cuda.set_rng_state_all(obj["rng"]["cuda"])


def set_torch_cuda_precision(precision):
    """fp32 is strict (no TF32 in matmuls or cuDNN convolutions); tf32 allows both; fp16 runs
    under autocast (the adapter). cuDNN autotunes its algorithms for the fixed shapes."""
    import torch

    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    if tf32 and torch.cuda.get_device_capability()[0] < 8:
        raise ValueError("precision tf32 needs a GPU of compute capability 8.0 or newer; use fp32 or fp16")


def make_adapter(impl, **kw):
    if impl == "scratch":
        kw.pop("device", None)
        kw.pop("initial_state", None)
        return ScratchAdapter(**kw)
    if impl == "torch":
        kw.pop("backend", None)
        return TorchAdapter(**kw)
    raise ValueError(f"unknown implementation {impl!r}; choose one of {', '.join(IMPLS)}")
