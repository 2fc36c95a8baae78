"""Array backends: one object per execution target that the layers are written against.

    be = backends.get("numpy")      # or "numba", "cupy"
    be.xp                            # the array module (numpy or cupy)

Asking for a backend that cannot run here raises BackendUnavailable with what to install;
there is never a silent fallback to another backend.
"""
from .base import Backend, BackendUnavailable

# name -> (module, factory attribute). Imported lazily so that asking for "numpy" never
# imports numba or cupy.
_REGISTRY = {
    "numpy": ("scratch_nn.backends.numpy_backend", "NumpyBackend"),
    "numba": ("scratch_nn.backends.numba_backend", "NumbaBackend"),
    "cupy": ("scratch_nn.backends.cupy_nhwc_backend", "make_cupy_backend"),   # by precision (and layout)
}

NAMES = tuple(_REGISTRY)


def get(name, **options):
    """Return a ready backend by name. `options` go to its constructor (e.g. threads=)."""
    if isinstance(name, Backend):
        return name
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    import importlib

    module_name, attr = _REGISTRY[name]
    module = importlib.import_module(module_name)
    return getattr(module, attr)(**options)


_KERNELS = {}


def reference(module="numpy"):
    """The reference kernels on `module`'s arrays ("numpy" or "cupy") without any backend's
    process-wide settings (thread counts, heap): for building weights or running helpers
    on the side without changing how the measured backend runs."""
    if module not in _KERNELS:
        import importlib

        kernels = Backend()
        kernels.name = f"{module}-reference"
        kernels.xp = importlib.import_module("cupy" if module == "cupy" else "numpy")
        _KERNELS[module] = kernels
    return _KERNELS[module]


def kernels_for(array):
    """The reference kernels bound to `array`'s own module (numpy or cupy)."""
    return reference(type(array).__module__.split(".")[0])


def available():
    """Names of the backends that can run on this machine (each one is tried)."""
    names = []
    for name in NAMES:
        try:
            get(name)
        except BackendUnavailable:
            continue
        names.append(name)
    return names


__all__ = ["Backend", "BackendUnavailable", "get", "available", "kernels_for", "reference", "NAMES"]
