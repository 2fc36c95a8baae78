"""One training job from its parsed flags: validate them (recipes resolved, every
combination checked before anything is made), load the data, build the implementation, and
train while recording (the run folder, runs.csv, checkpoints, the resource sampler).
experiments.run parses the flags and calls these; bad input is a UsageError."""
import datetime
import json
import os
import sys
import time

from ..cli import UsageError, choice
from .recipes import RECIPES, resolve as resolve_recipe
from .torch_adapter import MEMORY_FORMATS

IMPLS = ("scratch", "torch")
BACKENDS = ("numpy", "numba", "cupy")
DEVICES = ("cpu", "cuda")
MODELS = ("cnn", "resnet18")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "multistep", "cosine", "onecycle")
PRECISIONS = ("fp32", "fp64", "tf32", "fp16", "bf16")   # tf32, fp16 and bf16 (mixed) are GPU modes
DATASETS = ("auto", "cifar10", "synthetic")


def validate(a):
    """Resolve the recipe, then check every flag and combination before anything is created.
    Raises UsageError."""
    choice(a.impl, IMPLS, "--impl")
    choice(a.model, MODELS, "--model")
    if a.recipe is not None:
        choice(a.recipe, tuple(RECIPES), "--recipe")
    for k, v in resolve_recipe(a.recipe, a.model, vars(a)).items():
        setattr(a, k, v)
    choice(a.optimizer, OPTIMIZERS, "--optimizer")
    choice(a.schedule, SCHEDULES, "--schedule")
    choice(a.precision, PRECISIONS, "--precision")
    choice(a.dataset, DATASETS, "--dataset")
    choice(a.norm, ("cifar", "half"), "--norm")
    if a.impl == "scratch":
        if a.device is not None:
            raise UsageError("--device is for --impl torch; scratch runs choose --backend numpy|numba|cupy")
        a.backend = choice(a.backend or "numpy", BACKENDS, "--backend")
    else:
        if a.backend is not None:
            raise UsageError(f"--backend {a.backend} is for --impl scratch; torch runs choose --device cpu|cuda")
        a.device = choice(a.device or "cpu", DEVICES, "--device")
    if a.impl == "torch":
        a.memory_format = choice(a.memory_format or "nchw", MEMORY_FORMATS, "--memory-format")
    elif a.memory_format is not None:
        raise UsageError("--memory-format is for --impl torch: scratch picks its layout per backend and precision")
    if a.compile:
        _validate_compile(a)
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
    if a.precision in ("tf32", "fp16", "bf16") and not on_gpu:
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


def _validate_compile(a):
    if a.impl != "torch":
        raise UsageError("--compile is torch.compile, for --impl torch: scratch's kernels are its own")
    if a.cuda_graph:
        raise UsageError("--compile with --cuda-graph: choose one (torch.compile's mode='reduce-overhead' "
                         "captures graphs itself)")
    from .torch_adapter import compile_unavailable

    reason = compile_unavailable(a.device)
    if reason:
        raise UsageError(f"--compile: {reason}")


def _validate_parallel(a, on_gpu):
    """a.dist: this process's rank (started by experiments/dist/launch.py or torchrun), or None;
    a.launch: start the ranks from here."""
    from ..dist.launch import LaunchError, rank_from_env

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
        try:
            return build("torch", device=a.device, dist=a.dist, sync_bn=a.sync_bn, memory_format=a.memory_format,
                         compile=a.compile, **common)
        except ValueError as e:     # a precision this GPU lacks (tf32 / bf16 below compute capability 8.0)
            raise UsageError(str(e)) from None
    from scratch_nn.backends.nccl import NcclUnavailable

    from ..dist.rendezvous import RendezvousError

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
    # a captured CUDA graph replays one batch shape, and torch.compile would recompile for the
    # short last batch in the middle of the steady state: both drop it
    train = D.BatchLoader(ds.x_train, ds.y_train, a.batch_size, shuffle=True, seed=a.seed, augment=a.augment,
                          mean=mean, std=std, dtype=dtype, drop_last=a.cuda_graph or a.compile,
                          shard=(a.dist.rank, a.dist.world_size) if a.dist else (0, 1))
    test = D.BatchLoader(ds.x_test, ds.y_test, max(a.batch_size, 256), shuffle=False, seed=a.seed, augment=False,
                         mean=mean, std=std, dtype=dtype)
    return ds, train, test


def resolved_config(a, ds, adapter):
    from ..record import sysinfo

    gpu = 0 if (a.impl == "torch" and a.device == "cuda") or (a.impl == "scratch" and a.backend == "cupy") else None
    cfg = {k: v for k, v in vars(a).items()}
    cfg.update(backend_or_device=a.backend if a.impl == "scratch" else a.device, gpu_index=gpu,
               dataset_identity=ds.identity(), versions=sysinfo.versions(), machine=sysinfo.machine_info(gpu),
               git_commit=sysinfo.git_commit(),
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
        from scratch_nn.backends import gpu_allocator
        return lambda: gpu_allocator.held_bytes(cupy)
    return None


def resume_args(a, argv, defaults):
    """The Namespace of the run being resumed (its config.json over `defaults`, the parser's
    defaults), and its checkpoint index."""
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
    r = defaults
    for k in vars(r):
        if k in cfg:
            setattr(r, k, cfg[k])
    r.resume, r.quiet = os.path.abspath(a.resume), a.quiet or r.quiet
    if index["epochs_done"] >= r.epochs:
        raise UsageError(f"{a.resume} finished all {r.epochs} epochs already; nothing to resume")
    return r, index


def _schedule(a, train_loader):
    from scratch_nn.optim import make_schedule

    total = a.epochs * len(train_loader) if a.max_steps is None else min(a.max_steps, a.epochs * len(train_loader))
    return make_schedule(a.schedule, a.lr, total, warmup_steps=int(a.warmup_epochs * len(train_loader)))


def execute_rank(a, adapter, train_loader, test_loader, resume=None):
    """A rank other than 0: trains its share in step with the others and writes nothing (rank 0
    owns the run folder, its checkpoints, and evaluates); a resumed job's ranks all load rank
    0's checkpoint and go on from its step."""
    from ..record import records
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
    from ..record import records, summary as S
    from .checkpoint import Checkpointer
    from ..record.sampler import ResourceSampler
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
    tiles = getattr(getattr(adapter, "be", None), "conv_choices", None)
    if tiles is not None:       # chosen by measurement during the run, so known only now
        summary["conv_tiles"] = tiles()
    algorithms = getattr(getattr(adapter, "be", None), "conv_algorithms", None)
    if algorithms is not None and algorithms():     # the CPU backends' per-shape choice, as the layers ran
        summary["conv_algorithms"] = algorithms()
    runs_csv = a.runs_csv or os.path.join(os.path.dirname(os.path.abspath(a.out)), "runs.csv")
    S.add_scaling(summary, records.read_runs(runs_csv))
    records.write_json(folder.path("summary.json"), summary)
    records.append_runs_row(runs_csv, S.runs_row(summary, folder.dir))
    S.print_summary(summary, folder.dir, runs_csv)
    if message:
        print(f"{status}: {message}", file=sys.stderr)
    return {"completed": 0, "interrupted": 130, "diverged": 3}[status]

