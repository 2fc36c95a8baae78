"""Implicit-GEMM convolutions on tensor cores (cuda/conv_igemm.cu): the launchers.

Activations are channels-last, (N, H, W, C), 16-bit (half or bfloat16 bits in uint16 arrays:
CuPy has no bfloat16 dtype), channels a multiple of 8 (the network input is padded with zero
channels to 16). Weights stay fp32 masters in PyTorch's (F, C, KH, KW) layout and are packed
to 16 bits per use: (F, KH*KW, Cp) for the forward, (C, KH*KW, F) for the data gradient.

Every launcher states its grid. Tile shapes are picked per GEMM shape by measurement among
the compiled instantiations (`IGEMM_CONFIGS`, `WGMMA_CONFIGS`, `WGRAD_CONFIGS`).
`async_copy=False` runs the sm_75 variant (register-staged double buffering and m16n8k8 mma),
what a T4 gets; the environment variable SCRATCH_NN_SM75=1 forces it on newer GPUs (the
backend then refuses tf32 and bf16, as a T4 does).

On compute capability 9.0 (H100, H200) the forward, data-gradient and weight-gradient GEMMs
whose channels are a multiple of 64 run cuda/conv_wgmma.cu instead (warpgroup mma, compiled
for sm_90a): the family follows from the GPU and the shape alone, never from a measurement, so
that a run repeats bitwise (the two families round differently); SCRATCH_NN_NO_WGMMA=1 (and
the sm_75 switch) keeps mma.sync. For the 3x3 stride-1 convolutions (forward and data gradient)
whose tile's input fits shared memory, conv_halo, which copies each tile's input rows once into
shared memory for all nine taps, is timed against conv_wgmma like another tile: the two add the
same products in the same order, so either gives the same bits (SCRATCH_NN_NO_HALO=1 leaves
conv_halo out). conv_tma (every forward, and the stride-1 data gradients) and conv_wgrad_tma
(every weight gradient) are conv_wgmma and conv_wgrad_wg with their operand tiles brought in by
the copy engine (TMA) through tensor maps (tensor_maps.py) instead of per-thread cp.async
gathers: the same shared-memory tiles, so they too are timed as tiles (SCRATCH_NN_NO_TMA=1
leaves them out). On the H100, ResNet-18 b512 fp16 (results/gpu/conv_tma_h100.txt): layers 2-4
forward 310-441 -> 355-478 TFLOP/s, data gradients 265-423 -> 301-461, weight gradients 274-306
-> 311-384; layer1's forward and data gradient stay conv_halo's.

fp32 storage ("float32", the tf32 mode; sm_90 with TMA only): the same warpgroup forward and
data-gradient kernels with wgmma's tf32 form (a 128-byte row is 32 channels, so channels must
be a multiple of 32), and for the weight gradient, whose K (the positions) is contiguous in
neither operand while wgmma takes tf32 operands K-major only, one of two families for a whole
process (SCRATCH_NN_TF32_WGRAD; they round their sums differently, so they are never timed
against each other): conv_wgrad_tf32 ("mma", the default: mma.sync m16n8k8 tf32 over the
TMA-loaded MN-major tiles) or conv_wgrad_tfwg ("wgmma": dY^T from registers into a
register-operand wgmma, X transposed K-major in shared memory each stage; not yet measured
on a GPU). No mma.sync GEMMs besides.
"""
import contextlib
import os

import numpy as np

from .cuda_kernels import CONV_FILES, WGMMA_FILES, compile_module, source

KINDS = {"float16": 0, "bfloat16": 1, "float32": 2}    # float32: fp32 storage, tf32 products (warpgroup kernels only)
NULL = np.uint64(0)
TAPS_STRIDE = 32               # ints per sub-pixel class in a tap table (cuda/conv_igemm.cu)
PAD = 8                        # halves of padding per shared-memory row
WGRAD_BK = 32                  # positions per wgrad stage
WGRAD_WS_BYTES = 32 * 2**20    # the fp32 partial workspace every wgrad shares (one buffer, kept)
MAX_TAPS = 72                  # the most kh * kw: pack_weights' and wgrad_reduce's tiles (cuda/conv_igemm.cu)
WGRAD_CTAS_PER_SM = 2          # a wgrad's chunks fill the SMs this many times with its largest tile (ResNet-18 b512
                               # fp16's weight gradients on the H100, kernels + reduction: 4 -> 2: 1.846 -> 1.708 ms a step; 1: 1.730)
T4_SMEM = 64 * 1024            # the most dynamic shared memory a block may take on sm_75
STATS_ROWS = 128               # output positions per BatchNorm-statistics chunk of a forward
STATS_WARP_ROWS = 2            # ... split over this many warp rows (the order the epilogue adds them in)

# conv_igemm tiles (BM, BN, BK, WM, WN, STAGES): BM output positions by BN channels, BK
# channels a K step, WM x WN warps, STAGES cp.async stages (sm_75: two register-staged buffers)
IGEMM_CONFIGS = [(128, 128, 32, 2, 2, 4), (128, 128, 32, 2, 4, 4), (128, 256, 32, 2, 4, 3), (256, 128, 32, 4, 2, 3),
                 (128, 64, 32, 2, 2, 4), (256, 64, 32, 4, 1, 3), (64, 64, 32, 2, 2, 4), (128, 64, 64, 2, 2, 3),
                 (128, 64, 16, 2, 2, 4), (128, 128, 16, 2, 2, 4), (128, 32, 32, 4, 1, 4),
                 (128, 32, 16, 4, 1, 4), (128, 16, 16, 4, 1, 4), (256, 64, 16, 4, 1, 4),
                 (128, 64, 32, 4, 2, 4), (128, 64, 64, 4, 2, 3), (128, 128, 32, 4, 2, 4)]
# conv_wgmma tiles ("wg", BN, WG, STAGES): 128 * WG output positions (WG warpgroups) by BN channels,
# 64 channels a K step, STAGES cp.async stages
WGMMA_CONFIGS = [("wg", 64, 1, 4), ("wg", 64, 2, 3), ("wg", 128, 1, 3), ("wg", 128, 1, 4), ("wg", 128, 2, 3),
                 ("wg", 64, 2, 5), ("wg", 128, 1, 5), ("wg", 128, 2, 4)]
# conv_wgrad_wg tiles ("wgw", BM, BN, STAGES, WG): BM output channels by BN of the taps * C columns,
# 64 positions a stage, WG warpgroups (each over BM / WG of the channels)
WGRAD_WG_CONFIGS = [("wgw", 64, 64, 4, 1), ("wgw", 64, 128, 4, 1), ("wgw", 64, 192, 3, 1), ("wgw", 128, 64, 4, 1),
                    ("wgw", 128, 128, 3, 1), ("wgw", 128, 128, 4, 1), ("wgw", 128, 192, 3, 1), ("wgw", 64, 192, 4, 1),
                    ("wgw", 128, 192, 4, 2), ("wgw", 256, 128, 4, 2), ("wgw", 256, 192, 3, 2),
                    ("wgw", 256, 192, 4, 2), ("wgw", 128, 192, 4, 1)]
