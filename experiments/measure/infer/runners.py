"""The inference benchmark's runners: one model on one target and engine, each with
to_device / setup (a callable running one forward) / sync / to_host / close, and the float64
torch reference every row is checked against."""
import contextlib
import os

import numpy as np

from ...train.adapters import set_torch_cuda_precision, set_torch_threads

class ScratchRunner:
    """A scratch_nn model in eval mode on one backend."""

    def __init__(self, cfg, state, seed):
        from scratch_nn import backends, models

        opts = {"threads": cfg.threads} if cfg.where == "numba" else {}
        if cfg.where == "cupy":
            opts["precision"] = cfg.precision
            if cfg.engine != "eager":
                opts["allocator"] = "pool"      # what a capture needs (scratch_nn/backends/gpu_allocator.py)
        self.be = backends.get(cfg.where, **opts)
        dtype = "float64" if cfg.precision == "fp64" else "float32"
        self.net = models.build(cfg.model, backend=self.be, seed=seed, dtype=dtype)
        self.net.load_state_dict(state)
        self.net.eval()
        # the channels-last 16-bit modes take the float32 batch (their first kernel converts it)
        half_input = cfg.precision == "fp16" and getattr(self.be, "layout", None) == "cnhw"
        self.input_dtype = np.dtype(np.float16) if half_input else np.dtype(dtype)
        if cfg.where == "cupy" and cfg.precision in ("fp16", "bf16"):
            # the half weight copies the GEMMs read (an optimizer would set them up); without
            # them every forward would cast each weight afresh
            self.be.pack_parameters(self.net.parameters())
        self.engine = cfg.engine
        self.graph = None

    def to_device(self, host):
        """The float32 batch copied as is, then converted where it lands (on the GPU for cupy)."""
        x = self.be.asarray(host)
        return x if x.dtype == self.input_dtype else x.astype(self.input_dtype)

    def sync(self):
        self.be.synchronize()

    def to_host(self, y):
        return np.asarray(self.be.to_host(y), dtype=np.float64)

    def setup(self, x):
        """A callable running one forward on the device batch `x` and returning its output."""
        if self.engine == "eager":
            return lambda: self.net.forward(x)
        return self._capture(x)

    def _capture(self, x, warmup=2):
        """Capture the eval forward on a side stream (as scratch_nn.cuda_graph.CapturedStep captures
        a training step): eager runs there first, so kernels compile and CuPy's pool and cuBLAS
        state are primed on that stream; the graph's temporaries stay in that stream's pool, so
        nothing on the default stream reuses them between replays."""
        cupy = self.be.xp
        self.be.require_pool_allocator("capturing the forward as a CUDA graph")
        self.graph = None
        stream = cupy.cuda.Stream(non_blocking=True)
        main = cupy.cuda.get_current_stream()
        static_x = x.copy()
        stream.wait_event(main.record())
        with stream, cupy.cuda.using_allocator(cupy.get_default_memory_pool().malloc):
            for _ in range(warmup):
                self.net.forward(static_x)
            stream.begin_capture()
            try:
                out = self.net.forward(static_x)
            finally:
                graph = stream.end_capture()
        main.wait_event(stream.record())
        self.graph, self._keep = graph, (stream, static_x, out)

        def replay():
            graph.launch(cupy.cuda.get_current_stream())
            return out
        return replay

    def close(self):
        self.graph = self._keep = None
        if self.be.name == "cupy":
            self.be.synchronize()


def torch_net(torch, model, state, dtype):
    import torch_impl

    net = torch_impl.models.build(model, dtype=dtype)
    net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    return net.eval()


