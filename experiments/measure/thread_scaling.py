"""Thread scaling of training throughput: scratch numba and torch on the CPU, each thread
count measured as experiments.bench measures (measure/train_steps.py), with numba, BLAS and
torch all set to that count; the rows of experiments.scaling's CSV."""
import csv
import datetime
import statistics
from types import SimpleNamespace

from ..train.adapters import set_torch_threads
from .train_steps import bench_model

COLUMNS = ["cpu", "cores", "model", "batch_size", "impl", "threads", "images_per_s", "images_per_s_min",
           "images_per_s_max", "speedup", "efficiency", "date"]


def measure(args, log=print):
    """{impl: {threads: [images/s per repeat]}}"""
    out = {}
    for t in args.threads:
        if not args.no_torch:
            set_torch_threads(t)
        ns = SimpleNamespace(batch_size=args.batch_size, threads=t, warmup=args.warmup, repeats=args.repeats,
                             min_time=args.min_time, seed=args.seed, scratch_backends=["numba"],
                             no_torch=args.no_torch, gpu=False, precision="fp32", cuda_graph="off")
        log(f"{t} thread(s):")
        for label, run in bench_model(args.model, ns, log=log).items():
            impl = "scratch-numba" if label == "scratch-numba" else "torch-cpu"
            out.setdefault(impl, {})[t] = run["ips"]
    return out


def rows_from(results, args, cpu, cores):
    rows = []
    date = datetime.date.today().isoformat()
    for impl, by_t in results.items():
        t0 = min(by_t)
        base = statistics.median(by_t[t0])
        for t, ips in sorted(by_t.items()):
            med = statistics.median(ips)
            speedup = med / base
            rows.append(dict(cpu=cpu, cores=cores, model=args.model, batch_size=args.batch_size, impl=impl,
                             threads=t, images_per_s=round(med, 2), images_per_s_min=round(min(ips), 2),
                             images_per_s_max=round(max(ips), 2), speedup=round(speedup, 3),
                             efficiency=round(speedup / (t / t0), 3), date=date))
    return rows


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)


def read_csv(path):
    """The rows of a CSV written by write_csv, numbers parsed."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("threads", "cores", "batch_size"):
            r[k] = int(r[k])
        for k in ("images_per_s", "images_per_s_min", "images_per_s_max", "speedup", "efficiency"):
            r[k] = float(r[k])
    return rows
