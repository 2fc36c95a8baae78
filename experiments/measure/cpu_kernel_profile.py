"""Where a CPU training step goes (what experiments.cpu_profile prints): the backend's GEMM
ceiling on a square product, the scratch step beside torch's, its kernels (KernelProfile),
its convolutions by shape and pass, and its GEMMs by shape with their GFLOP/s. Each function
returns text lines."""
import collections
import time

import numpy as np

from ..train.adapters import OptimSpec, make_adapter

SPEC = OptimSpec("sgd", lr=0.01, momentum=0.9)
GEMM_METHODS = ("gemm", "gemm_batched", "gemm_batched_sum")


def adapters(model, backend, threads, batch, seed=0, with_torch=True):
    """(scratch adapter, its batch, torch adapter or None, its batch): same weights and data."""
    ad = make_adapter("scratch", model=model, backend=backend, threads=threads, optimizer=SPEC, seed=seed)
    r = np.random.default_rng(seed)
    xs, ys = r.standard_normal((batch, 3, 32, 32)).astype(np.float32), r.integers(0, 10, batch)
    tad = make_adapter("torch", model=model, device="cpu", threads=threads, optimizer=SPEC, seed=seed) \
        if with_torch else None
    return ad, ad.to_device(xs, ys), tad, (tad.to_device(xs, ys) if tad else None)


def gemm_ceiling(be, n, dtype=np.float32, reps=3):
    """Line: GFLOP/s of the backend's own gemm on one square n^3 product, best of reps."""
    r = np.random.default_rng(1)
    a, b = r.standard_normal((n, n)).astype(dtype), r.standard_normal((n, n)).astype(dtype)
    be.gemm(a, b)
    best = min(_seconds(lambda: be.gemm(a, b)) for _ in range(reps))
    return f"GEMM ceiling: {2 * n ** 3 / best / 1e9:.0f} GFLOP/s ({be.name}'s gemm, {n}^3 float32, {be.threads} thread(s))"


