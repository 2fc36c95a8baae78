"""The index arithmetic of the tensor-core convolutions, checked on the CPU: a NumPy emulation
of what cuda/conv_igemm.cu computes (the tap tables of conv_igemm.py, the gather at
(i * s + dh, j * s + dw), the sub-pixel classes of the stride-2 data gradient written at
(i * os + ph, j * os + pw), the weight packings, the wgrad gather) against torch's float64
convolution and its gradients, for every convolution shape of the two models."""
import numpy as np
import pytest

from scratch_nn.backends import conv_igemm as G

torch = pytest.importorskip("torch")

SHAPES = [(2, 3, 16, 8, 3, 1, 1), (2, 16, 32, 8, 3, 1, 1), (3, 8, 16, 8, 3, 2, 1), (2, 8, 16, 8, 1, 2, 0),
          (1, 8, 8, 4, 3, 1, 1), (2, 8, 16, 4, 3, 2, 1), (1, 8, 8, 6, 1, 1, 0)]


def pack(w, for_dgrad, cp=None):
    """cuda/conv_igemm.cu's pack_weights, index for index: each block's tile through its shared
    memory (unwritten words NaN, so a read of one shows), as conv_igemm.py launches it."""
    f, c, kh, kw = w.shape
    taps, cp = kh * kw, cp or c
    flat = w.reshape(-1)
    out = np.full((c * taps * f) if for_dgrad else (f * taps * cp), np.nan)
    if not for_dgrad:
        for fb in range(f):
            for c0 in range(0, cp, 32):
                s = np.full(32 * (G.MAX_TAPS + 1), np.nan)
                n = max(0, min(32, c - c0)) * taps
                s[:n] = flat[(fb * c + c0) * taps:(fb * c + c0) * taps + n]
                for j in range(32 * taps):
                    t, cl = j >> 5, j & 31
                    if c0 + cl < cp:
                        out[(fb * taps + t) * cp + c0 + cl] = s[cl * taps + t] if c0 + cl < c else 0.0
        return out.reshape(f, taps, cp)
    ct = min(32, G.MAX_TAPS // taps)
    row = ct * taps + 1
    for f0 in range(0, f, 32):
        for c0 in range(0, c, ct):
            s = np.full(32 * (G.MAX_TAPS + 1), np.nan)
            nf, n = min(32, f - f0), min(ct, c - c0) * taps
            for i in range(nf * n):
                fl, r = divmod(i, n)
                s[fl * row + r] = flat[((f0 + fl) * c + c0) * taps + r]
            for j in range(32 * n):
                fl, ctp = j & 31, j >> 5
                if fl < nf:
                    out[(c0 * taps + ctp) * f + f0 + fl] = s[fl * row + ctp]
    return out.reshape(c, taps, f)


@pytest.mark.parametrize("f,c,k,cp", [(70, 40, 3, 48), (33, 9, 8, 16), (40, 70, 1, 70), (5, 3, 3, 16)])
def test_pack_weights_tiles_are_the_transposes(f, c, k, cp):
    """pack_weights' tiles (several along f and c, partial ones at both ends) put every weight
    where the GEMMs read it: (F, taps, Cp) zero-padded, and (C, taps, F)."""
    w = np.random.default_rng(f + c).standard_normal((f, c, k, k))
    want = np.zeros((f, k * k, cp))
    want[:, :, :c] = w.reshape(f, c, k * k).transpose(0, 2, 1)
    np.testing.assert_array_equal(pack(w, False, cp), want)
    np.testing.assert_array_equal(pack(w, True), w.reshape(f, c, k * k).transpose(1, 2, 0))


def igemm(x, wp, table, grid_hw, s, out_hw, os_):
    """conv_igemm: for each class z and tap t, out[n, i*os+ph, j*os+pw, :] += x[n, i*s+dh, j*s+dw, :] @ wp[:, idx, :]^T."""
    n, h, w, c = x.shape
    f = wp.shape[0]
    ohc, owc = grid_hw
    y = np.full((n, out_hw[0], out_hw[1], f), np.nan)
    ii, jj = np.meshgrid(np.arange(ohc), np.arange(owc), indexing="ij")
    for z in range(table.shape[0]):
        ph, pw = z >> 1, z & 1
        acc = np.zeros((n, ohc, owc, f))
        for t in range(table[z, 0]):
            dh, dw, idx = table[z, 1 + 3 * t:4 + 3 * t]
            ih, iw = ii * s + dh, jj * s + dw
            ok = (ih >= 0) & (ih < h) & (iw >= 0) & (iw < w)
            a = np.where(ok[None, :, :, None], x[:, np.clip(ih, 0, h - 1), np.clip(iw, 0, w - 1), :], 0.0)
            acc += a @ wp[:, idx, :].T
        y[:, ii * os_ + ph, jj * os_ + pw, :] = acc
    return y


def wgrad(dy, x, k, s, p):
    """conv_wgrad + wgrad_reduce: dW[f, c, kh, kw] = sum_m dY[m, f] * X[n, oh*s-p+kh, ow*s-p+kw, c]."""
    n, oh, ow, f = dy.shape
    _, h, w, c = x.shape
    out = np.zeros((f, c, k, k))
    o_h, o_w = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
    for kh in range(k):
        for kw in range(k):
            ih, iw = o_h * s - p + kh, o_w * s - p + kw
            ok = (ih >= 0) & (ih < h) & (iw >= 0) & (iw < w)
            xt = np.where(ok[None, :, :, None], x[:, np.clip(ih, 0, h - 1), np.clip(iw, 0, w - 1), :], 0.0)
            out[:, :, kh, kw] = dy.reshape(-1, f).T @ xt.reshape(-1, c)
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_emulated_kernels_match_torch_float64(shape):
    n, c, f, h, k, s, p = shape
    r = np.random.default_rng(sum(shape))
    cp = 16 if c % 16 else c
    x = np.zeros((n, h, h, cp))
    x[..., :c] = r.standard_normal((n, h, h, c))
    w = r.standard_normal((f, c, k, k))
    xt = torch.from_numpy(np.ascontiguousarray(x[..., :c].transpose(0, 3, 1, 2))).requires_grad_()
    wt = torch.from_numpy(w).requires_grad_()
    yt = torch.nn.functional.conv2d(xt, wt, stride=s, padding=p)
    oh = yt.shape[2]
    dy = r.standard_normal((n, oh, oh, f))
    yt.backward(torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2))))

    y = igemm(x, pack(w, False, cp), G.taps_forward(k, s, p), (oh, oh), s, (oh, oh), 1)
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)

    wd = pack(w, True)
    table = G.taps_dgrad(k, s, p)
    if s == 1:
        dx = igemm(dy, wd, table, (h, h), 1, (h, h), 1)
    else:
        dx = igemm(dy, wd, table, (h // 2, h // 2), 1, (h, h), 2)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)

    np.testing.assert_allclose(wgrad(dy, x, k, s, p)[:, :c], wt.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (3, 2, 1), (1, 2, 0), (1, 1, 0)])
def test_the_data_gradient_classes_use_every_tap_once(k, s, p):
    t = G.taps_dgrad(k, s, p)
    used = sorted(int(t[z, 3 + 3 * i]) for z in range(t.shape[0]) for i in range(t[z, 0]))
    assert used == list(range(k * k))
    assert all(t[z, 28] == k * k for z in range(t.shape[0]))


def test_tiles_exist_for_every_model_shape_on_both_paths():
    for f, c in ((64, 16), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (512, 256), (512, 512),
                 (16, 16), (32, 16)):
        for async_copy in (True, False):
            for a, b in ((f, c), (c, f)):          # forward: F over C; data gradient: C over F
                cands = G.igemm_candidates(a, b, async_copy)
                assert cands and G.igemm_default(a, b, async_copy) in cands
                assert all(b % cfg[2] == 0 for cfg in cands)
                if not async_copy:
                    assert all(G.igemm_smem(cfg, False) + G.igemm_static_smem(cfg) <= G.T4_SMEM for cfg in cands)
            kcols = 9 * c
            wc = G.wgrad_candidates(f, kcols, async_copy)
            assert wc and all(kcols % cfg[1] == 0 for cfg in wc) and G.wgrad_default(f, kcols, async_copy) in wc
    names = G.name_expressions(0, False)
    assert len(names) == len(set(names)) and all(", 2, false>" in n for n in names if n.startswith("conv_"))


def test_fast_division_is_exact():
    r = np.random.default_rng(0)
    for d in list(range(1, 70)) + [256, 1024, 4096, 65536, 12345, 2**20 + 7]:
        mul, sh = G.fast_divisor(d)
        ns = np.concatenate([r.integers(0, 2**31, 2000), np.arange(0, 3 * d), [2**31 - 1, 2**31 - d]])
        for n in ns.tolist():
            assert (n * mul) >> sh == n // d and n * mul < 2**64, (d, n)


def halo_conv(x, wp, table, bm):
    """conv_halo (cuda/conv_wgmma.cu), index for index: each tile of bm output positions copies
    its halo (per image, its rows and one more each side, w + 2 wide; zeros outside the image and
    past the batch) and reads tap (dh, dw) of row r at halo position
    i * HI + (tr + 1 + dh) * HC + col + 1 + dw."""
    n, h, w, c = x.shape
    f = wp.shape[0]
    tr_, ni = G.halo_geometry(bm, h, w)
    hc, hi = w + 2, (tr_ + 2) * (w + 2)
    m = n * h * w
    y = np.full((m + bm, f), np.nan)
    for m0 in range(0, m, bm):
        n0, r0 = m0 // (h * w), (m0 % (h * w)) // w
        halo = np.zeros((ni * hi, c))
        for pos in range(ni * hi):
            i, hp = divmod(pos, hi)
            hr, hcol = divmod(hp, hc)
            nn, ih, iw = n0 + i, r0 - 1 + hr, hcol - 1
            if nn < n and 0 <= ih < h and 0 <= iw < w:
                halo[pos] = x[nn, ih, iw]
        acc = np.zeros((bm, f))
        for t in range(table[0, 0]):
            dh, dw, idx = table[0, 1 + 3 * t:4 + 3 * t]
            for r in range(bm):
                i, rr = divmod(r, tr_ * w)
                tr, col = divmod(rr, w)
                acc[r] += halo[i * hi + (tr + 1 + dh) * hc + col + 1 + dw] @ wp[:, idx, :].T
        y[m0:m0 + bm] = acc
    return y[:m].reshape(n, h, w, f)


@pytest.mark.parametrize("n,h,bm", [(2, 8, 16), (3, 4, 32), (1, 8, 64), (3, 4, 64)])
def test_halo_tiles_read_what_the_gather_reads(n, h, bm):
    """conv_halo's halo indexing gives conv_igemm's convolution, forward and stride-1 data
    gradient, for tiles of image rows and of whole images, a partial last tile included."""
    r = np.random.default_rng(n * 100 + h + bm)
    c, f = 8, 8
    x = r.standard_normal((n, h, h, c))
    w = r.standard_normal((f, c, 3, 3))
    ref = igemm(x, pack(w, False), G.taps_forward(3, 1, 1), (h, h), 1, (h, h), 1)
    np.testing.assert_allclose(halo_conv(x, pack(w, False), G.taps_forward(3, 1, 1), bm), ref, rtol=1e-12, atol=1e-12)
    dy = r.standard_normal((n, h, h, f))
    ref = igemm(dy, pack(w, True), G.taps_dgrad(3, 1, 1), (h, h), 1, (h, h), 1)
    np.testing.assert_allclose(halo_conv(dy, pack(w, True), G.taps_dgrad(3, 1, 1), bm), ref, rtol=1e-12, atol=1e-12)


def tma_conv(x, wp, table, p, bm=128):
    """conv_tma (cuda/conv_wgmma.cu) as the copy engine's im2col mode is documented (PTX ISA,
    tensor im2col mode; cuTensorMapEncodeIm2col): each tile's load starts at filter base
    (j - p, i - p) of image n of its first output position and walks bm bases, W fastest, then
    H, then images, inside the box [-p, H-1-p] x [-p, W-1-p] given by the corners (-p, -p) and
    (-p, -p), reading the base + the tap's offsets (dh + p, dw + p), zeros outside the image
    and past the batch."""
    n, h, w, c = x.shape
    f = wp.shape[0]
    m = n * h * w
    y = np.zeros((-(-m // bm) * bm, f))
    for m0 in range(0, m, bm):
        nn, rem = divmod(m0, h * w)
        i, j = divmod(rem, w)
        acc = np.zeros((bm, f))
        for t in range(table[0, 0]):
            dh, dw, idx = table[0, 1 + 3 * t:4 + 3 * t]
            oh, ow = dh + p, dw + p
            assert 0 <= oh <= 2 * p and 0 <= ow <= 2 * p          # the offsets are unsigned
            a = np.zeros((bm, c))
            bn_, bh, bw = nn, i - p, j - p
            for r in range(bm):
                ih, iw = bh + oh, bw + ow
                if bn_ < n and 0 <= ih < h and 0 <= iw < w:
                    a[r] = x[bn_, ih, iw]
                bw += 1
                if bw > w - 1 - p:
                    bw, bh = -p, bh + 1
                    if bh > h - 1 - p:
                        bh, bn_ = -p, bn_ + 1
            acc += a @ wp[:, idx, :].T
        y[m0:m0 + bm] = acc
    return y[:m].reshape(n, h, w, f)


@pytest.mark.parametrize("shape", [(2, 8, 8, 8, 3, 2, 1), (3, 8, 8, 6, 1, 2, 0), (1, 8, 8, 8, 3, 1, 1)])
def test_tma_strided_forward_reads_what_the_gather_reads(shape):
    """conv_tma's forward of any stride: tiles of 16 output positions, each tap's rows one
    im2col load from base (j s - p, i s - p) with the stride as the traversal step."""
    n, c, f, h, k, s, p = shape
    r = np.random.default_rng(sum(shape) + 7)
    x = r.standard_normal((n, h, h, c))
    wp = pack(r.standard_normal((f, c, k, k)), False)
    oh = (h + 2 * p - k) // s + 1
    table = G.taps_forward(k, s, p)
    m, bm = n * oh * oh, 16
    y = np.zeros((-(-m // bm) * bm, f))
    for m0 in range(0, m, bm):
        nn, rem = divmod(m0, oh * oh)
        i, j = divmod(rem, oh)
        for t in range(table[0, 0]):
            dh, dw, idx = table[0, 1 + 3 * t:4 + 3 * t]
            y[m0:m0 + bm] += im2col_walk(x, k, s, p, nn, i, j, dh + p, dw + p, bm) @ wp[:, idx, :].T
    ref = igemm(x, wp, table, (oh, oh), s, (oh, oh), 1)
    np.testing.assert_allclose(y[:m].reshape(n, oh, oh, f), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,h,bm", [(2, 8, 16), (3, 4, 32), (1, 8, 128), (3, 6, 16)])
def test_tma_im2col_loads_read_what_the_gather_reads(n, h, bm):
    """conv_tma's coordinates and offsets give conv_igemm's convolution, forward and stride-1
    data gradient, for tiles that start mid-row, span images and run past the batch."""
    r = np.random.default_rng(n * 1000 + h + bm)
    c, f = 8, 8
    x = r.standard_normal((n, h, h, c))
    w = r.standard_normal((f, c, 3, 3))
    ref = igemm(x, pack(w, False), G.taps_forward(3, 1, 1), (h, h), 1, (h, h), 1)
    np.testing.assert_allclose(tma_conv(x, pack(w, False), G.taps_forward(3, 1, 1), 1, bm), ref, rtol=1e-12, atol=1e-12)
    dy = r.standard_normal((n, h, h, f))
    ref = igemm(dy, pack(w, True), G.taps_dgrad(3, 1, 1), (h, h), 1, (h, h), 1)
    np.testing.assert_allclose(tma_conv(dy, pack(w, True), G.taps_dgrad(3, 1, 1), 1, bm), ref, rtol=1e-12, atol=1e-12)


def im2col_walk(x, k, s, p, n0, oh0, ow0, off_h, off_w, pixels):
    """What one im2col load reads, as documented: from filter base (ow0*s - p, oh0*s - p) of
    image n0, `pixels` bases stepping s along W, then H, then images, inside the box from -p
    to H-1+p-(k-1) (the corners -p and p-(k-1)), each read at base + offsets, zeros outside."""
    n, h, w, c = x.shape
    out = np.zeros((pixels, c))
    bn_, bh, bw = n0, oh0 * s - p, ow0 * s - p
    hi_h, hi_w = h - 1 + p - (k - 1), w - 1 + p - (k - 1)
    for r in range(pixels):
        ih, iw = bh + off_h, bw + off_w
        if bn_ < n and 0 <= ih < h and 0 <= iw < w:
            out[r] = x[bn_, ih, iw]
        bw += s
        if bw > hi_w:
            bw, bh = -p, bh + s
            if bh > hi_h:
                bh, bn_ = -p, bn_ + 1
    return out


@pytest.mark.parametrize("shape", [(2, 8, 8, 8, 3, 1, 1), (3, 8, 8, 8, 3, 2, 1), (2, 8, 8, 8, 1, 2, 0), (1, 8, 8, 6, 3, 2, 1)])
def test_tma_wgrad_loads_read_what_the_gather_reads(shape):
    """conv_wgrad_tma: per stage of 16 positions (64 on the GPU), dY's rows as a tiled load and
    each tap's input rows as an im2col load (the convolution's stride as the traversal stride)
    give conv_wgrad's weight gradient, stages past the batch included."""
    n, c, f, h, k, s, p = shape
    r = np.random.default_rng(sum(shape))
    x = r.standard_normal((n, h, h, c))
    oh = (h + 2 * p - k) // s + 1
    dy = r.standard_normal((n, oh, oh, f))
    m, bk = n * oh * oh, 16
    dyf = np.vstack([dy.reshape(m, f), np.zeros((bk, f))])          # zeros past M, as the copy engine fills
    got = np.zeros((f, c, k, k))
    for m0 in range(0, m, bk):
        nn, rem = divmod(m0, oh * oh)
        o_h, o_w = divmod(rem, oh)
        for kh in range(k):
            for kw in range(k):
                got[:, :, kh, kw] += dyf[m0:m0 + bk].T @ im2col_walk(x, k, s, p, nn, o_h, o_w, kh, kw, bk)
    np.testing.assert_allclose(got, wgrad(dy, x, k, s, p), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 8, 8, 8, 3, 2, 1), (3, 8, 8, 6, 1, 2, 0)])
def test_tma_stride_two_data_gradient_classes_read_what_the_gather_reads(shape):
    """conv_tma's stride-2 data gradient: per sub-pixel class, tiles of 16 positions of dY's grid,
    each tap one im2col load through a 3x3 padding-1 map of dY (offsets dh + 1, dw + 1: the
    class taps lie in [-1, 1]), written at (2i + ph, 2j + pw)."""
    n, c, f, h, k, s, p = shape
    r = np.random.default_rng(sum(shape) + 11)
    oh = (h + 2 * p - k) // s + 1
    dy = r.standard_normal((n, oh, oh, f))
    wd = pack(r.standard_normal((f, c, k, k)), True)
    table = G.taps_dgrad(k, s, p)
    m, bm = n * oh * oh, 16
    dx = np.full((n, h, h, c), np.nan)
    for z in range(4):
        ph, pw = z >> 1, z & 1
        acc = np.zeros((-(-m // bm) * bm, c))
        for m0 in range(0, m, bm):
            nn, rem = divmod(m0, oh * oh)
            i, j = divmod(rem, oh)
            for t in range(table[z, 0]):
                dh, dw, idx = table[z, 1 + 3 * t:4 + 3 * t]
                assert -1 <= dh <= 1 and -1 <= dw <= 1
                acc[m0:m0 + bm] += im2col_walk(dy, 3, 1, 1, nn, i, j, dh + 1, dw + 1, bm) @ wd[:, idx, :].T
        dx[:, ph::2, pw::2, :] = acc[:m].reshape(n, oh, oh, c)
    ref = igemm(dy, wd, table, (h // 2, h // 2), 1, (h, h), 2)
    np.testing.assert_allclose(dx, ref, rtol=1e-12, atol=1e-12)


def test_tma_takes_every_forward_and_the_stride_one_and_two_data_gradients():
    assert [cfg[0] for cfg in G.tma_candidates(64, 64, 3, 1, 1)] == ["tma"] * 2           # BN 64 only for 64 channels
    assert {cfg[1] for cfg in G.tma_candidates(256, 256, 3, 1, 1)} == {64, 128}
    assert G.tma_candidates(128, 64, 3, 2, 1) and G.tma_candidates(128, 64, 1, 2, 0)         # strided forwards
    assert G.tma_candidates(64, 128, 3, 2, 1, dgrad=True) and G.tma_candidates(64, 128, 1, 2, 0, dgrad=True)
    assert G.tma_candidates(64, 128, 5, 2, 2, dgrad=True) == [] and G.tma_candidates(64, 128, 3, 3, 1, dgrad=True) == []
    assert G.tma_candidates(64, 64, 3, 1, 1, dgrad=True) and G.tma_candidates(64, 64, 3, 1, 0, dgrad=True) == []
    assert G.tma_candidates(32, 32, 3, 1, 1) == []                                          # channels not a multiple of 64
    assert all(G.wgmma_smem(cfg) <= G.HALO_MAX_SMEM - 16 * 1024 for cfg in G.TMA_CONFIGS)


def test_halo_takes_resnet18s_stride_one_layers_that_fit_shared_memory():
    cands = {(h, c): G.halo_candidates(h, h, c, c, 3, 1, 1) for h, c in ((32, 64), (16, 128), (8, 256), (4, 512))}
    assert all(cands[(h, c)] for h, c in ((32, 64), (16, 128), (8, 256)))
    assert cands[(4, 512)] == []                     # 8 images of 512 channels a tile: 300 KB of halo
    for (h, c), cs in cands.items():
        for cfg in cs:
            assert G.halo_smem(cfg, h, h, c) + G.halo_static_smem(cfg) <= G.HALO_MAX_SMEM
    assert G.halo_candidates(32, 32, 64, 128, 3, 2, 1) == [] and G.halo_candidates(32, 32, 64, 64, 1, 1, 0) == []
    assert G.halo_candidates(32, 32, 32, 32, 3, 1, 1) == []          # channels not a multiple of 64
    assert G.halo_geometry(128, 32, 32) == (4, 1) and G.halo_geometry(128, 8, 8) == (8, 2)
    assert G.halo_geometry(128, 12, 12) is None and G.halo_geometry(256, 16, 16) == (16, 1)
    # untuned (a capture before any eager step): the halo kernel where it measured faster, layer1's 64 channels
    assert G.halo_default(cands[(32, 64)], G.wgmma_candidates(64, 64), 64) == ("halo", 64, 2, 4)
    assert G.halo_default(cands[(16, 128)], G.wgmma_candidates(128, 128), 128)[0] == "wg"


def test_the_wgmma_in_flight_switch_is_off_by_default_and_checked(monkeypatch):
    """SCRATCH_NN_WGMMA_INFLIGHT picks the warpgroup kernels' WG_INFLIGHT: 0 unless set, and a
    value other than 0 or 1 is an error, not a silent default."""
    monkeypatch.delenv(G.INFLIGHT_ENV, raising=False)
    assert G.wgmma_inflight() == 0
    monkeypatch.setenv(G.INFLIGHT_ENV, "1")
    assert G.wgmma_inflight() == 1
    monkeypatch.setenv(G.INFLIGHT_ENV, "yes")
    with pytest.raises(ValueError, match="0 or 1"):
        G.wgmma_inflight()


def _swizzled_stage(tile):
    """A (rows, 32) fp32 tile as the copy engine lands it with the 128-byte swizzle: row r's
    16-byte chunk q at chunk q ^ (r % 8) (the rows 128 bytes apart from a 1024-byte boundary);
    returned as 32-bit words, row-major."""
    rows = tile.shape[0]
    out = np.empty((rows, 32), tile.dtype)
    for r in range(rows):
        for q in range(8):
            p_ = q ^ (r % 8)
            out[r, 4 * p_:4 * p_ + 4] = tile[r, 4 * q:4 * q + 4]
    return out.reshape(-1)


@pytest.mark.parametrize("bm,bn,wm,nw", sorted({cfg[1:4] + cfg[5:] for cfg in G.WGRAD_TF32_CONFIGS}))
def test_tf32_weight_gradient_fragments_multiply_the_right_values_without_bank_conflicts(bm, bn, wm, nw):
    """cuda/conv_wgmma.cu's conv_wgrad_tf32: its lanes' shared-memory word offsets (a_off,
    b_off, the store's channel and column), replayed here over one 32-position stage of
    swizzled MN-major atoms with mma.sync m16n8k8's fragment layout, give dY^T X; and each
    warp-wide fragment load touches 32 distinct banks."""
    r = np.random.default_rng(bm + bn)
    BK, ATOM = 32, 32 * 32                       # positions a stage; words of an atom's stage
    ma, na = bm // 32, bn // 32
    dy, x = r.standard_normal((BK, bm)), r.standard_normal((BK, bn))
    stage = np.concatenate([_swizzled_stage(dy[:, 32 * j:32 * j + 32]) for j in range(ma)]
                           + [_swizzled_stage(x[:, 32 * j:32 * j + 32]) for j in range(na)])
    wn = nw // wm
    mt, nt = bm // wm // 16, bn // wn // 8
    got = np.full((bm, bn), np.nan)
    for warp in range(nw):
        wm_, wn_ = warp // wn, warp % wn
        lanes = [(lane >> 2, lane & 3) for lane in range(32)]
        # word offsets, as the kernel's byte offsets / 4
        def a_off(i, h, e, g, t):
            I = wm_ * mt + i
            row, q = t + 4 * e, 2 * (I & 1) + h + 4 * (g >> 2)
            return (I >> 1) * ATOM + row * 32 + ((q ^ row) << 2) + (g & 3)

        def b_off(j, e, g, t):
            J = wn_ * nt + j
            row, q = t + 4 * e, (J & 3) + 4 * (g >> 2)
            return ma * ATOM + (J >> 2) * ATOM + row * 32 + ((q ^ row) << 2) + (g & 3)

        acc = np.zeros((mt, nt, 32, 4))
        for kk in range(BK // 8):
            for i in range(mt):
                for h in range(2):
                    for e in range(2):
                        banks = {a_off(i, h, e, g, t) % 32 for g, t in lanes}
                        assert len(banks) == 32
            for j in range(nt):
                for e in range(2):
                    assert len({b_off(j, e, g, t) % 32 for g, t in lanes}) == 32
            for i in range(mt):
                # the mma's A (16 x 8: rows g, g + 8; k t, t + 4) and B (8 x 8: k t, t + 4; column g)
                A = np.zeros((16, 8))
                for g, t in lanes:
                    for h in range(2):
                        for e in range(2):
                            A[g + 8 * h, t + 4 * e] = stage[a_off(i, h, e, g, t) + kk * 256]
                for j in range(nt):
                    B = np.zeros((8, 8))
                    for g, t in lanes:
                        for e in range(2):
                            B[t + 4 * e, g] = stage[b_off(j, e, g, t) + kk * 256]
                    D = A @ B
                    for lane, (g, t) in enumerate(lanes):
                        acc[i, j, lane] += [D[g, 2 * t], D[g, 2 * t + 1], D[g + 8, 2 * t], D[g + 8, 2 * t + 1]]
        for i in range(mt):
            I = wm_ * mt + i
            for lane, (g, t) in enumerate(lanes):
                for h in range(2):
                    f = (I >> 1) * 32 + 4 * (2 * (I & 1) + h) + (g & 3) + 16 * (g >> 2)
                    for j in range(nt):
                        J = wn_ * nt + j
                        col = (J >> 2) * 32 + 4 * (J & 3) + 2 * (t & 1) + 16 * (t >> 1)
                        got[f, col:col + 2] = acc[i, j, lane, 2 * h:2 * h + 2]
    np.testing.assert_allclose(got, dy.T @ x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bm,bn,wgn", sorted({cfg[1:4] for cfg in G.WGRAD_TFWG_CONFIGS}))
def test_tf32_wgmma_weight_gradient_transposes_and_fragments_give_dy_t_x(bm, bn, wgn):
    """cuda/conv_wgmma.cu's conv_wgrad_tfwg, replayed over one 32-position stage of swizzled
    MN-major atoms: its transpose (each warp's tasks, each lane's 32-bit loads and 16-byte
    store) fills a buffer that, read as wgmma's K-major 128-byte-swizzled B operand, holds X;
    its register A fragments and the store's channel and column mapping then give dY^T X. The
    transpose's loads hit 32 banks, its stores 8 distinct 16-byte chunks a quarter-warp."""
    r = np.random.default_rng(bm + bn + wgn)
    BK, ATOM = 32, 32 * 32                      # positions a stage; words of an atom's stage
    ma, na, mw, nwg = bm // 32, bn // 32, bm // 64, bn // wgn
    tasks = bn // (16 * wgn)
    dy, x = r.standard_normal((BK, bm)), r.standard_normal((BK, bn))
    stage = np.concatenate([_swizzled_stage(dy[:, 32 * j:32 * j + 32]) for j in range(ma)]
                           + [_swizzled_stage(x[:, 32 * j:32 * j + 32]) for j in range(na)])
    tbuf = np.full(bn * 32, np.nan)
    for warp in range(4 * wgn):
        for u in range(tasks):
            task = warp + 4 * wgn * u
            j, rq = task >> 3, task & 7
            chunks = []
            for i in range(4):
                row = 4 * rq + i
                src = [ma * ATOM + j * ATOM + row * 32 + (((lane >> 2) ^ (row & 7)) << 2) + (lane & 3) for lane in range(32)]
                assert len({w % 32 for w in src}) == 32
                chunks.append([stage[w] for w in src])
            for lane in range(32):
                nn = 32 * j + lane
                dst = nn * 32 + ((rq ^ (nn & 7)) << 2)
                tbuf[dst:dst + 4] = [chunks[i][lane] for i in range(4)]
            for quarter in range(4):
                slots = {rq ^ ((32 * j + lane) & 7) for lane in range(8 * quarter, 8 * quarter + 8)}
                assert len(slots) == 8
    assert not np.isnan(tbuf).any()
    # wgmma's view of a K-major 128-byte-swizzled operand: row n, k's 16-byte chunk k // 4 at chunk (k // 4) ^ (n % 8)
    B = np.array([[tbuf[nn * 32 + (((k >> 2) ^ (nn & 7)) << 2) + (k & 3)] for nn in range(bn)] for k in range(BK)])
    np.testing.assert_array_equal(B, x)
    got = np.full((bm, bn), np.nan)
    for wgi in range(wgn):
        for a in range(mw):
            A = np.zeros((64, BK))
            rows = {}
            for wl in range(4):
                I = 4 * a + wl
                for lane in range(32):
                    g, t = lane >> 2, lane & 3
                    for h in range(2):
                        for e in range(2):
                            row, q = t + 4 * e, 2 * (I & 1) + h + 4 * (g >> 2)
                            off = (I >> 1) * ATOM + row * 32 + ((q ^ row) << 2) + (g & 3)
                            for kk in range(BK // 8):
                                A[16 * wl + g + 8 * h, 8 * kk + t + 4 * e] = stage[off + kk * 256]
                        rows[16 * wl + g + 8 * h] = (I >> 1) * 32 + 4 * (2 * (I & 1) + h) + (g & 3) + 16 * (g >> 2)
            D = A @ B[:, wgi * nwg:(wgi + 1) * nwg]
            for lr, f in rows.items():
                got[f, wgi * nwg:(wgi + 1) * nwg] = D[lr]
    np.testing.assert_allclose(got, dy.T @ x, rtol=1e-12, atol=1e-12)


def test_the_tf32_weight_gradient_family_switch_is_checked_and_follows_the_shape(monkeypatch):
    """SCRATCH_NN_TF32_WGRAD picks the tf32 weight gradient's family for a process (checked);
    both families' tiles cover every ResNet-18 shape (the stem's 288 columns included), and a
    shape neither divides (a 1x1 of 32 channels) is refused by name."""
    monkeypatch.delenv(G.TF32_WGRAD_ENV, raising=False)
    assert G.tf32_wgrad_family() == G.TF32_WGRAD_DEFAULT
    assert G.tf32_wgrad_family("mma") == "mma"
    monkeypatch.setenv(G.TF32_WGRAD_ENV, "wgmma")
    assert G.tf32_wgrad_family() == "wgmma"
    monkeypatch.setenv(G.TF32_WGRAD_ENV, "tensor")
    with pytest.raises(ValueError, match="SCRATCH_NN_TF32_WGRAD"):
        G.tf32_wgrad_family()
    for f, c, k in [(64, 32, 3), (64, 64, 3), (128, 64, 3), (128, 64, 1), (128, 128, 3), (256, 128, 1), (256, 256, 3),
                    (512, 256, 1), (512, 512, 3)]:
        for fam, tag in [("wgmma", "wtw"), ("mma", "wtf")]:
            assert {cfg[0] for cfg in G.wgrad_tf32_candidates(f, k * k * c, fam)} == {tag}, (f, c, k)
    for fam in G.TF32_WGRAD_FAMILIES:
        with pytest.raises(ValueError, match=f"tf32 wgrad \\({fam}\\) tile for 64 channels over 32 columns"):
            G.wgrad_tf32_candidates(64, 32, fam)
