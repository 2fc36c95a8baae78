from .. import init
from .module import Module


class Conv2d(Module):
    """2-D convolution, NCHW, weight (out, in, kh, kw), optional bias. `relu=True` applies a
    ReLU to the output inside the same kernel (the state dict is unchanged)."""

    def __init__(self, backend, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 *, relu=False, rng, dtype="float32"):
        super().__init__(backend)
        self.relu = relu
        if min(in_channels, out_channels, kernel_size, stride) <= 0 or padding < 0:
            raise ValueError("Conv2d sizes must be positive and padding non-negative")
        self.stride, self.padding = stride, padding
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        fan = init.fan_in(shape)
        self.weight = self.add_param("weight", backend.asarray(init.torch_default_uniform(rng, shape, fan), dtype))
        self.bias = None
        if bias:
            self.bias = self.add_param("bias", backend.asarray(init.torch_default_uniform(rng, (out_channels,), fan), dtype))
        self._cache = None

    def forward(self, x):
        b = self.bias.data if self.bias is not None else None
        y, cache = self.be.conv2d_forward(x, self.weight.data, b, self.stride, self.padding, relu=self.relu)
        self._cache = cache if self.training else None   # eval keeps nothing (cached columns are large)
        return y

    def backward(self, dy, input_grad=True, add=None):
        """The input gradient, plus add where given (a residual block's other input gradient,
        which a backend may sum in the same kernel)."""
        if self._cache is None:
            raise RuntimeError("Conv2d.backward needs a training-mode forward first")
        dx = self.be.conv2d_backward_into(dy, self._cache, self.weight.data, self.weight.grad,
                                          self.bias.grad if self.bias is not None else None, need_dx=input_grad,
                                          add=add)
        self._cache = None
        return dx
