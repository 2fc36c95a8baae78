"""The step-timing core of experiments.bench and experiments.scaling: every side trains on
the same fixed batches from the same weights; warm-up steps first, timed apart; then the
repeats alternate between the sides (drift in machine load hits all alike), each timing whole
training steps (forward, loss, backward, optimizer) between two device syncs."""
import csv
import datetime
import os
import statistics
import time

import numpy as np

from ..train.adapters import OptimSpec, make_adapter

CSV_COLUMNS = ["cpu", "threads", "model", "batch_size", "scratch_backend", "scratch_images_per_s",
               "torch_images_per_s", "ratio", "date", "numpy_blas"]
DEFAULT_CSV = os.path.join("results", "bench", "cpu_train.csv")
GPU_CSV_COLUMNS = ["gpu", "model", "batch_size", "precision", "cuda_graph", "torch_cuda_graph", "scratch_images_per_s",
                   "torch_images_per_s", "ratio", "scratch_peak_gpu_mem_mb", "torch_peak_gpu_mem_mb", "date",
                   "torch_memory_format"]
MEMORY_FORMAT_TAGS = {"nchw": "", "channels-last": "-cl"}      # torch side labels: torch-cuda, torch-cuda-cl
DEFAULT_GPU_CSV = os.path.join("results", "bench", "gpu_train.csv")


def time_steps(adapter, batches, n_steps):
    """Seconds for n_steps training steps, synchronised at both ends."""
    adapter.synchronize()
    t0 = time.perf_counter()
    for i in range(n_steps):
        adapter.train_step(*batches[i % len(batches)])
    adapter.synchronize()
    return time.perf_counter() - t0


def memory_formats(args):
    """The torch memory formats a bench measures (NCHW alone on the CPU)."""
    if not args.gpu:
        return ["nchw"]
    return {"nchw": ["nchw"], "channels-last": ["channels-last"], "both": ["nchw", "channels-last"]}[
        getattr(args, "torch_memory_format", "nchw")]


def bench_sides(args):
    """(label, adapter options) for every side: scratch backends, then torch (each memory
    format asked); on the GPU one group per CUDA-graph mode, the ratios taken within it."""
    graphs = {"off": [False], "on": [True], "both": [False, True]}[args.cuda_graph] if args.gpu else [False]
    sides = []
    for g in graphs:
        tag = "+graph" if g else ""
        gpu_kw = dict(precision=args.precision, cuda_graph=g) if args.gpu else {}
        sides += [(f"scratch-{b}{tag}", dict(impl="scratch", backend=b, **gpu_kw)) for b in args.scratch_backends]
        if not args.no_torch:
            dev = "cuda" if args.gpu else "cpu"
            for mf in memory_formats(args):
                mkw = dict(memory_format=mf) if args.gpu else {}
                sides.append((f"torch-{dev}{MEMORY_FORMAT_TAGS[mf]}{tag}", dict(impl="torch", device=dev, **gpu_kw, **mkw)))
    return sides


class GpuMemory:
    """Peak GPU memory of one side: what its allocator reserved beyond what it held before the
    side was built (CuPy's pools keep what they take, so their size after the warm-up is their
    peak; torch reports its own high-water mark)."""

    def __init__(self, impl):
        self.impl = impl
        if impl == "scratch":
            import cupy
            from scratch_nn.backends import gpu_allocator

            self.held = lambda: gpu_allocator.held_bytes(cupy)
            gpu_allocator.release_free_blocks(cupy)
            self.base = self.held()
        else:
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_reserved()

    def peak_mb(self):
        if self.impl == "scratch":
            return (self.held() - self.base) / 2**20
        import torch

        return (torch.cuda.max_memory_reserved() - self.base) / 2**20


