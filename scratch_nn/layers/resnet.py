from .containers import Sequential
from .conv import Conv2d
from .module import Module
from .norm import BatchNorm2d


class BasicBlock(Module):
    """torchvision's BasicBlock: two 3x3 conv-BN pairs and a shortcut, which is a 1x1
    conv + BN ("downsample") when the stride or the channel count changes.

    The ReLUs ride on the BNs (see BatchNorm2d): bn1 applies relu, bn2 adds the shortcut and
    then applies relu, so a backend can do each in one pass. The state dict is torchvision's."""

    def __init__(self, backend, in_channels, out_channels, stride=1, *, rng, dtype="float32"):
        super().__init__(backend)
        self.conv1 = self.add_child("conv1", Conv2d(backend, in_channels, out_channels, 3, stride, 1, bias=False,
                                                    rng=rng, dtype=dtype))
        self.bn1 = self.add_child("bn1", BatchNorm2d(backend, out_channels, relu=True, dtype=dtype))
        self.conv2 = self.add_child("conv2", Conv2d(backend, out_channels, out_channels, 3, 1, 1, bias=False,
                                                    rng=rng, dtype=dtype))
        self.bn2 = self.add_child("bn2", BatchNorm2d(backend, out_channels, relu=True, dtype=dtype))
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = self.add_child("downsample", Sequential(
                backend,
                Conv2d(backend, in_channels, out_channels, 1, stride, 0, bias=False, rng=rng, dtype=dtype),
                BatchNorm2d(backend, out_channels, dtype=dtype)))

    def forward(self, x):
        shortcut = self.downsample.forward(x) if self.downsample is not None else x
        return self.bn2.forward(self.conv2.forward(self.bn1.forward(self.conv1.forward(x))), residual=shortcut)

    def backward(self, dy, input_grad=True):
        d, dshortcut = self.bn2.backward(dy)
        if self.downsample is not None:
            dshortcut = self.downsample.backward(dshortcut)
        # the two input gradients summed by conv1's backward (where a backend may fuse the sum)
        return self.conv1.backward(self.bn1.backward(self.conv2.backward(d)), add=dshortcut)
