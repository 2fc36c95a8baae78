"""The NumPy backend's Winograd F(2x2, 3x3) on phase planes (numpy_winograd_planes.py, the
large maps): the convolution it replaces, in one slice and in many, its transforms against
their adjoints (the planes' edges, where the shifted passes are rewritten, included), and
where the table uses it."""
import numpy as np
import pytest

from scratch_nn import backends
from scratch_nn.backends import numpy_backend as NB
from scratch_nn.backends import numpy_winograd_planes as planes
from tests.helpers import check_conv_exact, ref_conv3x3

# (images, in channels, out channels, (rows, columns), bias, fused ReLU): layer1's and the
# CNN's conv2's maps, odd batches and channel counts no block divides, non-square maps
CASES = [(1, 64, 5, (16, 16), False, False), (7, 17, 9, (32, 32), True, True), (3, 33, 16, (16, 20), True, False),
         (2, 16, 32, (18, 16), False, True), (2, 16, 3, (16, 34), True, True)]


@pytest.mark.parametrize("shape", CASES)
def test_planes_match_float64_in_one_slice_and_in_many(shape, monkeypatch):
    """Forward, data and weight gradient, bias and fused ReLU against a float64 direct
    convolution to 1e-10: the batch in one slice with V kept, then slices of one image with V
    rebuilt in backward (the last slice of another size); float32 within 1e-5 of the largest
    entry, as the channels-innermost layout."""
    n, c, f, (h, wd), bias, relu = shape
    r = np.random.default_rng(n * 100 + c)
    x, w, dy = r.standard_normal((n, c, h, wd)), r.standard_normal((f, c, 3, 3)), r.standard_normal((n, f, h, wd))
    b = r.standard_normal(f) if bias else None
    refs = ref_conv3x3(x, w, b if bias else np.zeros(f), dy, relu)
    be = backends.get("numpy")
    assert be.planes_apply(w, x.shape, 1, 1)
    for sliced in (False, True):
        monkeypatch.setattr(NB, "PLANES_SLICE_BYTES", 1 if sliced else 1 << 40)
        if sliced:
            monkeypatch.setattr(NB, "WINOGRAD_KEEP_BYTES", 0)
        y, cache = be.conv2d_forward(x, w, b, 1, 1, relu=relu)
        assert cache[0] == "planes" and (cache[2] is None) == sliced and cache[5] == (1 if sliced else n)
        check_conv_exact(be, y, cache, dy, w, refs)
    monkeypatch.setattr(NB, "PLANES_SLICE_BYTES", 3 * planes.POSITIONS * max(c, f) * planes.plane_size(h, wd) * 4)
    f32 = [a.astype(np.float32) if a is not None else None for a in (x, w, b, dy)]
    y32, cache32 = be.conv2d_forward(f32[0], f32[1], f32[2], 1, 1, relu=relu)
    assert cache32[5] == min(3, n)
    for got, ref in zip((y32,) + be.conv2d_backward(f32[3], cache32, f32[1]), refs):
        assert got.dtype == np.float32 and np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("k,c,f,h,w", [(3, 5, 4, 6, 8), (2, 3, 2, 2, 2), (1, 2, 3, 8, 2), (2, 2, 3, 2, 10)])
