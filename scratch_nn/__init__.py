"""scratch_nn: a hand-written neural-network layer library with interchangeable array backends.

    from scratch_nn import backends, models, losses, optim
    be = backends.get("numpy")
    net = models.build("resnet18", backend=be, num_classes=10, seed=0)
"""
from .backends.threads import bound_blas_spin

bound_blas_spin()   # before anything below imports numpy: see backends/threads.py

from . import backends, layers  # noqa: E402, losses, models, optim

__version__ = "0.1.0"
__all__ = ["backends", "layers", "losses", "models", "optim", "__version__"]
