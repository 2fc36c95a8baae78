"""The NumPy backend's im2col per image on the padded-width grid (numpy_per_image.py)."""
import numpy as np
import pytest

from scratch_nn import backends
from scratch_nn.backends import numpy_backend as NP
from scratch_nn.backends import numpy_per_image as per_image

from tests.helpers import ref_conv

CASES = [  # (n, c, f, h, w, k, pad, relu, bias): odd counts and sizes, every padding the grid allows
    (7, 3, 5, 17, 13, 3, 1, True, True), (1, 5, 6, 16, 16, 3, 0, False, False), (9, 6, 7, 9, 11, 1, 0, True, True),
    (3, 2, 4, 15, 8, 3, 2, True, False), (2, 3, 16, 32, 32, 3, 1, True, True), (2, 3, 4, 8, 9, 5, 1, False, True)]


@pytest.mark.parametrize("shape", CASES)
def test_per_image_convolution_matches_float64_in_one_slice_and_in_many(shape, monkeypatch):
    """Forward, data and weight gradient, bias and fused ReLU against a float64 direct
    convolution to 1e-10, the batch whole and in slices of two images (columns rebuilt in
    backward, the data gradient's cache slices one image); float32 within 1e-5 of the largest
    entry."""
    n, c, f, h, w, k, p, relu, bias = shape
    r = np.random.default_rng(n * 100 + c)
    x, wt = r.standard_normal((n, c, h, w)), r.standard_normal((f, c, k, k))
    b = r.standard_normal(f) if bias else None
    oh, ow = h + 2 * p - k + 1, w + 2 * p - k + 1
    dy = r.standard_normal((n, f, oh, ow))
    refs = ref_conv(x, wt, b if bias else np.zeros(f), dy, relu, stride=1, pad=p)
    be = backends.get("numpy")
    assert be.per_image_columns(wt, x.shape, 1, p)
    f32 = [a.astype(np.float32) if a is not None else None for a in (x, wt, b, dy)]
    y32, cache32 = be.conv2d_forward(f32[0], f32[1], f32[2], 1, p, relu=relu)
    for got, ref in zip((y32,) + be.conv2d_backward(f32[3], cache32, f32[1]), refs):
        assert got.dtype == np.float32 and np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    two = 2 * (c * k * k + 1) * oh * (w + 2 * p) * 8                     # two images' columns
    for budget in (None, two):
        if budget is not None:                      # and the data gradient one image at a time
            monkeypatch.setattr(be, "COLS_BYTES", budget)
            monkeypatch.setattr(NP, "PER_IMAGE_CACHE_BYTES", 1)
        y, cache = be.conv2d_forward(x, wt, b, 1, p, relu=relu)
        assert cache[0] == "per_image" and (cache[2] is None) == (budget is not None and n > 2)
        got = be.conv2d_backward(dy, cache, wt)
        for g, ref in zip((y,) + got, refs):
            np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-10)
        no_dx, dw, db = be.conv2d_backward(dy, cache, wt, need_dx=False)
        assert no_dx is None and (dw == got[1]).all() and (db == got[2]).all()


def test_the_grid_helpers_write_every_output_and_zero_what_the_adjoint_reads():
    """outputs fills a NaN-poisoned output; gradient's zero rows and garbage columns are zero
    whatever the buffer held; columns end with the ones row."""
    r = np.random.default_rng(2)
    x = r.standard_normal((2, 3, 6, 7))
    cols, oh, ow, wp = per_image.columns(x, 3, 3, 1)
    assert cols.shape == (2, 28, oh * wp) and (cols[:, -1] == 1).all() and (oh, ow, wp) == (6, 7, 9)
    out = np.full((2, 4, oh, ow), np.nan)
    per_image.outputs(r.standard_normal((2, 4, oh * wp)), ow, True, out)
    assert np.isfinite(out).all() and (out >= 0).all()
    dy = r.standard_normal((2, 4, oh, ow))
    g = per_image.gradient(dy, None, 3, 1, wp)
    assert g.shape == (2, 4, oh + 2, wp) and (g[:, :, 0] == 0).all() and (g[:, :, -1] == 0).all()
    assert (g[:, :, 1:-1, ow:] == 0).all() and (g[:, :, 1:-1, :ow] == dy).all()


def test_per_image_is_chosen_by_the_table_and_can_be_turned_off():
    be = backends.get("numpy")
    assert be.per_image_columns(np.zeros((16, 3, 3, 3)), (2, 3, 32, 32), 1, 1)           # the CNN's conv1
    assert be.per_image_columns(np.zeros((32, 16, 3, 3)), (2, 16, 16, 15), 1, 1)         # conv2 on an odd map
    assert not be.per_image_columns(np.zeros((32, 16, 3, 3)), (2, 16, 16, 16), 1, 1)     # conv2: phase planes
    assert not be.per_image_columns(np.zeros((64, 3, 3, 3)), (2, 3, 32, 32), 1, 1)       # > 32 filters
    assert not be.per_image_columns(np.zeros((16, 16, 3, 3)), (2, 16, 32, 32), 2, 1)     # stride 2
    assert not be.per_image_columns(np.zeros((32, 64, 3, 3)), (2, 64, 8, 8), 1, 1)       # Winograd's
    assert "per_image" in be.describe()["convolution"]
    off = backends.get("numpy", image_columns=False)
    assert not off.per_image_columns(np.zeros((16, 3, 3, 3)), (2, 3, 32, 32), 1, 1)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16))
    for b, algo in ((be, "im2col GEMM per image"), (off, "im2col GEMM")):
        b.conv2d_forward(x, np.ones((8, 3, 3, 3)), None, 1, 1)
        assert b.conv_algorithms() == {"3->8 3x3 stride 1 pad 1 on 16x16": algo}
