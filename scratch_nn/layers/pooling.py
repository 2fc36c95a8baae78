from .module import Module


class MaxPool2d(Module):
    def __init__(self, backend, kernel_size, stride=None, padding=0):
        super().__init__(backend)
        stride = kernel_size if stride is None else stride
        if kernel_size <= 0 or stride <= 0 or padding < 0 or padding > kernel_size // 2:
            raise ValueError("MaxPool2d needs positive kernel and stride and 0 <= padding <= kernel/2")
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self._cache = None

    def forward(self, x):
        y, cache = self.be.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        self._cache = cache if self.training else None
        return y

    def backward(self, dy, input_grad=True):
        if self._cache is None:
            raise RuntimeError("MaxPool2d.backward needs a training-mode forward first")
        dx = self.be.maxpool2d_backward(dy, self._cache)
        self._cache = None
        return dx


class GlobalAvgPool2d(Module):
    """(N, C, H, W) -> (N, C): torchvision's avgpool followed by flatten."""

    def __init__(self, backend):
        super().__init__(backend)
        self._shape = None

    def forward(self, x):
        self._shape = x.shape
        return self.be.global_avgpool_forward(x)

    def backward(self, dy, input_grad=True):
        return self.be.global_avgpool_backward(dy, self._shape)
