import numpy as np
import pytest

from scratch_nn import backends

from tests.helpers import ref_conv


def test_numpy_backend_pins_blas_to_one_thread():
    from threadpoolctl import threadpool_info

    be = backends.get("numpy")
    assert be.xp is np and be.threads == 1
    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    assert blas and all(i["num_threads"] == 1 for i in blas)
    with pytest.raises(ValueError, match="numba"):
        backends.get("numpy", threads=4)


def test_unavailable_backends_say_what_to_do():
    for name in ("numba", "cupy"):
        if name in backends.available():
            continue
        with pytest.raises(backends.BackendUnavailable) as e:
            backends.get(name)
        assert "pip install" in str(e.value) or "not available yet" in str(e.value)


def test_cupy_without_gpu_is_an_error_not_a_fallback():
    try:
        import cupy  # noqa: F401
        has_cupy = True
    except ImportError:
        has_cupy = False
    if has_cupy:
        pytest.skip("CuPy is installed here; the GPU tests cover it")
    with pytest.raises(backends.BackendUnavailable, match="cupy"):
        backends.get("cupy")


def test_im2col_col2im_are_adjoint(be):
    """<im2col(x), c> == <x, col2im(c)> for random x and c: col2im is im2col's transpose."""
    r = np.random.default_rng(0)
    for k, s, p in [(3, 1, 1), (3, 2, 1), (1, 2, 0), (2, 2, 0)]:
        x = r.standard_normal((2, 3, 7, 7))
        cols, oh, ow = be.im2col(be.asarray(x), k, k, s, p)
        c = r.standard_normal(cols.shape)
        back = be.col2im(be.asarray(c), x.shape, k, k, s, p, oh, ow)
        lhs = float((be.to_host(cols) * c).sum())
        rhs = float((x * be.to_host(back)).sum())
        assert abs(lhs - rhs) < 1e-9 * max(1.0, abs(lhs))


class _FakeCupy:
    """Just enough of cupy for check_precision: one device of a given compute capability."""

    def __init__(self, cc):
        dev = type("Dev", (), {"compute_capability": cc})
        self.cuda = type("Cuda", (), {"Device": staticmethod(lambda d=None: dev)})


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_ampere_modes_are_refused_on_a_t4_with_one_line_saying_what_to_use(precision, monkeypatch):
    from scratch_nn.backends.cupy_backend import PrecisionUnavailable, check_precision

    monkeypatch.delenv("SCRATCH_NN_SM75", raising=False)
    with pytest.raises(PrecisionUnavailable) as e:
        check_precision(precision, _FakeCupy("75"))
    msg = str(e.value)
    assert "\n" not in msg and "compute capability 8.0" in msg and "7.5" in msg and "fp16" in msg
    check_precision("fp16", _FakeCupy("75"))          # fp16 runs on the T4
    monkeypatch.setenv("SCRATCH_NN_SM75", "1")        # the switch makes an H200 answer as a T4
    with pytest.raises(PrecisionUnavailable):
        check_precision(precision, _FakeCupy("90"))


def test_the_cupy_factory_picks_the_layout_by_precision():
    from scratch_nn.backends import cupy_nhwc_backend as F

    with pytest.raises(ValueError, match="layout"):
        F.make_cupy_backend(layout="nchw")


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (3, 2, 1), (1, 2, 0)])
def test_convolution_in_batch_slices_matches_float64_and_the_whole_batch(be, k, s, p):
    """Batches whose columns exceed COLS_BYTES go in slices, the weight gradient rebuilding
    their columns: the same gradients as one slice, and as a float64 direct convolution, on
    an odd batch and channel counts no block divides."""
    r = np.random.default_rng(k * 10 + s)
    x, w = r.standard_normal((7, 5, 9, 9)), r.standard_normal((6, 5, k, k))
    bias = r.standard_normal(6)
    oh = (9 + 2 * p - k) // s + 1
    dy = r.standard_normal((7, 6, oh, oh))
    ref_y, ref_dx, ref_dw, ref_db = ref_conv(x, w, bias, dy, stride=s, pad=p)
    got = {}
    two = 2 * 5 * k * k * oh * oh * 8                  # the columns of two images
    for budget in (None, two):
        if budget is not None:
            be.COLS_BYTES = budget
        try:
            assert len(be.conv_slices(7, 5 * k * k, oh * oh, 8)) == (1 if budget is None else 4)
            y, cache = be.conv2d_forward(be.asarray(x), be.asarray(w), be.asarray(bias), s, p)
            dx, dw, db = be.conv2d_backward(be.asarray(dy), cache, be.asarray(w))
        finally:
            be.__dict__.pop("COLS_BYTES", None)
        got[budget] = [np.asarray(be.to_host(a)) for a in (y, dx, dw, db)]
        for g, ref in zip(got[budget], (ref_y, ref_dx, ref_dw, ref_db)):
            np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-10)
    for a, b_ in zip(got[None], got[two]):
        np.testing.assert_allclose(a, b_, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1)])