def _seconds(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def step_times(ad, xb, tad=None, txb=None, reps=3):
    """Lines: median ms per training step of scratch and torch, alternating, after one warm-up
    step each (run before this)."""
    times = {"scratch": [], "torch": []}
    for _ in range(reps):
        times["scratch"].append(_seconds(lambda: ad.train_step(*xb)))
        if tad is not None:
            times["torch"].append(_seconds(lambda: (tad.train_step(*txb), tad.synchronize())))
    s = np.median(times["scratch"])
    lines = [f"scratch step: {s * 1e3:.1f} ms (median of {reps}, {xb[0].shape[0] / s:.1f} img/s)"]
    if tad is not None:
        t = np.median(times["torch"])
        lines.append(f"torch step:   {t * 1e3:.1f} ms ({xb[0].shape[0] / t:.1f} img/s); scratch/torch images/s "
                     f"{t / s:.2f}x")
    return lines


def kernel_table(ad, xb, steps):
    from scratch_nn.backends.profile import KernelProfile

    with KernelProfile(ad.be) as prof:
        for _ in range(steps):
            ad.train_step(*xb)
    return prof.table(steps).splitlines()


def conv_table(ad, xb, steps):
    """Lines: ms per step of each convolution shape's forward and backward (all layers of that
    shape together), largest first, with the algorithm the backend recorded for it."""
    be = ad.be
    per, calls = collections.defaultdict(float), collections.Counter()
    fwd, bwd = be.conv2d_forward, be.conv2d_backward

    def forward(x, w, b, stride, pad, relu=False):
        t = time.perf_counter()
        out = fwd(x, w, b, stride, pad, relu=relu)
        key = ("forward", x.shape[1:], w.shape[0], w.shape[2], stride)
        per[key] += time.perf_counter() - t
        calls[key] += 1
        return out

    def backward(dy, cache, w, need_dx=True):
        t = time.perf_counter()
        out = bwd(dy, cache, w, need_dx=need_dx)
        key = ("backward", (w.shape[1],) + tuple(dy.shape[2:]), w.shape[0], w.shape[2], "-")
        per[key] += time.perf_counter() - t
        calls[key] += 1
        return out

    be.conv2d_forward, be.conv2d_backward = forward, backward
    try:
        for _ in range(steps):
            ad.train_step(*xb)
    finally:
        del be.conv2d_forward, be.conv2d_backward
    algos = be.conv_algorithms()
    lines = [f"{'pass':9s} {'input (C, H, W) / output map':>28s} {'filters':>7s} {'k':>2s} {'s':>2s} "
             f"{'ms/step':>8s} {'calls':>6s}"]
    for key, sec in sorted(per.items(), key=lambda kv: -kv[1]):
        p, shape, f, k, s = key
        lines.append(f"{p:9s} {str(tuple(shape)):>28s} {f:7d} {k:2d} {s!s:>2s} {1e3 * sec / steps:8.1f} "
                     f"{calls[key] / steps:6.1f}")
    lines.append(f"convolutions: {1e3 * sum(per.values()) / steps:.1f} ms/step")
    if algos:
        lines.append("algorithms: " + "; ".join(f"{k}: {v}" for k, v in sorted(algos.items())))
    return lines


def gemm_table(ad, xb, steps, top=14):
    """Lines: ms per step and GFLOP/s of the step's GEMMs by method and operand shapes, the
    slowest first; products a backend runs inside a fused kernel are not seen here."""
    be = ad.be
    seconds, flops, counts = collections.defaultdict(float), collections.defaultdict(float), collections.Counter()
    originals = {m: getattr(be, m) for m in GEMM_METHODS if hasattr(be, m)}

    def wrap(method, fn):
        def timed(a, b, *args, **kwargs):
            t = time.perf_counter()
            out = fn(a, b, *args, **kwargs)
            dt = time.perf_counter() - t
            key = (method, a.shape, b.shape)
            stack = int(np.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))) if max(a.ndim, b.ndim) > 2 else 1
            seconds[key] += dt
            flops[key] += 2.0 * a.shape[-2] * a.shape[-1] * b.shape[-1] * stack
            counts[key] += 1
            return out
        return timed

    for m, fn in originals.items():
        setattr(be, m, wrap(m, fn))
    try:
        for _ in range(steps):
            ad.train_step(*xb)
    finally:
        for m in originals:
            delattr(be, m)
    total_s, total_f = sum(seconds.values()), sum(flops.values())
    lines = [f"GEMMs: {1e3 * total_s / steps:.1f} ms/step, {total_f / steps / 1e9:.3g} GFLOP/step, "
             f"{total_f / max(total_s, 1e-12) / 1e9:.0f} GFLOP/s",
             f"{'method':17s} {'A':>20s} {'B':>20s} {'ms/step':>8s} {'GFLOP/s':>8s} {'calls':>6s}"]
    for key, sec in sorted(seconds.items(), key=lambda kv: -kv[1])[:top]:
        m, a, b = key
        lines.append(f"{m:17s} {str(a):>20s} {str(b):>20s} {1e3 * sec / steps:8.1f} "
                     f"{flops[key] / sec / 1e9:8.0f} {counts[key] / steps:6.1f}")
    return lines


# The algorithms a CPU backend can be told to run (constructor options), to measure its
# per-shape choice table on a machine: "auto" is the table itself.
CONV_VARIANTS = {
    "numpy": {"auto": {}, "planes": {"winograd_layout": "planes"}, "channels": {"winograd_layout": "channels"},
              "im2col": {"winograd": False}},
    "numba": {"auto": {}, "unfused": {"fused": False}, "F(2x2)": {"winograd": "2x2"}, "F(4x4)": {"winograd": "4x4"},
              "im2col": {"winograd": "off"}, "channel-major columns": {"position_columns": False}},
}


