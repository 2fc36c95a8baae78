"""The layers, each a forward/backward pair that keeps what backward needs in a small cache."""
from .activation import ReLU
from .containers import Dropout, Flatten, Sequential
from .conv import Conv2d
from .linear import Linear
from .module import Module, Parameter
from .norm import BatchNorm2d
from .pooling import GlobalAvgPool2d, MaxPool2d
from .resnet import BasicBlock

__all__ = ["Module", "Parameter", "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "GlobalAvgPool2d", "Linear",
           "Flatten", "Dropout", "Sequential", "BasicBlock"]
