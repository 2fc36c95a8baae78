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
import os
import sys

from .measure.dp_runs import IMPL_ARGS, csv_path, measure, plan, run_args, write_csv


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.dp_scaling", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=2, help="GPUs of the data-parallel runs (default 2)")
    ap.add_argument("--model", default="resnet18", help="cnn | resnet18 (default resnet18)")
    ap.add_argument("--batch-size", type=int, default=256, help="per GPU (default 256)")
    ap.add_argument("--precision", default="fp32", help="comma-separated: fp32,tf32,fp16,bf16 (default fp32)")
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
    bad = [i for i in a.impls if i not in IMPL_ARGS] + [p for p in a.precisions if p not in ("fp32", "tf32", "fp16", "bf16")]
    if bad:
        ap.error(f"unknown --impl or --precision value(s): {', '.join(bad)}")
    if a.gpus < 2:
        ap.error("--gpus must be at least 2 (the comparison is against one GPU)")
    if a.steps <= a.warmup_steps:
        ap.error("--steps must be more than --warmup-steps")
    if a.repeats < 1:
        ap.error("--repeats must be at least 1")
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.dry_run:
        for p, i in plan(a):
            for g in (1, a.gpus):
                print("python -m experiments.run " + " ".join(run_args(a, i, p, g)))
        return 0
    os.makedirs(a.out, exist_ok=True)
    rows = measure(a, log=lambda line: print(line, flush=True))
    path = csv_path(a)
    write_csv(path, rows)
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
