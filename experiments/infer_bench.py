"""Inference benchmark: forward passes of both models, scratch and torch, on every backend and
device this machine has, over batch sizes, precisions and optimised engines.

    python -m experiments.infer_bench                                   # everything this machine can run
    python -m experiments.infer_bench --models cnn --batch-sizes 1,8,64 --iters 20
    python -m experiments.infer_bench --impls torch --devices cuda --precisions fp16,bf16 --engines eager,cuda-graph
    python -m experiments.infer_bench --plot-only results/infer/infer.csv      # redraw the charts

A row is one (impl, backend_or_device, engine, model, precision, batch_size, threads):

- impl `scratch`: backend `numpy` (the single-core reference, threads 1), `numba` (threads =
  --threads, default every core), `cupy` (GPU). impl `torch`: device `cpu` (--threads) and `cuda`.
- engines: `eager` everywhere; `compile` (torch.compile, default mode, static shapes, compiled
  afresh for each batch size; torch on cpu and cuda); `cuda-graph` (torch: the eval forward
  captured with torch.cuda.CUDAGraph; scratch cupy: the eval forward captured on a side stream
  as scratch_nn/cuda_graph.py captures a training step, then replayed; eval mode keeps no
  caches, so a replay is the whole forward); `onnxruntime` (torch's model exported with
  torch.onnx, run by ONNX Runtime's CPU provider with --threads intra-op threads; only where
  `import onnxruntime` and the exporter work).
- precisions. CPU: `fp64`, `fp32` (scratch builds the model in float64 / float32, torch uses
  .double() / .float()). GPU: `fp32` (strict: TF32 off), `tf32` (TF32 GEMMs and convolutions,
  compute capability 8.0+), `fp16` and `bf16`. torch runs fp16/bf16 as the training study does:
  float32 weights under torch.autocast (bf16 needs compute capability 8.0+); scratch cupy runs
  fp16 as its mixed-precision mode (half activations and GEMM operands, fp32 accumulation, half
  weight copies) and has no bf16 mode.

What cannot run here (no GPU, CuPy or numba missing, tf32/bf16 below sm_80, scratch bf16,
onnxruntime absent, torch.compile or a capture failing) is not dropped: it is written with
status `skipped` (cannot run on this machine) or `failed` (tried, and it raised or gave wrong
outputs) and a reason, and the bench goes on. The default selection is everything this machine
can run; GPU rows only when a GPU is visible (said once in the output); ask for GPU targets or
onnxruntime explicitly to get their `skipped` rows on a machine without them.

All models load one set of weights: the scratch model built from --seed in float32, its state
dict loaded on every side (cast to float64 for fp64), so every row computes the same function.
Correctness guard: every row compares its output on the first 8 images of its batch with torch
eager on the CPU in float64 (the same weights, the same images) and records the largest absolute
difference; a row further than its precision's tolerance (relative to the largest reference
logit: fp64 1e-9, fp32 1e-3, tf32 2e-2, fp16 5e-2, bf16 1e-1) is `failed` and not timed.

Timing. The inputs are random float32 images from --seed. Each measured iteration is one forward
of one batch already on the device, followed by a synchronisation (CuPy: stream synchronize;
torch: torch.cuda.synchronize); its wall time is one latency. --warmup iterations run first, not
timed (compilation, cuDNN autotuning, memory pools; for `compile` at least one, which compiles;
graph capture happens before them). Measured iterations stop after --iters, or once --max-time
seconds have been spent measuring (at least 3 iterations); warm-up stops early after --max-time
too (at least 2 iterations, or --warmup if fewer). images/s = batch * iterations / the sum of the
measured latencies. On a GPU the host-to-device copy of the float32 batch (pageable memory), with
its conversion to the compute dtype on the device (scratch fp16: to half; torch converts inside
autocast instead), is timed apart in its own loop, synchronised, as many iterations as were
measured: h2d_ms_p50; it is not in the latencies.

Results CSV (default results/infer/infer.csv, appended; one row per configuration and batch size):

  run_id              one invocation (start time, process id, a random tag); joins with the latencies CSV
  machine             GPU name for GPU rows, CPU model for CPU rows
  impl                scratch | torch
  backend_or_device   numpy | numba | cupy (scratch); cpu | cuda (torch)
  engine              eager | compile | cuda-graph | onnxruntime
  model               cnn | resnet18
  precision           fp64 | fp32 | tf32 | fp16 | bf16
  batch_size
  threads             CPU threads (numpy 1); empty for GPU rows
  warmup              warm-up iterations run
  warmup_s            seconds of the warm-up, engine setup (compilation, capture) included
  iters               measured iterations (fewer than --iters when --max-time cut them short)
  latency_ms_p50, latency_ms_p90, latency_ms_p99, latency_ms_mean    per-iteration forward latency
  images_per_s        batch_size * iters / total measured time
  h2d_ms_p50          median host-to-device copy + conversion of the batch; empty on the CPU
  max_abs_diff_vs_torch   max |logits - torch fp64 CPU logits| over the first 8 images of the batch
  status              ok | skipped | failed
  reason              why skipped or failed; empty when ok
  date                YYYY-MM-DD

Latencies CSV beside it (<csv stem>_latencies.csv, appended, long format, for the box plots):
run_id, impl, backend_or_device, engine, model, precision, batch_size, threads, iteration,
latency_ms, h2d_ms (h2d_ms empty on the CPU).

Charts (PNG, in --plots, default beside the CSV; experiments/infer_plots.py): latency box plots
per model at two batch sizes, throughput bars, images/s against batch size, and GPU-over-CPU
speed-up (only when GPU rows exist).
"""
import argparse
import contextlib
import csv
import datetime
import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

