"""Train either implementation on CIFAR-10 and record what it cost.

    python -m experiments.run                                     # scratch numpy cnn, 1 epoch
    python -m experiments.run --impl scratch --backend numba --model resnet18 --epochs 5
    python -m experiments.run --impl torch --device cpu --threads 1
    python -m experiments.run --recipe fast --model resnet18 --impl scratch --backend cupy --checkpoint-every 1
    python -m experiments.run --resume results/runs/<run_id>      # continue an interrupted run

Writes results/runs/<run_id>/ (config.json, epochs.csv, steps.csv, resources.csv,
summary.json, checkpoints) and appends one row to results/runs.csv. Bad input prints one line
and exits 2. --recipe fills in a set of hyperparameters (experiments/recipes.py); any flag
given explicitly overrides it.
"""
import argparse
import datetime
import json
import os
import sys
import time

from .recipes import BASE, RECIPES, resolve as resolve_recipe

IMPLS = ("scratch", "torch")
BACKENDS = ("numpy", "numba", "cupy")
DEVICES = ("cpu", "cuda")
MODELS = ("cnn", "resnet18")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "multistep", "cosine", "onecycle")
PRECISIONS = ("fp32", "fp64", "tf32", "fp16")   # tf32 and fp16 (mixed) are GPU modes
DATASETS = ("auto", "cifar10", "synthetic")


