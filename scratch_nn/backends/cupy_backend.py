"""CuPy GPU backend. Not implemented yet (issue 5)."""
from .base import BackendUnavailable


def CupyBackend(**options):
    try:
        import cupy  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable("backend 'cupy' needs CuPy and an NVIDIA GPU: pip install cupy-cuda12x "
                                 "(or cupy-cuda11x / cupy-cuda13x to match your CUDA driver)") from e
    raise BackendUnavailable("backend 'cupy' is not available yet in this version of scratch_nn; "
                             "use backend 'numpy'")