MODELS = ("cnn", "resnet18")
IMPLS = ("scratch", "torch")
BACKENDS = ("numpy", "numba", "cupy")
DEVICES = ("cpu", "cuda")
ENGINES = ("eager", "compile", "cuda-graph", "onnxruntime")
ENGINE_ALIASES = {"torch.compile": "compile", "cudagraph": "cuda-graph", "ort": "onnxruntime"}
PRECISIONS = ("fp64", "fp32", "tf32", "fp16", "bf16")
CPU_PRECISIONS = ("fp64", "fp32")
GPU_PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
SM80_PRECISIONS = ("tf32", "bf16")
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_CSV = os.path.join("results", "infer", "infer.csv")
CHECK_IMAGES = 8
TOLERANCE = {"fp64": 1e-9, "fp32": 1e-3, "tf32": 2e-2, "fp16": 5e-2, "bf16": 1e-1}
MIN_ITERS = 3
MIN_WARMUP = 2

COLUMNS = ["run_id", "machine", "impl", "backend_or_device", "engine", "model", "precision", "batch_size",
           "threads", "warmup", "warmup_s", "iters", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99",
           "latency_ms_mean", "images_per_s", "h2d_ms_p50", "max_abs_diff_vs_torch", "status", "reason", "date"]
KEY_COLUMNS = ["impl", "backend_or_device", "engine", "model", "precision", "batch_size", "threads"]
LATENCY_COLUMNS = ["run_id", *KEY_COLUMNS, "iteration", "latency_ms", "h2d_ms"]


def latencies_path(csv_path):
    return os.path.splitext(csv_path)[0] + "_latencies.csv"


# ---------------------------------------------------------------------------------- arguments
def _cores():
    from scratch_nn.backends.threads import usable_cores

    return usable_cores()


def _split(ap, text, allowed, flag, aliases=None):
    items = []
    for s in (t.strip() for t in text.split(",")):
        if s:
            s = (aliases or {}).get(s, s)
            if s not in items:
                items.append(s)
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        ap.error(f"{flag}: unknown {', '.join(bad) or 'empty list'}; choose from {', '.join(allowed)}")
    return items


def _ints(ap, text, flag, example):
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        ap.error(f"{flag}: give comma-separated whole numbers, e.g. {example}")
    if not values or min(values) < 1:
        ap.error(f"{flag}: give whole numbers of at least 1, e.g. {example}")
    return sorted(set(values))


