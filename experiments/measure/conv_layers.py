"""ResNet-18's convolutions one by one on the GPU: the scratch tensor-core kernels
(scratch_nn/backends/conv_igemm.py) beside torch's cuDNN (channels-last, autotuned, the same
precision: fp16 or bf16, or tf32 on fp32 storage), each pass (forward, data gradient, weight
gradient) timed with CUDA events over repeated launches, against its floor (FLOPs at a
measured mma rate, bytes at the copy rate). What experiments.gpu_profile --convs prints; in tf32
the weight gradient runs the family SCRATCH_NN_TF32_WGRAD names (conv_igemm.py), so running it
once per family compares them layer by layer."""
import numpy as np

# (name, C, F, H (input), k, s, p) at the CIFAR stem; conv1's input is padded to 16 channels (tf32: 32)
RESNET18_CONVS = [("conv1", 3, 64, 32, 3, 1, 1)] + \
    [(f"layer1.{b}.conv{i}", 64, 64, 32, 3, 1, 1) for b in (0, 1) for i in (1, 2)] + \
    [("layer2.0.conv1", 64, 128, 32, 3, 2, 1), ("layer2.0.conv2", 128, 128, 16, 3, 1, 1),
     ("layer2.0.downsample", 64, 128, 32, 1, 2, 0), ("layer2.1.conv1", 128, 128, 16, 3, 1, 1),
     ("layer2.1.conv2", 128, 128, 16, 3, 1, 1),
     ("layer3.0.conv1", 128, 256, 16, 3, 2, 1), ("layer3.0.conv2", 256, 256, 8, 3, 1, 1),
     ("layer3.0.downsample", 128, 256, 16, 1, 2, 0), ("layer3.1.conv1", 256, 256, 8, 3, 1, 1),
     ("layer3.1.conv2", 256, 256, 8, 3, 1, 1),
     ("layer4.0.conv1", 256, 512, 8, 3, 2, 1), ("layer4.0.conv2", 512, 512, 4, 3, 1, 1),
     ("layer4.0.downsample", 256, 512, 8, 1, 2, 0), ("layer4.1.conv1", 512, 512, 4, 3, 1, 1),
     ("layer4.1.conv2", 512, 512, 4, 3, 1, 1)]


def _time(fn, reps, cupy):
    """ms per call: events around `reps` calls after two warm-up calls."""
    fn()
    fn()
    s, e = cupy.cuda.Event(), cupy.cuda.Event()
    s.record()
    for _ in range(reps):
        fn()
    e.record()
    e.synchronize()
    return cupy.cuda.get_elapsed_time(s, e) / reps


def mma_rate(cupy, storage, kernels, reps=20):
    """TFLOP/s of the scratch forward kernel on a large well-shaped convolution (256 -> 256
    channels, 3x3, 32x32, batch 64): the rate the floors use."""
    n, c, f, h = 64, 256, 256, 32
    r = cupy.random.default_rng(0)
    x = _random(r, (n, h, h, c), storage)
    wp = kernels.pack_forward(r.standard_normal((f, c, 3, 3), dtype=cupy.float32))
    y = cupy.empty((n, h, h, f), dtype=kernels.dtype)
    ms = _time(lambda: kernels.forward(x, wp, 3, 1, 1, out=y), reps, cupy)
    return 2 * n * h * h * f * c * 9 / (ms * 1e-3) / 1e12


def copy_rate(cupy):
    a = cupy.empty(2**28, dtype=cupy.float32)
    b = cupy.empty_like(a)
    a[...] = 1
    ms = _time(lambda: cupy.copyto(b, a), 10, cupy)
    return 2 * a.nbytes / (ms * 1e-3) / 1e12


def _random(r, shape, storage, creal=None):
    """Standard-normal values in the storage type: float32 itself, or 16-bit bits (bf16: the
    top half of each float32); channels from creal on zero (an input padded to the K step)."""
    import cupy

    v = r.standard_normal(shape, dtype=cupy.float32)
    if creal is not None:
        v[..., creal:] = 0
    if storage == "float32":
        return v
    if storage == "float16":
        return v.astype(cupy.float16).view(cupy.uint16)
    return (v.view(cupy.uint32) >> 16).astype(cupy.uint16)


