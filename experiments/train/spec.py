"""What the two adapters agree on: precision modes, the optimizer's description and its
parameter groups, so that both sides build the same optimizer from one OptimSpec."""
from dataclasses import dataclass, field

IMPLS = ("scratch", "torch")
PRECISIONS = ("fp32", "fp64", "tf32", "fp16", "bf16")
GPU_PRECISIONS = ("tf32", "fp16", "bf16")   # modes that exist only on a GPU


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


def optimizer_kwargs(spec):
    if spec.name == "sgd":
        return dict(lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=spec.weight_decay)
    if spec.name in ("adam", "adamw"):
        return dict(lr=spec.lr, betas=tuple(spec.betas), weight_decay=spec.weight_decay)
    raise ValueError(f"unknown optimizer {spec.name!r}; choose sgd, adam or adamw")