def parse_args(argv=None):
    cores = _cores()
    ap = argparse.ArgumentParser(prog="python -m experiments.infer_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: cnn,resnet18 (default both)")
    ap.add_argument("--impls", default=None, help="comma-separated: scratch,torch (default both; torch if installed)")
    ap.add_argument("--backends", default=None,
                    help="scratch backends, comma-separated: numpy,numba,cupy (default: those that run here)")
    ap.add_argument("--devices", default=None, help="torch devices, comma-separated: cpu,cuda (default: cuda if a "
                                                    "GPU is visible, and cpu)")
    ap.add_argument("--engines", default=None,
                    help="comma-separated: eager,compile (torch.compile),cuda-graph,onnxruntime (default: those "
                         "that can run here)")
    ap.add_argument("--precisions", default=",".join(PRECISIONS),
                    help="comma-separated: fp64,fp32 (CPU), fp32,tf32,fp16,bf16 (GPU); each target takes the "
                         "ones it has (default all)")
    ap.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)),
                    help="comma-separated (default 1,2,4,...,256)")
    ap.add_argument("--threads", default=None,
                    help=f"CPU threads for numba, torch cpu and onnxruntime, comma-separated for several "
                         f"(default all {cores} cores here); numpy always runs 1")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up iterations per row, not timed (default 10)")
    ap.add_argument("--iters", type=int, default=50, help="measured iterations per row (default 50)")
    ap.add_argument("--max-time", type=float, default=10.0,
                    help="seconds per row for the measured iterations (and again for the warm-up): stop early "
                         f"after that, at least {MIN_ITERS} iterations (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="weights and input images (default 0)")
    ap.add_argument("--csv", default=DEFAULT_CSV, help=f"results CSV, appended (default {DEFAULT_CSV}); the "
                                                       "latencies go to <stem>_latencies.csv beside it")
    ap.add_argument("--plots", default=None, help="folder for the PNG charts (default: the CSV's folder)")
    ap.add_argument("--no-plots", action="store_true", help="write no charts")
    ap.add_argument("--plot-only", metavar="CSV", default=None,
                    help="draw the charts from an existing results CSV (and its latencies CSV) and exit")
    a = ap.parse_args(argv)
    if a.plot_only is not None:
        if not os.path.isfile(a.plot_only):
            ap.error(f"--plot-only: no such file {a.plot_only}")
        return a
    a.models = _split(ap, a.models, MODELS, "--models")
    a.impls_given = a.impls is not None
    a.impls = _split(ap, a.impls or ",".join(IMPLS), IMPLS, "--impls")
    a.backends_given = a.backends is not None
    a.backends = _split(ap, a.backends or ",".join(BACKENDS), BACKENDS, "--backends")
    a.devices_given = a.devices is not None
    a.devices = _split(ap, a.devices or ",".join(DEVICES), DEVICES, "--devices")
    a.engines_given = a.engines is not None
    a.engines = _split(ap, a.engines or ",".join(ENGINES), ENGINES, "--engines", ENGINE_ALIASES)
    a.precisions = _split(ap, a.precisions, PRECISIONS, "--precisions")
    a.batch_sizes = _ints(ap, a.batch_sizes, "--batch-sizes", "1,8,64")
    a.threads = _ints(ap, a.threads, "--threads", "1,2") if a.threads else [cores]
    over = [t for t in a.threads if t > cores]
    if over:
        ap.error(f"--threads {','.join(map(str, over))}: this machine lets the process use {cores} cores; "
                 f"choose from 1 to {cores}")
    if a.warmup < 0:
        ap.error("--warmup must be 0 or more")
    if a.iters < 1:
        ap.error("--iters must be at least 1")
    if not a.max_time > 0:
        ap.error("--max-time must be a positive number of seconds")
    a.ap = ap
    return a


# ------------------------------------------------------------------------ what can run here
@dataclass
class Config:
    model: str
    impl: str
    where: str          # scratch backend or torch device
    engine: str
    precision: str
    threads: Optional[int]

    @property
    def gpu(self):
        return self.where in ("cupy", "cuda")


def engines_for(impl, where):
    if impl == "scratch":
        return ("eager", "cuda-graph") if where == "cupy" else ("eager",)
    return ("eager", "compile", "cuda-graph") if where == "cuda" else ("eager", "compile", "onnxruntime")


def precisions_for(where):
    return GPU_PRECISIONS if where in ("cupy", "cuda") else CPU_PRECISIONS


class Probe:
    """What this machine has, each asked once: a reason string where something is missing."""

    def __init__(self):
        self.torch = None if importlib.util.find_spec("torch") else \
            "torch is not installed (pip install -e '.[torch]')"
        self.numba = None if importlib.util.find_spec("numba") else "numba is not installed (pip install numba)"
        self._cuda = self._cupy = self._ort = self._cc = False   # False: not asked yet

    @property
    def cuda(self):
        """Reason torch cannot use a GPU, or None."""
        if self._cuda is False:
            if self.torch:
                self._cuda = self.torch
            else:
                import torch

                self._cuda = None if torch.cuda.is_available() else "no CUDA GPU is visible to torch here"
        return self._cuda

    @property
    def cupy(self):
        """Reason the cupy backend cannot run, or None."""
        if self._cupy is False:
            try:
                from scratch_nn import backends

                backends.get("cupy")
                self._cupy = None
            except Exception as e:   # BackendUnavailable, or CuPy failing to start
                self._cupy = _short(e)
        return self._cupy

    @property
    def gpu(self):
        return self.cuda is None or self.cupy is None

    @property
    def compute_capability(self):
        if self._cc is False:
            self._cc = None
            if self.cuda is None:
                import torch

                self._cc = tuple(torch.cuda.get_device_capability())
            elif self.cupy is None:
                from scratch_nn.backends.cupy_backend import compute_capability
                import cupy

                self._cc = compute_capability(cupy)
        return self._cc

    @property
    def ort(self):
        """Reason ONNX Runtime rows cannot run, or None."""
        if self._ort is False:
            if self.torch:
                self._ort = self.torch
            elif not _importable("onnxruntime"):
                self._ort = "onnxruntime is not installed (pip install onnxruntime)"
            elif not (_importable("onnx") or _importable("onnxscript")):
                self._ort = "torch.onnx.export needs the onnx package (pip install onnx)"
            else:
                self._ort = None
        return self._ort


def _importable(name):
    try:
        __import__(name)
        return True
    except Exception:   # ImportError, or a broken install failing on import
        return False


def why_not(cfg, probe):
    """Why `cfg` cannot run on this machine (a `skipped` reason), or None."""
    if cfg.impl == "torch" and probe.torch:
        return probe.torch
    if cfg.where == "numba" and probe.numba:
        return probe.numba
    if cfg.where == "cuda" and probe.cuda:
        return probe.cuda
    if cfg.where == "cupy":
        if cfg.precision == "bf16":
            return "scratch_nn has no bf16 mode (cupy backend: fp32, tf32, fp16)"
        if probe.cupy:
            return probe.cupy
    if cfg.gpu and cfg.precision in SM80_PRECISIONS:
        cc = probe.compute_capability
        if cc is not None and cc[0] < 8:
            return f"{cfg.precision} needs compute capability 8.0+ (Ampere or newer); this GPU is {cc[0]}.{cc[1]}"
    if cfg.engine == "onnxruntime":
        if probe.ort:
            return probe.ort
        if cfg.precision == "fp64":
            return "ONNX Runtime's CPU provider has no float64 convolution"
    return None


def configurations(args, probe, log=print):
    """Every configuration the flags select, in run order, with notes on what the defaults left out."""
    impls = list(args.impls)
    if not args.impls_given and "torch" in impls and probe.torch:
        impls.remove("torch")
        log(f"note: {probe.torch}: no torch rows, and no correctness guard")
    gpu = probe.gpu
    backends_ = [b for b in args.backends if args.backends_given or
                 (b != "cupy" or gpu) and (b != "numba" or not probe.numba)]
    devices = [d for d in args.devices if args.devices_given or d != "cuda" or gpu]
    engines = list(args.engines)
    if not args.engines_given:
        if "onnxruntime" in engines and "torch" in impls and "cpu" in devices and probe.ort:
            log(f"note: {probe.ort}: no onnxruntime rows")
            engines.remove("onnxruntime")
        if not gpu:
            engines = [e for e in engines if e != "cuda-graph"]
    if not gpu and not (args.backends_given and "cupy" in args.backends) and \
            not (args.devices_given and "cuda" in args.devices):
        log("note: no GPU is visible here: CPU rows only (ask for --backends cupy / --devices cuda to record "
            "them as skipped)")
    targets = [("scratch", b) for b in backends_ if "scratch" in impls] + \
              [("torch", d) for d in devices if "torch" in impls]
    out = []
    for model in args.models:
        for impl, where in targets:
            for precision in (p for p in args.precisions if p in precisions_for(where)):
                for engine in (e for e in engines if e in engines_for(impl, where)):
                    if where in ("cupy", "cuda"):
                        threads = [None]
                    elif where == "numpy":
                        threads = [1]
                    else:
                        threads = args.threads
                    out += [Config(model, impl, where, engine, precision, t) for t in threads]
    return out


# -------------------------------------------------------------------------------- runners
def _short(e, limit=240):
    text = " ".join(str(e).split()) or type(e).__name__
    text = f"{type(e).__name__}: {text}" if not isinstance(e, (RuntimeError, ValueError)) else text
    return text if len(text) <= limit else text[:limit - 3] + "..."


class ScratchRunner:
    """A scratch_nn model in eval mode on one backend."""

    def __init__(self, cfg, state, seed):
        from scratch_nn import backends, models

        opts = {"threads": cfg.threads} if cfg.where == "numba" else {}
        if cfg.where == "cupy":
            opts["precision"] = cfg.precision
        self.be = backends.get(cfg.where, **opts)
        dtype = "float64" if cfg.precision == "fp64" else "float32"
        self.net = models.build(cfg.model, backend=self.be, seed=seed, dtype=dtype)
        self.net.load_state_dict(state)
        self.net.eval()
        self.input_dtype = np.dtype(np.float16) if cfg.precision == "fp16" else np.dtype(dtype)
        if cfg.where == "cupy" and cfg.precision == "fp16":
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
        self.graph = None
        stream = cupy.cuda.Stream(non_blocking=True)
        main = cupy.cuda.get_current_stream()
        static_x = x.copy()
        stream.wait_event(main.record())
        with stream:
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


def _torch_net(torch, model, state, dtype):
    import torch_impl

    net = torch_impl.models.build(model, dtype=dtype)
    net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    return net.eval()


class TorchRunner:
    """A torch_impl model in eval mode on the CPU or a GPU, eager, compiled or graphed."""

    def __init__(self, cfg, state, seed):
        import torch

        from .adapters import set_torch_cuda_precision, set_torch_threads

        self.torch = torch
        self.cuda = cfg.where == "cuda"
        if self.cuda:
            set_torch_cuda_precision(cfg.precision)   # fp32: TF32 off; tf32: on; cudnn.benchmark
        else:
            set_torch_threads(cfg.threads)
        self.device = torch.device(cfg.where)
        self.dtype = torch.float64 if cfg.precision == "fp64" else torch.float32
        self.net = _torch_net(torch, cfg.model, state, self.dtype).to(self.device)
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
        net = _torch_net(torch, cfg.model, state, dtype)
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


# ------------------------------------------------------------------------------- measuring
def reference_state(model, seed):
    """The one set of weights every row loads: scratch_nn's float32 initialisation from `seed`."""
    from scratch_nn import backends, models

    return models.build(model, backend=backends.reference("numpy"), seed=seed, dtype="float32").state_dict()


def reference_logits(model, state, x):
    """torch eager on the CPU in float64, the same weights: the correctness guard's yardstick."""
    import torch

    net = _torch_net(torch, model, state, torch.float64)
    with torch.inference_mode():
        return net(torch.from_numpy(x.astype(np.float64))).numpy()


def percentiles(lat_s):
    ms = np.asarray(lat_s) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return dict(latency_ms_p50=p50, latency_ms_p90=p90, latency_ms_p99=p99, latency_ms_mean=float(ms.mean()))


def measure(runner, host_x, args, gpu, ref=None, tolerance=None, step=None):
    """Warm up, check the output, time the forward (and the copy in, on a GPU). Returns a dict
    of row fields plus 'latencies' and 'h2d' (seconds per iteration)."""
    t_setup = time.perf_counter()
    x = runner.to_device(host_x)
    runner.sync()
    step = runner.setup(x)
    warm_min = min(args.warmup, MIN_WARMUP)
    if runner.engine == "compile":
        warm_min = max(warm_min, 1)
    n_warm = 0
    t0 = time.perf_counter()
    while n_warm < max(args.warmup, warm_min):
        step()
        runner.sync()
        n_warm += 1
        if n_warm >= warm_min and time.perf_counter() - t0 > args.max_time:
            break
    warmup_s = time.perf_counter() - t_setup
    out = dict(warmup=n_warm, warmup_s=warmup_s, diff=None, latencies=[], h2d=[])
    y = step()
    runner.sync()
    if ref is not None:
        k = min(len(host_x), len(ref))
        got = runner.to_host(y)[:k]
        diff = float(np.max(np.abs(got - ref[:k]))) if np.all(np.isfinite(got)) else float("inf")
        out["diff"] = diff
        tol = tolerance * max(float(np.max(np.abs(ref[:k]))), 1e-30)
        if not diff <= tol:
            out["error"] = (f"output check failed: max |logits - torch fp64| = {diff:.3g} > {tol:.3g} "
                            f"({tolerance:g} of the largest logit)")
            return out
    lat = []
    min_iters = min(MIN_ITERS, args.iters)
    t_start = time.perf_counter()
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        runner.sync()
        lat.append(time.perf_counter() - t0)
        if len(lat) >= min_iters and time.perf_counter() - t_start > args.max_time:
            break
    out["latencies"] = lat
    if gpu:
        h2d = []
        for i in range(len(lat) + 2):      # two untimed copies first (pinned staging, pool growth)
            runner.sync()
            t0 = time.perf_counter()
            runner.to_device(host_x)
            runner.sync()
            if i >= 2:
                h2d.append(time.perf_counter() - t0)
        out["h2d"] = h2d
    return out


# ---------------------------------------------------------------------------------- output
class CsvMismatch(ValueError):
    """An existing CSV has other columns than this benchmark writes."""


class CsvSink:
    """Appends rows to a CSV, writing the header into a new or empty file; refuses a file whose
    header differs (a column change would shift every later row)."""

    def __init__(self, path, columns):
        self.path, self.columns = path, columns
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path, newline="") as f:
                head = next(csv.reader(f), [])
            if head != columns:
                raise CsvMismatch(f"{path} has other columns ({', '.join(head[:6])}...) than this benchmark "
                                 f"writes; give another --csv")

    def start(self):
        """Write the header into a new or empty file."""
        self.write([])

    def write(self, rows):
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            if new:
                w.writeheader()
            for r in rows:
                w.writerow({c: r.get(c, "") for c in self.columns})


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def make_row(cfg, batch, base, machine, status, reason="", result=None):
    row = dict(base, machine=machine, impl=cfg.impl, backend_or_device=cfg.where, engine=cfg.engine,
               model=cfg.model, precision=cfg.precision, batch_size=batch,
               threads="" if cfg.threads is None else cfg.threads, status=status, reason=reason)
    if result:
        row.update(warmup=result["warmup"], warmup_s=_fmt(result["warmup_s"], ".3f"),
                   max_abs_diff_vs_torch=_fmt(result["diff"], ".3e"))
        lat = result["latencies"]
        if lat:
            p = percentiles(lat)
            row.update({k: f"{v:.4f}" for k, v in p.items()})
            row.update(iters=len(lat), images_per_s=f"{batch * len(lat) / sum(lat):.2f}")
        if result["h2d"]:
            row["h2d_ms_p50"] = f"{np.median(result['h2d']) * 1e3:.4f}"
    return row


