"""Thread scaling of training throughput: scratch numba next to torch on the CPU.

    python -m experiments.scaling --model cnn --threads 1,2,4,8,16
    python -m experiments.scaling --model resnet18 --out results/scaling
    python -m experiments.scaling --plot results/scaling/cnn-16cores.csv    # redraw a chart

For each thread count, both implementations are measured as in experiments.bench (same
batches and initial weights, warm-up apart, alternating repeats, median [min-max]), with
numba, BLAS and torch all set to that count. Writes OUT/<model>-<N>cores.csv and a PNG with
images/s and parallel efficiency against threads. Efficiency at t threads is
(images/s at t) / (t * images/s at 1 thread) of the same implementation (the smallest count
measured stands in for 1 when 1 is not in the list).
"""
import argparse
import os
import sys

from scratch_nn.backends.threads import usable_cores

from .cli import UsageError, int_list
from .measure.thread_scaling import measure, read_csv, rows_from, write_csv
from .report.scaling_chart import plot


def parse_args(argv=None):
    cores = usable_cores()
    default = sorted({t for t in (1, 2, 4, 8, 16, 32, 64) if t <= cores} | {cores})
    ap = argparse.ArgumentParser(prog="python -m experiments.scaling", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cnn", choices=("cnn", "resnet18"))
    ap.add_argument("--threads", default=",".join(map(str, default)),
                    help=f"comma-separated thread counts (default: powers of two up to the {cores} cores here)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2, help="warm-up steps per implementation and count (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per repeat at least (default 2)")
    ap.add_argument("--no-torch", action="store_true", help="scratch numba only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join("results", "scaling"), help="output folder (default results/scaling)")
    a = ap.parse_args(argv)
    try:
        a.threads = int_list(a.threads, "--threads", "1,2,4")
    except UsageError as e:
        ap.error(str(e))
    over = [t for t in a.threads if t > cores]
    if over:
        ap.error(f"--threads {','.join(map(str, over))}: this machine lets the process use {cores} cores; "
                 f"more threads than cores only measures oversubscription")
    for name in ("batch_size", "repeats", "warmup"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.min_time <= 0:
        ap.error("--min-time must be positive")
    return a


def replot(path):
    """Draw the chart of a CSV written earlier (e.g. on a machine without matplotlib)."""
    rows = read_csv(path)
    if not rows:
        print(f"error: {path} has no rows", file=sys.stderr)
        return 2
    r = rows[0]
    png = os.path.splitext(path)[0] + ".png"
    plot(rows, png, f"{r['model']}, batch {r['batch_size']}, training throughput against threads\n"
                    f"{r['cpu']}, {r['cores']} cores, median [min-max]")
    print(f"wrote {png}")
    return 0


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--plot"]:
        if len(argv) != 2:
            print("usage: python -m experiments.scaling --plot CSV", file=sys.stderr)
            return 2
        return replot(argv[1])
    args = parse_args(argv)
    from scratch_nn.backends.threads import start_numba_before_torch

    start_numba_before_torch(max(args.threads))
    if not args.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("error: torch is not installed (pip install -e '.[torch]'), or pass --no-torch", file=sys.stderr)
            return 2
    from scratch_nn.backends import BackendUnavailable

    from .record.sysinfo import machine_info

    info = machine_info()
    cores = info.get("usable_cores") or usable_cores()
    cpu = info.get("cpu_model") or "unknown CPU"
    try:
        results = measure(args)
    except BackendUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = rows_from(results, args, cpu, cores)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{args.model}-{cores}cores")
    write_csv(stem + ".csv", rows)
    title = (f"{args.model}, batch {args.batch_size}, training throughput against threads\n"
             f"{cpu}, {cores} cores, median of {args.repeats} [min-max]")
    try:
        plot(rows, stem + ".png", title)
    except ImportError:
        print(f"note: matplotlib is not installed; no chart. Draw it later with: "
              f"python -m experiments.scaling --plot {stem}.csv", file=sys.stderr)
    print()
    print(f"{'impl':14s} {'threads':>7s} {'img/s':>10s} {'speed-up':>9s} {'efficiency':>10s}")
    for r in rows:
        print(f"{r['impl']:14s} {r['threads']:7d} {r['images_per_s']:10.1f} {r['speedup']:8.2f}x {r['efficiency']:10.2f}")
    print(f"wrote {stem}.csv and {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