def model_convolutions(model, batch, seed=0):
    """The distinct convolutions of a model's forward pass: [(x shape, w shape, stride, pad,
    has bias, fused ReLU, needs the input gradient)], in the order they first run."""
    from scratch_nn import backends, models

    be = backends.get("numpy")
    seen = {}
    fwd = be.conv2d_forward

    def record(x, w, b, stride, pad, relu=False):
        seen.setdefault((x.shape, w.shape, stride, pad, b is not None, bool(relu), x.shape[1] != 3), None)
        return fwd(x, w, b, stride, pad, relu=relu)

    be.conv2d_forward = record
    net = models.build(model, backend=be, num_classes=10, seed=seed)
    net.forward(np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32))
    return list(seen)


def _best(fn, repeats):
    fn()
    return min(_seconds(fn) for _ in range(repeats))


def conv_variants(model, backend, threads, batch, repeats=3, with_torch=True):
    """Lines: each distinct convolution of the model timed forward / backward (ms, best of
    repeats) under every algorithm the backend can be told to run (runs of the same algorithm
    measured once), beside torch's convolution on the same threads; '*' marks the default's pick."""
    from scratch_nn import backends

    if with_torch:
        from ..train.adapters import set_torch_threads

        set_torch_threads(threads)
    r = np.random.default_rng(0)
    bes = {name: backends.get(backend, threads=threads, **opts) for name, opts in CONV_VARIANTS[backend].items()}
    lines = [f"{model} convolutions, batch {batch}, {backend} on {threads} thread(s), ms forward / backward, "
             f"best of {repeats}"]
    for xs, ws, stride, pad, has_b, relu, need_dx in model_convolutions(model, batch):
        x = r.standard_normal(xs).astype(np.float32)
        w = (r.standard_normal(ws) * 0.1).astype(np.float32)
        b = r.standard_normal(ws[0]).astype(np.float32) if has_b else None
        times, default = {}, None
        for name, be in bes.items():
            y, cache = be.conv2d_forward(x, w, b, stride, pad, relu=relu)
            algo = _algorithm(be, ws, xs, stride, pad)
            if name == "auto":
                default = algo
            if algo in times:
                continue
            dy = r.standard_normal(y.shape).astype(np.float32)
            t_f = _best(lambda: be.conv2d_forward(x, w, b, stride, pad, relu=relu), repeats)
            t_b = _best(lambda: be.conv2d_backward(dy, cache, w, need_dx=need_dx), repeats)
            times[algo] = (t_f, t_b)
        cells = [f"{'*' if a == default else ''}{a}: {1e3 * f:.1f} / {1e3 * bw:.1f}" for a, (f, bw) in times.items()]
        if with_torch:
            t_f, t_b = _torch_conv(xs, ws, stride, pad, has_b, need_dx, repeats)
            cells.append(f"torch: {1e3 * t_f:.1f} / {1e3 * t_b:.1f}")
        lines.append(f"{ws[1]}->{ws[0]} {ws[2]}x{ws[3]} s{stride} on {xs[2]}x{xs[3]}: " + "; ".join(cells))
    return lines


def _algorithm(be, w_shape, x_shape, stride, pad):
    f, c, kh, kw = w_shape
    return be.conv_algorithms()[f"{c}->{f} {kh}x{kw} stride {stride} pad {pad} on {x_shape[2]}x{x_shape[3]}"]


def _torch_conv(xs, ws, stride, pad, has_b, need_dx, repeats):
    """(forward, backward) seconds of torch's convolution (NCHW, float32, autograd) on these shapes."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    x = torch.randn(xs, generator=g, requires_grad=need_dx)
    w = (torch.randn(ws, generator=g) * 0.1).requires_grad_()
    b = torch.randn(ws[0], generator=g).requires_grad_() if has_b else None
    y = F.conv2d(x, w, b, stride, pad)
    dy = torch.randn(y.shape, generator=g)
    inputs = ([x] if need_dx else []) + [w] + ([b] if has_b else [])
    t_f = _best(lambda: F.conv2d(x, w, b, stride, pad), repeats)

    def backward():
        out = F.conv2d(x, w, b, stride, pad)
        torch.autograd.grad(out, inputs, dy)
    t_fb = _best(backward, repeats)
    return t_f, max(0.0, t_fb - t_f)
