"""Data-parallel scaling: one GPU against N GPUs, the same per-GPU batch, side by side.

    python -m experiments.dp_scaling --gpus 2 --model resnet18 --batch-size 256 --precision fp32,fp16
    python -m experiments.dp_scaling --gpus 2 --impl scratch --steps 50 --repeats 2 --out results/dp
    python -m experiments.dp_scaling --gpus 2 --precision fp16 --cuda-graph     # both sides captured

For each precision and implementation, experiments.run trains the model for --steps steps on
one GPU and then on N GPUs (--gpus N, one process each, batch per GPU unchanged, so the
global batch is N times larger), --repeats times, alternating. A row is the median of the
repeats' steady-state images/s (warm-up steps apart, from each run's summary.json) with the
min-max; speedup = N-GPU images/s / one-GPU images/s, efficiency = speedup / N. Writes
OUT/<model>-<N>gpus.csv, and each run's folder under OUT/runs (resources.csv samples every
GPU). Each run is one epoch of exactly --steps global batches. Data: --dataset synthetic
(the default: timing needs no real images, and it is made as large as the runs need) or
cifar10 (50,000 images: --steps times the global batch must fit), held on the GPUs.
--cuda-graph captures every run's step (one-GPU and N-GPU alike; each rank captures its own,
all-reduces included): where the host's launches limit a step, as they do for resnet18 at fp16
on an H200, eager scaling measures the host as much as the GPUs.
"""
import argparse
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


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.dp_scaling", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=2, help="GPUs of the data-parallel runs (default 2)")
    ap.add_argument("--model", default="resnet18", help="cnn | resnet18 (default resnet18)")
    ap.add_argument("--batch-size", type=int, default=256, help="per GPU (default 256)")
    ap.add_argument("--precision", default="fp32", help="comma-separated: fp32,tf32,fp16 (default fp32)")
    ap.add_argument("--impl", default="scratch,torch", help="comma-separated: scratch,torch (default both)")
    ap.add_argument("--steps", type=int, default=150, help="training steps of each run (default 150)")
    ap.add_argument("--warmup-steps", type=int, default=20, help="steps left out of the timing (default 20)")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="capture each run's training step as a CUDA graph (both sides, 1 and N GPUs)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each configuration, alternating (default 1)")
    ap.add_argument("--dataset", default="synthetic", choices=["synthetic", "cifar10"],
                    help="synthetic | cifar10 (default synthetic)")
    ap.add_argument("--data-dir", default=None, help="passed to experiments.run")
    ap.add_argument("--out", default=os.path.join("results", "dp"), help="CSV and run folders (default results/dp)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a = ap.parse_args(argv)
    a.precisions = [p for p in a.precision.split(",") if p]
    a.impls = [i for i in a.impl.split(",") if i]
    bad = [i for i in a.impls if i not in IMPL_ARGS] + [p for p in a.precisions if p not in ("fp32", "tf32", "fp16")]
    if bad:
        ap.error(f"unknown --impl or --precision value(s): {', '.join(bad)}")
    if a.gpus < 2:
        ap.error("--gpus must be at least 2 (the comparison is against one GPU)")
    if a.steps <= a.warmup_steps:
        ap.error("--steps must be more than --warmup-steps")
    if a.repeats < 1:
        ap.error("--repeats must be at least 1")
    return a


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


def _one_run(a, args):
    """Run experiments.run; the images/s of the run folder it made, and the GPU's name."""
    runs = os.path.join(a.out, "runs")
    before = set(os.listdir(runs)) if os.path.isdir(runs) else set()
    print("$ python -m experiments.run " + " ".join(args), flush=True)
    code = subprocess.call([sys.executable, "-m", "experiments.run", *args])
    if code != 0:
        raise SystemExit(f"error: experiments.run ended with code {code}; the table is incomplete")
    (new,) = set(os.listdir(runs)) - before
    with open(os.path.join(runs, new, "summary.json")) as f:
        s = json.load(f)
    print(f"  -> {s['images_per_s']:.0f} images/s on {s['world_size']} GPU(s)", flush=True)
    return s["images_per_s"], s.get("gpu")


def main(argv=None):
    a = parse_args(argv)
    plan = [(p, i) for p in a.precisions for i in a.impls]
    if a.dry_run:
        for p, i in plan:
            for g in (1, a.gpus):
                print("python -m experiments.run " + " ".join(run_args(a, i, p, g)))
        return 0
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for precision, impl in plan:
        one, many, gpu = [], [], None
        for _ in range(a.repeats):      # alternating, so drift on a shared host hits both sides
            ips, gpu = _one_run(a, run_args(a, impl, precision, 1))
            one.append(ips)
            many.append(_one_run(a, run_args(a, impl, precision, a.gpus))[0])
        m1, mn = statistics.median(one), statistics.median(many)
        rows.append(dict(gpu=gpu, gpus=a.gpus, model=a.model, batch_size_per_gpu=a.batch_size, precision=precision,
                         cuda_graph=int(a.cuda_graph), impl=impl, steps=a.steps, one_gpu_images_per_s=round(m1, 1),
                         one_gpu_min=round(min(one), 1), one_gpu_max=round(max(one), 1), n_gpu_images_per_s=round(mn, 1),
                         n_gpu_min=round(min(many), 1), n_gpu_max=round(max(many), 1), speedup=round(mn / m1, 3),
                         efficiency=round(mn / m1 / a.gpus, 3), repeats=a.repeats,
                         date=datetime.date.today().isoformat()))
    path = os.path.join(a.out, f"{a.model}-{a.gpus}gpus{'-graph' if a.cuda_graph else ''}.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    print(f"\n{a.model}, batch {a.batch_size} per GPU, {a.steps} steps ({a.warmup_steps} warm-up), "
          f"{'CUDA graphs' if a.cuda_graph else 'eager'}, "
          f"median of {a.repeats}, on {rows[0]['gpu']}:")
    print(f"  {'precision':<9} {'impl':<8} {'1 GPU img/s':>12} {f'{a.gpus} GPUs img/s':>14} {'speedup':>8} "
          f"{'efficiency':>10}")
    for r in rows:
        print(f"  {r['precision']:<9} {r['impl']:<8} {r['one_gpu_images_per_s']:>12.0f} "
              f"{r['n_gpu_images_per_s']:>14.0f} {r['speedup']:>7.2f}x {r['efficiency']:>10.0%}")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
