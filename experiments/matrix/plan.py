"""The study's matrix: its presets, the settings a study runs with (preset and flags, kept
in study.json), its rows (implementation x execution x model x seed, then the sweeps), and each
row's command line."""
import fnmatch
import json
import os
import sys

from scratch_nn.backends.threads import usable_cores

from ..cli import UsageError

MODELS = ("cnn", "resnet18")
IMPLS = ("scratch", "torch", "torch-best")

# what each execution passes to experiments.run, per implementation; warm-up steps are
# excluded from throughput (numba compiles in its first step, cuDNN autotunes in its first few,
# torch.compile compiles in its first). torch_best: the execution has a torch-best row (torch
# with the configuration a probe measured fastest; not on one core, where torch's users do not
# tune).
EXECUTIONS = {
    "1-core": dict(scratch=["--backend", "numpy"], torch=["--device", "cpu"], threads="one", warmup_steps=1,
                   gpu=False, torch_best=False),
    "multi-core": dict(scratch=["--backend", "numba"], torch=["--device", "cpu"], threads="all", warmup_steps=2,
                       gpu=False, torch_best=True),
    "gpu": dict(scratch=["--backend", "cupy"], torch=["--device", "cuda"], threads=None, warmup_steps=5, gpu=True,
                torch_best=True),
}

# torch at its users' best (design rule 7): the configurations a torch-best row chooses from,
# by a short probe at the study's start (experiments/matrix/probe.py). Each is a dict of
# experiments.run's torch flags; channels-last is what cuDNN runs fastest, so both GPU
# candidates have it.
TORCH_BEST_CANDIDATES = {
    "gpu": [dict(memory_format="channels-last", cuda_graph=True), dict(memory_format="channels-last", compile=True)],
    "multi-core": [dict(), dict(compile=True), dict(memory_format="channels-last")],
}


def variant_flags(v):
    """experiments.run's flags of a torch configuration (a TORCH_BEST_CANDIDATES dict)."""
    flags = []
    if v.get("memory_format") not in (None, "nchw"):
        flags += ["--memory-format", v["memory_format"]]
    if v.get("cuda_graph"):
        flags.append("--cuda-graph")
    if v.get("compile"):
        flags.append("--compile")
    return flags


def variant_name(v):
    """A torch configuration in words, e.g. 'channels-last + CUDA graph'; 'eager' for plain torch.
    Also reads a run's summary.json (memory_format, cuda_graph, compile)."""
    parts = ["channels-last"] if v.get("memory_format") == "channels-last" else []
    parts += ["compile"] if v.get("compile") else []
    parts += ["CUDA graph"] if v.get("cuda_graph") else []
    return " + ".join(parts) or "eager"

# The presets, every setting in view. budget_s: seconds of steady-state training a row may
# take (None: the recipe's epochs in full). row_timeout_s: a row's subprocess is killed after
# this (a hang, not a slow row: budgets bound those). test_subset: the first N test images.
# seeds: every training row runs once per seed (weights, data order, augmentation), so that
# differences come with their run-to-run spread (design rule 9); the sweeps run once.
PRESETS = {
    "quick": dict(
        about="a smoke run of the whole matrix: the seed recipe for two epochs on 10,000 training images, "
              "20 s of training per row",
        recipe="seed", epochs=2, dataset="auto", train_subset=10000, test_subset=1000, seeds=(0, 1),
        cpu_budget_s=20, gpu_budget_s=20, row_timeout_s=300,
        sweeps=dict(models=("cnn",), batch_sizes=(16, 64, 256), min_time=0.5, repeats=2)),
    "seed": dict(
        about="the original study's recipe and epochs (10) on every row, full CIFAR-10; CPU rows bounded "
              "by a 30-minute budget",
        recipe="seed", epochs=None, dataset="cifar10", train_subset=None, test_subset=None, seeds=(0, 1, 2),
        cpu_budget_s=1800, gpu_budget_s=None, row_timeout_s=4 * 3600,
        sweeps=dict(models=MODELS, batch_sizes=(16, 32, 64, 128, 256, 512), min_time=1.0, repeats=3)),
    "full": dict(
        about="the fast recipe (20 epochs, ~89% for ResNet-18 on a GPU) on every row, full CIFAR-10; CPU rows "
              "bounded by a 10-minute budget",
        recipe="fast", epochs=None, dataset="cifar10", train_subset=None, test_subset=None, seeds=(0, 1, 2),
        cpu_budget_s=600, gpu_budget_s=None, row_timeout_s=4 * 3600,
        sweeps=dict(models=MODELS, batch_sizes=(16, 32, 64, 128, 256, 512), min_time=1.0, repeats=3)),
}

# flags that may accompany --resume (the rest come from study.json)
RESUME_FLAGS = {"--out", "--resume", "--only", "--no-compare", "--no-sweeps", "--data-dir", "--dry-run"}


