"""Data-parallel scaling runs: experiments.run in subprocesses, one GPU and N GPUs with the
same per-GPU batch, alternating, and the rows of experiments.dp_scaling's CSV."""
import csv
import datetime
import json
import os
import statistics
import subprocess
import sys

COLUMNS = ["gpu", "gpus", "model", "batch_size_per_gpu", "precision", "cuda_graph", "impl", "steps", "one_gpu_images_per_s",
           "one_gpu_min", "one_gpu_max", "n_gpu_images_per_s", "n_gpu_min", "n_gpu_max", "speedup", "efficiency",
           "repeats", "date"]
IMPL_ARGS = {"scratch": ["--impl", "scratch", "--backend", "cupy"], "torch": ["--impl", "torch", "--device", "cuda"]}


def run_args(a, impl, precision, gpus):
    """experiments.run's arguments for one run: one epoch of exactly --steps global batches
    (no partial batch, whose new shape would put a warm-up inside the timing)."""
    n = a.steps * a.batch_size * gpus
    if a.dataset == "cifar10" and n > 50000:
        raise SystemExit(f"error: {a.steps} steps of a global batch of {a.batch_size * gpus} need {n} images, more "
                         f"than CIFAR-10's 50000: fewer --steps, or --dataset synthetic")
    args = [*IMPL_ARGS[impl], "--model", a.model, "--precision", precision, "--batch-size", str(a.batch_size),
            "--dataset", a.dataset, "--train-subset", str(n), "--test-subset", "256", "--epochs", "1",
            "--warmup-steps", str(a.warmup_steps), "--log-every", "10", "--quiet",
            "--out", os.path.join(a.out, "runs"), "--runs-csv", os.path.join(a.out, "runs.csv")]
    if a.data_dir:
        args += ["--data-dir", a.data_dir]
    if a.cuda_graph:
        args += ["--cuda-graph"]
    if gpus > 1:
        args += ["--gpus", str(gpus)]
    return args


def _one_run(a, args, log=print):
    """Run experiments.run; the images/s of the run folder it made, and the GPU's name."""
    runs = os.path.join(a.out, "runs")
    before = set(os.listdir(runs)) if os.path.isdir(runs) else set()
    log("$ python -m experiments.run " + " ".join(args))
    code = subprocess.call([sys.executable, "-m", "experiments.run", *args])
    if code != 0:
        raise SystemExit(f"error: experiments.run ended with code {code}; the table is incomplete")
    (new,) = set(os.listdir(runs)) - before
    with open(os.path.join(runs, new, "summary.json")) as f:
        s = json.load(f)
    log(f"  -> {s['images_per_s']:.0f} images/s on {s['world_size']} GPU(s)")
    return s["images_per_s"], s.get("gpu")


def measure(a, log=print):
    """One row per (precision, impl) of a.precisions x a.impls: the median images/s of
    --repeats one-GPU and N-GPU runs, alternating so that drift on a shared host hits both."""
    rows = []
    for precision, impl in plan(a):
        one, many, gpu = [], [], None
        for _ in range(a.repeats):
            ips, gpu = _one_run(a, run_args(a, impl, precision, 1), log)
            one.append(ips)
            many.append(_one_run(a, run_args(a, impl, precision, a.gpus), log)[0])
        m1, mn = statistics.median(one), statistics.median(many)
        rows.append(dict(gpu=gpu, gpus=a.gpus, model=a.model, batch_size_per_gpu=a.batch_size, precision=precision,
                         cuda_graph=int(a.cuda_graph), impl=impl, steps=a.steps, one_gpu_images_per_s=round(m1, 1),
                         one_gpu_min=round(min(one), 1), one_gpu_max=round(max(one), 1), n_gpu_images_per_s=round(mn, 1),
                         n_gpu_min=round(min(many), 1), n_gpu_max=round(max(many), 1), speedup=round(mn / m1, 3),
                         efficiency=round(mn / m1 / a.gpus, 3), repeats=a.repeats,
                         date=datetime.date.today().isoformat()))
    return rows


def plan(a):
    return [(p, i) for p in a.precisions for i in a.impls]


def csv_path(a):
    return os.path.join(a.out, f"{a.model}-{a.gpus}gpus{'-graph' if a.cuda_graph else ''}.csv")


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
