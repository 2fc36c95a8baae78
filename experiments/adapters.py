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

    def __init__(self, model, backend="numpy", optimizer=None, seed=0, num_classes=10, dtype="float32",
                 label_smoothing=0.0, threads=None):
        from scratch_nn import backends, models, optim

        opts = {} if threads is None else {"threads": threads}
        self.be = backends.get(backend, **opts)
        self.net = models.build(model, backend=self.be, num_classes=num_classes, seed=seed, dtype=dtype)
        self.dtype = np.dtype(dtype)
        self.label_smoothing = label_smoothing
        spec = optimizer or OptimSpec()
        cls = {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW}[spec.name]
        self.opt = cls(param_groups(list(self.net.named_parameters()), spec), **_optimizer_kwargs(spec))
        self.device_name = self.be.name

    @property
    def reads_are_free(self):
        """True where reading a scalar result costs no device sync (host arrays)."""
        return self.be.xp is np

    def to_device(self, x, y):
        return self.be.asarray(x, self.dtype), self.be.asarray(y)

    def set_lr(self, lr):
        self.opt.set_lr(lr)

    def train_step(self, x, y):
        from scratch_nn import losses

        self.net.train()
        self.opt.zero_grad()
        logits = self.net.forward(x)
        loss, dlogits = losses.softmax_cross_entropy(logits, y, self.label_smoothing, backend=self.be)
        self.net.backward(dlogits, input_grad=False)
        self.opt.step()
        self._last_logits = logits
        return loss

    def last_batch_correct(self, y):
        """Correct predictions in the last training batch (reads the device)."""
        return int(self.be.to_host((self._last_logits.argmax(axis=1) == y).sum()))

    def predict(self, x):
        self.net.eval()
        return self.be.to_host(self.net.forward(x))

    def synchronize(self):
        self.be.synchronize()

    def state_dict(self):
        return self.net.state_dict()


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

    def __init__(self, model, device="cpu", optimizer=None, seed=0, num_classes=10, dtype="float32",
                 label_smoothing=0.0, threads=None, initial_state=None):
        import torch

        import torch_impl

        self.torch = torch
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda needs a CUDA GPU and a CUDA build of torch; none is visible here")
        if threads is not None:
            set_torch_threads(threads)
        self.device = torch.device(device)
        self.tdtype = getattr(torch, dtype)
        self.net = torch_impl.models.build(model, num_classes=num_classes, dtype=self.tdtype)
        if initial_state is None:
            from scratch_nn import backends, models

            # the reference kernels: a NumpyBackend here would pin BLAS to one thread process-wide
            initial_state = models.build(model, backend=backends.reference("numpy"), num_classes=num_classes,
                                         seed=seed, dtype=dtype).state_dict()
        self.net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in initial_state.items()})
        self.net.to(self.device)
        spec = optimizer or OptimSpec()
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[spec.name]
        self.opt = cls(param_groups(list(self.net.named_parameters()), spec), **_optimizer_kwargs(spec))
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.device_name = device

    def to_device(self, x, y):
        t = self.torch
        return (t.from_numpy(np.ascontiguousarray(x)).to(self.device, self.tdtype),
                t.from_numpy(np.ascontiguousarray(y)).to(self.device))

    @property
    def reads_are_free(self):
        return self.device.type == "cpu"

    def set_lr(self, lr):
        for g in self.opt.param_groups:
            g["lr"] = lr

    def train_step(self, x, y):
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        logits = self.net(x)
        loss = self.loss_fn(logits, y)
        loss.backward()
        self.opt.step()
        self._last_logits = logits.detach()
        return loss.detach()

    def last_batch_correct(self, y):
        return int((self._last_logits.argmax(dim=1) == y).sum())

    def predict(self, x):
        self.net.eval()
        with self.torch.no_grad():
            return self.net(x).float().cpu().numpy()

    def synchronize(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def state_dict(self):
        return {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}


def make_adapter(impl, **kw):
    if impl == "scratch":
        kw.pop("device", None)
        kw.pop("initial_state", None)
        return ScratchAdapter(**kw)
    if impl == "torch":
        kw.pop("backend", None)
        return TorchAdapter(**kw)
    raise ValueError(f"unknown implementation {impl!r}; choose one of {', '.join(IMPLS)}")