class UsageError(Exception):
    """Bad input: the CLI prints the message on one line and exits 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def build_parser():
    ap = _Parser(prog="python -m experiments.run", description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("what to train")
    g.add_argument("--impl", default="scratch", help=f"implementation: {' | '.join(IMPLS)} (default scratch)")
    g.add_argument("--backend", default=None, help=f"scratch backend: {' | '.join(BACKENDS)} (default numpy)")
    g.add_argument("--device", default=None, help=f"torch device: {' | '.join(DEVICES)} (default cpu)")
    g.add_argument("--model", default="cnn", help=f"{' | '.join(MODELS)} (default cnn)")
    g.add_argument("--precision", default="fp32", help=f"{' | '.join(PRECISIONS)} (default fp32: strict, no TF32; "
                   "tf32 needs an Ampere+ GPU; fp16 is mixed precision on a GPU)")
    g.add_argument("--cuda-graph", action="store_true",
                   help="GPU: capture the training step once as a CUDA graph and replay it")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: 1 for numpy, every core otherwise; data parallel: the "
                        "node's cores shared among its processes)")
    g.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="data parallel over N GPUs of this machine, one process each (experiments/launch.py; "
                        "several machines: the same command on each, with NNODES, NODE_RANK, MASTER_ADDR and "
                        "MASTER_PORT set). --batch-size is per GPU; the global batch is N times it")
    g.add_argument("--sync-bn", action="store_true",
                   help="with --gpus: BatchNorm statistics over the global batch (default: each GPU's own)")
    g.add_argument("--seed", type=int, default=0, help="weights, data order and augmentation (default 0)")
    g = ap.add_argument_group("optimisation (defaults: the --recipe's, else the ones shown)")
    g.add_argument("--recipe", default=None, help=f"{' | '.join(RECIPES)}: a whole set of the flags below "
                   "(experiments/recipes.py); flags given explicitly override it")
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


def _choice(value, allowed, flag):
    if value not in allowed:
        raise UsageError(f"{flag} {value!r} is not one of: {', '.join(allowed)}")
    return value


def validate(a):
    """Resolve the recipe, then check every flag and combination before anything is created.
    Raises UsageError."""
    _choice(a.impl, IMPLS, "--impl")
    _choice(a.model, MODELS, "--model")
    if a.recipe is not None:
        _choice(a.recipe, tuple(RECIPES), "--recipe")
    for k, v in resolve_recipe(a.recipe, a.model, vars(a)).items():
        setattr(a, k, v)
    _choice(a.optimizer, OPTIMIZERS, "--optimizer")
    _choice(a.schedule, SCHEDULES, "--schedule")
    _choice(a.precision, PRECISIONS, "--precision")
    _choice(a.dataset, DATASETS, "--dataset")
    _choice(a.norm, ("cifar", "half"), "--norm")
    if a.impl == "scratch":
        if a.device is not None:
            raise UsageError("--device is for --impl torch; scratch runs choose --backend numpy|numba|cupy")
        a.backend = _choice(a.backend or "numpy", BACKENDS, "--backend")
    else:
        if a.backend is not None:
            raise UsageError(f"--backend {a.backend} is for --impl scratch; torch runs choose --device cpu|cuda")
        a.device = _choice(a.device or "cpu", DEVICES, "--device")
    if a.checkpoint_every < 0:
        raise UsageError("--checkpoint-every must be >= 0")
    for name in ("epochs", "batch_size", "eval_every", "log_every", "max_steps", "train_subset", "test_subset",
                 "threads"):
        v = getattr(a, name)
        if v is not None and v <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {v}")
    if a.time_budget is not None and a.time_budget <= 0:
        raise UsageError(f"--time-budget must be positive seconds, got {a.time_budget}")
    if a.lr <= 0 or a.sample_hz <= 0:
        raise UsageError("--lr and --sample-hz must be positive")
    if a.momentum < 0 or a.weight_decay < 0 or (a.warmup_steps or 0) < 0 or a.warmup_epochs < 0:
        raise UsageError("--momentum, --weight-decay, --warmup-steps and --warmup-epochs must be >= 0")
    if not 0 <= a.label_smoothing < 1:
        raise UsageError("--label-smoothing must be in [0, 1)")
    if a.nesterov and (a.optimizer != "sgd" or a.momentum <= 0):
        raise UsageError("--nesterov needs --optimizer sgd and --momentum > 0")
    on_gpu = (a.impl == "scratch" and a.backend == "cupy") or (a.impl == "torch" and a.device == "cuda")
    if a.precision in ("tf32", "fp16") and not on_gpu:
        raise UsageError(f"--precision {a.precision} is a GPU mode: use --backend cupy or --device cuda")
    if a.cuda_graph and not on_gpu:
        raise UsageError("--cuda-graph needs a GPU: --backend cupy or --device cuda")
    if a.host_data and not on_gpu:
        raise UsageError("--host-data is for GPU runs (CPU runs always read host memory)")
    _validate_parallel(a, on_gpu)
    if a.warmup_steps is None:
        ddp_capture = a.impl == "torch" and a.cuda_graph and (a.dist is not None or a.launch)
        a.warmup_steps = 12 if ddp_capture else 5
    # fp64 batches would need the normalisation in float64: those few runs read host batches
    a.device_data = on_gpu and not a.host_data and a.precision != "fp64"
    if a.impl == "scratch" and a.backend == "numpy" and a.threads not in (None, 1):
        raise UsageError("the numpy backend is the single-core reference: use --threads 1 or --backend numba")
    if a.threads is None:
        # the ranks of one node share its cores (torchrun's ranks get one thread each)
        share = a.dist.local_world_size if a.dist is not None else 1
        a.threads = 1 if a.impl == "scratch" and a.backend == "numpy" else max(1, (os.cpu_count() or 1) // share)
    return a


def _validate_parallel(a, on_gpu):
    """a.dist: this process's rank (started by experiments.launch or torchrun), or None;
    a.launch: start the ranks from here."""
    from .launch import LaunchError, rank_from_env

    try:
        a.dist = rank_from_env()
    except LaunchError as e:
        raise UsageError(str(e)) from None
    if a.gpus is not None:
        if a.gpus < 1:
            raise UsageError(f"--gpus must be at least 1, got {a.gpus}")
        if not on_gpu:
            raise UsageError("--gpus needs a GPU run: --backend cupy or --device cuda")
    if a.dist is not None and a.dist.world_size == 1:
        a.dist = None
    multi_node = int(os.environ.get("NNODES") or 1) > 1
    a.launch = a.gpus is not None and a.dist is None and (a.gpus > 1 or multi_node)
    if a.dist is None and not a.launch:
        if a.sync_bn:
            raise UsageError("--sync-bn synchronises BatchNorm across GPUs: use it with --gpus N (N > 1)")
        return
    if a.sync_bn and a.impl == "torch" and a.device != "cuda":
        raise UsageError("--sync-bn: torch's SyncBatchNorm runs on CUDA devices only")
    if a.impl == "scratch" and a.backend != "cupy":
        raise UsageError("scratch data parallelism runs on GPUs (--backend cupy, NCCL through CuPy)")


def make_adapter(a):
    """Build the implementation, turning 'cannot run here' into a UsageError."""
    from scratch_nn.backends import BackendUnavailable

    from .adapters import OptimSpec, make_adapter as build

    spec = OptimSpec(a.optimizer, lr=a.lr, momentum=a.momentum if a.optimizer == "sgd" else 0.0,
                     nesterov=a.nesterov, weight_decay=a.weight_decay, decay_norm_and_bias=a.decay_norm_bias)
    common = dict(model=a.model, optimizer=spec, seed=a.seed, precision=a.precision, cuda_graph=a.cuda_graph,
                  label_smoothing=a.label_smoothing,
                  threads=a.threads)
    if a.impl == "torch":
        try:
            import torch
        except ImportError:
            raise UsageError("--impl torch needs PyTorch: pip install -e '.[torch]'") from None
        if a.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA GPU is visible to torch here; use --device cpu")
        return build("torch", device=a.device, dist=a.dist, sync_bn=a.sync_bn, **common)
    from scratch_nn.backends.nccl import NcclUnavailable

    from .rendezvous import RendezvousError

    try:
        return build("scratch", backend=a.backend, dist=a.dist, sync_bn=a.sync_bn, **common)
    except (BackendUnavailable, ValueError, NcclUnavailable, RendezvousError) as e:
        raise UsageError(str(e)) from None


SYNTHETIC_MAX = 250_000     # images of a synthetic split (768 MB as uint8)


def load_data(a):
    from . import data as D

    for flag, n in (("--train-subset", a.train_subset), ("--test-subset", a.test_subset)):
        if a.dataset == "synthetic" and n is not None and n > SYNTHETIC_MAX:
            raise UsageError(f"{flag} {n}: synthetic data is made up to {SYNTHETIC_MAX} images a split")
    try:
        # synthetic data is made to measure: a larger --train-subset / --test-subset makes more,
        # up to a bound that keeps a typo from filling the memory
        sizes = (min(max(10000, a.train_subset or 0), SYNTHETIC_MAX), min(max(2000, a.test_subset or 0), SYNTHETIC_MAX))
        ds = D.resolve_dataset(a.dataset, a.data_dir, download=a.download, seed=a.seed, synthetic_sizes=sizes)
        ds = D.subset(ds, a.train_subset, a.test_subset)
    except D.DataError as e:
        raise UsageError(str(e)) from None
    mean, std = (D.CIFAR10_MEAN, D.CIFAR10_STD) if a.norm == "cifar" else ((0.5,) * 3, (0.5,) * 3)
    dtype = "float64" if a.precision == "fp64" else "float32"
    # a captured CUDA graph replays one batch shape: drop the short last batch
    train = D.BatchLoader(ds.x_train, ds.y_train, a.batch_size, shuffle=True, seed=a.seed, augment=a.augment,
                          mean=mean, std=std, dtype=dtype, drop_last=a.cuda_graph,
                          shard=(a.dist.rank, a.dist.world_size) if a.dist else (0, 1))
    test = D.BatchLoader(ds.x_test, ds.y_test, max(a.batch_size, 256), shuffle=False, seed=a.seed, augment=False,
                         mean=mean, std=std, dtype=dtype)
    return ds, train, test


def resolved_config(a, ds, adapter):
    from . import sysinfo

    gpu = 0 if (a.impl == "torch" and a.device == "cuda") or (a.impl == "scratch" and a.backend == "cupy") else None
    cfg = {k: v for k, v in vars(a).items()}
    cfg.update(backend_or_device=a.backend if a.impl == "scratch" else a.device, gpu_index=gpu,
               dataset_identity=ds.identity(), versions=sysinfo.versions(), machine=sysinfo.machine_info(gpu),
               git_commit=sysinfo.git_commit(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
               command=" ".join(["python -m experiments.run"] + sys.argv[1:]),
               started=datetime.datetime.now().isoformat(timespec="seconds"))
    if a.impl == "scratch":
        cfg["backend_info"] = adapter.be.describe()
    return cfg


def new_run_id(a, out):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{a.impl}-{a.backend if a.impl == 'scratch' else a.device}-{a.model}-s{a.seed}"
    run_id, i = base, 1
    while os.path.exists(os.path.join(out, run_id)):
        i += 1
        run_id = f"{base}-{i}"
    return run_id


def _progress_factory(a):
    if a.quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    class Bar:
        def __init__(self, epoch, total):
            self.t = tqdm(total=total, desc=f"epoch {epoch + 1}/{a.epochs}", unit="step", leave=True)

        def update(self, n, **post):
            self.t.update(n)
            shown = {k: f"{v:.3g}" if k != "ips" else f"{v:.0f} img/s" for k, v in post.items() if v is not None}
            if shown:
                self.t.set_postfix(shown, refresh=False)

        def close(self):
            self.t.close()
    return Bar


def _pool_fn(a):
    if a.impl == "torch" and a.device == "cuda":
        import torch
        return lambda: torch.cuda.memory_reserved(0)
    if a.impl == "scratch" and a.backend == "cupy":
        import cupy
        return lambda: cupy.get_default_memory_pool().total_bytes()
    return None


def resume_args(a, argv):
    """The Namespace of the run being resumed (its config.json), and its checkpoint index."""
    from . import checkpoint

    given = [t.split("=")[0] for t in (sys.argv[1:] if argv is None else argv) if t.startswith("--")]
    extra = sorted(set(given) - {"--resume", "--quiet"})
    if extra:
        raise UsageError(f"--resume continues a run with its own configuration; drop {', '.join(extra)}")
    try:
        index = checkpoint.read(a.resume)
    except ValueError as e:
        raise UsageError(str(e)) from None
    with open(os.path.join(a.resume, "config.json")) as f:
        cfg = json.load(f)
    r = build_parser().parse_args([])
    for k in vars(r):
        if k in cfg:
            setattr(r, k, cfg[k])
    r.resume, r.quiet = os.path.abspath(a.resume), a.quiet or r.quiet
    if index["epochs_done"] >= r.epochs:
        raise UsageError(f"{a.resume} finished all {r.epochs} epochs already; nothing to resume")
    return r, index


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        a = build_parser().parse_args(argv)
        resume = None
        if a.resume is not None:
            a, resume = resume_args(a, argv)
        a = validate(a)
        if a.launch:
            from .launch import LaunchError, launch

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


def _schedule(a, train_loader):
    from scratch_nn.optim import make_schedule

    total = a.epochs * len(train_loader) if a.max_steps is None else min(a.max_steps, a.epochs * len(train_loader))
    return make_schedule(a.schedule, a.lr, total, warmup_steps=int(a.warmup_epochs * len(train_loader)))


def execute_rank(a, adapter, train_loader, test_loader, resume=None):
    """A rank other than 0: trains its share in step with the others and writes nothing (rank 0
    owns the run folder, its checkpoints, and evaluates); a resumed job's ranks all load rank
    0's checkpoint and go on from its step."""
    from . import records
    from .trainer import Diverged, train

    code = 0
    try:
        train(adapter, train_loader, test_loader, epochs=a.epochs, schedule=_schedule(a, train_loader),
              state=dict(resume["state"]) if resume else None,
              folder=records.NullFolder(), warmup_steps=a.warmup_steps, max_steps=a.max_steps,
              log_every=a.log_every, eval_every=a.eval_every, label_smoothing=a.label_smoothing,
              time_budget_s=a.time_budget, world=a.dist.world_size, evaluates=False)
    except KeyboardInterrupt:
        code = 130
    except Diverged:
        code = 3
    finally:
        adapter.close()
    return code


