import pytest

from scratch_nn import backends

# Every backend that can run on this machine; the correctness suite runs on each of them.
AVAILABLE = backends.available()


@pytest.fixture(params=AVAILABLE)
def be(request):
    return backends.get(request.param)
