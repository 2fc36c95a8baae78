from .activation import ReLU
from .containers import Sequential
from .conv import Conv2d
from .module import Module
from .norm import BatchNorm2d


class BasicBlock(Module):
    """torchvision's BasicBlock: two 3x3 conv-BN pairs and a shortcut, which is a 1x1
    conv + BN ("downsample") when the stride or the channel count changes."""

    def __init__(self, backend, in_channels, out_channels, stride=1, *, rng, dtype="float32"):
        super().__init__(backend)
        self.conv1 = self.add_child("conv1", Conv2d(backend, in_channels, out_channels, 3, stride, 1, bias=False,
                                                    rng=rng, dtype=dtype))
        self.bn1 = self.add_child("bn1", BatchNorm2d(backend, out_channels, dtype=dtype))
        self.relu1 = self.add_child("relu1", ReLU(backend))
        self.conv2 = self.add_child("conv2", Conv2d(backend, out_channels, out_channels, 3, 1, 1, bias=False,
                                                    rng=rng, dtype=dtype))
        self.bn2 = self.add_child("bn2", BatchNorm2d(backend, out_channels, dtype=dtype))
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = self.add_child("downsample", Sequential(
                backend,
                Conv2d(backend, in_channels, out_channels, 1, stride, 0, bias=False, rng=rng, dtype=dtype),
                BatchNorm2d(backend, out_channels, dtype=dtype)))
        self.relu2 = self.add_child("relu2", ReLU(backend))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        out += self.downsample(x) if self.downsample is not None else x
        return self.relu2(out)

    def backward(self, dy, input_grad=True):
        d = self.relu2.backward(dy)
        dx = self.conv1.backward(self.bn1.backward(self.relu1.backward(self.conv2.backward(self.bn2.backward(d)))))
        dx += self.downsample.backward(d) if self.downsample is not None else d
        return dx
