"""The study's two models, built from scratch_nn layers with torch-identical state-dict keys.

    net = models.build("resnet18", backend=be, num_classes=10, seed=0, dtype="float32")
"""
import numpy as np

from . import backends, init
from .layers import (BasicBlock, BatchNorm2d, Conv2d, Flatten, GlobalAvgPool2d, Linear, MaxPool2d,
                     Sequential)

MODELS = ("cnn", "resnet18")


def simple_cnn(be, num_classes, rng, dtype):
    """The original study's SimpleCNN (210,998 parameters for 10 classes). The ReLUs after
    conv1, conv2 and fc1 run inside those layers (relu=True); the state dict is the torch twin's."""
    kw = dict(rng=rng, dtype=dtype)
    return Sequential(
        be,
        ("conv1", Conv2d(be, 3, 16, 3, 1, 1, relu=True, **kw)), ("pool1", MaxPool2d(be, 2)),
        ("conv2", Conv2d(be, 16, 32, 3, 1, 1, relu=True, **kw)), ("pool2", MaxPool2d(be, 2)),
        ("flatten", Flatten(be)),
        ("fc1", Linear(be, 32 * 8 * 8, 100, relu=True, **kw)),
        ("fc2", Linear(be, 100, num_classes, **kw)))


def resnet18(be, num_classes, rng, dtype):
    """torchvision's resnet18 with the CIFAR stem: 3x3 stride-1 conv1, no max-pool."""
    kw = dict(rng=rng, dtype=dtype)
    stages, in_ch = [], 64
    for i, (ch, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
        stages.append((f"layer{i}", Sequential(be, BasicBlock(be, in_ch, ch, stride, **kw),
                                               BasicBlock(be, ch, ch, 1, **kw))))
        in_ch = ch
    net = Sequential(
        be,
        ("conv1", Conv2d(be, 3, 64, 3, 1, 1, bias=False, **kw)),
        ("bn1", BatchNorm2d(be, 64, relu=True, dtype=dtype)),   # torchvision's separate `relu`, fused
        *stages, ("avgpool", GlobalAvgPool2d(be)),
        ("fc", Linear(be, 512, num_classes, **kw)))
    # torchvision re-initialises every conv with kaiming_normal_(fan_out, relu); BN stays 1/0.
    for _, m in net.named_modules():
        if isinstance(m, Conv2d):
            m.weight.data[...] = be.asarray(init.kaiming_normal_fan_out(rng, m.weight.shape), dtype)
    return net


_BUILDERS = {"cnn": simple_cnn, "resnet18": resnet18}


def build(name, backend="numpy", num_classes=10, seed=0, dtype=None):
    """Build a model on a backend (a name or a backends.get() object) with weights drawn on
    the host from `seed`, so one seed gives the same initial weights on every backend."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if num_classes <= 0:
        raise ValueError("num_classes must be positive")
    be = backends.get(backend)
    dtype = be.check_dtype(dtype or be.default_dtype)
    return _BUILDERS[name](be, num_classes, np.random.default_rng(seed), dtype)