def resolve(a):
    """The study's settings from the preset and the flags (a plain dict, stored in study.json)."""
    if a.preset not in PRESETS:
        raise UsageError(f"--preset {a.preset!r} is not one of: {', '.join(PRESETS)}")
    if a.precision not in ("fp32", "tf32", "fp16", "bf16"):
        raise UsageError(f"--precision {a.precision!r} is not one of: fp32, tf32, fp16, bf16")
    for flag in ("threads", "test_subset"):
        v = getattr(a, flag)
        if v is not None and v <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be positive, got {v}")
    for flag in ("cpu_budget", "gpu_budget"):
        v = getattr(a, flag)
        if v is not None and v < 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 0 seconds, got {v}")
    if a.row_timeout is not None and a.row_timeout <= 0:
        raise UsageError("--row-timeout must be positive")
    p = dict(PRESETS[a.preset])
    seeds = _seeds(a, p)
    dataset = p["dataset"]
    if a.download:
        from ..train import data as D

        data_dir = a.data_dir or D.default_data_dir()
        if D.find_batches_dir(data_dir) is None:
            try:
                D.download_cifar10(data_dir)
            except D.DataError as e:
                raise UsageError(f"--download: {e}") from None
        dataset = "cifar10"
    if dataset == "auto":   # decided once for every row, and said once (each run records it too)
        from ..train import data as D

        dataset = "cifar10" if D.find_batches_dir(a.data_dir or D.default_data_dir()) else "synthetic"
        if dataset == "synthetic":
            print(f"note: CIFAR-10 is not in {os.path.abspath(a.data_dir or D.default_data_dir())}: the {a.preset} "
                  f"preset runs on SYNTHETIC data (recorded as such); pass --data-dir for the real images",
                  file=sys.stderr)
    cores = usable_cores()
    if a.threads is not None and a.threads > cores:
        raise UsageError(f"--threads {a.threads}: this process may use {cores} cores")

    def budget(flag, preset):
        return preset if flag is None else (flag or None)

    return dict(preset=a.preset, about=p["about"], recipe=p["recipe"], epochs=p["epochs"], dataset=dataset,
                data_dir=a.data_dir, train_subset=p["train_subset"],
                test_subset=a.test_subset if a.test_subset is not None else p["test_subset"],
                cpu_budget_s=budget(a.cpu_budget, p["cpu_budget_s"]), gpu_budget_s=budget(a.gpu_budget,
                                                                                          p["gpu_budget_s"]),
                row_timeout_s=a.row_timeout or p["row_timeout_s"], threads=a.threads or cores,
                precision=a.precision, seeds=seeds, seed=seeds[0], torch_best=not a.no_torch_best,
                sweeps=dict(p["sweeps"], models=list(p["sweeps"]["models"]),
                            batch_sizes=list(p["sweeps"]["batch_sizes"])))


def _seeds(a, preset):
    """The seeds every training row runs with: --seeds, or --seed (one seed), or the preset's.
    (seed, in the settings, is the first: the sweeps' seed and what older readers look for.)"""
    if a.seeds is not None and a.seed is not None:
        raise UsageError("give --seeds or --seed, not both (--seed N is --seeds N)")
    if a.seed is not None:
        text = str(a.seed)
    elif a.seeds is not None:
        text = a.seeds
    else:
        return list(preset.get("seeds", (0,)))
    seeds = []
    for t in (t.strip() for t in text.split(",")):
        if not t.isdigit():
            raise UsageError(f"--seeds {text!r}: give comma-separated whole numbers >= 0, e.g. 0,1,2")
        if int(t) not in seeds:
            seeds.append(int(t))
    return seeds


def settings(a, argv):
    """(study folder, settings, study.json's header or None) of a new study from the flags, or of
    the study --resume continues (its own settings)."""
    out = a.out or os.path.join("results", "study", a.preset)
    header_path = os.path.join(out, "study.json")
    if a.resume:
        given = {t.split("=")[0] for t in argv if t.startswith("--")}
        extra = sorted(given - RESUME_FLAGS)
        if extra:
            raise UsageError(f"--resume continues the study with the settings in {header_path}; drop "
                             f"{', '.join(extra)}")
        if not os.path.exists(header_path):
            raise UsageError(f"--resume: {header_path} does not exist (no study in {out})")
        with open(header_path) as f:
            header = json.load(f)
        st = header["settings"]
        if a.data_dir:      # the same data in another place (another machine)
            st["data_dir"] = a.data_dir
    else:
        if os.path.exists(header_path):
            raise UsageError(f"{out} holds a study already: pass --resume to finish it, or choose another --out")
        st, header = resolve(a), None
    return out, st, header


def row_id(base, seed):
    """A training row's id: its implementation x execution x model, then its seed: cnn/gpu/torch/s1."""
    return f"{base}/s{seed}"


def split_row(row):
    """'cnn/gpu/torch/s1' -> ('cnn/gpu/torch', 1); an id without a seed (a study from before
    seeds, a sweep) -> (row, None)."""
    head, _, tail = row.rpartition("/")
    if head and tail[:1] == "s" and tail[1:].isdigit():
        return head, int(tail[1:])
    return row, None


