"""Where a GPU training step goes (what experiments.gpu_profile prints): the two ceilings (copy
bandwidth, GEMM rate), the scratch step kernel by kernel, its GEMMs by shape, and torch's
top CUDA kernels. Needs CuPy and a GPU; each function returns text lines or figures."""
import collections
import time

import numpy as np

from ..train.adapters import OptimSpec, make_adapter

SPEC = OptimSpec("sgd", lr=0.01, momentum=0.9)


def event_time(fn, reps=20):
    """Seconds per call of fn, between two CUDA events after one call to warm up."""
    import cupy

    s, e = cupy.cuda.Event(), cupy.cuda.Event()
    fn()
    cupy.cuda.Device().synchronize()
    s.record()
    for _ in range(reps):
        fn()
    e.record()
    e.synchronize()
    return cupy.cuda.get_elapsed_time(s, e) / reps / 1e3


def ceilings():
    """Lines: device-to-device copy bandwidth and 8192^3 GEMM rates (fp32 strict, tf32)."""
    import cupy

    from scratch_nn import backends

    lines = []
    a = cupy.empty(2**28, dtype=cupy.float32)
    b = cupy.empty_like(a)
    a[...] = 1
    t = event_time(lambda: cupy.copyto(b, a))
    lines.append(f"D2D copy: {2 * a.nbytes / t / 1e12:.2f} TB/s")
    x = cupy.random.standard_normal((8192, 8192), dtype=cupy.float32)
    y = cupy.random.standard_normal((8192, 8192), dtype=cupy.float32)
    for name in ("fp32", "tf32"):
        bk = backends.get("cupy", precision=name)
        t = event_time(lambda: bk.gemm(x, y), 5)
        lines.append(f"GEMM 8192^3 {name}: {2 * 8192**3 / t / 1e12:.1f} TFLOP/s")
    return lines


def scratch_step(model, batch, precision, seed=0):
    """(adapter, device batch, seconds per eager step unsynchronised) of the scratch cupy step."""
    ad = make_adapter("scratch", model=model, backend="cupy", optimizer=SPEC, precision=precision)
    r = np.random.default_rng(seed)
    xb, yb = ad.to_device(r.standard_normal((batch, 3, 32, 32)).astype(np.float32), r.integers(0, 10, batch))
    for _ in range(3):
        ad.train_step(xb, yb)
    ad.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        ad.train_step(xb, yb)
    ad.synchronize()
    return ad, (xb, yb), (time.perf_counter() - t0) / 10


def kernel_table(ad, batch, steps=5):
    """KernelProfile's table of `steps` steps: exclusive times per kernel, GEMM apart."""
    from scratch_nn.backends.profile import KernelProfile

    with KernelProfile(ad.be) as prof:
        for _ in range(steps):
            ad.train_step(*batch)
    return prof.table(steps)


def gpu_kernel_table(ad, batch, steps=5, rows=30):
    """GPU time per kernel of `steps` unsynchronised scratch steps, as the GPU ran them: CUPTI
    (through torch.profiler) sees every kernel of the process, CuPy's included, so no host
    time or launch latency is counted. Lines: ms per step and share per kernel name."""
    from torch.profiler import ProfilerActivity, profile

    ad.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(steps):
            ad.train_step(*batch)
        ad.synchronize()
    times, calls = {}, {}
    for avg in p.key_averages():
        if avg.self_device_time_total > 0:     # a kernel, a copy or a memset (only CUDA activity is traced)
            times[avg.key] = avg.self_device_time_total / 1e3
            calls[avg.key] = avg.count
    total = sum(times.values())
    lines = [f"GPU time per kernel (CUPTI, {steps} steps unsynchronised): {total / steps:.2f} ms/step",
             f"{'kernel':64s} {'ms/step':>8s} {'share':>6s} {'calls':>6s}"]
    for name, ms in sorted(times.items(), key=lambda kv: -kv[1])[:rows]:
        lines.append(f"{name[:64]:64s} {ms / steps:8.3f} {100 * ms / total:5.1f}% {calls[name] / steps:6.1f}")
    return lines


def gemm_shapes(ad, batch, steps=3, top=14):
    """(ms of GEMMs a step, lines of the slowest GEMM shapes with their TFLOP/s), each GEMM
    timed between events around it."""
    import cupy

    times, counts = collections.defaultdict(float), collections.Counter()
    orig = ad.be.gemm

    def timed(a, b, out=None, accumulate=False, out_dtype=None):
        s, e = cupy.cuda.Event(), cupy.cuda.Event()
        s.record()
        r = orig(a, b, out=out, accumulate=accumulate, out_dtype=out_dtype)
        e.record()
        e.synchronize()
        key = (a.shape, "T" if not a.flags.c_contiguous else "N", b.shape, "T" if not b.flags.c_contiguous else "N")
        times[key] += cupy.cuda.get_elapsed_time(s, e)
        counts[key] += 1
        return r

    ad.be.gemm = timed
    try:
        for _ in range(steps):
            ad.train_step(*batch)
    finally:
        del ad.be.gemm
    lines = []
    for key, ms in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
        (ma, ka), ta, (kb, nb), tb = key
        flops = 2 * ma * ka * nb
        lines.append(f"  {str(key[0]):14s}{ta} @ {str(key[2]):16s}{tb}  {ms / steps:7.3f} ms/step  "
                     f"{counts[key] // steps} calls  {flops / (ms / counts[key] * 1e-3) / 1e12:6.1f} TFLOP/s per call")
    return sum(times.values()) / steps, lines


def torch_top_kernels(model, batch, precision, seed=0, rows=14):
    """torch.profiler's table of the top CUDA kernels of five torch training steps."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    tad = make_adapter("torch", model=model, device="cuda", optimizer=SPEC, precision=precision)
    r = np.random.default_rng(seed)
    xb, yb = tad.to_device(r.standard_normal((batch, 3, 32, 32)).astype(np.float32), r.integers(0, 10, batch))
    for _ in range(5):
        tad.train_step(xb, yb)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(5):
            tad.train_step(xb, yb)
        torch.cuda.synchronize()
    return p.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60)
