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
from .scratch_adapter import ScratchAdapter
from .spec import IMPLS, OptimSpec, param_groups, precision_dtype
from .torch_adapter import TorchAdapter, set_torch_cuda_precision, set_torch_threads

# the interface's vocabulary, in one place for the trainer, the benchmarks and the tests
__all__ = ["IMPLS", "OptimSpec", "ScratchAdapter", "TorchAdapter", "make_adapter", "param_groups", "precision_dtype",
           "set_torch_cuda_precision", "set_torch_threads"]


def make_adapter(impl, **kw):
    if impl == "scratch":
        kw.pop("device", None)
        kw.pop("initial_state", None)
        return ScratchAdapter(**kw)
    if impl == "torch":
        kw.pop("backend", None)
        return TorchAdapter(**kw)
    raise ValueError(f"unknown implementation {impl!r}; choose one of {', '.join(IMPLS)}")