def layer_table(batch, storage, async_copy=True, reps=20, with_torch=True, log=print):
    """One dict per (layer, pass): scratch and torch ms, FLOPs, bytes, floors."""
    import cupy

    from scratch_nn.backends.conv_igemm import ConvKernels

    sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
    K = ConvKernels(cupy, storage, async_copy, sms)
    tflops, tbps = mma_rate(cupy, storage, K), copy_rate(cupy)
    family = f", weight gradient {K.tf32_wgrad}" if K.tf32 else ""
    log(f"ceilings: scratch forward kernel {tflops:.0f} TFLOP/s on 64x256x32x32 -> 256 3x3; copy {tbps:.2f} TB/s"
        f"{family}")
    torch = None
    if with_torch:
        import torch

        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = K.tf32
        tdt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[storage]
    r = cupy.random.default_rng(1)
    e = K.e                                 # bytes a stored value
    rows = []
    for name, c, f, h, k, s, p in RESNET18_CONVS:
        cp = -(-c // K.bk) * K.bk if K.tf32 else (16 if c % 16 else c)   # the stem's input padded to a K step
        oh = (h + 2 * p - k) // s + 1
        x = _random(r, (batch, h, h, cp), storage, creal=c)
        w32 = r.standard_normal((f, c, k, k), dtype=cupy.float32) / np.sqrt(c * k * k)
        dy = _random(r, (batch, oh, oh, f), storage)
        wp, wd = K.pack_forward(w32, cp=cp), K.pack_dgrad(w32)
        y = cupy.empty((batch, oh, oh, f), dtype=K.dtype)
        dx = cupy.empty((batch, h, h, c), dtype=K.dtype)
        dw = cupy.empty((f, c, k, k), dtype=cupy.float32)
        passes = {"forward": lambda: K.forward(x, wp, k, s, p, stats=True, out=y),
                  "wgrad": lambda: K.wgrad(dy, x, k, s, p, dw, creal=c)}
        if name != "conv1":
            passes["dgrad"] = lambda: K.dgrad(dy, wd, k, s, p, (h, h), out=dx)
        tpass = {}
        if torch is not None:
            xt = torch.randn(batch, c, h, h, device="cuda", dtype=tdt).to(memory_format=torch.channels_last)
            wt = torch.randn(f, c, k, k, device="cuda", dtype=tdt).to(memory_format=torch.channels_last)
            dyt = torch.randn(batch, f, oh, oh, device="cuda", dtype=tdt).to(memory_format=torch.channels_last)
            conv_bw = torch.ops.aten.convolution_backward
            args = ([s, s], [p, p], [1, 1], False, [0, 0], 1)
            tpass = {"forward": lambda: torch.nn.functional.conv2d(xt, wt, stride=s, padding=p),
                     "wgrad": lambda: conv_bw(dyt, xt, wt, None, *args, [False, True, False])}
            if name != "conv1":
                tpass["dgrad"] = lambda: conv_bw(dyt, xt, wt, None, *args, [True, False, False])
        flops = 2 * batch * oh * oh * f * c * k * k
        for ps, fn in passes.items():
            ms = _time(fn, reps, cupy)
            tms = None
            if ps in tpass:
                torch.cuda.synchronize()
                tms = _time(tpass[ps], reps, cupy)
            nbytes = e * (batch * h * h * cp + batch * oh * oh * f) + (4 * f * c * k * k if ps == "wgrad" else 0)
            floor = max(flops / (tflops * 1e12), nbytes / (tbps * 1e12)) * 1e3
            key = {"forward": ("forward", batch, h, h, cp, f, k, s, p, True),
                   "dgrad": ("dgrad", batch, oh, oh, f, c, k, s, p),
                   "wgrad": ("wgrad", batch, h, h, cp, f, k, s, p)}[ps]
            tile = K.choices.get(key)
            rows.append(dict(layer=name, pass_=ps, scratch_ms=ms, torch_ms=tms, gflop=flops / 1e9, mb=nbytes / 1e6,
                             floor_ms=floor, tflops=flops / (ms * 1e-3) / 1e12, tile=tile))
    return rows, dict(mma_tflops=tflops, copy_tbps=tbps)


def format_table(rows, ceilings, batch, storage):
    what = "tf32 (float32 storage)" if storage == "float32" else storage
    lines = [f"ResNet-18 convolutions, batch {batch}, {what}: ms per pass (scratch, torch cuDNN channels-last), "
             f"floor = max(FLOPs / {ceilings['mma_tflops']:.0f} TFLOP/s, bytes / {ceilings['copy_tbps']:.2f} TB/s)",
             f"{'layer':22s} {'pass':8s} {'scratch':>8s} {'torch':>8s} {'ratio':>6s} {'floor':>7s} {'TFLOP/s':>8s}"]
    tot = {"scratch": 0.0, "torch": 0.0, "floor": 0.0}
    for r in rows:
        t = "-" if r["torch_ms"] is None else f"{r['torch_ms']:8.3f}"
        q = "-" if r["torch_ms"] is None else f"{r['torch_ms'] / r['scratch_ms']:5.2f}x"
        lines.append(f"{r['layer']:22s} {r['pass_']:8s} {r['scratch_ms']:8.3f} {t:>8s} {q:>6s} {r['floor_ms']:7.3f} "
                     f"{r['tflops']:8.0f}  {r['tile'] or ''}")
        tot["scratch"] += r["scratch_ms"]
        tot["torch"] += r["torch_ms"] or 0.0
        tot["floor"] += r["floor_ms"]
    lines.append(f"{'total':22s} {'':8s} {tot['scratch']:8.3f} {tot['torch']:8.3f} "
                 f"{(tot['torch'] / tot['scratch'] if tot['scratch'] else 0):5.2f}x {tot['floor']:7.3f}")
    return "\n".join(lines)
