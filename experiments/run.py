"""Train either implementation on CIFAR-10 and record what it cost.

    python -m experiments.run                                     # scratch numpy cnn, 1 epoch
    python -m experiments.run --impl scratch --backend numba --model resnet18 --epochs 5
    python -m experiments.run --impl torch --device cpu --threads 1
    python -m experiments.run --recipe fast --model resnet18 --impl scratch --backend cupy --checkpoint-every 1
    python -m experiments.run --resume results/runs/<run_id>      # continue an interrupted run

Writes results/runs/<run_id>/ (config.json, epochs.csv, steps.csv, resources.csv,
summary.json, checkpoints) and appends one row to results/runs.csv. Bad input prints one line
and exits 2. --recipe fills in a set of hyperparameters (experiments/train/recipes.py); any flag
given explicitly overrides it.
"""
import argparse
import os
import sys

from .cli import Parser, UsageError
from .train.job import (BACKENDS, DATASETS, DEVICES, IMPLS, MODELS, OPTIMIZERS, PRECISIONS, SCHEDULES, execute,
                        execute_rank, load_data, make_adapter, resume_args, validate)
from .train.recipes import BASE, RECIPES


def build_parser():
    ap = Parser("python -m experiments.run", __doc__)
    g = ap.add_argument_group("what to train")
    g.add_argument("--impl", default="scratch", help=f"implementation: {' | '.join(IMPLS)} (default scratch)")
    g.add_argument("--backend", default=None, help=f"scratch backend: {' | '.join(BACKENDS)} (default numpy)")
    g.add_argument("--device", default=None, help=f"torch device: {' | '.join(DEVICES)} (default cpu)")
    g.add_argument("--model", default="cnn", help=f"{' | '.join(MODELS)} (default cnn)")
    g.add_argument("--precision", default="fp32", help=f"{' | '.join(PRECISIONS)} (default fp32: strict, no TF32; "
                   "tf32 needs an Ampere+ GPU; fp16 is mixed precision on a GPU, with loss scaling; bf16 the same "
                   "without, on an Ampere+ GPU)")
    g.add_argument("--cuda-graph", action="store_true",
                   help="GPU: capture the training step once as a CUDA graph and replay it")
    g.add_argument("--compile", action="store_true",
                   help="torch: torch.compile the model (TorchInductor: Triton kernels on a GPU, C++ on the CPU); "
                        "its compile time falls in the warm-up steps, reported apart")
    g.add_argument("--memory-format", default=None,
                   help="torch: nchw | channels-last (default nchw; channels-last is what cuDNN runs fastest "
                        "in 16-bit); scratch chooses its own layout per backend and precision")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: 1 for numpy, every core otherwise; data parallel: the "
                        "node's cores shared among its processes)")
    g.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="data parallel over N GPUs of this machine, one process each (experiments/dist/launch.py; "
                        "several machines: the same command on each, with NNODES, NODE_RANK, MASTER_ADDR and "
                        "MASTER_PORT set). --batch-size is per GPU; the global batch is N times it")
    g.add_argument("--sync-bn", action="store_true",
                   help="with --gpus: BatchNorm statistics over the global batch (default: each GPU's own)")
    g.add_argument("--seed", type=int, default=0, help="weights, data order and augmentation (default 0)")
    g = ap.add_argument_group("optimisation (defaults: the --recipe's, else the ones shown)")
    g.add_argument("--recipe", default=None, help=f"{' | '.join(RECIPES)}: a whole set of the flags below "
                   "(experiments/train/recipes.py); flags given explicitly override it")
    g.add_argument("--epochs", type=int, default=None, help=f"(default {BASE['epochs']})")
    g.add_argument("--batch-size", type=int, default=None, help=f"(default {BASE['batch_size']})")
    g.add_argument("--optimizer", default=None, help=f"{' | '.join(OPTIMIZERS)} (default {BASE['optimizer']})")
    g.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {BASE['lr']})")
    g.add_argument("--momentum", type=float, default=None, help=f"SGD momentum (default {BASE['momentum']})")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="SGD with nesterov momentum (default off)")
    g.add_argument("--weight-decay", type=float, default=None, help=f"(default {BASE['weight_decay']:g})")
    g.add_argument("--decay-norm-bias", action=argparse.BooleanOptionalAction, default=None,
                   help="apply weight decay to BatchNorm parameters and biases too (default on)")
    g.add_argument("--label-smoothing", type=float, default=None, help=f"(default {BASE['label_smoothing']:g})")
    g.add_argument("--schedule", default=None, help=f"{' | '.join(SCHEDULES)} (default {BASE['schedule']})")
    g.add_argument("--warmup-epochs", type=float, default=None, help="linear LR warm-up (default 0)")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in all")
    g.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop training once the steady-state training time reaches SECONDS (mid-epoch if need "
                        "be; warm-up steps always run), then evaluate: bounds slow runs of a study")
    g = ap.add_argument_group("data")
    g.add_argument("--dataset", default="auto", help=f"{' | '.join(DATASETS)} (default auto: a local copy, "
                   "else download, else synthetic with a warning)")
    g.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py/ "
                   "(default $CIFAR10_DIR or ./data)")
    g.add_argument("--download", action="store_true", help="download CIFAR-10 if it is not there")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop (pad 4) + horizontal flip (default off)")
    g.add_argument("--host-data", action="store_true",
                   help="GPU runs: feed batches from host memory (default: the dataset is uploaded once and "
                        "cropped, flipped and normalised on the GPU, with the same batches bitwise)")
    g.add_argument("--norm", default=None, help="normalisation: cifar (per-channel mean/std) | half "
                   "(mean = std = 0.5, the original study's) (default cifar)")
    g.add_argument("--train-subset", type=int, default=None, help="use the first N training images")
    g.add_argument("--test-subset", type=int, default=None, help="use the first N test images")
    g = ap.add_argument_group("measurement and output")
    g.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (and after the last; default 1)")
    g.add_argument("--log-every", type=int, default=10, help="write every N-th step to steps.csv (default 10)")
    g.add_argument("--warmup-steps", type=int, default=None,
                   help="first steps excluded from steady-state images/s (default 5; 12 for torch with "
                        "--cuda-graph and --gpus, whose DDP step is captured after 11 eager ones)")
    g.add_argument("--sample-hz", type=float, default=5.0, help="resource sampling rate (default 5)")
    g.add_argument("--out", default=os.path.join("results", "runs"), help="run folders go here (default results/runs)")
    g.add_argument("--runs-csv", default=None, help="table to append to (default: runs.csv beside --out)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g = ap.add_argument_group("checkpoints")
    g.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="save model, optimizer, schedule position and RNG states every N epochs and at the end, "
                        "in the run folder (default 0: never)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint, with its own configuration")
    return ap


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        a = build_parser().parse_args(argv)
        resume = None
        if a.resume is not None:
            a, resume = resume_args(a, argv, build_parser().parse_args([]))
        a = validate(a)
        if a.launch:
            from .dist.launch import LaunchError, launch

            try:
                return launch("experiments.run", argv, a.gpus)
            except LaunchError as e:
                raise UsageError(str(e)) from None
        ds, train_loader, test_loader = load_data(a)
        adapter = make_adapter(a)
        if a.device_data:
            train_loader, test_loader = adapter.device_loader(train_loader), adapter.device_loader(test_loader)
        if resume is not None:
            adapter.load_checkpoint(resume["state_path"])
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.dist is not None and not a.dist.is_main:
        return execute_rank(a, adapter, train_loader, test_loader, resume)
    return execute(a, ds, adapter, train_loader, test_loader, resume)


if __name__ == "__main__":
    if "RANK" in os.environ:     # `kill -USR1 <pid>` prints where a rank is (a hang, say)
        import faulthandler
        import signal

        faulthandler.register(signal.SIGUSR1, all_threads=True)
    code = main()
    if "RANK" in os.environ:
        # A data-parallel rank leaves without the interpreter's C++ teardown: gloo's worker
        # threads can make it abort ("terminate called without an active exception") after
        # everything was written and the process group destroyed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)

