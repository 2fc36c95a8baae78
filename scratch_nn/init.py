"""Weight initialisation with PyTorch's rules, drawn on the host from a seeded numpy
Generator so that a seed gives the same weights on every backend."""
import math

import numpy as np


def fan_in(shape):
    return int(np.prod(shape[1:]))


def fan_out(shape):
    return shape[0] * int(np.prod(shape[2:]))


def torch_default_uniform(rng, shape, fan):
    """nn.Linear / nn.Conv2d default: kaiming_uniform_(a=sqrt(5)) for weights and
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for biases reduce to the same bound."""
    bound = 1.0 / math.sqrt(fan) if fan > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape)


def kaiming_normal_fan_out(rng, shape):
    """torchvision's ResNet conv init: kaiming_normal_(mode='fan_out', nonlinearity='relu')."""
    return rng.normal(0.0, math.sqrt(2.0 / fan_out(shape)), size=shape)