def print_row(i, n, row, out=print):
    key = f"{row['impl']}-{row['backend_or_device']} {row['engine']} {row['model']} {row['precision']}"
    t = f"{row['threads']}t" if row["threads"] != "" else "gpu"
    if row["status"] == "ok":
        h2d = f"  h2d {float(row['h2d_ms_p50']):.3f} ms" if row.get("h2d_ms_p50") else ""
        diff = row.get("max_abs_diff_vs_torch") or "-"
        out(f"[{i:>3}/{n}] {key:42s} b={row['batch_size']:<4} {t:>4}  p50 {float(row['latency_ms_p50']):9.3f} ms  "
            f"{float(row['images_per_s']):11.1f} img/s  ({row['iters']} iters){h2d}  diff {diff}")
    else:
        out(f"[{i:>3}/{n}] {key:42s} b={row['batch_size']:<4} {t:>4}  {row['status']}: {row['reason']}")


def print_table(rows, out=print):
    out("")
    head = (f"{'impl':8s} {'backend':8s} {'engine':12s} {'model':9s} {'prec':5s} {'batch':>5s} {'thr':>3s} "
            f"{'p50 ms':>9s} {'p90 ms':>9s} {'p99 ms':>9s} {'img/s':>11s} {'h2d ms':>8s} {'diff':>9s}  status")
    out(head)
    out("-" * len(head))
    i = 0
    while i < len(rows):
        r = rows[i]
        if r["status"] != "ok":
            # collapse a configuration's consecutive non-ok rows with one reason into one line
            j = i
            while j + 1 < len(rows) and all(rows[j + 1][c] == r[c] for c in KEY_COLUMNS + ["status", "reason"]
                                            if c != "batch_size"):
                j += 1
            batches = str(r["batch_size"]) if j == i else f"{r['batch_size']}-{rows[j]['batch_size']}"
            out(f"{r['impl']:8s} {r['backend_or_device']:8s} {r['engine']:12s} {r['model']:9s} {r['precision']:5s} "
                f"{batches:>5s} {str(r['threads']):>3s}  {r['status']}: {r['reason']}")
            i = j + 1
            continue
        h2d = r.get("h2d_ms_p50") or "-"
        h2d = f"{float(h2d):8.3f}" if h2d != "-" else f"{h2d:>8s}"
        out(f"{r['impl']:8s} {r['backend_or_device']:8s} {r['engine']:12s} {r['model']:9s} {r['precision']:5s} "
            f"{r['batch_size']:>5} {str(r['threads']):>3s} {float(r['latency_ms_p50']):9.3f} "
            f"{float(r['latency_ms_p90']):9.3f} {float(r['latency_ms_p99']):9.3f} {float(r['images_per_s']):11.1f} "
            f"{h2d} {r.get('max_abs_diff_vs_torch') or '-':>9s}  ok")
        i += 1


