"""Where a GPU training step goes: the two ceilings (copy bandwidth, GEMM rate), the scratch
step kernel by kernel, its GEMMs by shape, and optionally torch's top CUDA kernels.

    python -m experiments.gpu_profile resnet18 128 fp32 [torch]
"""
import collections
import sys
import time

import numpy as np

if len(sys.argv) < 4:
    sys.exit("usage: python -m experiments.gpu_profile MODEL BATCH PRECISION [torch]")
import cupy  # noqa: E402
from scratch_nn import backends
from scratch_nn.backends.profile import KernelProfile
from experiments.adapters import OptimSpec, make_adapter

def ev_time(fn, reps=20):
    s, e = cupy.cuda.Event(), cupy.cuda.Event()
    fn(); cupy.cuda.Device().synchronize()
    s.record()
    for _ in range(reps): fn()
    e.record(); e.synchronize()
    return cupy.cuda.get_elapsed_time(s, e) / reps / 1e3

# ceilings
a = cupy.empty(2**28, dtype=cupy.float32); b = cupy.empty_like(a); a[...] = 1
t = ev_time(lambda: cupy.copyto(b, a))
print(f"D2D copy: {2 * a.nbytes / t / 1e12:.2f} TB/s")
be = backends.get("cupy"); bt = backends.get("cupy", precision="tf32")
x = cupy.random.standard_normal((8192, 8192), dtype=cupy.float32); y = cupy.random.standard_normal((8192, 8192), dtype=cupy.float32)
for name, bk in (("fp32", be), ("tf32", bt)):
    t = ev_time(lambda: bk.gemm(x, y), 5)
    print(f"GEMM 8192^3 {name}: {2 * 8192**3 / t / 1e12:.1f} TFLOP/s")
del a, b, x, y

model, bs, prec = sys.argv[1], int(sys.argv[2]), sys.argv[3]
spec = OptimSpec("sgd", lr=0.01, momentum=0.9)
ad = make_adapter("scratch", model=model, backend="cupy", optimizer=spec, precision=prec)
r = np.random.default_rng(0)
xb, yb = ad.to_device(r.standard_normal((bs, 3, 32, 32)).astype(np.float32), r.integers(0, 10, bs))
for _ in range(3): ad.train_step(xb, yb)
ad.synchronize()
t0 = time.perf_counter()
for _ in range(10): ad.train_step(xb, yb)
ad.synchronize()
step = (time.perf_counter() - t0) / 10
print(f"{model} b{bs} {prec}: {step*1e3:.2f} ms/step, {bs/step:.0f} img/s (eager, no sync)")
with KernelProfile(ad.be) as prof:
    for _ in range(5): ad.train_step(xb, yb)
print(prof.table(5))
# per-GEMM shapes
times = collections.defaultdict(float); counts = collections.Counter()
orig = ad.be.gemm
def timed(a, b, out=None, accumulate=False, out_dtype=None):
    s, e = cupy.cuda.Event(), cupy.cuda.Event()
    s.record(); r_ = orig(a, b, out=out, accumulate=accumulate, out_dtype=out_dtype); e.record(); e.synchronize()
    key = (a.shape, "T" if not a.flags.c_contiguous else "N", b.shape, "T" if not b.flags.c_contiguous else "N")
    times[key] += cupy.cuda.get_elapsed_time(s, e); counts[key] += 1
    return r_
ad.be.gemm = timed
for _ in range(3): ad.train_step(xb, yb)
del ad.be.gemm
tot = sum(times.values()) / 3
print(f"GEMMs: {tot:.2f} ms/step")
for key, ms in sorted(times.items(), key=lambda kv: -kv[1])[:14]:
    (ma, ka), ta, (kb, nb), tb = key
    fl = 2 * ma * ka * nb
    print(f"  {str(key[0]):14s}{ta} @ {str(key[2]):16s}{tb}  {ms/3:7.3f} ms/step  {counts[key]//3} calls  "
          f"{fl / (ms / counts[key] * 1e-3) / 1e12:6.1f} TFLOP/s per call")

if len(sys.argv) > 4:
    import torch
    from torch.profiler import profile, ProfilerActivity
    tad = make_adapter("torch", model=model, device="cuda", optimizer=spec, precision=prec)
    txb, tyb = tad.to_device(r.standard_normal((bs, 3, 32, 32)).astype(np.float32), r.integers(0, 10, bs))
    for _ in range(5): tad.train_step(txb, tyb)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(5): tad.train_step(txb, tyb)
        torch.cuda.synchronize()
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