def test_each_transform_is_the_adjoint_of_its_partner(k, c, f, h, w):
    """<T a, b> = <a, T* b> for inputs and outputs, on random (not zero) arrays, maps of one
    tile row or column included (where every tile is on an edge); outputs and inputs_adjoint
    fill NaN-poisoned outputs; the phases' slack is never written; a reused gradient buffer
    gives the same dM."""
    r = np.random.default_rng(4)
    x, g = r.standard_normal((k, c, h, w)), r.standard_normal((k, f, h, w))
    q = planes.phase_buffer(k, c, h, w, x.dtype)
    v = planes.inputs(x, q)
    assert v.shape == (16, c, k * planes.plane_size(h, w))
    dv = r.standard_normal(v.shape)
    dx = np.full(x.shape, np.nan)
    planes.inputs_adjoint(dv, dx)
    assert np.isfinite(dx).all() and np.isclose(np.vdot(v, dv), np.vdot(x, dx), rtol=1e-12)
    assert (q[:, :, :w // 2] == 0).all() and (q[:, :, -(w // 2):] == 0).all()
    m = r.standard_normal((16, f, v.shape[2]))
    y = np.full(g.shape, np.nan)
    planes.outputs(m.copy(), y)
    assert np.isfinite(y).all()
    buf = planes.gradient_buffer(k, f, h, w, g.dtype)
    buf[...] = np.nan
    dm = planes.outputs_adjoint(g, buf).copy()
    assert np.isclose(np.vdot(y, g), np.vdot(m, dm), rtol=1e-12)
    assert np.array_equal(planes.outputs_adjoint(g, buf), dm)


def test_the_table_picks_the_phase_planes_for_large_maps_of_16_channels_and_more():
    be = backends.get("numpy")
    assert be.planes_apply(np.zeros((64, 64, 3, 3)), (2, 64, 32, 32), 1, 1)               # layer1
    assert be.planes_apply(np.zeros((128, 128, 3, 3)), (2, 128, 16, 16), 1, 1)            # layer2
    assert be.planes_apply(np.zeros((32, 16, 3, 3)), (2, 16, 16, 16), 1, 1)               # the CNN's conv2
    assert not be.planes_apply(np.zeros((64, 3, 3, 3)), (2, 3, 32, 32), 1, 1)             # stems: few channels
    assert not be.planes_apply(np.zeros((256, 256, 3, 3)), (2, 256, 8, 8), 1, 1)          # channels innermost
    assert not be.planes_apply(np.zeros((128, 64, 3, 3)), (2, 64, 32, 32), 2, 1)          # stride 2
    assert not be.planes_apply(np.zeros((64, 64, 3, 3)), (2, 64, 32, 31), 1, 1)           # odd
    assert not be.planes_apply(np.zeros((64, 64, 1, 1)), (2, 64, 32, 32), 1, 0)
    off = backends.get("numpy", winograd=False)
    assert not off.planes_apply(np.zeros((64, 64, 3, 3)), (2, 64, 32, 32), 1, 1)
    be.conv2d_forward(np.ones((1, 16, 16, 16)), np.ones((8, 16, 3, 3)), None, 1, 1)
    assert be.conv_algorithms() == {"16->8 3x3 stride 1 pad 1 on 16x16": "Winograd F(2x2, 3x3) on phase planes"}


@pytest.mark.parametrize("layout", ["planes", "channels"])
@pytest.mark.parametrize("shape", [(7, 64, 5, (4, 4)), (1, 20, 9, (8, 6)), (3, 16, 32, (32, 32)), (2, 3, 4, (2, 2))])
def test_one_winograd_layout_forced_everywhere_matches_float64(layout, shape):
    """winograd_layout="planes" / "channels" (what the choice table is measured with) runs that
    layout on every Winograd shape, small maps and few channels included, and stays exact."""
    n, c, f, (h, wd) = shape
    r = np.random.default_rng(n + c + f + h)
    x, w, dy = r.standard_normal((n, c, h, wd)), r.standard_normal((f, c, 3, 3)), r.standard_normal((n, f, h, wd))
    b = r.standard_normal(f)
    be = backends.get("numpy", winograd_layout=layout)
    y, cache = be.conv2d_forward(x, w, b, 1, 1, relu=True)
    assert cache[0] == {"planes": "planes", "channels": "winograd"}[layout]
    for got, ref in zip((y,) + be.conv2d_backward(dy, cache, w), ref_conv3x3(x, w, b, dy, True)):
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
    assert layout in be.describe()["convolution"]["winograd"]


def test_an_unknown_winograd_layout_is_refused():
    with pytest.raises(ValueError, match="winograd_layout must be one of auto, planes, channels"):
        backends.get("numpy", winograd_layout="nhwc")
