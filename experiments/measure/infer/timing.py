"""Timing one inference row: warm up, check the output against the reference, time the
forward (synchronised after each iteration) and, on a GPU, the copy in apart."""
import time

import numpy as np

from .plan import MIN_ITERS, MIN_WARMUP

def percentiles(lat_s):
    ms = np.asarray(lat_s) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return dict(latency_ms_p50=p50, latency_ms_p90=p90, latency_ms_p99=p99, latency_ms_mean=float(ms.mean()))


def measure(runner, host_x, args, gpu, ref=None, tolerance=None, step=None):
    """Warm up, check the output, time the forward (and the copy in, on a GPU). Returns a dict
    of row fields plus 'latencies' and 'h2d' (seconds per iteration)."""
    t_setup = time.perf_counter()
    x = runner.to_device(host_x)
    runner.sync()
    step = runner.setup(x)
    warm_min = min(args.warmup, MIN_WARMUP)
    if runner.engine == "compile":
        warm_min = max(warm_min, 1)
    n_warm = 0
    t0 = time.perf_counter()
    while n_warm < max(args.warmup, warm_min):
        step()
        runner.sync()
        n_warm += 1
        if n_warm >= warm_min and time.perf_counter() - t0 > args.max_time:
            break
    warmup_s = time.perf_counter() - t_setup
    out = dict(warmup=n_warm, warmup_s=warmup_s, diff=None, latencies=[], h2d=[])
    y = step()
    runner.sync()
    if ref is not None:
        k = min(len(host_x), len(ref))
        got = runner.to_host(y)[:k]
        diff = float(np.max(np.abs(got - ref[:k]))) if np.all(np.isfinite(got)) else float("inf")
        out["diff"] = diff
        tol = tolerance * max(float(np.max(np.abs(ref[:k]))), 1e-30)
        if not diff <= tol:
            out["error"] = (f"output check failed: max |logits - torch fp64| = {diff:.3g} > {tol:.3g} "
                            f"({tolerance:g} of the largest logit)")
            return out
    lat = []
    min_iters = min(MIN_ITERS, args.iters)
    t_start = time.perf_counter()
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        runner.sync()
        lat.append(time.perf_counter() - t0)
        if len(lat) >= min_iters and time.perf_counter() - t_start > args.max_time:
            break
    out["latencies"] = lat
    if gpu:
        h2d = []
        for i in range(len(lat) + 2):      # two untimed copies first (pinned staging, pool growth)
            runner.sync()
            t0 = time.perf_counter()
            runner.to_device(host_x)
            runner.sync()
            if i >= 2:
                h2d.append(time.perf_counter() - t0)
        out["h2d"] = h2d
    return out
