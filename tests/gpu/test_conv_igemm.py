"""The tensor-core convolutions (scratch_nn/backends/conv_igemm.py) against a float64 reference on
the GPU: forward (with its BatchNorm statistics), data gradient and weight gradient, for every
convolution shape the two models have and sizes that are not tile multiples, in fp16 (the
sm_80 cp.async path, the sm_75 register-staged one, and on compute capability 9.0 the sm_90a
warpgroup kernels), bf16, and on 9.0 fp32 storage with tf32 products. Outputs are poisoned
first; the error must stay within 2x what torch's own autocast (tf32: its tf32) convolution
shows against float64 on the same inputs (and every value written). Skipped without a GPU,
CuPy and torch."""
import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
torch = pytest.importorskip("torch")
try:
    N_GPU = cupy.cuda.runtime.getDeviceCount()
except Exception:
    N_GPU = 0
pytestmark = pytest.mark.skipif(N_GPU == 0 or not torch.cuda.is_available(), reason="needs a CUDA GPU")

from scratch_nn.backends import conv_igemm as G  # noqa: E402

# (N, C, F, H, k, s, p): the stem, the CNN's, every ResNet-18 shape, odd batches
SHAPES = [
    (7, 3, 64, 32, 3, 1, 1), (1, 3, 16, 32, 3, 1, 1), (7, 16, 32, 16, 3, 1, 1),
    (7, 64, 64, 32, 3, 1, 1), (3, 64, 128, 32, 3, 2, 1), (7, 64, 128, 32, 1, 2, 0),
    (1, 128, 128, 16, 3, 1, 1), (7, 128, 256, 16, 3, 2, 1), (5, 128, 256, 16, 1, 2, 0),
    (7, 256, 256, 8, 3, 1, 1), (7, 256, 512, 8, 3, 2, 1), (7, 256, 512, 8, 1, 2, 0),
    (9, 512, 512, 4, 3, 1, 1), (64, 64, 64, 32, 3, 1, 1), (64, 512, 512, 4, 3, 1, 1),
]
# (storage, async_copy, wgmma)
MODES = [("float16", True, False), ("float16", False, False), ("bfloat16", True, False),
         ("float16", True, True), ("bfloat16", True, True), ("float32", True, True)]
POISON = 0x7e00        # a half NaN (and a bf16 NaN-ish pattern): anything unwritten shows


def poisoned(shape, storage):
    """An output array filled with NaN bits of the storage type."""
    if storage == "float32":
        return cupy.full(shape, np.nan, np.float32)
    return cupy.full(shape, POISON, np.uint16)


def _kernels(storage, async_copy, wgmma, tf32_wgrad=None):
    cc = int(cupy.cuda.Device().compute_capability)
    if (storage == "bfloat16" or async_copy) and cc < 80:
        pytest.skip("needs compute capability 8.0+")
    if wgmma and cc != 90:
        pytest.skip("the warpgroup kernels are sm_90a code (H100, H200)")
    key = (storage, async_copy, wgmma, tf32_wgrad)
    if key not in _CACHE:
        sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
        _CACHE[key] = G.ConvKernels(cupy, storage, async_copy, sms, wgmma=wgmma, tf32_wgrad=tf32_wgrad)
    return _CACHE[key]


def _wgrad_runs(K, storage, async_copy, wgmma, f, c, cp, k, xd, dyd):
    """(kernels, tile) of every weight-gradient tile K's path may take; fp32 storage: both tf32
    families' (each with its own kernels object, as a process has one family)."""
    if K.tf32:
        return [(K2, cfg) for fam in G.TF32_WGRAD_FAMILIES
                for K2 in [_kernels(storage, async_copy, wgmma, fam)]
                for cfg in G.wgrad_tf32_candidates(f, k * k * cp, fam)]
    if K._wgmma_takes(xd, c, f):
        tiles = G.wgrad_wg_candidates(f, k * k * c)
        return [(K, cfg) for cfg in K._wgrad_tma_takes(dyd, xd, tiles) + tiles]
    return [(K, cfg) for cfg in G.wgrad_candidates(f, k * k * c, async_copy)]


def _gemm_tiles(K, f, c, x, ksp, stats=False, dgrad=False):
    """The tiles a forward (or data gradient) GEMM of f channels over c, of a convolution
    ksp = (k, s, p), may take on K's path."""
    halo, tma = K._halo_takes(x, c, f, *ksp), K._tma_takes(x, c, f, *ksp, dgrad=dgrad)
    if halo:
        return halo + tma + G.wgmma_candidates(f, c, K.bk)
    if K._wgmma_takes(x, c, f):
        return tma + G.wgmma_candidates(f, c, K.bk)
    cands = G.igemm_candidates(f, c, K.async_copy)
    return G.stats_tiles(cands) if stats else cands


