"""The NumPy backend's Winograd F(2x2, 3x3) with channels innermost (numpy_winograd.py, the
small maps): where its table uses it, and that it is the convolution it replaces. The phase
planes of the large maps are tested in test_numpy_winograd_planes.py."""
import numpy as np
import pytest

from scratch_nn import backends
from scratch_nn.backends import numpy_backend as NB
from scratch_nn.backends import numpy_winograd as wino
from tests.helpers import ref_conv3x3

# (images, in channels, out channels, rows, fused ReLU): ResNet-18's small maps, odd batches and
# channel counts, a 2x2 map (one tile an image), a non-square map
CASES = [(1, 64, 5, 4, False), (7, 65, 9, 8, True), (3, 128, 17, 8, False), (2, 64, 3, 2, True),
         (5, 70, 64, (6, 8), True)]


@pytest.mark.parametrize("shape", CASES)
def test_winograd_matches_float64_in_one_slice_and_in_many(shape, monkeypatch):
    """Forward, data and weight gradient, bias and fused ReLU against a float64 direct
    convolution to 1e-10, in one batch slice and in slices of one image (V rebuilt in
    backward); float32 within 1e-5 of the largest entry, as the numba backend's F(2x2)."""
    n, c, f, hw, relu = shape
    h, wd = hw if isinstance(hw, tuple) else (hw, hw)
    r = np.random.default_rng(n * 100 + c)
    x, w, b = r.standard_normal((n, c, h, wd)), r.standard_normal((f, c, 3, 3)), r.standard_normal(f)
    dy = r.standard_normal((n, f, h, wd))
    refs = ref_conv3x3(x, w, b, dy, relu)
    be = backends.get("numpy")
    assert be.winograd_applies(w, x.shape, 1, 1)
    one = wino.POSITIONS * max(c, f) * h * wd // 4 * 8
    for sliced in (False, True):
        if sliced:
            monkeypatch.setattr(NB, "WINOGRAD_KEEP_BYTES", one * n - 1)
            monkeypatch.setattr(NB, "WINOGRAD_SLICE_BYTES", one)
            assert len(be._winograd_slices(n, c, f, h, wd, 8)) == (n if n > 1 else 1)
        y, cache = be.conv2d_forward(x, w, b, 1, 1, relu=relu)
        assert cache[0] == "winograd" and (cache[2] is None) == (sliced and n > 1)
        dx, dw, db = be.conv2d_backward(dy, cache, w)
        for got, ref in zip((y, dx, dw, db), refs):
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
    y32, cache32 = be.conv2d_forward(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), 1, 1, relu=relu)
    dx32, dw32, db32 = be.conv2d_backward(dy.astype(np.float32), cache32, w.astype(np.float32))
    for got, ref in zip((y32, dx32, dw32, db32), refs):
        assert got.dtype == np.float32 and np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_each_transform_is_the_adjoint_of_its_partner():
    """<T a, b> = <a, T* b> for the three transform pairs, on random (not zero) arrays."""
    r = np.random.default_rng(4)
    n, c, f, h, w = 3, 5, 4, 6, 8
    x, wt = r.standard_normal((n, c, h, w)), r.standard_normal((f, c, 3, 3))
    t = n * (h // 2) * (w // 2)
    v, m, du = r.standard_normal((16, t, c)), r.standard_normal((16, t, f)), r.standard_normal((16, c, f))
    g = r.standard_normal((n, f, h, w))
    dx = np.full(x.shape, np.nan)
    wino.inputs_adjoint(v, dx)
    assert np.isclose(np.vdot(wino.inputs(x), v), np.vdot(x, dx), rtol=1e-12)
    y = np.empty((n, f, h, w))
    wino.outputs(m, None, False, y)
    assert np.isclose(np.vdot(y, g), np.vdot(m, wino.outputs_adjoint(g)), rtol=1e-12)
    assert np.isclose(np.vdot(wino.weights(wt, np.matmul), du), np.vdot(wt, wino.weights_adjoint(du, wt.shape, np.matmul)),
                      rtol=1e-12)


def test_the_table_picks_winograd_for_small_maps_only_and_it_can_be_turned_off():
    be = backends.get("numpy")
    w64, w16 = np.zeros((64, 64, 3, 3)), np.zeros((32, 16, 3, 3))
    assert be.winograd_applies(w64, (2, 64, 8, 8), 1, 1) and be.winograd_applies(w64, (2, 64, 4, 4), 1, 1)
    assert not be.winograd_applies(w64, (2, 64, 16, 16), 1, 1)       # the phase planes' (and 32x32)
    assert not be.winograd_applies(w16, (2, 16, 8, 8), 1, 1)         # few channels: im2col measured faster
    assert not be.winograd_applies(w64, (2, 64, 16, 16), 2, 1)       # stride 2
    assert not be.winograd_applies(w64, (2, 64, 7, 7), 1, 1)         # odd size
    assert not be.winograd_applies(np.zeros((64, 64, 1, 1)), (2, 64, 8, 8), 1, 0)
    assert "winograd" in be.describe()["convolution"]
    off = backends.get("numpy", winograd=False)
    assert not off.winograd_applies(w64, (2, 64, 8, 8), 1, 1) and "winograd" not in off.describe()["convolution"]
    y, cache = off.conv2d_forward(np.ones((1, 64, 8, 8)), w64, None, 1, 1)
    assert not isinstance(cache[0], str) and off.conv_algorithms() == {"64->64 3x3 stride 1 pad 1 on 8x8": "im2col GEMM"}
