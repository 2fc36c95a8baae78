"""Capture a whole training step (forward, loss, backward, optimizer) as one CUDA graph and
replay it: one launch per step instead of a few hundred, which is what a small model's step
is made of on a GPU.

    step = CapturedStep(backend, net, optimizer, step_fn, warmup=2)
    loss = step(x, y)       # eager for the first `warmup` calls, then capture once, then replay

`step_fn(x, y) -> (loss, logits)` is the eager step. The graph reads its inputs from static
buffers, so each call copies (x, y) there first (a device-to-device copy). What the Python
code would have done on the host during a step is done here instead: the optimizer's step
counter advances and its learning rate (and Adam's bias corrections) are written to the
device memory its update kernel reads (`Optimizer.push_hyper`), and BatchNorm's
num_batches_tracked counters advance.

Memory: capture runs on its own stream; CuPy's pool keeps freed blocks per stream, so the
graph's temporaries are never handed to code running on the default stream between replays.
So the backend must allocate from CuPy's pool (allocator="pool"), not CUDA's stream-ordered
one, whose allocations during capture would belong to the graph (backends/gpu_allocator.py).
"""
from .layers import BatchNorm2d


class CapturedStep:
    def __init__(self, backend, net, optimizer, step_fn, warmup=2):
        if backend.name != "cupy":
            raise ValueError("CUDA graphs need backend 'cupy'")
        backend.require_pool_allocator("capturing a training step as a CUDA graph")
        if warmup < 1:
            raise ValueError("capture needs at least one eager warm-up step (kernels compile, SGD's first "
                             "step differs from the rest)")
        self.be, self.net, self.opt, self.step_fn = backend, net, optimizer, step_fn
        self.warmup = warmup
        self.calls = 0
        self.graph = None
        self.static_x = self.static_y = None
        self.loss = self.logits = None
        cupy = backend.xp
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self._bns = [m for _, m in net.named_modules() if isinstance(m, BatchNorm2d)]

    def release(self):
        """Free the graph. NCCL's communicator destroy waits until every graph that captured its
        collectives is gone, so a data-parallel rank releases its graph first."""
        self.graph = None

    def _on_side_stream(self, fn):
        cupy = self.be.xp
        main = cupy.cuda.get_current_stream()
        self.stream.wait_event(main.record())
        # CuPy's pool even where another backend in this process has since installed the
        # stream-ordered one (the allocator is process-wide)
        with self.stream, cupy.cuda.using_allocator(cupy.get_default_memory_pool().malloc):
            out = fn()
        main.wait_event(self.stream.record())
        return out

    def _load(self, x, y):
        if self.static_x is None or self.static_x.shape != x.shape:
            if self.graph is not None:
                raise ValueError(f"a captured step replays one batch shape; got {tuple(x.shape)} after "
                                 f"{tuple(self.static_x.shape)} (use drop_last batches with --cuda-graph)")
            self.static_x = self.be.xp.empty_like(x)
            self.static_y = self.be.xp.empty_like(y)
        self.static_x[...] = x
        self.static_y[...] = y

    def __call__(self, x, y):
        self._load(x, y)
        self.calls += 1
        if self.graph is None and self.calls <= self.warmup:
            # eager, on the capture stream, so that its pool and cuBLAS state are primed there
            self.loss, self.logits = self._on_side_stream(lambda: self.step_fn(self.static_x, self.static_y))
            return self.loss
        if self.graph is None:
            self.opt.step_count += 1
            self.opt.push_hyper()      # written before capture: the capture must not record it
            self.opt.step_count -= 1   # step() inside the capture advances it again

            def capture():
                self.stream.begin_capture()
                try:
                    self.loss, self.logits = self.step_fn(self.static_x, self.static_y)
                finally:
                    graph = self.stream.end_capture()
                return graph
            self.graph = self._on_side_stream(capture)
            # capture recorded the step without running it, and counted it on the host: run it
        else:
            self.opt.step_count += 1
            for bn in self._bns:
                bn.num_batches_tracked += 1
            self.opt.push_hyper()
        self.graph.launch(self.be.xp.cuda.get_current_stream())
        return self.loss