# ------------------------------------------------------------------------------------ main
def run(args, rows, log=print):
    """Run every selected configuration, appending each row (a dict of CSV fields) to `rows` and
    to the CSV as it is measured; returns the run id."""
    probe = Probe()
    numba_rows = "scratch" in args.impls and "numba" in args.backends and "eager" in args.engines and \
        any(p in CPU_PRECISIONS for p in args.precisions)
    if numba_rows and not probe.numba:
        from scratch_nn.backends.threads import start_numba_before_torch

        # numba's own OpenMP pool, started before anything imports torch (which loads its own)
        start_numba_before_torch(max(args.threads))
    cfgs = configurations(args, probe, log=log)
    if not cfgs:
        args.ap.error("nothing to run: no selected target has the selected precisions and engines (CPU targets "
                      "take fp64/fp32 and eager/compile/onnxruntime; GPU targets fp32/tf32/fp16/bf16 and "
                      "eager/compile/cuda-graph; compile and onnxruntime are torch engines)")
    sink = CsvSink(args.csv, COLUMNS)
    lat_sink = CsvSink(latencies_path(args.csv), LATENCY_COLUMNS)
    sink.start()
    lat_sink.start()

    have_torch = probe.torch is None
    if have_torch:
        from .adapters import set_torch_threads

        set_torch_threads(max(args.threads))

    from .sysinfo import machine_info

    info = machine_info(0 if probe.gpu else None)
    cpu_name = info.get("cpu_model") or "unknown CPU"
    gpu_name = info.get("gpu_name") or "unknown GPU"
    now = datetime.datetime.now()
    base = dict(run_id=f"{now:%Y%m%dT%H%M%S}-{os.getpid()}-{os.urandom(2).hex()}", date=now.date().isoformat(), warmup="", iters="")
    rng = np.random.default_rng(args.seed)
    pool = rng.standard_normal((max(args.batch_sizes), 3, 32, 32)).astype(np.float32)
    states, refs = {}, {}
    n = len(cfgs) * len(args.batch_sizes)
    log(f"{n} rows: {len(cfgs)} configurations x {len(args.batch_sizes)} batch sizes; warm-up {args.warmup}, "
        f"{args.iters} iterations, at most {args.max_time:g} s each; CPU: {cpu_name}"
        + (f"; GPU: {gpu_name}" if probe.gpu else ""))
    for cfg in cfgs:
        machine = gpu_name if cfg.gpu else cpu_name
        written = []
        reason = why_not(cfg, probe)
        if reason:
            written = [make_row(cfg, b, base, machine, "skipped", reason) for b in args.batch_sizes]
        else:
            if cfg.model not in states:
                states[cfg.model] = reference_state(cfg.model, args.seed)
                if have_torch:
                    refs[cfg.model] = reference_logits(cfg.model, states[cfg.model], pool[:CHECK_IMAGES])
            state = states[cfg.model]
            if cfg.precision == "fp64":
                state = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in state.items()}
            try:
                runner = make_runner(cfg, state, args.seed)
            except Exception as e:
                from scratch_nn.backends import BackendUnavailable

                status = "skipped" if isinstance(e, BackendUnavailable) else "failed"
                written = [make_row(cfg, b, base, machine, status, f"setup: {_short(e)}") for b in args.batch_sizes]
                runner = None
            if runner is not None:
                lat_rows = []
                for b in args.batch_sizes:
                    try:
                        res = measure(runner, pool[:b], args, cfg.gpu, refs.get(cfg.model), TOLERANCE[cfg.precision])
                    except Exception as e:
                        row = make_row(cfg, b, base, machine, "failed", _short(e))
                    else:
                        if "error" in res:
                            row = make_row(cfg, b, base, machine, "failed", res["error"], res)
                        else:
                            row = make_row(cfg, b, base, machine, "ok", "", res)
                            h2d = res["h2d"]
                            lat_rows += [dict({c: row[c] for c in KEY_COLUMNS}, run_id=base["run_id"], iteration=i,
                                              latency_ms=f"{v * 1e3:.4f}",
                                              h2d_ms=f"{h2d[i] * 1e3:.4f}" if i < len(h2d) else "")
                                         for i, v in enumerate(res["latencies"])]
                    sink.write([row])
                    print_row(len(rows) + 1, n, row, log)
                    rows.append(row)
                runner.close()
                lat_sink.write(lat_rows)
                continue
        sink.write(written)
        for row in written:
            print_row(len(rows) + 1, n, row, log)
            rows.append(row)
    return base["run_id"]


def main(argv=None):
    args = parse_args(argv)
    if args.plot_only is not None:
        from . import infer_plots

        out_dir = args.plots or os.path.dirname(os.path.abspath(args.plot_only))
        for path in infer_plots.draw_all(args.plot_only, out_dir):
            print(f"wrote {path}")
        return 0
    rows = []
    try:
        run_id = run(args, rows)
    except CsvMismatch as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print_table(rows)
        print(f"\ninterrupted: the {len(rows)} row(s) above are in {args.csv}", file=sys.stderr)
        return 130
    print_table(rows)
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"\n{ok} ok, {sum(r['status'] == 'skipped' for r in rows)} skipped, "
          f"{sum(r['status'] == 'failed' for r in rows)} failed; appended {len(rows)} row(s) to {args.csv} "
          f"and the latencies to {latencies_path(args.csv)}")
    if not args.no_plots and not ok:
        print("note: no ok rows: no charts")
    elif not args.no_plots:
        from . import infer_plots

        out_dir = args.plots or os.path.dirname(os.path.abspath(args.csv))
        for path in infer_plots.draw_all(args.csv, out_dir, run_id=run_id):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
