"""The numba backend's Winograd F(2x2, 3x3) fused a slice of images at a time
(numba_winograd_fused.py, the large maps): the convolution it replaces in one slice and in
many, with fewer weight-gradient partials than slices, results that do not depend on the
thread count, and where the table uses it."""
import os

import numpy as np
import pytest

from scratch_nn import backends
from tests.helpers import check_conv_exact, ref_conv3x3

pytestmark = pytest.mark.skipif("numba" not in backends.available(), reason="numba is not installed")
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

# (images, in channels, out channels, (rows, columns), bias, fused ReLU): layer1's and layer2's
# maps, odd batches and channel counts no block divides, non-square maps
CASES = [(1, 64, 5, (16, 16), False, False), (7, 17, 9, (32, 32), True, True), (3, 33, 16, (16, 20), True, False),
         (5, 8, 64, (18, 16), False, True)]


@pytest.fixture
def any_slice_count(monkeypatch):
    """Fuse however few slices each thread gets, so that small batches exercise the fused path."""
    from scratch_nn.backends import numba_backend as NB

    monkeypatch.setattr(NB, "FUSED_MIN_SLICES_PER_THREAD", 0)


def _fused_backend(threads=None):
    be = backends.get("numba", winograd="2x2", threads=threads)
    if be._pgemm is None:
        pytest.skip("NumPy's BLAS exposes no CBLAS gemm here: the passes run unfused")
    return be


@pytest.mark.parametrize("shape", CASES)
def test_fused_winograd_matches_float64_in_one_slice_and_in_many(shape, monkeypatch, any_slice_count):
    """Forward, data and weight gradient, bias and fused ReLU against a float64 direct
    convolution to 1e-10: the batch as one slice, then slices of one image in two partials
    (the weight gradient accumulated over runs of slices); float32 within 1e-5 of the largest
    entry, as the unfused F(2x2); without the data gradient the same dw and db bitwise."""
    from scratch_nn.backends import numba_backend as NB

    n, c, f, (h, wd), bias, relu = shape
    r = np.random.default_rng(n * 100 + c)
    x, w, dy = r.standard_normal((n, c, h, wd)), r.standard_normal((f, c, 3, 3)), r.standard_normal((n, f, h, wd))
    b = r.standard_normal(f) if bias else None
    refs = ref_conv3x3(x, w, b if bias else np.zeros(f), dy, relu)
    be = _fused_backend()
    for sliced in (False, True):
        monkeypatch.setattr(NB, "FUSED_SLICE_BYTES", 1 if sliced else 1 << 40)
        monkeypatch.setattr(NB, "FUSED_GROUPS", 2 if sliced else 16)
        y, cache = be.conv2d_forward(x, w, b, 1, 1, relu=relu)
        assert cache[0] == "winograd" and cache[2] is None and cache[6] == (1 if sliced else n)
        check_conv_exact(be, y, cache, dy, w, refs)
    f32 = [a.astype(np.float32) if a is not None else None for a in (x, w, b, dy)]
    y32, cache32 = be.conv2d_forward(f32[0], f32[1], f32[2], 1, 1, relu=relu)
    for got, ref in zip((y32,) + be.conv2d_backward(f32[3], cache32, f32[1]), refs):
        assert got.dtype == np.float32 and np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_fused_winograd_is_bitwise_the_same_on_one_thread_and_on_every_core(monkeypatch, any_slice_count):
    """Slices and partials follow from the batch and the shape: 1 thread and every core give
    the same bits, outputs poisoned first, on more slices than partials."""
    from scratch_nn.backends import numba_backend as NB

    monkeypatch.setattr(NB, "FUSED_SLICE_BYTES", 1)
    monkeypatch.setattr(NB, "FUSED_GROUPS", 3)
    r = np.random.default_rng(3)
    x = r.standard_normal((7, 16, 16, 16)).astype(np.float32)
    w = r.standard_normal((24, 16, 3, 3)).astype(np.float32)
    dy = r.standard_normal((7, 24, 16, 16)).astype(np.float32)
    runs = []
    for threads in sorted({1, max(2, CORES)} if CORES > 1 else {1}):
        be = _fused_backend(threads)
        y, cache = be.conv2d_forward(x, w, None, 1, 1, relu=True)
        runs.append((y,) + be.conv2d_backward(dy, cache, w))
        assert all(np.isfinite(a).all() for a in runs[-1])
    for a, b_ in zip(runs[0], runs[-1]):
        assert np.array_equal(a, b_)


def test_the_table_fuses_f2x2_on_large_maps_only_with_enough_slices_a_thread():
    be = _fused_backend(threads=1)
    f32 = np.float32
    assert be._fused_step(2, 64, 64, 64, 32, 32, f32) == 1                # layer1: 1 MB an image
    assert be._fused_step(2, 64, 128, 128, 16, 16, f32) == 2              # layer2
    assert be._fused_step(2, 8, 128, 128, 16, 16, f32) == 2               # 4 slices: enough for 1 thread
    assert be._fused_step(2, 6, 128, 128, 16, 16, f32) == 0               # 3 are not
    assert be._fused_step(2, 64, 256, 256, 8, 8, f32) == 0                # layer3: unfused
    assert be._fused_step(4, 64, 16, 32, 16, 16, f32) == 0                # F(4x4) (the CNN's conv2)
    if CORES > 1:                                                          # the slices a thread count
        two = _fused_backend(threads=2)
        assert two._fused_step(2, 8, 128, 128, 16, 16, f32) == 0
        assert two._fused_step(2, 16, 128, 128, 16, 16, f32) == 2
    auto = backends.get("numba", threads=1)
    auto.conv2d_forward(np.ones((8, 64, 16, 16)), np.ones((64, 64, 3, 3)), None, 1, 1)
    auto.conv2d_forward(np.ones((8, 64, 8, 8)), np.ones((64, 64, 3, 3)), None, 1, 1)
    assert auto.conv_algorithms() == {"64->64 3x3 stride 1 pad 1 on 16x16": "Winograd F(2x2, 3x3), fused per image slice",
                                      "64->64 3x3 stride 1 pad 1 on 8x8": "Winograd F(2x2, 3x3)"}
    assert "fused" in auto.describe()["convolution"]["winograd"]


def test_fused_false_runs_the_unfused_passes_on_the_large_maps_and_agrees(any_slice_count):
    """fused=False (what the choice table is measured with) keeps F(2x2) but unfused: same
    results to float64 rounding, the cache says so, describe() too."""
    n, c, f, h = 3, 16, 8, 16
    r = np.random.default_rng(5)
    x, w, dy = r.standard_normal((n, c, h, h)), r.standard_normal((f, c, 3, 3)), r.standard_normal((n, f, h, h))
    refs = ref_conv3x3(x, w, np.zeros(f), dy, False)
    fused, unfused = _fused_backend(), backends.get("numba", winograd="2x2", fused=False)
    outs = []
    for be in (fused, unfused):
        y, cache = be.conv2d_forward(x, w, None, 1, 1)
        assert cache[0] == "winograd" and (cache[-1] > 0) == (be is fused)
        outs.append((y,) + be.conv2d_backward(dy, cache, w))
    for a, b, ref in zip(*outs, refs):
        np.testing.assert_allclose(a, ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(b, ref, rtol=1e-10, atol=1e-10)
    assert "fused=False" in unfused.describe()["convolution"]["winograd"]
