"""Inference benchmark: forward passes of both models, scratch and torch, on every backend and
device this machine has, over batch sizes, precisions and optimised engines.

    python -m experiments.infer_bench                                   # everything this machine can run
    python -m experiments.infer_bench --models cnn --batch-sizes 1,8,64 --iters 20
    python -m experiments.infer_bench --impls torch --devices cuda --precisions fp16,bf16 --engines eager,cuda-graph
    python -m experiments.infer_bench --plot-only results/infer/infer.csv      # redraw the charts

A row is one (impl, backend_or_device, engine, model, precision, batch_size, threads):

- impl `scratch`: backend `numpy` (the single-core reference, threads 1), `numba` (threads =
  --threads, default every core), `cupy` (GPU). impl `torch`: device `cpu` (--threads) and `cuda`.
- engines: `eager` everywhere; `compile` (torch.compile, default mode, static shapes, compiled
  afresh for each batch size; torch on cpu and cuda); `cuda-graph` (torch: the eval forward
  captured with torch.cuda.CUDAGraph; scratch cupy: the eval forward captured on a side stream
  as scratch_nn/cuda_graph.py captures a training step, then replayed; eval mode keeps no
  caches, so a replay is the whole forward); `onnxruntime` (torch's model exported with
  torch.onnx, run by ONNX Runtime's CPU provider with --threads intra-op threads; only where
  `import onnxruntime` and the exporter work).
- precisions. CPU: `fp64`, `fp32` (scratch builds the model in float64 / float32, torch uses
  .double() / .float()). GPU: `fp32` (strict: TF32 off), `tf32` (TF32 GEMMs and convolutions,
  compute capability 8.0+), `fp16` and `bf16`. torch runs fp16/bf16 as the training study does:
  float32 weights under torch.autocast (bf16 needs compute capability 8.0+); scratch cupy runs
  fp16 and bf16 as its mixed-precision modes (16-bit channels-last activations, the tensor-core
  convolutions, fp32 accumulation, 16-bit weight copies).

What cannot run here (no GPU, CuPy or numba missing, tf32/bf16 below sm_80,
onnxruntime absent, torch.compile or a capture failing) is not dropped: it is written with
status `skipped` (cannot run on this machine) or `failed` (tried, and it raised or gave wrong
outputs) and a reason, and the bench goes on. The default selection is everything this machine
can run; GPU rows only when a GPU is visible (said once in the output); ask for GPU targets or
onnxruntime explicitly to get their `skipped` rows on a machine without them.

All models load one set of weights: the scratch model built from --seed in float32, its state
dict loaded on every side (cast to float64 for fp64), so every row computes the same function.
Correctness guard: every row compares its output on the first 8 images of its batch with torch
eager on the CPU in float64 (the same weights, the same images) and records the largest absolute
difference; a row further than its precision's tolerance (relative to the largest reference
logit: fp64 1e-9, fp32 1e-3, tf32 2e-2, fp16 5e-2, bf16 1e-1) is `failed` and not timed.

Timing. The inputs are random float32 images from --seed. Each measured iteration is one forward
of one batch already on the device, followed by a synchronisation (CuPy: stream synchronize;
torch: torch.cuda.synchronize); its wall time is one latency. --warmup iterations run first, not
timed (compilation, cuDNN autotuning, memory pools; for `compile` at least one, which compiles;
graph capture happens before them). Measured iterations stop after --iters, or once --max-time
seconds have been spent measuring (at least 3 iterations); warm-up stops early after --max-time
too (at least 2 iterations, or --warmup if fewer). images/s = batch * iterations / the sum of the
measured latencies. On a GPU the host-to-device copy of the float32 batch (pageable memory), with
its conversion to the compute dtype on the device (scratch fp16: to half; torch converts inside
autocast instead), is timed apart in its own loop, synchronised, as many iterations as were
measured: h2d_ms_p50; it is not in the latencies.

Results CSV (default results/infer/infer.csv, appended; one row per configuration and batch size):

  run_id              one invocation (start time, process id, a random tag); joins with the latencies CSV
  machine             GPU name for GPU rows, CPU model for CPU rows
  impl                scratch | torch
  backend_or_device   numpy | numba | cupy (scratch); cpu | cuda (torch)
  engine              eager | compile | cuda-graph | onnxruntime
  model               cnn | resnet18
  precision           fp64 | fp32 | tf32 | fp16 | bf16
  batch_size
  threads             CPU threads (numpy 1); empty for GPU rows
  warmup              warm-up iterations run
  warmup_s            seconds of the warm-up, engine setup (compilation, capture) included
  iters               measured iterations (fewer than --iters when --max-time cut them short)
  latency_ms_p50, latency_ms_p90, latency_ms_p99, latency_ms_mean    per-iteration forward latency
  images_per_s        batch_size * iters / total measured time
  h2d_ms_p50          median host-to-device copy + conversion of the batch; empty on the CPU
  max_abs_diff_vs_torch   max |logits - torch fp64 CPU logits| over the first 8 images of the batch
  status              ok | skipped | failed
  reason              why skipped or failed; empty when ok
  date                YYYY-MM-DD

Latencies CSV beside it (<csv stem>_latencies.csv, appended, long format, for the box plots):
run_id, impl, backend_or_device, engine, model, precision, batch_size, threads, iteration,
latency_ms, h2d_ms (h2d_ms empty on the CPU).

Charts (PNG, in --plots, default beside the CSV; experiments/report/infer_charts.py): latency box plots
per model at two batch sizes, throughput bars, images/s against batch size, and GPU-over-CPU
speed-up (only when GPU rows exist).
"""
import argparse
import os
import sys

