"""The same two models in PyTorch. resnet18 *is* torchvision's resnet18 with the CIFAR stem."""
from collections import OrderedDict

import torch
from torch import nn

MODELS = ("cnn", "resnet18")


def simple_cnn(num_classes=10):
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 16, 3, 1, 1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(16, 32, 3, 1, 1)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(32 * 8 * 8, 100)), ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(100, num_classes)),
    ]))


def resnet18(num_classes=10):
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None, num_classes=num_classes)
    # CIFAR stem: 32x32 inputs keep their resolution into layer1.
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    return net


_BUILDERS = {"cnn": simple_cnn, "resnet18": resnet18}


def build(name, num_classes=10, seed=None, dtype=torch.float32):
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if seed is not None:
        torch.manual_seed(seed)
    return _BUILDERS[name](num_classes).to(dtype)