def execute(a, ds, adapter, train_loader, test_loader, resume=None):
    from . import records, summary as S
    from .checkpoint import Checkpointer
    from .sampler import ResourceSampler
    from .trainer import Diverged, train

    if resume is None:
        os.makedirs(a.out, exist_ok=True)
        run_id = new_run_id(a, a.out)
        cfg = resolved_config(a, ds, adapter)
        cfg["run_id"] = run_id
        folder = records.RunFolder(a.out, run_id, cfg)
        state = {}
    else:
        with open(os.path.join(a.resume, "config.json")) as f:
            cfg = json.load(f)
        cfg.setdefault("resumed", []).append({"at_epoch": resume["epochs_done"], "command": " ".join(
            ["python -m experiments.run"] + sys.argv[1:]), "started": datetime.datetime.now().isoformat(
            timespec="seconds"), "git_commit": resolved_config(a, ds, adapter)["git_commit"]})
        records.write_json(os.path.join(a.resume, "config.json"), cfg)
        state = dict(resume["state"])
        folder = records.RunFolder.reopen(a.resume, state["epochs_done"], state["step"])
    schedule = _schedule(a, train_loader)
    ckpt = Checkpointer(folder.dir, adapter, a.checkpoint_every, a.seed)
    gpus = cfg["gpu_index"]
    if gpus is not None and a.dist is not None:     # rank 0 watches every GPU of its node
        gpus = list(range(a.dist.local_world_size))
    sampler = ResourceSampler(folder.path("resources.csv"), hz=a.sample_hz, gpu_index=gpus,
                              pool_bytes_fn=_pool_fn(a), resume=resume is not None).start()
    status, message, t0 = "completed", None, time.perf_counter()
    try:
        train(adapter, train_loader, test_loader, epochs=a.epochs, schedule=schedule, folder=folder,
              warmup_steps=a.warmup_steps, max_steps=a.max_steps, log_every=a.log_every,
              eval_every=a.eval_every, label_smoothing=a.label_smoothing, progress=_progress_factory(a),
              state=state, on_epoch_end=ckpt.on_epoch_end, time_budget_s=a.time_budget,
              world=a.dist.world_size if a.dist else 1)
    except KeyboardInterrupt:
        status, message = "interrupted", "interrupted by the user; the run folder keeps what was measured"
    except Diverged as e:
        status, message = "diverged", str(e)
    finally:
        sampler.stop()
        folder.close()
        adapter.close()
    last_ckpt = ckpt.last_path or (resume["state_path"] if resume else None)
    if message and last_ckpt:
        message += f"; the last good checkpoint is {last_ckpt} (--resume {folder.dir})"
    summary = S.build_summary(a, cfg, ds, state, sampler.summary(), status, wall_s=time.perf_counter() - t0)
    summary["checkpoint"] = last_ckpt
    runs_csv = a.runs_csv or os.path.join(os.path.dirname(os.path.abspath(a.out)), "runs.csv")
    S.add_scaling(summary, records.read_runs(runs_csv))
    records.write_json(folder.path("summary.json"), summary)
    records.append_runs_row(runs_csv, S.runs_row(summary, folder.dir))
    S.print_summary(summary, folder.dir, runs_csv)
    if message:
        print(f"{status}: {message}", file=sys.stderr)
    return {"completed": 0, "interrupted": 130, "diverged": 3}[status]


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
