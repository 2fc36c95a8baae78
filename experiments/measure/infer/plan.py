"""What the inference benchmark can run: its vocabulary (models, targets, engines,
precisions, tolerances), what this machine has (Probe), and the configurations the flags
select, each with the reason it cannot run here where it cannot."""
import importlib.util
import os
from dataclasses import dataclass
from typing import Optional

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


def short_error(e, limit=240):
    text = " ".join(str(e).split()) or type(e).__name__
    text = f"{type(e).__name__}: {text}" if not isinstance(e, (RuntimeError, ValueError)) else text
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
                self._cupy = short_error(e)
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
