"""What is particular to the numba backend: its split GEMM, its thread settings, and that it
trains exactly like the NumPy reference. (The layer, model and optimizer checks in the other
test files already run on numba through the `be` fixture.)"""
import os

import numpy as np
import pytest

from scratch_nn import backends, losses, models, optim

from tests.helpers import check_conv_exact, ref_conv, ref_conv3x3

pytestmark = pytest.mark.skipif("numba" not in backends.available(), reason="numba is not installed")
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_gemm_matches_float64_matmul_for_every_split_and_layout(dtype):
    from scratch_nn.backends.numba_gemm import PartitionedGemm, find_cblas

    cblas = find_cblas()
    if cblas is None:
        pytest.skip("NumPy's BLAS exposes no CBLAS gemm here; the backend uses np.matmul")
    gemm = PartitionedGemm(cblas)
    r = np.random.default_rng(0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    # by columns (conv forward), by the inner dimension (dw with few columns), by rows, tiny
    for m, k, n in [(16, 27, 8192), (16, 8192, 27), (640, 50, 30), (64, 2048, 100), (7, 5, 3), (1, 300, 1)]:
        a = r.standard_normal((m, k)).astype(dtype)
        b = r.standard_normal((k, n)).astype(dtype)
        for A, B in [(a, b), (np.ascontiguousarray(a.T).T, b), (a, np.ascontiguousarray(b.T).T)]:
            ref = A.astype(np.float64) @ B.astype(np.float64)
            for threads in (1, 2, 3):
                c = gemm(A, B, threads)
                assert c.dtype == dtype and c.shape == (m, n)
                assert np.abs(c - ref).max() <= tol * max(1.0, np.abs(ref).max()), (m, k, n, threads)


def test_a_raised_blas_thread_count_is_pinned_back_to_one_before_numba_runs_gemms():
    """Numba's threads each call BLAS on their slice; a BLAS count above one (set by anything
    else in the process) would make every such call start OpenBLAS's own pool inside numba's."""
    from scratch_nn.backends import numba_gemm

    found = numba_gemm._numpy_blas()
    if found is None or found[1] is None:
        pytest.skip("NumPy's BLAS exposes no CBLAS gemm or OpenBLAS thread count here")
    get, put = found[1]
    be = backends.get("numba", threads=min(2, CORES))
    put(3)
    assert get() == 3
    a = np.random.default_rng(1).standard_normal((64, 96)).astype(np.float32)
    c = be.gemm(a, a.T)
    assert get() == 1
    assert np.allclose(c, a.astype(np.float64) @ a.T, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batched_gemm_matches_float64_matmul_for_plain_and_transposed_stacks(dtype):
    be = backends.get("numba")
    r = np.random.default_rng(5)
    a, b = r.standard_normal((16, 7, 11)).astype(dtype), r.standard_normal((16, 11, 13)).astype(dtype)
    at = np.ascontiguousarray(a.transpose(0, 2, 1)).transpose(0, 2, 1)      # items: transposed blocks
    bt = np.ascontiguousarray(b.transpose(0, 2, 1)).transpose(0, 2, 1)
    ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    from scratch_nn.backends.numba_backend import _planes

    def skewed(s):                                      # the Winograd planes' layout: items apart by a block + slack
        p = _planes(*s.shape, dtype)
        p[...] = s
        return p

    sa, sb = skewed(a), skewed(b)
    sat = skewed(a.transpose(0, 2, 1).copy()).transpose(0, 2, 1)
    assert not sa.flags.c_contiguous and sa.strides[0] > a.strides[0]
    it, skew = np.dtype(dtype).itemsize, 5
    buf = np.empty(16 * (91 + skew), dtype=dtype)
    spaced = np.lib.stride_tricks.as_strided(buf, (16, 7, 13), ((91 + skew) * it, 13 * it, it))
    slack = np.ones(buf.shape, bool)
    slack.reshape(16, 91 + skew)[:, :91] = False
    for x, y in ((a, b), (at, b), (a, bt), (at, bt), (sa, sb), (sat, sb), (sa, bt)):
        for out in (np.full((16, 7, 13), np.nan, dtype=dtype), spaced):
            buf[...] = np.nan
            buf[slack] = 7.0
            assert be.gemm_batched(x, y, out) is out
            np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
            assert (buf[slack] == 7.0).all()                            # nothing written between the items
    with pytest.raises(ValueError, match="batched gemm"):
        be.gemm_batched(a, b, np.empty((16, 7, 12), dtype=dtype))
    with pytest.raises(ValueError, match="batched gemm"):                # overlapping items
        be.gemm_batched(a, b, np.lib.stride_tricks.as_strided(np.empty(16 * 91 + 91, dtype), (16, 7, 13),
                                                             (dtype().itemsize * 50, dtype().itemsize * 13, dtype().itemsize)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batched_gemm_takes_one_block_for_every_item_and_sums_in_an_order_fixed_by_the_group(dtype):
    """batched with a shared 2-D operand (the per-image im2col's weights), and batched_sum (its
    weight gradient) against float64, bitwise the same on one thread and on every core."""
    r = np.random.default_rng(6)
    w, cols = r.standard_normal((5, 12)).astype(dtype), r.standard_normal((19, 12, 33)).astype(dtype)
    g = r.standard_normal((19, 5, 33)).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    sums = []
    for threads in sorted({1, CORES}):
        be = backends.get("numba", threads=threads)
        out = np.full((19, 5, 33), np.nan, dtype=dtype)
        be.gemm_batched(w, cols, out)
        np.testing.assert_allclose(out, np.matmul(w.astype(np.float64), cols), rtol=tol, atol=tol)
        be.gemm_batched(w.T.copy().T, cols, out)                     # a transposed block
        np.testing.assert_allclose(out, np.matmul(w.astype(np.float64), cols), rtol=tol, atol=tol)
        dw = np.full((5, 12), np.nan, dtype=dtype)
        assert be.gemm_batched_sum(g, cols.transpose(0, 2, 1), dw) is dw
        ref = np.einsum("tfp,tkp->fk", g.astype(np.float64), cols)
        np.testing.assert_allclose(dw, ref, rtol=tol, atol=tol * 10)
        sums.append(dw.copy())
        with pytest.raises(ValueError, match="batched sum"):
            be.gemm_batched_sum(g, cols.transpose(0, 2, 1), np.empty((5, 13), dtype=dtype))
        with pytest.raises(ValueError, match="batched gemm"):
            be.gemm_batched(w, cols[:, :11], out)
    assert all((s_ == sums[0]).all() for s_ in sums)


PER_IMAGE_CASES = [  # (n, c, f, h, k, stride, pad, relu, bias): odd sizes and counts no block divides
    (7, 3, 5, 17, 3, 1, 1, True, True), (1, 5, 6, 16, 3, 2, 1, False, False), (9, 6, 7, 33, 1, 2, 0, True, True),
    (3, 2, 4, 15, 3, 2, 1, True, False), (2, 3, 16, 32, 3, 1, 1, True, True)]


@pytest.mark.parametrize("shape", PER_IMAGE_CASES)
def test_per_image_convolution_matches_float64_in_one_slice_and_in_many(shape, monkeypatch):
    """im2col per image (forward, data and weight gradient, bias, fused ReLU) against a float64
    direct convolution to 1e-10, with the batch whole and in slices of two images (columns
    rebuilt in backward); float32 within 1e-5 of the largest entry."""
    from scratch_nn.backends import numba_backend as NB

    n, c, f, h, k, s, p, relu, bias = shape
    r = np.random.default_rng(n * 100 + c)
    x, w = r.standard_normal((n, c, h, h)), r.standard_normal((f, c, k, k))
    b = r.standard_normal(f) if bias else None
    oh = (h + 2 * p - k) // s + 1
    dy = r.standard_normal((n, f, oh, oh))
    refs = ref_conv(x, w, b if bias else np.zeros(f), dy, relu, stride=s, pad=p)
    monkeypatch.setattr(NB, "IMAGE_COLUMNS_MIN_POSITIONS", 1)
    be = backends.get("numba")
    assert be.per_image_columns(w, x.shape, s, p)
    f32 = [a.astype(np.float32) if a is not None else None for a in (x, w, b, dy)]
    y32, cache32 = be.conv2d_forward(f32[0], f32[1], f32[2], s, p, relu=relu)
    for g_, ref in zip((y32,) + be.conv2d_backward(f32[3], cache32, f32[1]), refs):
        assert g_.dtype == np.float32 and np.abs(g_ - ref).max() <= 1e-5 * np.abs(ref).max()
    two = 2 * (c * k * k + 1) * oh * oh * 8                             # two images' columns
    for budget in (None, two):
        if budget is not None:
            monkeypatch.setattr(be, "COLS_BYTES", budget)
        y, cache = be.conv2d_forward(x, w, b, s, p, relu=relu)
        assert cache[0] == "per_image" and (cache[2] is None) == (budget is not None and n > 2)
        got = be.conv2d_backward(dy, cache, w)
        for g_, ref in zip((y,) + got, refs):
            np.testing.assert_allclose(g_, ref, rtol=1e-10, atol=1e-10)
        no_dx, dw, db = be.conv2d_backward(dy, cache, w, need_dx=False)
        assert no_dx is None and (dw == got[1]).all() and (db == got[2]).all()


POSITION_CASES = [  # (n, c, f, h, k, stride, pad, relu, bias): ResNet-18's small-map shapes and odd ones
    (7, 5, 6, 9, 3, 2, 1, True, True), (1, 3, 4, 8, 3, 2, 1, False, False), (7, 6, 5, 9, 1, 2, 0, True, True),
    (2, 4, 7, 7, 3, 1, 1, False, True), (3, 9, 10, 6, 3, 1, 0, True, False), (2, 3, 5, 10, 5, 2, 2, False, True)]


@pytest.mark.parametrize("shape", POSITION_CASES)
def test_position_columns_convolution_matches_float64_in_one_slice_and_in_many(shape, monkeypatch):
    """im2col with a row per output position (forward, data and weight gradient, bias, fused
    ReLU) against a float64 direct convolution to 1e-10, with the batch whole and in slices of
    two images (columns rebuilt in backward); float32 within 1e-5 of the largest entry, on 1
    thread and on every core."""
    n, c, f, h, k, s, p, relu, bias = shape
    r = np.random.default_rng(n * 100 + c + k)
    x, w = r.standard_normal((n, c, h, h)), r.standard_normal((f, c, k, k))
    b = r.standard_normal(f) if bias else None
    oh = (h + 2 * p - k) // s + 1
    dy = r.standard_normal((n, f, oh, oh))
    refs = ref_conv(x, w, b if bias else np.zeros(f), dy, relu, stride=s, pad=p)
    be = backends.get("numba", image_columns=False, winograd="off")
    f32 = [a.astype(np.float32) if a is not None else None for a in (x, w, b, dy)]
    for threads in sorted({1, CORES}):
        b32 = backends.get("numba", threads=threads, image_columns=False, winograd="off")
        y32, cache32 = b32.conv2d_forward(f32[0], f32[1], f32[2], s, p, relu=relu)
        got = (y32,) + b32.conv2d_backward(f32[3], cache32, f32[1])
        for g_, ref in zip(got, refs):
            assert g_.dtype == np.float32 and np.abs(g_ - ref).max() <= 1e-5 * np.abs(ref).max()
    two = 2 * c * k * k * oh * oh * 8                                      # two images' columns
    for budget in (None, two):
        if budget is not None:
            monkeypatch.setattr(be, "COLS_BYTES", budget)
        y, cache = be.conv2d_forward(x, w, b, s, p, relu=relu)
        assert cache[0] == "positions" and (cache[2] is None) == (budget is not None and n > 2)
        check_conv_exact(be, y, cache, dy, w, refs)
    assert be.conv_algorithms() == {f"{c}->{f} {k}x{k} stride {s} pad {p} on {h}x{h}": "im2col GEMM, a row per position"}
    off = backends.get("numba", image_columns=False, winograd="off", position_columns=False)
    y, cache = off.conv2d_forward(x, w, b, s, p, relu=relu)
    assert not isinstance(cache[0], str) and "batch_columns" not in off.describe()["convolution"]
    np.testing.assert_allclose(y, refs[0], rtol=1e-10, atol=1e-10)


def test_position_column_kernels_write_every_output():
    """im2col_positions and col2im_positions, into outputs poisoned with NaN, leave no NaN
    behind and are each other's adjoints: <im2col(x), d> == <x, col2im(d)>."""
    from scratch_nn.backends import numba_kernels as K

    r = np.random.default_rng(5)
    for k, s, p in ((3, 1, 1), (3, 2, 1), (1, 2, 0), (3, 2, 0)):
        x = r.standard_normal((3, 4, 9, 10))
        oh, ow = (9 + 2 * p - k) // s + 1, (10 + 2 * p - k) // s + 1
        cols = np.full((3 * oh * ow, 4 * k * k), np.nan)
        K.im2col_positions(x, k, k, s, p, oh, ow, cols)
        assert np.isfinite(cols).all()
        d = r.standard_normal(cols.shape)
        dx = np.full(x.shape, np.nan)
        K.col2im_positions(d, k, k, s, p, oh, ow, dx)
        assert np.isfinite(dx).all()
        np.testing.assert_allclose((cols * d).sum(), (x * dx).sum(), rtol=1e-12)


def test_per_image_column_kernels_write_every_output():
    """im2col_images and col2im (image-major), into outputs poisoned with NaN, leave no NaN behind."""
    from scratch_nn.backends import numba_kernels as K

    r = np.random.default_rng(4)
    for k, s, p in ((3, 1, 1), (3, 2, 1), (1, 2, 0)):
        x = r.standard_normal((3, 4, 9, 10))
        oh, ow = (9 + 2 * p - k) // s + 1, (10 + 2 * p - k) // s + 1
        cols = np.full((3, 4 * k * k + 1, oh * ow), np.nan)
        K.im2col_images(x, k, k, s, p, oh, ow, cols)
        assert np.isfinite(cols).all() and (cols[:, -1] == 1).all()
        dx = np.full(x.shape, np.nan)
        K.col2im(cols[:, :-1].copy(), True, k, k, s, p, oh, ow, dx)
        assert np.isfinite(dx).all()


def test_thread_settings_survive_other_backends():
    import numba
    from threadpoolctl import threadpool_info

    be = backends.get("numba", threads=min(2, CORES))
    backends.get("numpy")                               # pins BLAS to one thread, process-wide
    numba.set_num_threads(1)
    a = np.ones((64, 64), np.float32)
    assert np.array_equal(be.gemm(a, a), np.full((64, 64), 64, np.float32))
    assert numba.get_num_threads() == be.threads
    blas = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    assert blas == {1 if be.gemm_mode == "numba-split" else be.threads}
    d = be.describe()
    assert d["threads"] == be.threads and d["gemm"] == be.gemm_mode and d["threading_layer"]


def test_thread_count_is_checked():
    import numba

    with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
        backends.get("numba", threads=numba.config.NUMBA_NUM_THREADS + 1)
    assert backends.get("numba").threads == min(CORES, numba.config.NUMBA_NUM_THREADS)   # default: every core


@pytest.mark.parametrize("name,batch", [("cnn", 32), ("resnet18", 4)])
def test_same_loss_curve_as_numpy_for_20_steps(name, batch):
    """Same seed, same data, SGD with momentum: the numba loss curve is NumPy's. In float64 the
    two agree to 1e-10 over all 20 steps. In float32, memorising tiny batches amplifies rounding
    (ResNet-18's float32 curves drift 1e-3 apart within 20 steps on either backend), so the
    tolerance is measured, not guessed: numba's float32 curve must stay as close to the float64
    curve, on average over the 20 steps, as NumPy's own float32 curve does (2x), and lie within
    1e-5 of the float64 curve over the first 3 steps, before it drifts. The average, not the
    largest step: once drifting, each step's gap is one chaotic sample (on a Zen 5 core the
    largest gaps came out 2.2x apart with OpenBLAS's AVX2 kernels and 1.0x with its AVX-512 ones,
    while the averages were 1.1x and 0.9x). (NumPy's float32 curve of resnet18, with its Winograd
    layers, is already 1.6e-5 from float64 at step 3 and 2.8e-4 at step 4; with im2col 4.8e-5 at
    step 4; numba's 1.3e-7 and 1.8e-6: comparing the two float32 curves step by step would test
    their rounding, not numba.)"""
    r = np.random.default_rng(1)
    data = [(r.standard_normal((batch, 3, 32, 32)), r.integers(0, 10, batch)) for _ in range(4)]

    def curve(name_be, dtype):
        be = backends.get(name_be)
        net = models.build(name, backend=be, seed=0, dtype=dtype)
        opt = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        out = []
        for step in range(20):
            x, y = data[step % len(data)]
            net.train()
            opt.zero_grad()
            loss, d = losses.softmax_cross_entropy(net.forward(be.asarray(x, dtype)), be.asarray(y), backend=be)
            net.backward(d, input_grad=False)
            opt.step()
            out.append(float(loss))
        return np.array(out)

    numba32, numpy32, numpy64 = curve("numba", "float32"), curve("numpy", "float32"), curve("numpy", "float64")
    assert np.all(np.isfinite(numba32)) and numba32[-1] < numba32[0]   # it learns: the batches repeat
    np.testing.assert_allclose(curve("numba", "float64"), numpy64, rtol=1e-10, atol=0)
    np.testing.assert_allclose(numba32[:3], numpy64[:3], rtol=1e-5, atol=0)
    assert np.abs(numba32 - numpy64).mean() <= 2 * np.abs(numpy32 - numpy64).mean() + 1e-6


# (tile the table picks, shape): F(4x4) in its mode on multiples of 4 from 8 rows, F(2x2) on
# other even sizes from 4 rows (4x4 maps: four tiles an image); odd batches and channel counts
WINOGRAD_CASES = [(4, (1, 64, 5, 8, False)), (4, (2, 65, 7, 16, True)), (4, (3, 128, 32, 12, False)),
                  (2, (7, 67, 9, 10, True)), (2, (2, 64, 3, 14, False)), (2, (5, 64, 7, 4, True)),
                  (2, (3, 9, 20, 6, True)),
                  # more images than one transform task takes (64 at 4x4, 16 at 8x8): a partial last block
                  (2, (70, 8, 9, 4, True)), (4, (20, 8, 5, 8, False))]
# float32 against the float64 direct convolution, relative to the largest entry: F(4x4)'s
# transform coefficients (up to 8, and 1/24) amplify rounding: up to 1e-5 measured (512 channels
# at 4x4), 20x im2col's and F(2x2)'s
F32_BOUND = {2: 1e-5, 4: 3e-5}


@pytest.mark.parametrize("tile,shape", WINOGRAD_CASES)
def test_winograd_convolution_matches_float64_in_one_slice_and_in_many(tile, shape, monkeypatch):
    """The Winograd paths (forward, data and weight gradient, bias, fused ReLU) against a
    float64 direct convolution to 1e-10, in one batch slice and in slices of one image
    (transforms rebuilt in backward); float32 within F32_BOUND of it."""
    n, c, f, h, relu = shape
    r = np.random.default_rng(n * 100 + c)
    x, w, b = r.standard_normal((n, c, h, h)), r.standard_normal((f, c, 3, 3)), r.standard_normal(f)
    dy = r.standard_normal((n, f, h, h))
    refs = ref_conv3x3(x, w, b, dy, relu)
    be = backends.get("numba", winograd={4: "4x4", 2: "2x2"}[tile])
    assert be.winograd_tile(w, x.shape, 1, 1) == tile
    wk = be._winograd_kernels[tile]
    from scratch_nn.backends import numba_backend as NB

    one = wk.POSITIONS * max(c, f) * h * h // tile ** 2 * 8      # one image's transformed tiles
    for budget in (None, one):                                  # whole batch; one image a slice
        if budget is not None:
            monkeypatch.setattr(NB, "WINOGRAD_KEEP_BYTES", one * n - 1)
            monkeypatch.setattr(NB, "WINOGRAD_SLICE_BYTES", one)
            assert len(be._winograd_slices(wk, n, c, f, h, h, 8)) == (n if n > 1 else 1)
        y, cache = be.conv2d_forward(x, w, b, 1, 1, relu=relu)
        assert cache[0] == "winograd" and cache[5] is wk and (cache[2] is None) == (budget is not None and n > 1)
        dx, dw, db = be.conv2d_backward(dy, cache, w)
        for got, ref in zip((y, dx, dw, db), refs):
            np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
    y32, cache32 = be.conv2d_forward(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), 1, 1, relu=relu)
    dx32, dw32, db32 = be.conv2d_backward(dy.astype(np.float32), cache32, w.astype(np.float32))
    for got, ref in zip((y32, dx32, dw32, db32), refs):
        assert got.dtype == np.float32 and np.abs(got - ref).max() <= F32_BOUND[tile] * np.abs(ref).max()


@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_transforms_write_every_output(tile):
    """Each transform kernel, into outputs poisoned with NaN, leaves no NaN behind."""
    from scratch_nn.backends import numba_winograd, numba_winograd4

    wk = {2: numba_winograd, 4: numba_winograd4}[tile]
    r = np.random.default_rng(3)
    x, w = r.standard_normal((3, 5, 8, 12)), r.standard_normal((4, 5, 3, 3))
    p, t = wk.POSITIONS, 3 * (8 // tile) * (12 // tile)
    u, v, m = np.full((p, 4, 5), np.nan), np.full((p, 5, t), np.nan), r.standard_normal((p, 4, t))
    y, dm, dx, dw = np.full((3, 4, 8, 12), np.nan), np.full((p, 4, t), np.nan), np.full(x.shape, np.nan), \
        np.full(w.shape, np.nan)
    wk.weights(w, u)
    wk.inputs(x, v)
    wk.outputs(m, u[0, 0, :0], False, False, y)
    wk.outputs_adjoint(y, y, False, dm)
    wk.inputs_adjoint(v, dx)
    wk.weights_adjoint(u, dw)
    for a in (u, v, y, dm, dx, dw):
        assert np.isfinite(a).all()


def test_winograd_is_chosen_by_the_table_and_can_be_turned_off(monkeypatch):
    be = backends.get("numba")
    w64 = np.zeros((64, 64, 3, 3))
    assert be.winograd_mode == "auto" and be.winograd_tile(w64, (2, 64, 32, 32), 1, 1) == 2
    assert be.winograd_tile(w64, (2, 64, 4, 4), 1, 1) == 2              # 4x4 maps: four F(2x2) tiles an image
    assert not be.winograd_applies(w64, (2, 64, 2, 2), 1, 1)            # below 4 rows: im2col
    f4 = backends.get("numba", winograd="4x4")      # opt-in: less exact in float32 (numba_backend.py)
    assert f4.winograd_tile(w64, (2, 64, 32, 32), 1, 1) == 4
    assert f4.winograd_tile(w64, (2, 64, 8, 8), 1, 1) == 4
    assert f4.winograd_tile(w64, (2, 64, 4, 4), 1, 1) == 2              # one F(4x4) tile an image measured slower
    assert f4.winograd_tile(w64, (2, 64, 10, 10), 1, 1) == 2            # even, not a multiple of 4
    assert f4.winograd_tile(w64, (2, 64, 6, 6), 1, 1) == 2
    assert "mode 4x4" in f4.describe()["convolution"]["winograd"]
    assert not be.winograd_applies(np.zeros((64, 3, 3, 3)), (2, 3, 32, 32), 1, 1)     # the stem
    conv2 = np.zeros((32, 16, 3, 3))
    assert be.winograd_tile(conv2, (2, 16, 16, 16), 1, 1) == 4                       # the CNN's conv2: F(4x4)
    assert be.winograd_tile(np.zeros((32, 63, 3, 3)), (2, 63, 16, 16), 1, 1) == 4    # below 64 channels
    assert be.winograd_tile(conv2, (2, 16, 4, 4), 1, 1) == 2                         # F(4x4) from 8 rows
    assert backends.get("numba", winograd="2x2").winograd_tile(conv2, (2, 16, 16, 16), 1, 1) == 2
    assert "below 64 input channels" in be.describe()["convolution"]["winograd"]
    assert not be.winograd_applies(np.zeros((8, 7, 3, 3)), (2, 7, 16, 16), 1, 1)      # below 8 channels
    assert not be.winograd_applies(w64, (2, 64, 32, 32), 2, 1)          # stride 2
    assert not be.winograd_applies(w64, (2, 64, 9, 9), 1, 1)            # odd size
    assert "winograd" in be.describe()["convolution"]
    off = backends.get("numba", winograd=False)
    assert not off.winograd_applies(w64, (2, 64, 32, 32), 1, 1) and "winograd" not in off.describe()["convolution"]
    monkeypatch.setenv("SCRATCH_NN_WINOGRAD", "4x4")
    assert backends.get("numba").winograd_mode == "4x4"
    # what ran is recorded per shape (a run's summary.json: conv_algorithms)
    x = np.random.default_rng(0).standard_normal((1, 64, 8, 8))
    for b, algo in ((be, "Winograd F(2x2, 3x3)"), (f4, "Winograd F(4x4, 3x3)"), (off, "im2col GEMM, a row per position")):
        b.conv2d_forward(x, np.ones((64, 64, 3, 3)), None, 1, 1)
        assert b.conv_algorithms() == {"64->64 3x3 stride 1 pad 1 on 8x8": algo}
    monkeypatch.setenv("SCRATCH_NN_WINOGRAD", "6x6")
    with pytest.raises(ValueError, match="'6x6'.*not one of: off, auto, 2x2, 4x4"):
        backends.get("numba")


def test_per_image_columns_are_chosen_by_positions_and_can_be_turned_off():
    be = backends.get("numba")
    stem, s2 = np.zeros((64, 3, 3, 3)), np.zeros((128, 64, 3, 3))
    assert be.per_image_columns(stem, (2, 3, 32, 32), 1, 1)              # 1,024 positions an image
    assert be.per_image_columns(s2, (2, 64, 32, 32), 2, 1)               # 256
    assert not be.per_image_columns(np.zeros((256, 128, 3, 3)), (2, 128, 16, 16), 2, 1)   # 64: over the batch
    assert not be.per_image_columns(np.zeros((64, 64, 3, 3)), (2, 64, 32, 32), 1, 1)      # Winograd's
    assert "per_image" in be.describe()["convolution"]
    off = backends.get("numba", image_columns=False)
    assert not off.per_image_columns(stem, (2, 3, 32, 32), 1, 1) and "per_image" not in off.describe()["convolution"]
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16))
    for b, algo in ((be, "im2col GEMM per image"), (off, "im2col GEMM, a row per position")):
        b.conv2d_forward(x, np.ones((8, 3, 3, 3)), None, 1, 1)
        assert b.conv_algorithms() == {"3->8 3x3 stride 1 pad 1 on 16x16": algo}
