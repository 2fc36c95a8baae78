from .. import init
from .module import Module


class Linear(Module):
    """y = x W^T + b with W (out, in), as nn.Linear."""

    def __init__(self, backend, in_features, out_features, bias=True, *, rng, dtype="float32"):
        super().__init__(backend)
        if in_features <= 0 or out_features <= 0:
            raise ValueError("Linear sizes must be positive")
        self.weight = self.add_param("weight", backend.asarray(
            init.torch_default_uniform(rng, (out_features, in_features), in_features), dtype))
        self.bias = None
        if bias:
            self.bias = self.add_param("bias", backend.asarray(
                init.torch_default_uniform(rng, (out_features,), in_features), dtype))
        self._x = None

    def forward(self, x):
        self._x = x
        return self.be.linear_forward(x, self.weight.data, self.bias.data if self.bias is not None else None)

    def backward(self, dy, input_grad=True):
        dx, dw, db = self.be.linear_backward(dy, self._x, self.weight.data, need_dx=input_grad)
        self._x = None
        self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += db
        return dx