_CACHE = {}


def to_bits(a, storage):
    """float array -> 16-bit storage bits (uint16), rounded to nearest even; fp32 as it is."""
    a = np.asarray(a, np.float32)
    if storage == "float32":
        return a
    if storage == "float16":
        return a.astype(np.float16).view(np.uint16)
    u = a.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bits(b, storage):
    b = cupy.asnumpy(b) if isinstance(b, cupy.ndarray) else b
    if storage == "float32":
        return b.astype(np.float64)
    if storage == "float16":
        return b.view(np.float16).astype(np.float64)
    return (b.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def ref_conv(x, w, s, p):
    """float64 NHWC x (N, H, W, C), w (F, C, k, k) -> (N, OH, OW, F), on the GPU."""
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).cuda()
    wt = torch.from_numpy(w).cuda()
    return torch.nn.functional.conv2d(xt, wt, stride=s, padding=p).permute(0, 2, 3, 1).cpu().numpy()


def ref_grads(x, w, dy, s, p):
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).cuda().requires_grad_()
    wt = torch.from_numpy(w).cuda().requires_grad_()
    y = torch.nn.functional.conv2d(xt, wt, stride=s, padding=p)
    y.backward(torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2))).cuda())
    return xt.grad.permute(0, 2, 3, 1).cpu().numpy(), wt.grad.cpu().numpy()


def torch_autocast_errors(x, w, dy, s, p, storage, ref_y, ref_dx, ref_dw):
    """torch's own channels-last autocast convolution's relative errors against float64 (fp32
    storage: its fp32 convolution with cuDNN's tf32 allowed)."""
    tf32 = storage == "float32"
    dt = torch.float16 if storage == "float16" else torch.bfloat16
    torch.backends.cudnn.allow_tf32 = tf32
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float().cuda()
    xt = xt.to(memory_format=torch.channels_last).requires_grad_()
    wt = torch.from_numpy(w).float().cuda().requires_grad_()
    with torch.autocast("cuda", dtype=dt, enabled=not tf32):
        y = torch.nn.functional.conv2d(xt, wt, stride=s, padding=p)
    y.backward(torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2))).to(y.dtype).cuda())
    torch.backends.cudnn.allow_tf32 = False
    ty = y.float().permute(0, 2, 3, 1).detach().cpu().numpy()
    tdx = xt.grad.permute(0, 2, 3, 1).cpu().numpy()
    tdw = wt.grad.cpu().numpy()
    errs = rel(ty, ref_y), rel(tdx, ref_dx), rel(tdw, ref_dw)
    if tf32:
        # where cuDNN runs a pass in full fp32 its error is ~1e-7, which no tf32 product can
        # match: the floor is then a correctly rounded tf32 convolution's (float64 over operands
        # rounded to tf32)
        xr, wr, dyr = tf32_rna(x), tf32_rna(w), tf32_rna(dy)
        fy = rel(ref_conv(xr, wr, s, p), ref_y)
        fdx, fdw = ref_grads(xr, wr, dyr, s, p)
        errs = max(errs[0], fy), max(errs[1], rel(fdx, ref_dx)), max(errs[2], rel(fdw, ref_dw))
    return errs


