from .module import Module


class Sequential(Module):
    """Children run in order. Give (name, module) pairs to choose the state-dict names,
    or plain modules to get "0", "1", ... as nn.Sequential does."""

    def __init__(self, backend, *modules):
        super().__init__(backend)
        for i, m in enumerate(modules):
            name, m = m if isinstance(m, tuple) else (str(i), m)
            self.add_child(name, m)

    def __getitem__(self, i):
        return list(self._children.values())[i]

    def __len__(self):
        return len(self._children)

    def forward(self, x):
        for m in self._children.values():
            x = m.forward(x)
        return x

    def backward(self, dy, input_grad=True):
        mods = list(self._children.values())
        for m in reversed(mods[1:]):
            dy = m.backward(dy)
        return mods[0].backward(dy, input_grad=input_grad)


class Flatten(Module):
    def __init__(self, backend):
        super().__init__(backend)
        self._shape = None

    def forward(self, x):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, input_grad=True):
        return dy.reshape(self._shape)


class Dropout(Module):
    """Inverted dropout: scale kept activations by 1/(1-p) in training, identity in eval."""

    def __init__(self, backend, p=0.5, *, seed=0):
        super().__init__(backend)
        if not 0.0 <= p < 1.0:
            raise ValueError("Dropout probability must be in [0, 1)")
        self.p = p
        self._rng = backend.rng(seed)
        self._mask = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        keep = self._rng.random(x.shape) >= self.p
        self._mask = keep.astype(x.dtype) * (1.0 / (1.0 - self.p))
        return x * self._mask

    def backward(self, dy, input_grad=True):
        return dy if self._mask is None else dy * self._mask
