import numpy as np
import pytest

from scratch_nn import backends


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


def _ref_conv(x, w, b, s, p, dy):
    """float64 direct convolution, its input and weight gradients (loops over taps only)."""
    n, c, h, wd = x.shape
    f, _, k, _ = w.shape
    oh, ow = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
    xp_ = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    y = np.zeros((n, f, oh, ow)) + b.reshape(1, f, 1, 1)
    dxp, dw = np.zeros_like(xp_), np.zeros_like(w)
    for a in range(k):
        for bb in range(k):
            win = xp_[:, :, a:a + s * oh:s, bb:bb + s * ow:s]
            y += np.einsum("ncij,fc->nfij", win, w[:, :, a, bb])
            dw[:, :, a, bb] = np.einsum("nfij,ncij->fc", dy, win)
            dxp[:, :, a:a + s * oh:s, bb:bb + s * ow:s] += np.einsum("nfij,fc->ncij", dy, w[:, :, a, bb])
    return y, dxp[:, :, p:p + h, p:p + wd], dw, dy.sum(axis=(0, 2, 3))


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
    ref_y, ref_dx, ref_dw, ref_db = _ref_conv(x, w, bias, s, p, dy)
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
