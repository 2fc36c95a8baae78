"""Steady-state training throughput, scratch next to torch, measured in one process.

    python -m experiments.bench                                   # numpy vs torch, 1 thread, batch 64
    python -m experiments.bench --models resnet18 --repeats 5 --csv
    python -m experiments.bench --scratch-backends cupy --precision tf32 --batch-size 128 --csv
    python -m experiments.bench --scratch-backends cupy --models cnn --cuda-graph both

With --scratch-backends cupy the comparison runs on the GPU against torch on CUDA (cuDNN
autotuned, NCHW, eager unless --cuda-graph), in the same --precision on both sides, and
also records each side's peak GPU memory (what its allocator reserved at most).

For every model, each scratch backend and torch train on the same fixed batches from the
same initial weights. Warm-up steps run first and are reported apart; then the repeats
alternate between the implementations (so drift in machine load hits both alike), each
repeat timing whole training steps (forward, loss, backward, optimizer) after a device sync.
The ratio is scratch images/s over torch images/s, the median over repeats, with its spread.
"""
import argparse
import csv
import datetime
import os
import statistics
import sys
import time

import numpy as np

CSV_COLUMNS = ["cpu", "threads", "model", "batch_size", "scratch_backend", "scratch_images_per_s",
               "torch_images_per_s", "ratio", "date"]
DEFAULT_CSV = os.path.join("results", "bench", "cpu_train.csv")
GPU_CSV_COLUMNS = ["gpu", "model", "batch_size", "precision", "cuda_graph", "torch_cuda_graph", "scratch_images_per_s",
                   "torch_images_per_s", "ratio", "scratch_peak_gpu_mem_mb", "torch_peak_gpu_mem_mb", "date"]
DEFAULT_GPU_CSV = os.path.join("results", "bench", "gpu_train.csv")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="cnn,resnet18", help="comma-separated: cnn,resnet18 (default both)")
    ap.add_argument("--scratch-backends", default="numpy", help="comma-separated scratch backends (default numpy)")
    ap.add_argument("--no-torch", action="store_true", help="measure scratch only (no ratio)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="threads for every side (default 1: single core)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up steps per implementation, not timed (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per implementation (default 3)")
    ap.add_argument("--min-time", type=float, default=2.0,
                    help="seconds each repeat runs at least, sized on one step timed after the warm-up (default 2)")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "fp16"),
                    help="GPU runs: fp32 strict, tf32, or fp16 mixed, the same on both sides (default fp32)")
    ap.add_argument("--cuda-graph", default="off", choices=("off", "on", "both"),
                    help="GPU runs: replay each side's step as a captured CUDA graph (both: measure with and "
                         "without; default off)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--csv", nargs="?", const="", default=None, metavar="PATH",
                    help=f"append one row per model and backend to PATH (default {DEFAULT_CSV}, "
                         f"or {DEFAULT_GPU_CSV} for cupy)")
    a = ap.parse_args(argv)
    a.models = _split(ap, a.models, ("cnn", "resnet18"), "--models")
    a.scratch_backends = _split(ap, a.scratch_backends, ("numpy", "numba", "cupy"), "--scratch-backends")
    for name in ("batch_size", "threads", "repeats"):
        if getattr(a, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    if a.warmup < 1:
        ap.error("--warmup must be at least 1")
    if a.min_time <= 0:
        ap.error("--min-time must be positive")
    if "numpy" in a.scratch_backends and a.threads != 1:
        ap.error("the numpy backend is the single-core reference: use --threads 1, or --scratch-backends numba")
    a.gpu = "cupy" in a.scratch_backends
    if a.gpu and len(a.scratch_backends) > 1:
        ap.error("cupy is compared with torch on the GPU: bench it on its own (--scratch-backends cupy)")
    if not a.gpu and (a.precision != "fp32" or a.cuda_graph != "off"):
        ap.error("--precision tf32/fp16 and --cuda-graph are GPU modes: use --scratch-backends cupy")
    if a.csv == "":
        a.csv = DEFAULT_GPU_CSV if a.gpu else DEFAULT_CSV
    return a


def _split(ap, text, allowed, flag):
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        ap.error(f"{flag}: unknown {', '.join(bad) or 'empty list'}; choose from {', '.join(allowed)}")
    return items


def time_steps(adapter, batches, n_steps):
    """Seconds for n_steps training steps, synchronised at both ends."""
    adapter.synchronize()
    t0 = time.perf_counter()
    for i in range(n_steps):
        adapter.train_step(*batches[i % len(batches)])
    adapter.synchronize()
    return time.perf_counter() - t0


def bench_sides(args):
    """(label, adapter options) for every side: scratch backends, then torch; on the GPU one
    pair per CUDA-graph mode, the ratio taken within the pair."""
    graphs = {"off": [False], "on": [True], "both": [False, True]}[args.cuda_graph] if args.gpu else [False]
    sides = []
    for g in graphs:
        tag = "+graph" if g else ""
        gpu_kw = dict(precision=args.precision, cuda_graph=g) if args.gpu else {}
        sides += [(f"scratch-{b}{tag}", dict(impl="scratch", backend=b, **gpu_kw)) for b in args.scratch_backends]
        if not args.no_torch:
            sides.append((f"torch-{'cuda' if args.gpu else 'cpu'}{tag}",
                          dict(impl="torch", device="cuda" if args.gpu else "cpu", **gpu_kw)))
    return sides


class _GpuMemory:
    """Peak GPU memory of one side: what its allocator reserved beyond what it held before the
    side was built (CuPy's pool keeps what it takes, so its size after the warm-up is its
    peak; torch reports its own high-water mark)."""

    def __init__(self, impl):
        self.impl = impl
        if impl == "scratch":
            import cupy

            self.pool = cupy.get_default_memory_pool()
            self.pool.free_all_blocks()
            self.base = self.pool.total_bytes()
        else:
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_reserved()

    def peak_mb(self):
        if self.impl == "scratch":
            return (self.pool.total_bytes() - self.base) / 2**20
        import torch

        return (torch.cuda.max_memory_reserved() - self.base) / 2**20


def bench_model(model, args, log=print):
    from .adapters import OptimSpec, make_adapter

    spec = OptimSpec("sgd", lr=0.01, momentum=0.9)
    r = np.random.default_rng(args.seed)
    host = [(r.standard_normal((args.batch_size, 3, 32, 32)).astype(np.float32),
             r.integers(0, 10, args.batch_size)) for _ in range(4)]
    runners = {}
    for label, kw in bench_sides(args):
        mem = _GpuMemory(kw["impl"]) if args.gpu else None
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
    rows = []
    for label, run in runners.items():
        if not label.startswith("scratch-"):
            continue
        graph = label.endswith("+graph")
        dev = "cuda" if args.gpu else "cpu"
        torch_run = runners.get(f"torch-{dev}{'+graph' if graph else ''}")
        ips = run["ips"]
        row = dict(model=model, backend=label[len("scratch-"):], scratch=statistics.median(ips),
                   scratch_min=min(ips), scratch_max=max(ips), torch=None, ratio=None, cuda_graph=graph,
                   torch_cuda_graph=graph,     # a column of its own: rows before torch captured fp16 have 0
                   scratch_peak_mb=run["peak_mb"], torch_peak_mb=torch_run["peak_mb"] if torch_run else None)
        if torch_run:
            tips = torch_run["ips"]
            ratios = [a / b for a, b in zip(ips, tips)]   # pairs measured back to back
            row.update(torch=statistics.median(tips), torch_min=min(tips), torch_max=max(tips),
                       ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))
        rows.append(row)
    return rows