def test_maxpool_sends_the_gradient_to_the_first_maximum_of_a_tied_window(be, k, s, p):
    """Windows with tied maxima (ReLU's zeros, repeated values, a tie of the two diagonals)
    pass the gradient to the first maximum in row-major order, as PyTorch does, on odd counts."""
    r = np.random.default_rng(k)
    x = np.maximum(r.standard_normal((3, 5, 8, 10)), 0)
    x[:, :, ::3, ::2] = 0.5
    x[:, :, 0, 1] = x[:, :, 1, 0] = 9.0                # the first window's max on both diagonals
    n, c, h, w = x.shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    dy = r.standard_normal((n, c, oh, ow))
    xp_ = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    ref_y, ref_dx = np.empty((n, c, oh, ow)), np.zeros_like(xp_)
    for i in range(oh):
        for j in range(ow):
            win = xp_[:, :, i * s:i * s + k, j * s:j * s + k].reshape(n, c, -1)
            first = win.argmax(axis=2)                      # numpy's argmax: the first of equals
            ref_y[:, :, i, j] = win.max(axis=2)
            a, b = np.divmod(first, k)
            np.add.at(ref_dx, (np.arange(n)[:, None], np.arange(c)[None], i * s + a, j * s + b), dy[:, :, i, j])
    y, cache = be.maxpool2d_forward(be.asarray(x), k, s, p)
    dx = be.maxpool2d_backward(be.asarray(dy), cache)
    np.testing.assert_array_equal(be.to_host(y), ref_y)
    np.testing.assert_allclose(be.to_host(dx), ref_dx[:, :, p:p + h, p:p + w], rtol=1e-12, atol=1e-12)


def test_an_unknown_gpu_allocator_is_refused_before_cupy_is_touched():
    from scratch_nn.backends import gpu_allocator

    with pytest.raises(ValueError, match="'malloc' is not one of: auto, async, pool"):
        gpu_allocator.install(None, "malloc", 0)


def test_the_gpu_allocator_of_the_environment_is_checked_too(monkeypatch):
    from scratch_nn.backends import gpu_allocator

    monkeypatch.setenv(gpu_allocator.ENV, "unified")
    with pytest.raises(ValueError, match="'unified' is not one of: auto, async, pool"):
        gpu_allocator.install(None, None, 0)
    assert gpu_allocator.DEFAULT == "auto"


def test_conv_backward_into_adds_the_other_input_gradient(be):
    """conv2d_backward_into(..., add=a) returns dx + a (a residual block's two input gradients,
    which the GPU sums in the data-gradient kernel) and leaves a as it was; without the input
    gradient there is nothing to add to."""
    r = np.random.default_rng(3)
    x, w = r.standard_normal((3, 4, 6, 6)), r.standard_normal((5, 4, 3, 3))
    dy, other = r.standard_normal((3, 5, 6, 6)), r.standard_normal((3, 4, 6, 6))
    _, ref_dx, ref_dw, _ = ref_conv(x, w, np.zeros(5), dy, stride=1, pad=1)
    y, cache = be.conv2d_forward(be.asarray(x), be.asarray(w), None, 1, 1)
    wgrad = be.asarray(np.zeros_like(w))
    a = be.asarray(other)
    dx = be.conv2d_backward_into(be.asarray(dy), cache, be.asarray(w), wgrad, None, add=a)
    np.testing.assert_allclose(be.to_host(dx), ref_dx + other, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(be.to_host(wgrad), ref_dw, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(be.to_host(a), other)
    y, cache = be.conv2d_forward(be.asarray(x), be.asarray(w), None, 1, 1)
    with pytest.raises(ValueError, match="need_dx=True"):
        be.conv2d_backward_into(be.asarray(dy), cache, be.asarray(w), wgrad, None, need_dx=False, add=a)
