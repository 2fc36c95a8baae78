import numpy as np
import pytest

from scratch_nn import backends

# Every backend that can run on this machine; the correctness suite runs on each of them.
AVAILABLE = backends.available()


@pytest.fixture(params=AVAILABLE)
def be(request):
    return backends.get(request.param)


def rel_err(a, b):
    """||a - b|| / ||b|| on the host, in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / (denom if denom > 0 else 1.0))