def training_rows(st):
    """One row per seed x model x execution x implementation, seed outermost: a study cut short
    holds the whole matrix of its first seeds, and a slow drift of the machine spreads over
    every row alike. A study from before seeds (no `seeds` in its settings) keeps its seed-less
    ids and its matrix (no torch-best rows), so that --resume finds the rows it ran."""
    legacy = "seeds" not in st
    rows = []
    for seed in [st["seed"]] if legacy else st["seeds"]:
        for model in MODELS:
            for execution, ex in EXECUTIONS.items():
                for impl in IMPLS:
                    if impl == "torch-best" and not (ex["torch_best"] and st.get("torch_best")):
                        continue
                    threads = {"one": 1, "all": st["threads"], None: None}[ex["threads"]]
                    base = f"{model}/{execution}/{impl}"
                    rows.append(dict(row=base if legacy else row_id(base, seed), base=base, seed=seed, kind="train",
                                     model=model, execution=execution, impl=impl,
                                     backend_or_device=ex[_side(impl)][1], threads=threads, gpu=ex["gpu"],
                                     warmup_steps=ex["warmup_steps"]))
    return rows


def _side(impl):
    """The implementation experiments.run runs for a row: a torch-best row is torch with flags."""
    return "torch" if impl == "torch-best" else impl


def sweep_rows(st, gpu):
    sw = st["sweeps"]
    rows = []
    for model in sw["models"]:
        rows.append(dict(row=f"sweep/threads/{model}", kind="sweep-threads", model=model, execution="multi-core",
                         impl="both", backend_or_device="numba+cpu", threads=st["threads"], gpu=False))
        for where in ("cpu", "gpu"):
            for b in sw["batch_sizes"]:
                rows.append(dict(row=f"sweep/batch-{where}/{model}/{b}", kind=f"sweep-batch-{where}", model=model,
                                 execution="multi-core" if where == "cpu" else "gpu", impl="both",
                                 backend_or_device="numba+cpu" if where == "cpu" else "cupy+cuda",
                                 threads=st["threads"] if where == "cpu" else None, gpu=where == "gpu",
                                 batch_size=b))
    return rows


def row_slug(row_id):
    return row_id.replace("/", "_")


def row_command(r, st, out):
    """The argv of one row's subprocess."""
    py = [sys.executable, "-m"]
    if r["kind"] == "train":
        ex = EXECUTIONS[r["execution"]]
        side = _side(r["impl"])
        cmd = py + ["experiments.run", "--impl", side, *ex[side], *r.get("best_flags", []), "--model", r["model"],
                    "--recipe", st["recipe"], "--dataset", st["dataset"], "--seed", str(r["seed"]),
                    "--warmup-steps", str(r["warmup_steps"]), "--out", os.path.join(out, "runs", row_slug(r["row"])),
                    "--runs-csv", os.path.join(out, "runs.csv"), "--quiet"]
        if r["threads"] is not None:
            cmd += ["--threads", str(r["threads"])]
        if r["gpu"]:
            cmd += ["--precision", st["precision"]]
        for flag, key in (("--epochs", "epochs"), ("--data-dir", "data_dir"), ("--train-subset", "train_subset"),
                          ("--test-subset", "test_subset")):
            if st[key] is not None:
                cmd += [flag, str(st[key])]
        budget = st["gpu_budget_s"] if r["gpu"] else st["cpu_budget_s"]
        if budget:
            cmd += ["--time-budget", f"{budget:g}"]
        return cmd
    sw = st["sweeps"]
    timing = ["--repeats", str(sw["repeats"]), "--min-time", f"{sw['min_time']:g}", "--seed", str(st["seed"])]
    if r["kind"] == "sweep-threads":
        counts = sorted({t for t in (1, 2, 4, 8, 16, 32, 64) if t < st["threads"]} | {st["threads"]})
        return py + ["experiments.scaling", "--model", r["model"], "--threads", ",".join(map(str, counts)),
                     "--warmup", "1", "--out", os.path.join(out, "sweeps", "threads"), *timing]
    common = py + ["experiments.bench", "--models", r["model"], "--batch-size", str(r["batch_size"]), "--warmup", "1",
                   *timing]
    if r["kind"] == "sweep-batch-cpu":
        return common + ["--scratch-backends", "numba", "--threads", str(st["threads"]),
                         "--csv", os.path.join(out, "sweeps", "batch_cpu.csv")]
    return common + ["--scratch-backends", "cupy", "--precision", st["precision"],
                     "--csv", os.path.join(out, "sweeps", "batch_gpu.csv")]


def select(rows, only):
    """The rows --only picks: a pattern matches a row's id or its id without the seed, so
    'cnn/gpu/torch' picks every seed of that row and 'cnn/gpu/torch/s1' one."""
    if not only:
        return rows
    pats = [p.strip() for p in only.split(",") if p.strip()]
    picked = [r for r in rows if any(fnmatch.fnmatchcase(r["row"], p) or fnmatch.fnmatchcase(r.get("base", ""), p)
                                     for p in pats)]
    if not picked:
        raise UsageError(f"--only {only!r} matches no row; row ids look like cnn/1-core/scratch/s0, "
                         f"resnet18/gpu/torch-best/s1, sweep/threads/cnn, sweep/batch-cpu/cnn/64")
    return picked
