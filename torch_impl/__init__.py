"""PyTorch twins of scratch_nn's models, with identical state-dict keys, shapes and dtypes.

    import torch_impl
    tnet = torch_impl.models.build("resnet18", num_classes=10)
"""
from . import models

__all__ = ["models"]
