import numpy as np

from .module import Module


class BatchNorm2d(Module):
    """Batch norm over (N, H, W) per channel, as nn.BatchNorm2d: momentum 0.1, eps 1e-5,
    running variance updated with the unbiased batch variance, eval mode uses running stats.

    It can also carry what follows it in a ResNet, so a backend runs them as one pass:
    `relu=True` applies a ReLU to its output, and `forward(x, residual=r)` adds r before that
    ReLU (BasicBlock's shortcut). With a residual, backward returns (dx, d_residual).
    ReLU has no parameters, so the state dict is the same as nn.BatchNorm2d's."""

    def __init__(self, backend, num_features, eps=1e-5, momentum=0.1, *, relu=False, dtype="float32"):
        super().__init__(backend)
        self.relu = relu
        if num_features <= 0:
            raise ValueError("BatchNorm2d needs a positive number of features")
        xp = self.xp
        self.eps, self.momentum = eps, momentum
        self.weight = self.add_param("weight", xp.ones(num_features, dtype=dtype))
        self.bias = self.add_param("bias", xp.zeros(num_features, dtype=dtype))
        self.running_mean = self.add_buffer("running_mean", xp.zeros(num_features, dtype=dtype))
        self.running_var = self.add_buffer("running_var", xp.ones(num_features, dtype=dtype))
        # A host-side counter: a device array would cost a kernel launch per step for nothing.
        self.num_batches_tracked = self.add_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        self._cache = None

    def forward(self, x, residual=None):
        be = self.be
        if not self.training:
            self._cache = None
            return be.batchnorm_forward_eval(x, self.weight.data, self.bias.data, self.running_mean,
                                             self.running_var, self.eps, relu=self.relu, residual=residual)
        if x.size // x.shape[1] < 2:
            raise ValueError("BatchNorm2d in training mode needs more than one value per channel")
        y, _, _, self._cache = be.batchnorm_forward_train(
            x, self.weight.data, self.bias.data, self.eps, relu=self.relu, residual=residual,
            running=(self.running_mean, self.running_var, self.momentum))
        self.num_batches_tracked += 1
        return y

    def backward(self, dy, input_grad=True):
        if self._cache is None:
            raise RuntimeError("BatchNorm2d.backward needs a training-mode forward first")
        dx, dresidual = self.be.batchnorm_backward_into(dy, self._cache, self.weight.grad, self.bias.grad)
        self._cache = None
        return dx if dresidual is None else (dx, dresidual)