from scratch_nn.backends.threads import usable_cores

from .cli import UsageError, int_list, split_list
from .measure.infer.plan import (BACKENDS, DEFAULT_BATCH_SIZES, DEFAULT_CSV, DEVICES, ENGINE_ALIASES, ENGINES, IMPLS,
                                 MIN_ITERS, MODELS, PRECISIONS)
from .measure.infer.session import run
from .measure.infer.table import CsvMismatch, latencies_path, print_table
from .report.infer_charts import draw_all


def parse_args(argv=None):
    cores = usable_cores()
    ap = argparse.ArgumentParser(prog="python -m experiments.infer_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: cnn,resnet18 (default both)")
    ap.add_argument("--impls", default=None, help="comma-separated: scratch,torch (default both; torch if installed)")
    ap.add_argument("--backends", default=None,
                    help="scratch backends, comma-separated: numpy,numba,cupy (default: those that run here)")
    ap.add_argument("--devices", default=None, help="torch devices, comma-separated: cpu,cuda (default: cuda if a "
                                                    "GPU is visible, and cpu)")
    ap.add_argument("--engines", default=None,
                    help="comma-separated: eager,compile (torch.compile),cuda-graph,onnxruntime (default: those "
                         "that can run here)")
    ap.add_argument("--precisions", default=",".join(PRECISIONS),
                    help="comma-separated: fp64,fp32 (CPU), fp32,tf32,fp16,bf16 (GPU); each target takes the "
                         "ones it has (default all)")
    ap.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)),
                    help="comma-separated (default 1,2,4,...,256)")
    ap.add_argument("--threads", default=None,
                    help=f"CPU threads for numba, torch cpu and onnxruntime, comma-separated for several "
                         f"(default all {cores} cores here); numpy always runs 1")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up iterations per row, not timed (default 10)")
    ap.add_argument("--iters", type=int, default=50, help="measured iterations per row (default 50)")
    ap.add_argument("--max-time", type=float, default=10.0,
                    help="seconds per row for the measured iterations (and again for the warm-up): stop early "
                         f"after that, at least {MIN_ITERS} iterations (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="weights and input images (default 0)")
    ap.add_argument("--csv", default=DEFAULT_CSV, help=f"results CSV, appended (default {DEFAULT_CSV}); the "
                                                       "latencies go to <stem>_latencies.csv beside it")
    ap.add_argument("--plots", default=None, help="folder for the PNG charts (default: the CSV's folder)")
    ap.add_argument("--no-plots", action="store_true", help="write no charts")
    ap.add_argument("--plot-only", metavar="CSV", default=None,
                    help="draw the charts from an existing results CSV (and its latencies CSV) and exit")
    a = ap.parse_args(argv)
    if a.plot_only is not None:
        if not os.path.isfile(a.plot_only):
            ap.error(f"--plot-only: no such file {a.plot_only}")
        return a
    try:
        _check(a, cores)
    except UsageError as e:
        ap.error(str(e))
    a.ap = ap
    return a


def _check(a, cores):
    a.models = split_list(a.models, MODELS, "--models")
    a.impls_given = a.impls is not None
    a.impls = split_list(a.impls or ",".join(IMPLS), IMPLS, "--impls")
    a.backends_given = a.backends is not None
    a.backends = split_list(a.backends or ",".join(BACKENDS), BACKENDS, "--backends")
    a.devices_given = a.devices is not None
    a.devices = split_list(a.devices or ",".join(DEVICES), DEVICES, "--devices")
    a.engines_given = a.engines is not None
    a.engines = split_list(a.engines or ",".join(ENGINES), ENGINES, "--engines", ENGINE_ALIASES)
    a.precisions = split_list(a.precisions, PRECISIONS, "--precisions")
    a.batch_sizes = int_list(a.batch_sizes, "--batch-sizes", "1,8,64")
    a.threads = int_list(a.threads, "--threads", "1,2") if a.threads else [cores]
    over = [t for t in a.threads if t > cores]
    if over:
        raise UsageError(f"--threads {','.join(map(str, over))}: this machine lets the process use {cores} "
                         f"cores; choose from 1 to {cores}")
    if a.warmup < 0:
        raise UsageError("--warmup must be 0 or more")
    if a.iters < 1:
        raise UsageError("--iters must be at least 1")
    if not a.max_time > 0:
        raise UsageError("--max-time must be a positive number of seconds")


def main(argv=None):
    args = parse_args(argv)
    if args.plot_only is not None:
        out_dir = args.plots or os.path.dirname(os.path.abspath(args.plot_only))
        for path in draw_all(args.plot_only, out_dir):
            print(f"wrote {path}")
        return 0
    rows = []
    try:
        run_id = run(args, rows)
    except UsageError as e:     # nothing to run: argparse's usage and exit 2
        args.ap.error(str(e))
    except CsvMismatch as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print_table(rows)
        print(f"\ninterrupted: the {len(rows)} row(s) above are in {args.csv}", file=sys.stderr)
        return 130
    print_table(rows)
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"\n{ok} ok, {sum(r['status'] == 'skipped' for r in rows)} skipped, "
          f"{sum(r['status'] == 'failed' for r in rows)} failed; appended {len(rows)} row(s) to {args.csv} "
          f"and the latencies to {latencies_path(args.csv)}")
    if not args.no_plots and not ok:
        print("note: no ok rows: no charts")
    elif not args.no_plots:
        out_dir = args.plots or os.path.dirname(os.path.abspath(args.csv))
        for path in draw_all(args.csv, out_dir, run_id=run_id):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