def bench_model(model, args, log=print):
    spec = OptimSpec("sgd", lr=0.01, momentum=0.9)
    r = np.random.default_rng(args.seed)
    host = [(r.standard_normal((args.batch_size, 3, 32, 32)).astype(np.float32),
             r.integers(0, 10, args.batch_size)) for _ in range(4)]
    runners = {}
    for label, kw in bench_sides(args):
        mem = GpuMemory(kw["impl"]) if args.gpu else None
        ad = make_adapter(model=model, optimizer=spec, seed=args.seed, threads=args.threads, **kw)
        batches = [ad.to_device(x, y) for x, y in host]
        warm = time_steps(ad, batches, args.warmup)   # includes compilation, cuDNN autotuning
        per_step = time_steps(ad, batches, 1)         # so size the repeats on a steady step
        n = max(2, int(np.ceil(args.min_time / max(per_step, 1e-6))))
        runners[label] = dict(adapter=ad, batches=batches, steps=n, warmup_s=warm, ips=[],
                              peak_mb=mem.peak_mb() if mem else None)
        peak = f"; peak GPU memory {runners[label]['peak_mb']:.0f} MB" if mem else ""
        log(f"  {model:9s} {label:20s} warm-up {args.warmup} steps {warm:7.2f} s; timing {n} steps x "
            f"{args.repeats}{peak}")
    for _ in range(args.repeats):
        for label, run in runners.items():
            dt = time_steps(run["adapter"], run["batches"], run["steps"])
            run["ips"].append(run["steps"] * args.batch_size / dt)
    return runners


def summarise(model, runners, args):
    """One row per scratch side and torch memory format (the same CUDA-graph mode on both)."""
    rows = []
    dev = "cuda" if args.gpu else "cpu"
    for label, run in runners.items():
        if not label.startswith("scratch-"):
            continue
        graph = label.endswith("+graph")
        ips = run["ips"]
        for mf in memory_formats(args) if not args.no_torch else [None]:
            torch_run = runners.get(f"torch-{dev}{MEMORY_FORMAT_TAGS[mf]}{'+graph' if graph else ''}") if mf else None
            row = dict(model=model, backend=label[len("scratch-"):], scratch=statistics.median(ips),
                       scratch_min=min(ips), scratch_max=max(ips), torch=None, ratio=None, cuda_graph=graph,
                       torch_cuda_graph=graph,     # a column of its own: rows before torch captured fp16 have 0
                       torch_memory_format=mf or "nchw",
                       scratch_peak_mb=run["peak_mb"], torch_peak_mb=torch_run["peak_mb"] if torch_run else None)
            if torch_run:
                tips = torch_run["ips"]
                ratios = [a / b for a, b in zip(ips, tips)]   # pairs measured back to back
                row.update(torch=statistics.median(tips), torch_min=min(tips), torch_max=max(tips),
                           ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))
            rows.append(row)
    return rows


def upgrade_csv(path, columns, last):
    """Give a table written before its last column that column, each old row holding `last`
    (the GPU table's torch_memory_format: "nchw", the only layout measured then; the CPU
    table's numpy_blas: "" for not recorded)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        header = rows and list(rows[0]) or []
    if not rows or header == columns:
        return
    if header != columns[:-1]:
        raise ValueError(f"{path} has columns {header}, not experiments.bench's; give another --csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(dict(r, **{columns[-1]: last}) for r in rows)


def append_csv(path, rows, args, cpu, blas=""):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    if not new:
        upgrade_csv(path, *((GPU_CSV_COLUMNS, "nchw") if args.gpu else (CSV_COLUMNS, "")))
    date = datetime.date.today().isoformat()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=GPU_CSV_COLUMNS if args.gpu else CSV_COLUMNS)
        if new:
            w.writeheader()
        for r in rows:
            common = dict(model=r["model"], batch_size=args.batch_size, scratch_images_per_s=f"{r['scratch']:.2f}",
                          torch_images_per_s="" if r["torch"] is None else f"{r['torch']:.2f}",
                          ratio="" if r["ratio"] is None else f"{r['ratio']:.3f}", date=date)
            if args.gpu:
                w.writerow(dict(common, gpu=cpu, precision=args.precision, cuda_graph=int(r["cuda_graph"]),
                                torch_cuda_graph=int(r["torch_cuda_graph"]),
                                torch_memory_format=r["torch_memory_format"],
                                scratch_peak_gpu_mem_mb=f"{r['scratch_peak_mb']:.0f}",
                                torch_peak_gpu_mem_mb="" if r["torch_peak_mb"] is None else f"{r['torch_peak_mb']:.0f}"))
            else:
                w.writerow(dict(common, cpu=cpu, threads=args.threads, scratch_backend=r["backend"], numpy_blas=blas))
    print(f"appended {len(rows)} row(s) to {path}")
