from .. import init
from .module import Module


class Linear(Module):
    """y = x W^T + b with W (out, in), as nn.Linear. `relu=True` applies a ReLU to the output
    in the same pass (the state dict is unchanged)."""

    def __init__(self, backend, in_features, out_features, bias=True, *, relu=False, rng, dtype="float32"):
        super().__init__(backend)
        self.relu = relu
        if in_features <= 0 or out_features <= 0:
            raise ValueError("Linear sizes must be positive")
        self.weight = self.add_param("weight", backend.asarray(
            init.torch_default_uniform(rng, (out_features, in_features), in_features), dtype))
        self.bias = None
        if bias:
            self.bias = self.add_param("bias", backend.asarray(
                init.torch_default_uniform(rng, (out_features,), in_features), dtype))
        self._x = self._y = None

    def forward(self, x):
        y = self.be.linear_forward(x, self.weight.data, self.bias.data if self.bias is not None else None,
                                   relu=self.relu)
        self._x = x if self.training else None
        self._y = y if self.relu and self.training else None
        return y

    def backward(self, dy, input_grad=True):
        if self._x is None:
            raise RuntimeError("Linear.backward needs a training-mode forward first")
        if self._y is not None:
            dy = self.be.relu_backward(dy, self._y)
            self._y = None
        dx = self.be.linear_backward_into(dy, self._x, self.weight.data, self.weight.grad,
                                          self.bias.grad if self.bias is not None else None, need_dx=input_grad)
        self._x = None
        return dx
