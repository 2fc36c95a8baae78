"""Module and Parameter: the bookkeeping every layer shares (names, modes, state dicts).

The naming and ordering rules copy torch.nn.Module so that state-dict keys are identical on
both sides: a module lists its own parameters, then its own buffers, then its children's.
"""
import numpy as np


class Parameter:
    """A trainable array, the gradient that backward() accumulates into it, and the backend
    that owns both (so an optimizer runs that backend's update kernels)."""

    __slots__ = ("data", "grad", "backend")

    def __init__(self, data, backend):
        self.data = data
        self.grad = data * 0
        self.backend = backend

    @property
    def shape(self):
        return self.data.shape


class Module:
    def __init__(self, backend):
        self.be = backend
        self.xp = backend.xp
        self.training = True
        self._params = {}
        self._buffers = {}
        self._children = {}

    # ------------------------------------------------------------------ registration
    def add_param(self, name, data):
        p = Parameter(data, self.be)
        self._params[name] = p
        return p

    def add_buffer(self, name, array):
        self._buffers[name] = array
        return array

    def add_child(self, name, module):
        self._children[name] = module
        return module

    def children(self):
        return self._children.items()

    # ------------------------------------------------------------------ running
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy, input_grad=True):
        """Accumulate parameter gradients and return the gradient of the input. With
        input_grad=False a layer may skip that work and return None (the network's first
        layer in training: nothing consumes the data's gradient, and torch skips it too).
        Backward follows a training-mode forward: in eval mode layers keep no caches."""
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    def train(self, mode=True):
        self.training = mode
        for child in self._children.values():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    # ------------------------------------------------------------------ introspection
    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._children.items():
            yield from child.named_modules(f"{prefix}{name}.")

    def named_parameters(self):
        for prefix, m in self.named_modules():
            for name, p in m._params.items():
                yield prefix + name, p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        for prefix, m in self.named_modules():
            for name, b in m._buffers.items():
                yield prefix + name, b

    def num_parameters(self):
        return sum(int(np.prod(p.shape)) for p in self.parameters())

    def zero_grad(self):
        self.be.zero_([p.grad for p in self.parameters()])

    # ------------------------------------------------------------------ state dicts
    def _state_entries(self):
        for prefix, m in self.named_modules():
            for name, p in m._params.items():
                yield prefix + name, m, "param", name
            for name in m._buffers:
                yield prefix + name, m, "buffer", name

    def state_dict(self):
        """name -> numpy array on the host (a copy), parameters and buffers, torch's order."""
        out = {}
        for key, m, kind, name in self._state_entries():
            arr = m._params[name].data if kind == "param" else m._buffers[name]
            out[key] = np.array(self.be.to_host(arr), copy=True)
        return out

    def load_state_dict(self, state):
        """Copy arrays into this model. Keys and shapes must match exactly; values are cast
        to each entry's existing dtype (as torch does)."""
        entries = list(self._state_entries())
        expected = {key for key, *_ in entries}
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(f"state dict mismatch: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                           f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        for key, m, kind, name in entries:
            src = np.asarray(state[key])
            dst = m._params[name].data if kind == "param" else m._buffers[name]
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(f"{key}: shape {tuple(src.shape)} in the state dict, {tuple(dst.shape)} in the model")
            if isinstance(dst, np.ndarray):
                dst[...] = src
            else:
                dst[...] = self.be.asarray(src.astype(dst.dtype, copy=False))
        self.be.params_changed()
        return self
