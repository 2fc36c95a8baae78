"""The torch side of the training-step interface (experiments/train/adapters.py): the
torch_impl twin, loaded with the scratch model's initial weights, on the CPU or CUDA."""
import numpy as np

from .spec import GPU_PRECISIONS, OptimSpec, optimizer_kwargs, param_groups, precision_dtype


MEMORY_FORMATS = ("nchw", "channels-last")


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
                 dist=None, sync_bn=False, dist_timeout_s=300, memory_format="nchw",
                 compile=False):
        import torch

        import torch_impl

        self.torch = torch
        # data parallelism (experiments/dist/launch.py): one process per device, gradients averaged by
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
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory format {memory_format!r} is not one of: {', '.join(MEMORY_FORMATS)}")
        # channels-last: weights and every batch NHWC in memory, cuDNN's fastest layout for
        # tensor cores (what a PyTorch user who tunes for speed runs)
        self.memory_format = memory_format
        self._mf = torch.channels_last if memory_format == "channels-last" else torch.contiguous_format
        if memory_format == "channels-last":
            self.net.to(memory_format=torch.channels_last)
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
        if compile:
            if cuda_graph:
                raise ValueError("torch.compile and a captured step are two ways to cut launches: choose one")
            reason = compile_unavailable(device)
            if reason:
                raise ValueError(reason)
            # the training step calls the compiled module; evaluation (predict) and the state
            # dict use self.net itself, so eval mode never recompiles and checkpoints keep their keys
            self.model = torch.compile(self.model)
        self.compiled = bool(compile)
        # autocast: fp16 with GradScaler's loss scaling, bf16 without (its range is fp32's)
        self.amp = precision in ("fp16", "bf16")
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        spec = optimizer or OptimSpec()
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[spec.name]
        # A captured step reads its learning rate from device memory, so that a schedule can
        # change it between replays (a float lr is baked into the graph), and it must never read
        # a device value on the host. SGD takes a tensor lr only fused; Adam keeps its step count
        # on the host unless capturable (or fused); a captured fp16 step is fused, as GradScaler
        # then hands found_inf to the optimizer on the GPU instead of reading it.
        fused = {}
        if cuda_graph:
            fused = {"fused": True} if precision == "fp16" or spec.name == "sgd" else {"capturable": True}
        self.opt = cls(param_groups(list(self.net.named_parameters()), spec), **optimizer_kwargs(spec), **fused)
        self._lr_on_device = cuda_graph
        if cuda_graph:
            self._put_lr_on_device()
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.device_name = device
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.graph = None
        self._graph_calls = 0
        # eager steps before capture: DDP needs 11 (torch's CUDA graph notes), one process 3
        self._graph_warmup = 11 if self.dist is not None else 3
        self.use_graph = cuda_graph

    def to_device(self, x, y):
        t = self.torch
        if isinstance(x, t.Tensor):     # a device loader's batch
            return x.to(self.device, self.tdtype, memory_format=self._mf), y.to(self.device)
        return (t.from_numpy(np.ascontiguousarray(x)).to(self.device, self.tdtype, memory_format=self._mf),
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
            if self._lr_on_device:      # an asynchronous fill, ordered before the next replay
                g["lr"].fill_(lr)
            else:
                g["lr"] = lr

    def _put_lr_on_device(self):
        """Each parameter group's lr as a one-element float32 tensor on the device (what a
        captured step reads); also after a checkpoint load, which brings host values."""
        t = self.torch
        for g in self.opt.param_groups:
            g["lr"] = t.tensor(float(g["lr"]), dtype=t.float32, device=self.device)

    def _eager_step(self, x, y):
        t = self.torch
        self.opt.zero_grad(set_to_none=True)
        if x.dim() == 4 and self._mf is t.channels_last and not x.is_contiguous(memory_format=t.channels_last):
            x = x.contiguous(memory_format=t.channels_last)
        if self.amp:    # a capture must not keep autocast's cast weights (torch's CUDA graph notes)
            with t.autocast("cuda", dtype=self.amp_dtype, cache_enabled=not self.use_graph):
                logits = self.model(x)
                loss = self.loss_fn(logits, y)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                loss.backward()
                self.opt.step()
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
        if x.dim() == 4 and self._mf is self.torch.channels_last:
            x = x.contiguous(memory_format=self.torch.channels_last)
        with self.torch.no_grad(), self.torch.autocast("cuda", dtype=self.amp_dtype or self.torch.float16,
                                                       enabled=self.amp):
            return self.net(x).float().cpu().numpy()

    def step_clock(self):
        from .step_clock import HostClock, torch_clock

        return torch_clock(self.torch) if self.device.type == "cuda" else HostClock()

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
        if self._lr_on_device:
            self._put_lr_on_device()
        if self.scaler is not None and obj["scaler"] is not None:
            self.scaler.load_state_dict(obj["scaler"])
        t.set_rng_state(obj["rng"]["torch"])
        np.random.set_state(obj["rng"]["numpy"])
        if obj["rng"]["cuda"] is not None and self.device.type == "cuda":
            t.cuda.set_rng_state_all(obj["rng"]["cuda"])


def compile_unavailable(device):
    """Why torch.compile cannot run on `device` here (a sentence), or None. TorchInductor
    writes Triton kernels for CUDA and C++ for the CPU, so it needs Triton or a C++ compiler;
    without them torch.compile would fail only at the first step, deep in a traceback."""
    import shutil

    import torch

    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            return "torch.compile does not support this Python version"
    except Exception as e:     # a torch build without dynamo
        return f"torch.compile is not available in this torch build ({type(e).__name__}: {e})"
    if device == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "torch.compile on CUDA needs Triton (pip install triton), which this torch cannot import"
        return None
    try:
        from torch._inductor import cpp_builder

        cxx = cpp_builder.get_cpp_compiler()
    except Exception as e:
        return f"torch.compile on the CPU needs a C++ compiler, and none was found ({e})"
    if not shutil.which(cxx):
        return f"torch.compile on the CPU needs a C++ compiler: {cxx!r} is not on PATH (install g++)"
    return None


def set_torch_cuda_precision(precision):
    """fp32 is strict (no TF32 in matmuls or cuDNN convolutions); tf32 allows both; fp16 and
    bf16 run under autocast (the adapter). cuDNN autotunes its algorithms for the fixed shapes."""
    import torch

    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    major, minor = torch.cuda.get_device_capability()
    if precision in ("tf32", "bf16") and major < 8:
        raise ValueError(f"precision {precision} needs a GPU of compute capability 8.0 or newer (this one is "
                         f"{major}.{minor}); use fp32 or fp16")