class TorchRunner:
    """A torch_impl model in eval mode on the CPU or a GPU, eager, compiled or graphed."""

    def __init__(self, cfg, state, seed):
        import torch

        self.torch = torch
        self.cuda = cfg.where == "cuda"
        if self.cuda:
            set_torch_cuda_precision(cfg.precision)   # fp32: TF32 off; tf32: on; cudnn.benchmark
        else:
            set_torch_threads(cfg.threads)
        self.device = torch.device(cfg.where)
        self.dtype = torch.float64 if cfg.precision == "fp64" else torch.float32
        self.net = torch_net(torch, cfg.model, state, self.dtype).to(self.device)
        self.amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.precision)
        self.engine = cfg.engine

    def _context(self, grad_mode=None, cache=True):
        t = self.torch
        stack = contextlib.ExitStack()
        stack.enter_context(grad_mode() if grad_mode else t.inference_mode())
        if self.amp is not None:
            stack.enter_context(t.autocast("cuda", dtype=self.amp, cache_enabled=cache))
        return stack

    def to_device(self, host):
        return self.torch.from_numpy(host).to(self.device, self.dtype)

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def to_host(self, y):
        return y.detach().cpu().double().numpy()

    def setup(self, x):
        t = self.torch
        if self.engine == "cuda-graph":
            return self._capture(x)
        fn = self.net
        if self.engine == "compile":
            t._dynamo.reset()        # one static-shape compilation per batch size, no recompile limit
            fn = t.compile(self.net, dynamic=False)

        def forward():
            with self._context():
                return fn(x)
        return forward

    def _capture(self, x, warmup=3):
        """torch's recipe (CUDA graphs notes): warm up on a side stream, capture once, replay."""
        t = self.torch
        static_x = x.clone()
        s = t.cuda.Stream()
        s.wait_stream(t.cuda.current_stream())
        with t.cuda.stream(s):
            for _ in range(warmup):
                with self._context(t.no_grad, cache=False):
                    self.net(static_x)
        t.cuda.current_stream().wait_stream(s)
        graph = t.cuda.CUDAGraph()
        with t.cuda.graph(graph):
            with self._context(t.no_grad, cache=False):
                out = self.net(static_x)
        self._keep = (graph, static_x, out)

        def replay():
            graph.replay()
            return out
        return replay

    def close(self):
        self._keep = None
        if self.engine == "compile":
            self.torch._dynamo.reset()
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()


class OrtRunner:
    """torch_impl's model exported to ONNX, run by ONNX Runtime on the CPU."""

    engine = "onnxruntime"

    def __init__(self, cfg, state, seed):
        import tempfile
        import warnings

        import onnxruntime as ort
        import torch

        dtype = torch.float64 if cfg.precision == "fp64" else torch.float32
        self.np_dtype = np.float64 if cfg.precision == "fp64" else np.float32
        net = torch_net(torch, cfg.model, state, dtype)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{cfg.model}.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_onnx(torch, net, torch.zeros((1, 3, 32, 32), dtype=dtype), path)
            so = ort.SessionOptions()
            so.intra_op_num_threads = cfg.threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def to_device(self, host):
        return np.ascontiguousarray(host, dtype=self.np_dtype)

    def sync(self):
        pass

    def to_host(self, y):
        return np.asarray(y, dtype=np.float64)

    def setup(self, x):
        return lambda: self.sess.run(None, {"x": x})[0]

    def close(self):
        self.sess = None


def export_onnx(torch, net, example, path):
    """torch.onnx.export with a dynamic batch axis: the TorchScript exporter (needs onnx) where this
    torch has it, else the dynamo exporter (needs onnxscript)."""
    kw = dict(input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    try:
        torch.onnx.export(net, (example,), path, dynamo=False, **kw)
        return
    except TypeError:      # a torch without the dynamo= switch: the TorchScript exporter is the one
        torch.onnx.export(net, (example,), path, **kw)
        return
    except Exception as first:
        try:
            torch.onnx.export(net, (example,), path, dynamo=True, **kw)
        except Exception:
            raise first


def make_runner(cfg, state, seed):
    if cfg.engine == "onnxruntime":
        return OrtRunner(cfg, state, seed)
    return (ScratchRunner if cfg.impl == "scratch" else TorchRunner)(cfg, state, seed)


def reference_state(model, seed):
    """The one set of weights every row loads: scratch_nn's float32 initialisation from `seed`."""
    from scratch_nn import backends, models

    return models.build(model, backend=backends.reference("numpy"), seed=seed, dtype="float32").state_dict()


def reference_logits(model, state, x):
    """torch eager on the CPU in float64, the same weights: the correctness guard's yardstick."""
    import torch

    net = torch_net(torch, model, state, torch.float64)
    with torch.inference_mode():
        return net(torch.from_numpy(x.astype(np.float64))).numpy()