# conv_wgrad_tma tiles ("wgt", BM, BN, STAGES, WG): conv_wgrad_wg's, with operands loaded by the copy engine
WGRAD_TMA_CONFIGS = [("wgt",) + cfg[1:] for cfg in WGRAD_WG_CONFIGS]
WGMMA_BK = 64                  # channels a conv_wgmma K step (one 128-byte swizzled row), positions a conv_wgrad_wg one
TF32_BK = 32                   # ... of fp32 storage: a 128-byte row holds 32 channels; positions a conv_wgrad_tf32 stage
# conv_wgrad_tf32 tiles ("wtf", BM, BN, WM, STAGES, NW): fp32 storage's weight gradient (wgmma reads tf32
# K-major only): BM output channels by BN columns, WM x (NW / WM) warps of mma.sync, 32 positions a
# stage. The 64 x 64 warp tiles (the last five) read a 32-bit word a mma where the 64 x 32 ones read 1.5
WGRAD_TF32_CONFIGS = [("wtf", 128, 128, 2, 4, 4), ("wtf", 128, 128, 2, 6, 4), ("wtf", 64, 128, 2, 4, 4),
                      ("wtf", 128, 64, 2, 4, 4), ("wtf", 64, 64, 2, 4, 4), ("wtf", 64, 64, 2, 6, 4), ("wtf", 64, 96, 4, 4, 4),
                      ("wtf", 128, 128, 2, 3, 4), ("wtf", 64, 128, 1, 3, 2), ("wtf", 64, 192, 1, 3, 3),
                      ("wtf", 128, 256, 2, 3, 8), ("wtf", 256, 128, 4, 3, 8)]
# conv_wgrad_tfwg tiles ("wtw", BM, BN, WGN, STAGES): the same GEMM on wgmma's tf32 form (dY^T from
# registers, X transposed K-major in shared memory each stage), BM output channels by BN columns,
# WGN warpgroups over BN / WGN columns each, 32 positions a stage; the first that fits a shape is
# what runs untimed (the 96-wide one, last, only the stem's 288 columns need)
WGRAD_TFWG_CONFIGS = [("wtw", 128, 128, 1, 3), ("wtw", 128, 128, 1, 4), ("wtw", 128, 128, 2, 3), ("wtw", 128, 256, 2, 3),
                      ("wtw", 64, 128, 1, 3), ("wtw", 64, 64, 1, 4), ("wtw", 64, 192, 3, 3), ("wtw", 64, 256, 2, 3),
                      ("wtw", 64, 96, 1, 4)]
# which family runs fp32 storage's weight gradients, for a whole process: "wgmma" (conv_wgrad_tfwg)
# or "mma" (conv_wgrad_tf32). The two round their sums differently, so they are never timed
# against each other (a run must repeat bitwise whichever tile wins)
TF32_WGRAD_ENV = "SCRATCH_NN_TF32_WGRAD"
TF32_WGRAD_FAMILIES = {"wgmma": WGRAD_TFWG_CONFIGS, "mma": WGRAD_TF32_CONFIGS}
TF32_WGRAD_DEFAULT = "mma"
# conv_halo tiles ("halo", BN, WG, STAGES): 128 * WG output positions (whole rows of one image, or
# whole images) by BN channels of a 3x3 stride-1 convolution; STAGES cp.async stages of weights
HALO_CONFIGS = [("halo", 64, 1, 4), ("halo", 64, 2, 3), ("halo", 64, 2, 4), ("halo", 128, 1, 3), ("halo", 128, 2, 3)]
HALO_MAX_SMEM = 227 * 1024     # the most shared memory a Hopper block may take
# conv_tma tiles ("tma", BN, WG, STAGES): conv_wgmma's, with operands loaded by the copy engine
# (every forward; the data gradients of stride-1 convolutions whose padding keeps the size)
TMA_CONFIGS = [("tma", 64, 1, 4), ("tma", 128, 1, 4), ("tma", 128, 1, 6), ("tma", 64, 2, 5), ("tma", 128, 2, 3),
               ("tma", 128, 2, 4)]
NO_WGMMA_ENV = "SCRATCH_NN_NO_WGMMA"
NO_HALO_ENV = "SCRATCH_NN_NO_HALO"   # =1: conv_halo's convolutions run conv_wgmma (for A/B measurements)
NO_TMA_ENV = "SCRATCH_NN_NO_TMA"     # =1: conv_tma and conv_wgrad_tma are left out (for A/B measurements)
# =1: conv_wgmma and conv_wgrad_wg keep one K step's wgmma group running across the next step's
# barrier instead of waiting for it (cuda/conv_wgmma.cu; measured slower on the H100: off)
INFLIGHT_ENV = "SCRATCH_NN_WGMMA_INFLIGHT"
# conv_wgrad tiles (BM, BN, WM, WN, STAGES): BM output channels by BN of the taps * C columns
WGRAD_CONFIGS = [(128, 128, 2, 2, 4), (128, 256, 2, 4, 3), (128, 64, 2, 2, 4), (64, 64, 2, 2, 4), (64, 128, 2, 2, 4),
                 (64, 192, 2, 2, 3), (64, 48, 2, 1, 4), (64, 16, 2, 1, 4), (32, 48, 2, 1, 4), (32, 32, 2, 1, 4),
                 (32, 16, 2, 1, 4), (16, 48, 1, 1, 4), (16, 16, 1, 1, 4), (16, 32, 1, 1, 4),
                 (64, 192, 2, 4, 3), (128, 192, 2, 4, 3)]


def wgmma_inflight():
    """WG_INFLIGHT for the warpgroup kernels' compile, from SCRATCH_NN_WGMMA_INFLIGHT (default 0)."""
    v = os.environ.get(INFLIGHT_ENV, "0")
    if v not in ("0", "1"):
        raise ValueError(f"{INFLIGHT_ENV} is 0 or 1, not {v!r}")
    return int(v)


def _stages(cfg, async_copy):
    return cfg[-1] if async_copy else 2


def igemm_name(kind, cfg, async_copy):
    bm, bn, bk, wm, wn, _ = cfg
    return f"conv_igemm<{kind}, {bm}, {bn}, {bk}, {wm}, {wn}, {_stages(cfg, async_copy)}, " \
           f"{'true' if async_copy else 'false'}>"


