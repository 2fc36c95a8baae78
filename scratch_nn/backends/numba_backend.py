"""Numba backend: parallel CPU kernels over every core. Not implemented yet (issue 4)."""
from .base import BackendUnavailable


def NumbaBackend(**options):
    try:
        import numba  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable("backend 'numba' needs numba: pip install numba "
                                 "(or pip install -e '.[numba]')") from e
    raise BackendUnavailable("backend 'numba' is not available yet in this version of scratch_nn; "
                             "use backend 'numpy'")
