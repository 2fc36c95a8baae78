from .module import Module


class ReLU(Module):
    def __init__(self, backend):
        super().__init__(backend)
        self._y = None

    def forward(self, x):
        y = self.be.relu_forward(x)
        self._y = y if self.training else None
        return y

    def backward(self, dy, input_grad=True):
        if self._y is None:
            raise RuntimeError("ReLU.backward needs a training-mode forward first")
        dx = self.be.relu_backward(dy, self._y)
        self._y = None
        return dx