def wgrad_name(kind, cfg, async_copy):
    bm, bn, wm, wn, _ = cfg
    return f"conv_wgrad<{kind}, {bm}, {bn}, {wm}, {wn}, {_stages(cfg, async_copy)}, " \
           f"{'true' if async_copy else 'false'}>"


def wgmma_name(kind, cfg):
    _, bn, wg, stages = cfg
    return f"conv_wgmma<{kind}, {bn}, {wg}, {stages}>"


def tma_name(kind, cfg):
    _, bn, wg, stages = cfg
    return f"conv_tma<{kind}, {bn}, {wg}, {stages}>"


def tma_candidates(f, c, k, s, p, dgrad=False, bk=WGMMA_BK):
    """conv_tma tiles for the forward (or with dgrad, the data gradient) of a k x k convolution
    (stride s, padding p) of f output channels over c gathered channels, c a multiple of 64: any
    forward; a data gradient of stride 1 with padding (k - 1) / 2, or of stride 2 with k = 3,
    p = 1 or k = 1, p = 0 (its sub-pixel classes' taps fall in [-1, 1]); [] otherwise. bk: the
    channels of a 128-byte row (64 16-bit, 32 fp32), which c must be a multiple of."""
    dgrad_ok = (s == 1 and 2 * p == k - 1) or (s == 2 and (k, p) in ((3, 1), (1, 0)))
    if (dgrad and not dgrad_ok) or c % bk or f % 8 or p > k - 1 or p > 127:
        return []
    return [cfg for cfg in TMA_CONFIGS if cfg[1] <= max(64, -(-f // 64) * 64)]


def wgmma_smem(cfg, e=2):
    """Dynamic shared memory of a conv_wgmma (or conv_tma) tile: STAGES (A, B) stages of 128-byte
    rows, or the output tile of e-byte values, whichever is larger, and 1024 bytes to align the
    swizzled stages."""
    _, bn, wg, stages = cfg
    bm = 128 * wg
    return 1024 + max(stages * (bm + bn) * 128, bm * (bn + PAD) * e)


def wgmma_candidates(f, c, bk=WGMMA_BK):
    """conv_wgmma tiles for a GEMM of f output channels over c gathered channels (c % bk == 0,
    bk the channels of a 128-byte row); no tile wider than f needs."""
    if c % bk:
        raise ValueError(f"conv_wgmma needs channels a multiple of {bk}, got {c}")
    return [cfg for cfg in WGMMA_CONFIGS if cfg[1] <= max(64, -(-f // 64) * 64)]


def wgrad_wg_name(kind, cfg):
    _, bm, bn, stages, wg = cfg
    family = "conv_wgrad_tma" if cfg[0] == "wgt" else "conv_wgrad_wg"
    return f"{family}<{kind}, {bm}, {bn}, {stages}, {wg}>"


def wgrad_wg_smem(cfg):
    _, bm, bn, stages, _ = cfg
    return 1024 + stages * (bm + bn) * 128


def _wgrad_tiles(configs, f, k_cols, what):
    """The tiles (family, BM, BN, ...) of `configs` whose BN divides k_cols and whose BM does not
    exceed f rounded up to 64."""
    out = [cfg for cfg in configs if k_cols % cfg[2] == 0 and cfg[1] <= max(64, -(-f // 64) * 64)]
    if not out:
        raise ValueError(f"no {what} tile for {f} channels over {k_cols} columns")
    return out


def wgrad_wg_candidates(f, k_cols):
    """conv_wgrad_wg tiles for f output channels over k_cols = taps * C columns (C % 64 == 0)."""
    return _wgrad_tiles(WGRAD_WG_CONFIGS, f, k_cols, "warpgroup wgrad")


def halo_name(kind, cfg):
    _, bn, wg, stages = cfg
    return f"conv_halo<{kind}, {bn}, {wg}, {stages}>"


def halo_geometry(bm, h, w):
    """(rows a tile takes of each image, images a tile) of conv_halo's BM = bm positions over
    h x w images: whole rows of one image, or whole images; None where neither fits."""
    if bm <= h * w:
        return (bm // w, 1) if bm % w == 0 and (h * w) % bm == 0 else None
    return (h, bm // (h * w)) if bm % (h * w) == 0 else None


def halo_smem(cfg, h, w, c, e=2):
    """Dynamic shared memory of a conv_halo tile over h x w images of c channels of e bytes: 1024
    (alignment), the halo (per image, its rows and one more each side, w + 2 positions of e c +
    16 bytes) rounded up to 1024, the weight stages; at least the epilogue's output tile."""
    _, bn, wg, stages = cfg
    bm = 128 * wg
    tr, ni = halo_geometry(bm, h, w)
    halo = ni * (tr + 2) * (w + 2) * (e * c + 16)
    return 1024 + max(-(-halo // 1024) * 1024 + stages * bn * 128, bm * (bn + PAD) * e)


def halo_static_smem(cfg):
    """conv_halo's own __shared__ arrays: the tap tables, out_row, red_s."""
    _, bn, wg, _ = cfg
    return 4 * 9 * 4 + 8 + 8 * 128 * wg + wg * 2 * 4 * bn * 4


def halo_candidates(h, w, c, f, k, s, p, e=2):
    """The conv_halo tiles that can run a k x k convolution (stride s, padding p) of f output
    channels over h x w inputs of c channels of e bytes: 3x3, stride 1, padding 1, c a multiple
    of a 128-byte row's channels, tiles of whole rows or whole images whose halo fits shared
    memory; [] otherwise."""
    if (k, s, p) != (3, 1, 1) or c % (128 // e) or f % 8:
        return []
    return [cfg for cfg in HALO_CONFIGS if halo_geometry(128 * cfg[2], h, w) is not None
            and cfg[1] <= max(64, -(-f // 64) * 64)
            and halo_smem(cfg, h, w, c, e) + halo_static_smem(cfg) <= HALO_MAX_SMEM]


def halo_default(halo, wgmma, c):
    """The tile taken without measuring where conv_halo can run: conv_halo over 64 channels
    (layer1: 133 / 117 us forward / data gradient against conv_wgmma's 222 / 194 on the H100),
    conv_wgmma's default over more, where the tuner kept conv_wgmma (layers 2 and 3)."""
    return halo[-1] if c == WGMMA_BK else wgmma[-1]


def wgrad_tf32_name(cfg):
    _, bm, bn, wm, stages, nw = cfg
    return f"conv_wgrad_tf32<{bm}, {bn}, {wm}, {stages}, {nw}>"


def wgrad_tf32_smem(cfg):
    _, bm, bn, _, stages, _ = cfg
    return 1024 + stages * (bm + bn) * 128


def wgrad_tfwg_name(cfg):
    _, bm, bn, wgn, stages = cfg
    return f"conv_wgrad_tfwg<{bm}, {bn}, {wgn}, {stages}>"


def wgrad_tfwg_smem(cfg):
    _, bm, bn, _, stages = cfg
    return 1024 + stages * (bm + bn) * 128 + 2 * bn * 128


def tf32_wgrad_family(family=None):
    """The tf32 weight gradients' kernel family: `family`, else SCRATCH_NN_TF32_WGRAD, else the default."""
    v = family or os.environ.get(TF32_WGRAD_ENV) or TF32_WGRAD_DEFAULT
    if v not in TF32_WGRAD_FAMILIES:
        raise ValueError(f"{TF32_WGRAD_ENV} is one of {sorted(TF32_WGRAD_FAMILIES)}, not {v!r}")
    return v


def wgrad_tf32_candidates(f, k_cols, family="mma"):
    """The tf32 weight gradient's tiles of one family (conv_wgrad_tf32's for "mma",
    conv_wgrad_tfwg's for "wgmma") for f output channels over k_cols = taps * C columns (C % 32
    == 0)."""
    return _wgrad_tiles(TF32_WGRAD_FAMILIES[family], f, k_cols, f"tf32 wgrad ({family})")


def wgmma_names(kind):
    fwd = ([wgmma_name(kind, cfg) for cfg in WGMMA_CONFIGS] + [halo_name(kind, cfg) for cfg in HALO_CONFIGS]
           + [tma_name(kind, cfg) for cfg in TMA_CONFIGS])
    if kind == KINDS["float32"]:        # the 16-bit weight gradients' MN-major wgmma has no tf32 form
        return (fwd + [wgrad_tf32_name(cfg) for cfg in WGRAD_TF32_CONFIGS]
                + [wgrad_tfwg_name(cfg) for cfg in WGRAD_TFWG_CONFIGS])
    return fwd + [wgrad_wg_name(kind, cfg) for cfg in WGRAD_WG_CONFIGS + WGRAD_TMA_CONFIGS]


def wgmma_available(cupy, device_id=None):
    """True on compute capability 9.0, unless SCRATCH_NN_NO_WGMMA=1 (or SCRATCH_NN_SM75=1)."""
    if os.environ.get(NO_WGMMA_ENV) == "1" or os.environ.get("SCRATCH_NN_SM75") == "1":
        return False
    dev = cupy.cuda.Device(device_id) if device_id is not None else cupy.cuda.Device()
    return dev.compute_capability == "90"


def igemm_smem(cfg, async_copy):
    bm, bn, bk = cfg[:3]
    return 2 * max(_stages(cfg, async_copy) * (bm + bn) * (bk + PAD), bm * (bn + PAD))


def igemm_static_smem(cfg):
    """conv_igemm's own __shared__ arrays: the tap tables, out_row, red_s."""
    bm, bn, _, wm, _, _ = cfg
    return 4 * 9 * 4 + 8 + 8 * bm + 2 * wm * bn * 4


def wgrad_smem(cfg, async_copy):
    bm, bn = cfg[:2]
    return _stages(cfg, async_copy) * WGRAD_BK * ((bm + PAD) + (bn + PAD)) * 2


def _fits(smem, async_copy):
    return async_copy or smem <= T4_SMEM


def name_expressions(kind, async_copy):
    """Every instantiation one (storage kind, copy path) needs (fp32 storage: the packing, the
    input's conversion and the partials' reduction; its GEMMs are all warpgroup kernels)."""
    helpers = ["wgrad_reduce", f"pack_weights<{kind}>", f"nchw_to_nhwc<{kind}>"]
    if kind == KINDS["float32"]:
        return helpers
    names = [igemm_name(kind, c, async_copy) for c in IGEMM_CONFIGS
             if _fits(igemm_smem(c, async_copy) + igemm_static_smem(c), async_copy)]
    names += [wgrad_name(kind, c, async_copy) for c in WGRAD_CONFIGS if _fits(wgrad_smem(c, async_copy), async_copy)]
    return sorted(set(names)) + helpers


def fast_divisor(d):
    """(mul, sh) with n // d == (n * mul) >> sh for every 0 <= n < 2**31 (cuda/conv_igemm.cu's fdiv)."""
    if d < 1:
        raise ValueError("a divisor must be positive")
    sh = 32 + (d - 1).bit_length()
    return -(-(1 << sh) // d), sh


# ------------------------------------------------------------------ tap tables
def _one_class(k, sign, p):
    """Every tap (kh, kw) of a k x k kernel in one class, at row offset sign * (kh - p)."""
    t = np.zeros((1, TAPS_STRIDE), np.int32)
    t[0, 0] = t[0, 28] = k * k
    for kh in range(k):
        for kw in range(k):
            i = kh * k + kw
            t[0, 1 + 3 * i:4 + 3 * i] = (sign * (kh - p), sign * (kw - p), i)
    return t


def taps_forward(k, s, p):
    """One class: tap (kh, kw) reads input row oh*s + kh - p."""
    return _one_class(k, 1, p)


def taps_dgrad(k, s, p):
    """The data gradient as a gathered GEMM over dY: stride 1 is one class reading dY row
    ih + p - kh; stride 2 is four sub-pixel classes (ph, pw), position (2i + ph, 2j + pw)
    taking the taps with (ph + p - kh) even, at dY row i + (ph + p - kh) / 2."""
    if s == 1:
        return _one_class(k, -1, p)
    if s != 2:
        raise ValueError("the tensor-core data gradient takes stride 1 or 2")
    t = np.zeros((4, TAPS_STRIDE), np.int32)
    for z in range(4):
        ph, pw = z >> 1, z & 1
        n = 0
        for kh in range(k):
            if (ph + p - kh) % 2:
                continue
            for kw in range(k):
                if (pw + p - kw) % 2:
                    continue
                t[z, 1 + 3 * n:4 + 3 * n] = ((ph + p - kh) // 2, (pw + p - kw) // 2, kh * k + kw)
                n += 1
        t[z, 0] = n
        t[z, 28] = k * k
    return t


# ------------------------------------------------------------------ tile choice
def igemm_candidates(f, c, async_copy=True):
    """The compiled conv_igemm tiles that can run a GEMM of f output channels over c gathered
    channels: K steps that divide c, no channel tile wider than f needs (and the sm_75 shared
    memory limit where it applies)."""
    if c % 16:
        raise ValueError(f"the tensor-core convolution needs channels padded to a multiple of 16, got {c}")
    fit = max(16, -(-f // 16) * 16)
    out = [cfg for cfg in IGEMM_CONFIGS if c % cfg[2] == 0 and cfg[1] <= max(fit, 16)
           and _fits(igemm_smem(cfg, async_copy) + igemm_static_smem(cfg), async_copy)]
    widest = max(cfg[1] for cfg in out)
    return [cfg for cfg in out if cfg[1] == widest or cfg[1] >= min(f, 128)]


def _stats_rows(cfg):
    """Output positions per BatchNorm-statistics chunk: a conv_igemm tile's BM, a conv_wgmma
    warpgroup's 128."""
    return 128 if cfg[0] in ("wg", "halo", "tma") else cfg[0]


def stats_tiles(cands):
    """The tiles a forward that writes BatchNorm statistics may take: the statistics' chunks
    follow the tile's rows and each chunk's sums go thread, lanes, then warp rows, so only
    tiles of one BM and one warp-row count add them in one order; any of them gives the same
    bits, and a run repeats bitwise whichever a measurement picked."""
    return [cfg for cfg in cands if cfg[0] == STATS_ROWS and cfg[3] == STATS_WARP_ROWS] or cands[:1]


def igemm_default(f, c, async_copy=True):
    """The tile taken without measuring (inside a CUDA-graph capture, before any tuning)."""
    cands = igemm_candidates(f, c, async_copy)
    for pref in ((128, 128, 32, 2, 4, 4), (128, 64, 32, 2, 2, 4), (128, 32, 32, 4, 1, 4), (128, 128, 16, 2, 2, 4),
                 (128, 64, 16, 2, 2, 4), (128, 32, 16, 4, 1, 4), (128, 16, 16, 4, 1, 4)):
        if pref in cands:
            return pref
    return cands[0]


def wgrad_candidates(f, k_cols, async_copy=True):
    """conv_wgrad tiles for f output channels over k_cols = taps * C columns."""
    fit = max(16, -(-f // 16) * 16)
    out = [cfg for cfg in WGRAD_CONFIGS if k_cols % cfg[1] == 0 and cfg[0] <= fit
           and _fits(wgrad_smem(cfg, async_copy), async_copy)]
    if not out:
        raise ValueError(f"no wgrad tile for {f} channels over {k_cols} columns")
    tallest = max(cfg[0] for cfg in out)
    return [cfg for cfg in out if cfg[0] == tallest]


def wgrad_default(f, k_cols, async_copy=True):
    return max(wgrad_candidates(f, k_cols, async_copy), key=lambda cfg: (cfg[1] <= 128, cfg[1]))


def _taps(kh, kw):
    """kh * kw, which pack_weights' and wgrad_reduce's shared-memory tiles hold up to MAX_TAPS of."""
    if kh * kw > MAX_TAPS:
        raise ValueError(f"the tensor-core convolutions take kernels of at most {MAX_TAPS} taps, not {kh}x{kw}")
    return kh * kw


class ConvKernels:
    """The compiled tensor-core convolutions for one storage kind and copy path. Each GEMM
    shape's tile is chosen by measurement the first time it runs outside a CUDA-graph capture
    (every candidate timed with events, as cudnn.benchmark does); `choices` records them."""

    def __init__(self, cupy, storage, async_copy, sms, tune=True, dtype=np.uint16, wgmma=None, tf32_wgrad=None):
        if storage not in KINDS:
            raise ValueError(f"tensor-core convolutions store float16, bfloat16 or float32, not {storage}")
        self.xp = cupy
        self.kind = KINDS[storage]
        self.tf32 = self.kind == KINDS["float32"]
        self.tf32_wgrad = tf32_wgrad_family(tf32_wgrad) if self.tf32 else None
        # what outputs are allocated as (16-bit: the bits are the same whatever the dtype)
        self.dtype = np.dtype(np.float32 if self.tf32 else dtype)
        self.e = self.dtype.itemsize
        self.bk = 128 // self.e                 # channels a K step: one 128-byte swizzled row
        self.async_copy = bool(async_copy)
        self.sms = sms
        self.tune = tune
        self._names = name_expressions(self.kind, self.async_copy)
        self.module = compile_module(cupy, source(files=CONV_FILES), self._names)
        # the warpgroup kernels: sm_90a code, what an H100 / H200 runs for the wide layers
        self.wgmma = bool(async_copy) and (wgmma_available(cupy) if wgmma is None else bool(wgmma))
        self.halo = os.environ.get(NO_HALO_ENV) != "1"
        self.maps = None            # tensor maps for conv_tma (tensor_maps.py), where it runs
        if self.wgmma and os.environ.get(NO_TMA_ENV) != "1":
            from .tensor_maps import TensorMaps
            self.maps = TensorMaps(cupy)
        self.wg_module = None
        self.inflight = None
        if self.tf32 and (not self.wgmma or self.maps is None):
            raise ValueError("fp32 storage with tf32 products runs on the warpgroup kernels with TMA loads "
                             "(compute capability 9.0, SCRATCH_NN_NO_WGMMA and SCRATCH_NN_NO_TMA unset)")
        if self.wgmma:
            self.inflight = wgmma_inflight()
            self.wg_module = compile_module(cupy, source(files=WGMMA_FILES), wgmma_names(self.kind),
                                            options=("--std=c++17", "-arch=sm_90a", f"-DWG_INFLIGHT={self.inflight}"))
        self._fn = {}
        self._tables = {}
        self.choices = {}           # (pass, shape...) -> tile
        self._pin = None            # a tile every launch takes (pinned())
        self._wgrad_plans = {}      # wgrad shape -> its chunking
        self._ws = None             # the shared fp32 partial workspace (_workspace)

    def _kernel(self, name, smem=0):
        fn = self._fn.get(name)
        if fn is None:
            module = self.wg_module if name.startswith(("conv_wgmma<", "conv_wgrad_wg<", "conv_halo<", "conv_tma<",
                                                        "conv_wgrad_tma<", "conv_wgrad_tf32<", "conv_wgrad_tfwg<")) \
                else self.module
            fn = self._fn[name] = module.get_function(name)
        if fn.max_dynamic_shared_size_bytes < smem:     # static + dynamic over 48 KB needs the opt-in
            fn.max_dynamic_shared_size_bytes = smem
        return fn

    def _table(self, key, make):
        t = self._tables.get(key)
        if t is None:
            t = self._tables[key] = self.xp.asarray(make())
        return t

    def _pick(self, key, options, run):
        """The tile for `key`: measured once over the candidates (run(cfg) launches one), else
        the default; options() -> (candidates, default) runs only while no choice is cached, so
        a step's launches cost a dictionary lookup of host time."""
        if self._pin is not None:
            if self._pin not in options()[0]:
                raise ValueError(f"tile {self._pin} cannot run {key}")
            return self._pin
        cfg = self.choices.get(key)
        if cfg is not None:
            return cfg
        cands, default = options()
        cupy = self.xp
        if len(cands) == 1 or not self.tune or cupy.cuda.get_current_stream().is_capturing():
            return default
        best, best_ms = None, None
        for cand in cands:
            run(cand)                                   # module load, shared-memory limit, caches
            s, e = cupy.cuda.Event(), cupy.cuda.Event()
            s.record()
            for _ in range(3):
                run(cand)
            e.record()
            e.synchronize()
            ms = cupy.cuda.get_elapsed_time(s, e)
            if best_ms is None or ms < best_ms:
                best, best_ms = cand, ms
        self.choices[key] = best
        return best

    @contextlib.contextmanager
    def pinned(self, cfg):
        """Inside the block every launch of the pass cfg belongs to takes tile cfg, measured
        choices aside (the tests run each compiled tile this way)."""
        self._pin = tuple(cfg)
        try:
            yield self
        finally:
            self._pin = None

    # -------------------------------------------------------------- packing
    def pack_forward(self, w, cp=None, out=None):
        """fp32 (F, C, KH, KW) -> the storage type's (F, KH*KW, Cp), channels zero-padded to Cp."""
        f, c, kh, kw = w.shape
        w = self.xp.ascontiguousarray(w, dtype=np.float32)
        cp = cp or c
        out = out if out is not None else self.xp.empty((f, kh * kw, cp), dtype=self._packed)
        self._kernel(f"pack_weights<{self.kind}>")((-(-cp // 32), f), (256,),
                                                   (w, out, np.int32(f), np.int32(c), np.int32(_taps(kh, kw)),
                                                    np.int32(cp), np.int32(0), np.int32(0)))
        return out

    @property
    def _packed(self):
        return np.float32 if self.tf32 else np.uint16

    def pack_dgrad(self, w, out=None):
        """fp32 (F, C, KH, KW) -> the storage type's (C, KH*KW, F)."""
        f, c, kh, kw = w.shape
        w = self.xp.ascontiguousarray(w, dtype=np.float32)
        out = out if out is not None else self.xp.empty((c, kh * kw, f), dtype=self._packed)
        taps = _taps(kh, kw)
        ct = min(32, MAX_TAPS // taps)      # input channels a tile
        self._kernel(f"pack_weights<{self.kind}>")((-(-f // 32), -(-c // ct)), (256,),
                                                   (w, out, np.int32(f), np.int32(c), np.int32(taps), np.int32(c),
                                                    np.int32(1), np.int32(ct)))
        return out

    def to_nhwc(self, x, cp):
        """fp32 NCHW -> NHWC in the storage type with cp >= C channels (zeros beyond C)."""
        n, c, h, w = x.shape
        x = self.xp.ascontiguousarray(x, dtype=np.float32)
        out = self.xp.empty((n, h, w, cp), dtype=self.dtype)
        total = out.size
        self._kernel(f"nchw_to_nhwc<{self.kind}>")((min(-(-total // 256), 65535),), (256,),
                                                   (x, out, np.int32(n), np.int32(c), np.int32(h * w), np.int32(cp)))
        return out

    # -------------------------------------------------------------- the gathered GEMM
    def _igemm(self, cfg, x, wp, y, table, f, grid_hw, s, out_hw, os_, bias, relu, stats, add=None):
        """grid: (ceil(M / BM), ceil(f / BN), classes) of WM * WN warps."""
        n, h, w, c = x.shape
        ohc, owc = grid_hw
        m = n * ohc * owc
        if cfg[0] == "wg":      # conv_wgmma: grid (ceil(M / (128 WG)), ceil(f / BN), classes) of WG warpgroups
            _, bn, wg, _ = cfg
            bm, threads, smem, name = 128 * wg, 128 * wg, wgmma_smem(cfg, self.e), wgmma_name(self.kind, cfg)
        else:
            bm, bn, bk, wm, wn, _ = cfg
            threads, smem = wm * wn * 32, igemm_smem(cfg, self.async_copy)
            name = igemm_name(self.kind, cfg, self.async_copy)
        grid = (-(-m // bm), -(-f // bn), table.shape[0])
        self._kernel(name, smem)(
            grid, (threads,),
            (x, wp, y, table, np.int32(n), np.int32(h), np.int32(w), np.int32(c), np.int32(f), np.int32(ohc),
             np.int32(owc), np.int32(s), np.int32(out_hw[0]), np.int32(out_hw[1]), np.int32(os_),
             bias if bias is not None else NULL, np.int32(relu), stats if stats is not None else NULL,
             add if add is not None else NULL),
            shared_mem=smem)

    def _halo(self, cfg, x, wp, y, table, f, bias, relu, stats, add=None):
        """conv_halo: grid (ceil(N * H * W / (128 WG)), ceil(f / BN)) of WG warpgroups; x (N, H, W, C)."""
        n, h, w, c = x.shape
        _, bn, wg, _ = cfg
        smem = halo_smem(cfg, h, w, c, self.e)
        self._kernel(halo_name(self.kind, cfg), smem)(
            (-(-n * h * w // (128 * wg)), -(-f // bn)), (128 * wg,),
            (x, wp, y, table, np.int32(n), np.int32(h), np.int32(w), np.int32(c), np.int32(f),
             bias if bias is not None else NULL, np.int32(relu), stats if stats is not None else NULL,
             add if add is not None else NULL), shared_mem=smem)

    def _tma(self, cfg, x, wp, y, table, f, k, s, p, bias, relu, stats, add=None, classes=False):
        """conv_tma: grid (ceil(N * OH * OW / (128 WG)), ceil(f / BN), table rows) of WG warpgroups;
        x (N, H, W, C), wp (f, k*k, C), y (N, OH, OW, f), tensor maps for x and wp (kept per
        address). With classes (a stride-2 data gradient): x is dY, each of the table's four
        sub-pixel classes a stride-1 gather over it through a 3x3 padding-1 map, written every
        second row and column of y."""
        n, h, w, c = x.shape
        oho, owo = y.shape[1:3]
        oh, ow, os_ = (h, w, 2) if classes else (oho, owo, 1)
        if classes:
            k, s, p = 3, 1, 1
        _, bn, wg, _ = cfg
        smem = wgmma_smem(cfg, self.e)
        self._kernel(tma_name(self.kind, cfg), smem)(
            (-(-n * oh * ow // (128 * wg)), -(-f // bn), table.shape[0]), (128 * wg,),
            (self.maps.im2col(x, k, s, p), self.maps.rows(wp.reshape(wp.shape[0], -1), bn), y, table,
             np.int32(n), np.int32(h), np.int32(w), np.int32(c), np.int32(f), np.int32(oh), np.int32(ow),
             np.int32(s), np.int32(p), np.int32(oho), np.int32(owo), np.int32(os_),
             bias if bias is not None else NULL, np.int32(relu), stats if stats is not None else NULL,
             add if add is not None else NULL), shared_mem=smem)

    def _tma_takes(self, x, c, f, k, s, p, dgrad=False):
        """conv_tma's tiles for this GEMM where the GPU runs the warpgroup kernels and tensor maps, else []."""
        if self.maps is None or not self._wgmma_takes(x, c, f) or x.data.ptr % 16:
            return []
        return tma_candidates(f, c, k, s, p, dgrad, self.bk)

    def _wgrad_tma_takes(self, dy, x, wg_cands):
        """conv_wgrad_tma's twins of the conv_wgrad_wg tiles wg_cands, where tensor maps run, else []."""
        if self.maps is None or dy.data.ptr % 16 or x.data.ptr % 16:
            return []
        return [("wgt",) + cfg[1:] for cfg in wg_cands]

    def _halo_takes(self, x, c, f, k, s, p):
        """conv_halo's tiles for this GEMM where the GPU runs the warpgroup kernels, else []."""
        if not (self.halo and self._wgmma_takes(x, c, f)):
            return []
        return halo_candidates(x.shape[1], x.shape[2], c, f, k, s, p, self.e)

    def forward(self, x, wp, k, s, p, bias=None, relu=False, stats=False, out=None):
        """y (N, OH, OW, F) = conv(x (N, H, W, C), wp (F, k*k, C)) (+ bias, ReLU). With stats,
        returns (y, st, rows): st (tiles, 2, F) float32 holds each tile of `rows` output positions'
        per-channel mean and sum of squared deviations (the last tile may hold fewer rows)."""
        n, h, w, c = x.shape
        f = wp.shape[0]
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        y = out if out is not None else self.xp.empty((n, oh, ow, f), dtype=self.dtype)
        table = self._table(("f", k, s, p), lambda: taps_forward(k, s, p))
        m = n * oh * ow
        holder = {}

        def run(cfg):
            st = self.xp.empty((-(-m // _stats_rows(cfg)), 2, f), dtype=np.float32) if stats else None
            if cfg[0] == "halo":
                self._halo(cfg, x, wp, y, table, f, bias, relu, st)
            elif cfg[0] == "tma":
                self._tma(cfg, x, wp, y, table, f, k, s, p, bias, relu, st)
            else:
                self._igemm(cfg, x, wp, y, table, f, (oh, ow), s, (oh, ow), 1, bias, relu, st)
            holder["st"] = st

        def options():
            # conv_halo, conv_tma and conv_wgmma add the same products in the same order: timed together
            halo, tma = self._halo_takes(x, c, f, k, s, p), self._tma_takes(x, c, f, k, s, p)
            if halo:
                wg = wgmma_candidates(f, c, self.bk)
                return halo + tma + wg, halo_default(halo, wg, c)
            if self._wgmma_takes(x, c, f):
                cands = wgmma_candidates(f, c, self.bk)
                return tma + cands, cands[-1]
            self._mma_sync_takes(c, f)
            cands = igemm_candidates(f, c, self.async_copy)
            if stats:
                cands = stats_tiles(cands)
            default = igemm_default(f, c, self.async_copy)
            return cands, default if default in cands else cands[0]

        cfg = self._pick(("forward", n, h, w, c, f, k, s, p, bool(stats)), options, run)
        run(cfg)
        return (y, holder["st"], _stats_rows(cfg)) if stats else y

    def _wgmma_takes(self, x, c, f):
        """Whether conv_wgmma runs a GEMM over x's c channels into f: on sm_90, for c a multiple
        of its K step, and offsets that fit its 32-bit arithmetic."""
        return self.wgmma and c % self.bk == 0 and f % 8 == 0 and x.size < 2**31

    def _mma_sync_takes(self, c, f):
        """fp32 storage has no mma.sync GEMMs: a GEMM the warpgroup kernels cannot run is an error."""
        if self.tf32:
            raise ValueError(f"the tf32 convolutions need channels a multiple of {self.bk} over outputs a multiple "
                             f"of 8 and fewer than 2**31 values, not {c} -> {f}")

    def dgrad(self, dy, wd, k, s, p, hw, out=None, add=None):
        """dx (N, H, W, C) of a convolution (k, s, p) from dy (N, OH, OW, F) and wd (C, k*k, F);
        with add (N, H, W, C), dx + add (each rounded sum as add_nhwc's), added in the epilogue."""
        n, oh, ow, f = dy.shape
        c = wd.shape[0]
        h, w = hw
        dx = out if out is not None else self.xp.empty((n, h, w, c), dtype=self.dtype)
        if add is not None and (add.shape != dx.shape or add.dtype != dx.dtype or not add.flags.c_contiguous
                                or add.data.ptr == dx.data.ptr):
            raise ValueError(f"dgrad adds a separate contiguous {dx.shape} {dx.dtype} array, not {add.shape} {add.dtype}")
        table = self._table(("d", k, s, p), lambda: taps_dgrad(k, s, p))
        if s == 1:
            grid_hw, os_ = (h, w), 1
        else:
            if h % 2 or w % 2:
                raise ValueError("the stride-2 data gradient needs even input sizes")
            grid_hw, os_ = (h // 2, w // 2), 2

        def run(cfg):
            if cfg[0] == "halo":
                self._halo(cfg, dy, wd, dx, table, c, None, False, None, add)
            elif cfg[0] == "tma":
                self._tma(cfg, dy, wd, dx, table, c, k, 1, p, None, False, None, add, classes=s == 2)
            else:
                self._igemm(cfg, dy, wd, dx, table, c, grid_hw, 1, (h, w), os_, None, False, None, add)

        def options():
            halo, tma = self._halo_takes(dy, f, c, k, s, p), self._tma_takes(dy, f, c, k, s, p, dgrad=True)
            if halo:
                wg = wgmma_candidates(c, f, self.bk)
                return halo + tma + wg, halo_default(halo, wg, f)
            if self._wgmma_takes(dy, f, c):
                cands = wgmma_candidates(c, f, self.bk)
                return tma + cands, cands[-1]
            self._mma_sync_takes(f, c)
            return igemm_candidates(c, f, self.async_copy), igemm_default(c, f, self.async_copy)

        cfg = self._pick(("dgrad", n, oh, ow, f, c, k, s, p), options, run)
        run(cfg)
        return dx

    def _wgrad_plan(self, m, f, kcols, oh, ow, warpgroup=False):
        """(chunks, positions a chunk, fdiv pair of OH*OW, of OW). The chunks depend on the shape
        (and the kernel family) alone, not on the tile a measurement picks: every tile then adds
        the same partial sums in the same order, and a run repeats bitwise whichever won. They
        are counted for the largest candidate tile (WGRAD_CTAS_PER_SM CTAs an SM of it), so that the big tiles,
        which read the least per FLOP, still fill the GPU (counted for a small one, a 64 x 192
        tile of a 64-channel layer got 177 CTAs on 132 SMs and lost to 64 x 64)."""
        if warpgroup and self.tf32:
            ref = max(wgrad_tf32_candidates(f, kcols, self.tf32_wgrad), key=lambda cfg: (cfg[1] * cfg[2], cfg[2]))[1:3]
            unit = TF32_BK
        elif warpgroup:
            ref = max(wgrad_wg_candidates(f, kcols), key=lambda cfg: (cfg[1] * cfg[2], cfg[2]))[1:3]
            unit = WGMMA_BK
        else:
            ref = max(wgrad_candidates(f, kcols, self.async_copy), key=lambda cfg: (cfg[0] * cfg[1], cfg[1]))
            unit = WGRAD_BK
        tiles = -(-f // ref[0]) * (kcols // ref[1])
        chunks = max(1, min(-(-WGRAD_CTAS_PER_SM * self.sms // tiles), -(-m // unit), WGRAD_WS_BYTES // max(1, 4 * f * kcols)))
        chunk = -(-(-(-m // chunks)) // unit) * unit
        return -(-m // chunk), chunk, fast_divisor(oh * ow), fast_divisor(ow)

    def _workspace(self, n):
        """n fp32 values of the one partial-sums buffer the weight gradients share (each is
        reduced, in stream order, before the next writes it) instead of a pool allocation per
        call. Fixed once allocated: a captured CUDA graph keeps its address. A single chunk
        larger than the buffer gets an array of its own. (Measured on the H200, ResNet-18 b512
        fp16: the pool's steady-state total 1,724 -> 1,716 MB, the bench's captured peak 1,833
        -> 1,783 MB.)"""
        cap = WGRAD_WS_BYTES // 4
        if n > cap:
            return self.xp.empty(n, dtype=np.float32)
        if self._ws is None:
            self._ws = self.xp.empty(cap, dtype=np.float32)
        return self._ws[:n]

    def wgrad(self, dy, x, k, s, p, out, accumulate=False, creal=None):
        """out (F, Creal, k, k) fp32 (+)= the weight gradient from dy (N, OH, OW, F) and the
        forward's input x (N, H, W, C): chunks of positions into fp32 partials
        (grid: (ceil(F / BM), k*k*C / BN, chunks)), then summed in chunk order."""
        n, oh, ow, f = dy.shape
        _, h, w, c = x.shape
        creal = creal or c
        m, kcols = n * oh * ow, k * k * c
        key = ("wgrad", n, h, w, c, f, k, s, p)
        warpgroup = self._wgmma_takes(x, c, f)
        if not warpgroup:
            self._mma_sync_takes(c, f)
        plan = self._wgrad_plans.get(key)
        if plan is None:
            plan = self._wgrad_plans[key] = self._wgrad_plan(m, f, kcols, oh, ow, warpgroup)
        chunks, chunk, (mul_hw, sh_hw), (mul_w, sh_w) = plan
        holder = {}

        def run(cfg):
            ws = self._workspace(chunks * f * kcols).reshape(chunks, f, kcols)
            if cfg[0] == "wtf":             # NW warps of mma.sync tf32, operands by tensor maps
                _, bm, bn, _, _, nw = cfg
                threads, smem, name = 32 * nw, wgrad_tf32_smem(cfg), wgrad_tf32_name(cfg)
            elif cfg[0] == "wtw":           # WGN warpgroups of wgmma tf32, operands by tensor maps
                _, bm, bn, wgn, _ = cfg
                threads, smem, name = 128 * wgn, wgrad_tfwg_smem(cfg), wgrad_tfwg_name(cfg)
            elif cfg[0] in ("wgw", "wgt"):  # WG warpgroups a CTA; conv_wgrad_tma's operands by tensor maps
                _, bm, bn, _, wg = cfg
                threads, smem, name = 128 * wg, wgrad_wg_smem(cfg), wgrad_wg_name(self.kind, cfg)
            else:
                bm, bn, wm, wn, _ = cfg
                threads, smem, name = wm * wn * 32, wgrad_smem(cfg, self.async_copy), wgrad_name(self.kind, cfg, self.async_copy)
            if cfg[0] in ("wtf", "wtw"):
                args = (self.maps.rows(dy.reshape(-1, f), TF32_BK), self.maps.im2col(x, k, s, p, pixels=TF32_BK), ws,
                        np.int32(n), np.int32(c), np.int32(f), np.int32(oh), np.int32(ow), np.int32(k), np.int32(s),
                        np.int32(p), np.int32(chunk), np.int32(kcols))
            elif cfg[0] == "wgt":
                args = (self.maps.rows(dy.reshape(-1, f), 64), self.maps.im2col(x, k, s, p, pixels=WGMMA_BK), ws,
                        np.int32(n), np.int32(c), np.int32(f), np.int32(oh), np.int32(ow), np.int32(k), np.int32(s),
                        np.int32(p), np.int32(chunk), np.int32(kcols))
            else:
                args = (dy, x, ws, np.int32(n), np.int32(h), np.int32(w), np.int32(c), np.int32(f), np.int32(oh),
                        np.int32(ow), np.int32(k), np.int32(s), np.int32(p), np.int32(chunk), np.int32(kcols),
                        np.uint64(mul_hw), np.int32(sh_hw), np.uint64(mul_w), np.int32(sh_w))
            self._kernel(name, smem)((-(-f // bm), kcols // bn, chunks), (threads,), args, shared_mem=smem)
            holder["ws"] = ws

        def options():
            if warpgroup and self.tf32:
                cands = wgrad_tf32_candidates(f, kcols, self.tf32_wgrad)
                return cands, cands[0]
            if warpgroup:       # conv_wgrad_tma and conv_wgrad_wg give the same bits: timed together
                cands = wgrad_wg_candidates(f, kcols)
                return self._wgrad_tma_takes(dy, x, cands) + cands, cands[-1]
            return wgrad_candidates(f, kcols, self.async_copy), wgrad_default(f, kcols, self.async_copy)

        cfg = self._pick(key, options, run)
        run(cfg)
        ws = holder["ws"]
        taps = _taps(k, k)
        self._kernel("wgrad_reduce")((-(-creal // 32), f), (32 * min(taps, 32),),
                                     (ws, out, np.int32(ws.shape[0]), np.int32(f), np.int32(c), np.int32(creal),
                                      np.int32(k * k), np.int32(accumulate)))
        return out
