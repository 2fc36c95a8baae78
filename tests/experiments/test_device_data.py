"""The device-resident loader serves bitwise the host BatchLoader's batches: the torch ops
run here on the CPU; the CuPy kernel is checked the same way where a GPU exists."""
import numpy as np
import pytest

from experiments.train.data import BatchLoader, make_synthetic
from experiments.train.device_data import DeviceBatchLoader


def _loaders(augment, n=300, batch=64):
    ds = make_synthetic(n, 10, seed=3)
    host = BatchLoader(ds.x_train, ds.y_train, batch, shuffle=True, seed=7, augment=augment)
    return host


def _same_epochs(host, dev, to_numpy, epochs=(0, 1)):
    for e in epochs:
        hb, db = list(host.epoch(e)), list(dev.epoch(e))
        assert len(hb) == len(db) == len(host)
        for (hx, hy), (dx, dy) in zip(hb, db):
            assert np.array_equal(to_numpy(dy), hy)
            dx = to_numpy(dx)
            assert dx.dtype == hx.dtype and dx.shape == hx.shape
            assert np.array_equal(dx.view(np.uint32), hx.view(np.uint32))   # bitwise, -0.0 included


@pytest.mark.parametrize("augment", [False, True])
def test_torch_ops_serve_the_host_batches_bitwise(augment):
    torch = pytest.importorskip("torch")
    from experiments.train.device_data import TorchBatchOps

    host = _loaders(augment)
    dev = DeviceBatchLoader(host, TorchBatchOps(torch, "cpu", torch.float32))
    _same_epochs(host, dev, lambda t: t.numpy())


@pytest.mark.parametrize("augment", [False, True])
def test_cupy_kernel_serves_the_host_batches_bitwise(augment):
    from scratch_nn import backends

    try:
        be = backends.get("cupy")
    except backends.BackendUnavailable as e:
        pytest.skip(f"no GPU: {e}")
    from experiments.train.device_data import CupyBatchOps

    host = _loaders(augment)
    dev = DeviceBatchLoader(host, CupyBatchOps(be.xp, np.float32))
    _same_epochs(host, dev, be.to_host)
    half = DeviceBatchLoader(host, CupyBatchOps(be.xp, np.float16))
    (hx, _), (dx, _) = next(iter(host.epoch(2))), next(iter(half.epoch(2)))
    assert np.array_equal(be.to_host(dx), hx.astype(np.float16))
