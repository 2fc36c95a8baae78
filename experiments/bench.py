"""Steady-state training throughput, scratch next to torch, measured in one process.

    python -m experiments.bench                                   # numpy vs torch, 1 thread, batch 64
    python -m experiments.bench --models resnet18 --repeats 5 --csv
    python -m experiments.bench --scratch-backends cupy --precision tf32 --batch-size 128 --csv
    python -m experiments.bench --scratch-backends cupy --models cnn --cuda-graph both
    python -m experiments.bench --scratch-backends cupy --models resnet18 --batch-size 512 --precision bf16 \
        --torch-memory-format both --cuda-graph both

With --scratch-backends cupy the comparison runs on the GPU against torch on CUDA (cuDNN
autotuned, NCHW and/or channels-last (--torch-memory-format), eager unless --cuda-graph), in
the same --precision on both sides, and also records each side's peak GPU memory (what its
allocator reserved at most). Each ratio is scratch over one torch memory format, in one
CUDA-graph mode.

For every model, each scratch backend and torch train on the same fixed batches from the
same initial weights. Warm-up steps run first and are reported apart; then the repeats
alternate between the implementations (so drift in machine load hits both alike), each
repeat timing whole training steps (forward, loss, backward, optimizer) after a device sync.
The ratio is scratch images/s over torch images/s, the median over repeats, with its spread.
"""
import argparse
import sys

from .cli import UsageError, split_list
from .measure.train_steps import DEFAULT_CSV, DEFAULT_GPU_CSV, append_csv, bench_model, summarise


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
    ap.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "fp16", "bf16"),
                    help="GPU runs: fp32 strict, tf32, fp16 mixed (loss-scaled) or bf16 mixed, the same on both "
                         "sides (default fp32)")
    ap.add_argument("--torch-memory-format", default="nchw", choices=("nchw", "channels-last", "both"),
                    help="GPU runs: torch's layout, NCHW as a beginner runs it, channels-last as a user tuning "
                         "for speed does, or both (default nchw)")
    ap.add_argument("--cuda-graph", default="off", choices=("off", "on", "both"),
                    help="GPU runs: replay each side's step as a captured CUDA graph (both: measure with and "
                         "without; default off)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--csv", nargs="?", const="", default=None, metavar="PATH",
                    help=f"append one row per model and backend to PATH (default {DEFAULT_CSV}, "
                         f"or {DEFAULT_GPU_CSV} for cupy)")
    a = ap.parse_args(argv)
    try:
        a.models = split_list(a.models, ("cnn", "resnet18"), "--models")
        a.scratch_backends = split_list(a.scratch_backends, ("numpy", "numba", "cupy"), "--scratch-backends")
    except UsageError as e:
        ap.error(str(e))
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
    if not a.gpu and (a.precision != "fp32" or a.cuda_graph != "off" or a.torch_memory_format != "nchw"):
        ap.error("--precision tf32/fp16/bf16, --cuda-graph and --torch-memory-format are GPU options: use "
                 "--scratch-backends cupy")
    if a.csv == "":
        a.csv = DEFAULT_GPU_CSV if a.gpu else DEFAULT_CSV
    return a


def print_table(rows, args, cpu):
    print()
    where = f"{args.precision} on {cpu}" if args.gpu else f"{args.threads} thread(s), on {cpu}"
    print(f"Training throughput, batch {args.batch_size}, median of {args.repeats} repeats [min-max], {where}")
    head = f"{'model':9s} {'scratch':14s} {'scratch img/s':>26s} {'torch img/s':>26s} {'ratio':>20s}"
    if args.gpu:
        head += f" {'torch layout':>13s} {'peak MB scratch/torch':>22s}"
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
            line += f" {r['torch_memory_format']:>13s} {r['scratch_peak_mb']:>12.0f} / {tp:>7s}"
        print(line)


def main(argv=None):
    args = parse_args(argv)
    from .record.sysinfo import blas_pinned_warning, machine_info

    if "numba" in args.scratch_backends:
        from scratch_nn.backends.threads import start_numba_before_torch

        start_numba_before_torch(args.threads)
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("error: torch is not installed (pip install -e '.[torch]'), or pass --no-torch", file=sys.stderr)
            return 2
        from .train.adapters import set_torch_threads

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
    if not args.gpu:
        print(f"numpy's BLAS: {info['numpy_blas']}")
        warning = blas_pinned_warning()
        if warning:
            print(warning)
    if args.csv:
        append_csv(args.csv, rows, args, cpu, blas=info["numpy_blas"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