def tf32_rna(a):
    """float64 of fp32 values rounded to tf32 (10 mantissa bits, to nearest, ties away)."""
    u = np.asarray(a, np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32).astype(np.float64)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _case(shape, storage, seed):
    n, c, f, h, k, s, p = shape
    r = np.random.default_rng(seed)
    unit = 32 if storage == "float32" else 16
    cp = -(-c // unit) * unit                           # the stem's channels padded to the K step
    x = np.zeros((n, h, h, cp), np.float32)
    x[..., :c] = r.standard_normal((n, h, h, c))
    w = (r.standard_normal((f, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    oh = (h + 2 * p - k) // s + 1
    dy = r.standard_normal((n, oh, oh, f)).astype(np.float32)
    # the values the kernels see: rounded to the storage type
    xq = from_bits(to_bits(x, storage), storage)
    wq = from_bits(to_bits(w, storage), storage).reshape(w.shape)
    dyq = from_bits(to_bits(dy, storage), storage)
    return x, w, dy, xq, wq, dyq, cp, oh


@pytest.mark.parametrize("storage,async_copy,wgmma", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}C{}F{}H{}k{}s{}".format(*s[:6]))
def test_forward_dgrad_wgrad_match_float64(shape, storage, async_copy, wgmma):
    n, c, f, h, k, s, p = shape
    K = _kernels(storage, async_copy, wgmma)
    x, w, dy, xq, wq, dyq, cp, oh = _case(shape, storage, seed=hash(shape) % 2**31)
    wpad = np.zeros((f, cp, k, k)); wpad[:, :c] = wq
    ref_y = ref_conv(xq, wpad, s, p)
    ref_dx, ref_dw = ref_grads(xq, wpad, dyq, s, p)
    ref_dx, ref_dw = ref_dx[..., :c], ref_dw[:, :c]
    ty, tdx, tdw = torch_autocast_errors(xq[..., :c], wq, dyq, s, p, storage, ref_y, ref_dx, ref_dw)

    xd = cupy.asarray(to_bits(x, storage))
    wd32 = cupy.asarray(w)
    wp = K.pack_forward(wd32, cp=cp)
    y = poisoned((n, oh, oh, f), storage)
    _, stats, bm = K.forward(xd, wp, k, s, p, stats=True, out=y)
    m_tiles = stats.shape[0]
    got_y = from_bits(y, storage)
    assert np.all(np.isfinite(got_y)), "unwritten or non-finite outputs"
    assert rel(got_y, ref_y) <= 2 * ty + 1e-6, (rel(got_y, ref_y), ty)

    # statistics: per-tile (mean, M2) merged (Chan) must give the rounded outputs' mean and variance
    st = cupy.asnumpy(stats).astype(np.float64)
    rows = np.minimum(bm, n * oh * oh - bm * np.arange(m_tiles))
    mean = (st[:, 0] * rows[:, None]).sum(0) / rows.sum()
    m2 = st[:, 1].sum(0) + ((st[:, 0] - mean) ** 2 * rows[:, None]).sum(0)
    yy = got_y.reshape(-1, f)
    np.testing.assert_allclose(mean, yy.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(m2 / rows.sum(), yy.var(0), rtol=1e-3, atol=1e-5)

    dyd = cupy.asarray(to_bits(dy, storage))
    if c >= 16:         # the stem needs no data gradient
        wdg = K.pack_dgrad(wd32)
        dx = poisoned((n, h, h, c), storage)
        K.dgrad(dyd, wdg, k, s, p, (h, h), out=dx)
        got_dx = from_bits(dx, storage)
        assert np.all(np.isfinite(got_dx))
        assert rel(got_dx, ref_dx) <= 2 * tdx + 1e-6, (rel(got_dx, ref_dx), tdx)
        # with add (a residual block's other input gradient): each value dx + add, summed in
        # fp32 and rounded, as add_nhwc would
        addv = to_bits(np.random.default_rng(1).standard_normal(dx.shape), storage)
        dx2 = poisoned((n, h, h, c), storage)
        K.dgrad(dyd, wdg, k, s, p, (h, h), out=dx2, add=cupy.asarray(addv))
        want = to_bits((got_dx.astype(np.float32) + from_bits(addv, storage).astype(np.float32)), storage)
        np.testing.assert_array_equal(cupy.asnumpy(dx2), want)

    dw = cupy.full((f, c, k, k), np.nan, np.float32)
    K.wgrad(dyd, xd, k, s, p, dw, creal=c)
    got_dw = cupy.asnumpy(dw)
    assert np.all(np.isfinite(got_dw))
    assert rel(got_dw, ref_dw) <= 2 * tdw + 1e-6, (rel(got_dw, ref_dw), tdw)
    # accumulate adds, and a second run repeats bitwise (fixed-order reduction)
    K.wgrad(dyd, xd, k, s, p, dw, accumulate=True, creal=c)
    np.testing.assert_array_equal(cupy.asnumpy(dw), 2 * got_dw)


# small shapes that every compiled tile can take as a candidate of (F wide enough, C a K-step multiple)
TILE_SHAPES = [(7, 16, 16, 8, 3, 1, 1), (7, 32, 32, 8, 3, 1, 1), (7, 64, 64, 8, 3, 1, 1),
               (5, 128, 256, 8, 3, 2, 1), (3, 256, 256, 4, 3, 1, 1), (3, 64, 128, 8, 1, 2, 0),
               (3, 64, 64, 16, 3, 1, 1), (3, 64, 128, 16, 3, 1, 1)]       # the last two: conv_halo's


@pytest.mark.parametrize("storage,async_copy,wgmma", MODES)
def test_every_compiled_tile_matches_float64(storage, async_copy, wgmma):
    """The autotuner may pick any tile: each one, pinned, against float64 on shapes that are
    not tile multiples (outputs poisoned)."""
    K = _kernels(storage, async_copy, wgmma)
    ran = set()
    unequal = []
    for shape in TILE_SHAPES:
        n, c, f, h, k, s, p = shape
        if K.tf32 and c % K.bk:     # (the stem's padding is the other test's)
            continue
        x, w, dy, xq, wq, dyq, cp, oh = _case(shape, storage, seed=sum(shape))
        ref_y = ref_conv(xq, wq, s, p)
        ref_dx, ref_dw = ref_grads(xq, wq, dyq, s, p)
        ty, tdx, tdw = torch_autocast_errors(xq, wq, dyq, s, p, storage, ref_y, ref_dx, ref_dw)
        xd, dyd, wd32 = cupy.asarray(to_bits(x, storage)), cupy.asarray(to_bits(dy, storage)), cupy.asarray(w)
        wp, wdg = K.pack_forward(wd32, cp=cp), K.pack_dgrad(wd32)
        for cfg in _gemm_tiles(K, f, cp, xd, (k, s, p)):
            with K.pinned(cfg):
                y = poisoned((n, oh, oh, f), storage)
                K.forward(xd, wp, k, s, p, out=y)
            assert rel(from_bits(y, storage), ref_y) <= 2 * ty + 1e-6, (cfg, shape)
            ran.add(("igemm", cfg))
        # the forward that writes BatchNorm statistics gives the same bits on every tile it may take
        seen = []
        for cfg in _gemm_tiles(K, f, cp, xd, (k, s, p), stats=True):
            with K.pinned(cfg):
                y = poisoned((n, oh, oh, f), storage)
                _, st, _ = K.forward(xd, wp, k, s, p, stats=True, out=y)
            seen.append((cfg, cupy.asnumpy(y), cupy.asnumpy(st)))
        for cfg, yv, sv in seen[1:]:
            assert np.array_equal(yv, seen[0][1]) and np.array_equal(sv, seen[0][2]), (cfg, seen[0][0], shape)
        seen = []
        for cfg in _gemm_tiles(K, c, f, dyd, (k, s, p), dgrad=True) if f % K.bk == 0 or not K.tf32 else []:
            with K.pinned(cfg):
                dx = poisoned((n, h, h, c), storage)
                K.dgrad(dyd, wdg, k, s, p, (h, h), out=dx)
            assert rel(from_bits(dx, storage), ref_dx) <= 2 * tdx + 1e-6, (cfg, shape)
            ran.add(("igemm", cfg))
            seen.append((cfg, cupy.asnumpy(dx)))
        if K.wgmma:     # conv_halo, conv_tma and conv_wgmma are timed against each other: they must agree bitwise
            for cfg, dv in seen[1:]:
                assert np.array_equal(dv, seen[0][1]), (cfg, seen[0][0], shape)
        got = {}
        for K2, cfg in _wgrad_runs(K, storage, async_copy, wgmma, f, c, cp, k, xd, dyd):
            with K2.pinned(cfg):
                dw = cupy.full((f, c, k, k), np.nan, np.float32)
                K2.wgrad(dyd, xd, k, s, p, dw, creal=c)
            assert rel(cupy.asnumpy(dw), ref_dw) <= 2 * tdw + 1e-6, (cfg, shape)
            ran.add(("wgrad", cfg))
            got[cfg] = cupy.asnumpy(dw)
        for cfg, dv in got.items():     # conv_wgrad_tma and its conv_wgrad_wg twin: the same bits
            if cfg[0] == "wgt":
                assert np.array_equal(dv, got[("wgw",) + cfg[1:]]), (cfg, shape)
        # a tf32 family's tiles are timed against each other: each must give its first tile's bits
        for fam in {cfg[0] for cfg in got} & {"wtf", "wtw"}:
            first = next(cfg for cfg in got if cfg[0] == fam)
            unequal += [(shape, cfg, first) for cfg in got if cfg[0] == fam and not np.array_equal(got[cfg], got[first])]
    compiled = {("igemm", cfg) for cfg in G.IGEMM_CONFIGS
                if G.igemm_name(K.kind, cfg, async_copy) in G.name_expressions(K.kind, async_copy)}
    if K.wgmma:     # every warpgroup tile; the mma.sync ones are the other modes' to cover
        compiled = {("igemm", cfg) for cfg in G.WGMMA_CONFIGS + G.HALO_CONFIGS + G.TMA_CONFIGS} | \
            {("wgrad", cfg) for cfg in (G.WGRAD_TF32_CONFIGS + G.WGRAD_TFWG_CONFIGS if K.tf32
                                        else G.WGRAD_WG_CONFIGS + G.WGRAD_TMA_CONFIGS)}
    missing = compiled - ran
    assert not missing, f"compiled tiles no shape here exercised: {sorted(missing)}"
    assert not unequal, f"tiles of one family that differ in their bits: {unequal}"


@pytest.mark.parametrize("storage,async_copy,wgmma", [("float16", True, False), ("bfloat16", True, False),
                                                      ("float32", True, True)])
def test_packed_weights_are_the_rounded_weights_transposed(storage, async_copy, wgmma):
    """pack_forward: (F, C, k, k) -> (F, k*k, Cp) with zeros beyond C; pack_dgrad: -> (C, k*k, F);
    every value the storage type's rounding of the fp32 weight (tf32: to nearest, ties away),
    bit for bit, on sizes that are no multiple of its 32-wide tiles (outputs poisoned)."""
    K = _kernels(storage, async_copy, wgmma)
    r = np.random.default_rng(11)
    for f, c, k, cp in [(64, 3, 3, 16), (48, 40, 3, 40), (37, 70, 1, 72), (512, 512, 3, 512), (5, 6, 7, 8), (33, 9, 8, 9)]:
        w = r.standard_normal((f, c, k, k)).astype(np.float32)
        wq = tf32_rna(w).astype(np.float32) if storage == "float32" else w
        want_f = np.zeros((f, k * k, cp), np.float32)
        want_f[:, :, :c] = wq.reshape(f, c, k * k).transpose(0, 2, 1)
        want_d = wq.reshape(f, c, k * k).transpose(1, 2, 0)
        wd32 = cupy.asarray(w)
        got_f = K.pack_forward(wd32, cp=cp, out=poisoned((f, k * k, cp), storage))
        got_d = K.pack_dgrad(wd32, out=poisoned((c, k * k, f), storage))
        np.testing.assert_array_equal(cupy.asnumpy(got_f), to_bits(want_f, storage), err_msg=f"forward {f, c, k}")
        np.testing.assert_array_equal(cupy.asnumpy(got_d), to_bits(want_d, storage), err_msg=f"dgrad {f, c, k}")
    with pytest.raises(ValueError, match="taps"):
        K.pack_dgrad(cupy.zeros((4, 4, 9, 9), np.float32))


@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
def test_wgmma_groups_in_flight_change_no_bits(storage, monkeypatch):
    """The default (each K step's wgmma group waited for before the next barrier) and
    SCRATCH_NN_WGMMA_INFLIGHT=1 (one group left running across it) issue the same products in
    the same order: every warpgroup tile gives the same bits both ways."""
    base = _kernels(storage, True, True)
    assert base.inflight == 0
    monkeypatch.setenv(G.INFLIGHT_ENV, "1")
    K1f = G.ConvKernels(cupy, storage, True, base.sms, wgmma=True)
    assert K1f.inflight == 1
    for shape in [(3, 64, 64, 16, 3, 1, 1), (5, 128, 256, 8, 3, 2, 1), (3, 256, 256, 4, 3, 1, 1)]:
        n, c, f, h, k, s, p = shape
        x, w, dy, _, _, _, cp, oh = _case(shape, storage, seed=sum(shape) + 1)
        xd, dyd, wd32 = cupy.asarray(to_bits(x, storage)), cupy.asarray(to_bits(dy, storage)), cupy.asarray(w)
        outs = []
        for K in (base, K1f):
            wp, wdg = K.pack_forward(wd32, cp=cp), K.pack_dgrad(wd32)
            got = []
            for cfg in _gemm_tiles(K, f, c, xd, (k, s, p), stats=True):
                with K.pinned(cfg):
                    y = cupy.full((n, oh, oh, f), POISON, np.uint16)
                    _, st, _ = K.forward(xd, wp, k, s, p, stats=True, out=y)
                got += [cupy.asnumpy(y), cupy.asnumpy(st)]
            for cfg in _gemm_tiles(K, c, f, dyd, (k, s, p), dgrad=True):
                with K.pinned(cfg):
                    dx = cupy.full((n, h, h, c), POISON, np.uint16)
                    K.dgrad(dyd, wdg, k, s, p, (h, h), out=dx)
                got.append(cupy.asnumpy(dx))
            for cfg in G.wgrad_wg_candidates(f, k * k * c):
                with K.pinned(cfg):
                    dw = cupy.full((f, c, k, k), np.nan, np.float32)
                    K.wgrad(dyd, xd, k, s, p, dw)
                got.append(cupy.asnumpy(dw))
            outs.append(got)
        assert len(outs[0]) == len(outs[1])
        for a, b in zip(*outs):
            assert a.tobytes() == b.tobytes(), shape