def print_table(rows, args, cpu):
    print()
    where = f"{args.precision} on {cpu}" if args.gpu else f"{args.threads} thread(s), on {cpu}"
    print(f"Training throughput, batch {args.batch_size}, median of {args.repeats} repeats [min-max], {where}")
    head = f"{'model':9s} {'scratch':14s} {'scratch img/s':>26s} {'torch img/s':>26s} {'ratio':>20s}"
    if args.gpu:
        head += f" {'peak MB scratch/torch':>22s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        s = f"{r['scratch']:8.1f} [{r['scratch_min']:.1f}-{r['scratch_max']:.1f}]"
        if r["torch"] is None:
            t, q = "-", "-"
        else:
            t = f"{r['torch']:8.1f} [{r['torch_min']:.1f}-{r['torch_max']:.1f}]"
            q = f"{r['ratio']:.2f}x [{r['ratio_min']:.2f}-{r['ratio_max']:.2f}]"
        line = f"{r['model']:9s} {r['backend']:14s} {s:>26s} {t:>26s} {q:>20s}"
        if args.gpu:
            tp = "-" if r["torch_peak_mb"] is None else f"{r['torch_peak_mb']:.0f}"
            line += f" {r['scratch_peak_mb']:>12.0f} / {tp:>7s}"
        print(line)


def append_csv(path, rows, args, cpu):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
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
                                scratch_peak_gpu_mem_mb=f"{r['scratch_peak_mb']:.0f}",
                                torch_peak_gpu_mem_mb="" if r["torch_peak_mb"] is None else f"{r['torch_peak_mb']:.0f}"))
            else:
                w.writerow(dict(common, cpu=cpu, threads=args.threads, scratch_backend=r["backend"]))
    print(f"appended {len(rows)} row(s) to {path}")


def main(argv=None):
    args = parse_args(argv)
    from .sysinfo import machine_info

    if "numba" in args.scratch_backends:
        from scratch_nn.backends.threads import start_numba_before_torch

        start_numba_before_torch(args.threads)
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("error: torch is not installed (pip install -e '.[torch]'), or pass --no-torch", file=sys.stderr)
            return 2
        from .adapters import set_torch_threads

        set_torch_threads(args.threads)
    info = machine_info(0 if args.gpu else None)
    cpu = f"{info.get('cpu_model') or 'unknown CPU'} ({info.get('logical_cores')} logical cores)"
    if args.gpu:
        cpu = info.get("gpu_name") or "unknown GPU"
    rows = []
    from scratch_nn.backends import BackendUnavailable

    for model in args.models:
        try:
            rows += summarise(model, bench_model(model, args), args)
        except BackendUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print_table(rows, args, cpu)
    if args.csv:
        append_csv(args.csv, rows, args, cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
