"""The whole study in one command: implementation x execution x model, one subprocess a row.

    python -m experiments.study --preset quick                     # under 10 minutes on 2 cores
    python -m experiments.study --preset full --out results/study/h100
    python -m experiments.study --preset seed --only 'resnet18/*' --out DIR
    python -m experiments.study --out DIR --resume                 # run what is not done yet

The matrix, for each model (cnn, resnet18):

    execution    scratch                       torch
    1-core       numpy, 1 thread               cpu, 1 thread (BLAS, intra- and inter-op)
    multi-core   numba, all threads            cpu, all threads
    gpu          cupy                          cuda              (only where a GPU exists)

Every row trains with the same recipe, data, seed, batch size and precision (experiments.run
with the preset's flags), in a subprocess of its own so that its memory figures are its own.
A row that fails is recorded with its reason and the study goes on. Slow rows are bounded
by a time budget: training stops once the steady-state training time reaches it, and the
row still reports its steady-state throughput and its test accuracy at the budget.

Sweeps for the charts run after the rows: thread scaling (experiments.scaling) and
batch-size scaling (experiments.bench at each batch size, CPU and GPU).

Writes, under --out DIR:
    study.json        the preset and settings, machine, versions, commit, command, times
    study.csv         one line per row: row, kind, status (ok | failed | skipped |
                      interrupted | diverged), reason, return code, wall time, run folder, log
    runs.csv          experiments.run's table, one line per training row
    runs/<row>/<run_id>/   each row's run folder (config, epochs, steps, resources, summary)
    logs/<row>.log    each subprocess's output
    sweeps/           threads/<model>-<N>cores.csv, batch_cpu.csv, batch_gpu.csv
and then the comparison tables and charts (python -m experiments.compare DIR).
"""
import argparse
import csv
import datetime
import fnmatch
import json
import os
import signal
import subprocess
import sys
import time

from .run import UsageError, _Parser

MODELS = ("cnn", "resnet18")
IMPLS = ("scratch", "torch")

# what each execution passes to experiments.run, per implementation; warm-up steps are
# excluded from throughput (numba compiles in its first step, cuDNN autotunes in its first few)
EXECUTIONS = {
    "1-core": dict(scratch=["--backend", "numpy"], torch=["--device", "cpu"], threads="one", warmup_steps=1,
                   gpu=False),
    "multi-core": dict(scratch=["--backend", "numba"], torch=["--device", "cpu"], threads="all", warmup_steps=2,
                       gpu=False),
    "gpu": dict(scratch=["--backend", "cupy"], torch=["--device", "cuda"], threads=None, warmup_steps=5, gpu=True),
}

# The presets, every setting in view. budget_s: seconds of steady-state training a row may
# take (None: the recipe's epochs in full). row_timeout_s: a row's subprocess is killed after
# this (a hang, not a slow row: budgets bound those). test_subset: the first N test images.
PRESETS = {
    "quick": dict(
        about="a smoke run of the whole matrix: the seed recipe for two epochs on 10,000 training images, "
              "20 s of training per row",
        recipe="seed", epochs=2, dataset="auto", train_subset=10000, test_subset=1000,
        cpu_budget_s=20, gpu_budget_s=20, row_timeout_s=300,
        sweeps=dict(models=("cnn",), batch_sizes=(16, 64, 256), min_time=0.5, repeats=2)),
    "seed": dict(
        about="the original study's recipe and epochs (10) on every row, full CIFAR-10; CPU rows bounded "
              "by a 30-minute budget",
        recipe="seed", epochs=None, dataset="cifar10", train_subset=None, test_subset=None,
        cpu_budget_s=1800, gpu_budget_s=None, row_timeout_s=4 * 3600,
        sweeps=dict(models=MODELS, batch_sizes=(16, 32, 64, 128, 256, 512), min_time=1.0, repeats=3)),
    "full": dict(
        about="the fast recipe (20 epochs, ~89% for ResNet-18 on a GPU) on every row, full CIFAR-10; CPU rows "
              "bounded by a 10-minute budget",
        recipe="fast", epochs=None, dataset="cifar10", train_subset=None, test_subset=None,
        cpu_budget_s=600, gpu_budget_s=None, row_timeout_s=4 * 3600,
        sweeps=dict(models=MODELS, batch_sizes=(16, 32, 64, 128, 256, 512), min_time=1.0, repeats=3)),
}

STUDY_COLUMNS = ["row", "kind", "model", "execution", "impl", "backend_or_device", "threads", "status", "reason",
                 "returncode", "wall_s", "run_dir", "log", "command"]
# flags that may accompany --resume (the rest come from study.json)
RESUME_FLAGS = {"--out", "--resume", "--only", "--no-compare", "--no-sweeps", "--data-dir"}




def build_parser():
    ap = _Parser(prog="python -m experiments.study", description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick", help=f"{' | '.join(PRESETS)} (default quick)")
    ap.add_argument("--only", default=None, metavar="PATTERN",
                    help="run only rows whose id matches: comma-separated shell patterns over ids such as "
                         "cnn/1-core/scratch, resnet18/gpu/torch, sweep/threads/cnn, sweep/batch-cpu/cnn/64 "
                         "(e.g. 'cnn/*', '*/gpu/*')")
    ap.add_argument("--out", default=None, help="study folder (default results/study/<preset>)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the study in --out with its own settings: run the rows not yet ok")
    ap.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py/ (see experiments.run)")
    ap.add_argument("--download", action="store_true",
                    help="download CIFAR-10 (with its checksum) into --data-dir first if it is not there")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of the multi-core rows (default: every core this process may use)")
    ap.add_argument("--precision", default="fp32", help="GPU rows: fp32 | tf32 | fp16 (default fp32, like the "
                                                        "CPU rows)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu-budget", type=float, default=None, metavar="SECONDS",
                    help="steady-state training seconds per CPU row (default: the preset's; 0: no budget)")
    ap.add_argument("--gpu-budget", type=float, default=None, metavar="SECONDS",
                    help="the same for GPU rows (default: the preset's; 0: no budget)")
    ap.add_argument("--test-subset", type=int, default=None,
                    help="evaluate every row on the first N test images (default: the preset's)")
    ap.add_argument("--row-timeout", type=float, default=None, metavar="SECONDS",
                    help="kill a row's subprocess after this long (default: the preset's)")
    ap.add_argument("--no-sweeps", action="store_true", help="skip the thread and batch-size sweeps")
    ap.add_argument("--no-compare", action="store_true", help="do not write the comparison tables and charts")
    ap.add_argument("--dry-run", action="store_true", help="print each row's command and exit")
    return ap


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve(a):
    """The study's settings from the preset and the flags (a plain dict, stored in study.json)."""
    if a.preset not in PRESETS:
        raise UsageError(f"--preset {a.preset!r} is not one of: {', '.join(PRESETS)}")
    if a.precision not in ("fp32", "tf32", "fp16"):
        raise UsageError(f"--precision {a.precision!r} is not one of: fp32, tf32, fp16")
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
    dataset = p["dataset"]
    if a.download:
        from . import data as D

        data_dir = a.data_dir or D.default_data_dir()
        if D.find_batches_dir(data_dir) is None:
            try:
                D.download_cifar10(data_dir)
            except D.DataError as e:
                raise UsageError(f"--download: {e}") from None
        dataset = "cifar10"
    if dataset == "auto":   # decided once for every row, and said once (each run records it too)
        from . import data as D

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
                precision=a.precision, seed=a.seed, sweeps=dict(p["sweeps"], models=list(p["sweeps"]["models"]),
                                                                 batch_sizes=list(p["sweeps"]["batch_sizes"])))


def gpu_present():
    from .sampler import gpu_available

    return gpu_available(0)


# ---------------------------------------------------------------------------- rows
def training_rows(st):
    rows = []
    for model in MODELS:
        for execution, ex in EXECUTIONS.items():
            for impl in IMPLS:
                threads = {"one": 1, "all": st["threads"], None: None}[ex["threads"]]
                rows.append(dict(row=f"{model}/{execution}/{impl}", kind="train", model=model, execution=execution,
                                 impl=impl, backend_or_device=ex[impl][1], threads=threads, gpu=ex["gpu"],
                                 warmup_steps=ex["warmup_steps"]))
    return rows


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
        cmd = py + ["experiments.run", "--impl", r["impl"], *ex[r["impl"]], "--model", r["model"],
                    "--recipe", st["recipe"], "--dataset", st["dataset"], "--seed", str(st["seed"]),
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
    if not only:
        return rows
    pats = [p.strip() for p in only.split(",") if p.strip()]
    picked = [r for r in rows if any(fnmatch.fnmatchcase(r["row"], p) for p in pats)]
    if not picked:
        raise UsageError(f"--only {only!r} matches no row; row ids look like cnn/1-core/scratch, "
                         f"resnet18/gpu/torch, sweep/threads/cnn, sweep/batch-cpu/cnn/64")
    return picked


# ---------------------------------------------------------------------------- running
def _reason_from_log(path, rc):
    """The most telling line of a failed row's output: its `error:` line, else the last one."""
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        lines = []
    for ln in reversed(lines):
        if ln.startswith("error:") or ln.startswith(("diverged:", "interrupted:")):
            return ln
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln:
            return ln[:300]
    return (lines[-1][:300] if lines else f"exited with code {rc} and no output")


def _run_dir(out, row_id):
    """The run folder experiments.run made for a training row (its newest)."""
    root = os.path.join(out, "runs", row_slug(row_id))
    if not os.path.isdir(root):
        return None
    dirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    return os.path.join(root, dirs[-1]) if dirs else None


def run_row(r, st, out, log=print):
    """Run one row's subprocess; returns the study.csv line."""
    cmd = row_command(r, st, out)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    log_path = os.path.join(out, "logs", row_slug(r["row"]) + ".log")
    line = {k: r.get(k) for k in STUDY_COLUMNS}
    line.update(log=os.path.relpath(log_path, out), command=" ".join(cmd[1:]).replace("-m ", "python -m ", 1))
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "w") as f:
        f.write("$ " + line["command"] + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        try:
            rc = proc.wait(timeout=st["row_timeout_s"])
            status = {0: "ok", 3: "diverged", 130: "interrupted"}.get(rc, "failed")
            reason = "" if rc == 0 else _reason_from_log(log_path, rc)
        except subprocess.TimeoutExpired:
            _kill(proc)
            rc, status = None, "failed"
            reason = f"timed out after {st['row_timeout_s']:g} s (--row-timeout)"
        except KeyboardInterrupt:
            _kill(proc)
            line.update(status="interrupted", reason="interrupted by the user", returncode=None,
                        wall_s=round(time.perf_counter() - t0, 1))
            raise _Interrupted(line) from None
    line.update(status=status, reason=reason, returncode=rc, wall_s=round(time.perf_counter() - t0, 1))
    if r["kind"] == "train":
        d = _run_dir(out, r["row"])
        line["run_dir"] = os.path.relpath(d, out) if d else None
    return line


class _Interrupted(Exception):
    def __init__(self, line):
        self.line = line


def _kill(proc):
    """End a row's whole process group: SIGINT first (experiments.run then keeps what it
    measured), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _row_note(line, out):
    """A short result for the progress line: throughput and test accuracy of a training row."""
    if line["kind"] != "train" or line["status"] != "ok" or not line.get("run_dir"):
        return line.get("reason") or ""
    try:
        with open(os.path.join(out, line["run_dir"], "summary.json")) as f:
            s = json.load(f)
    except (OSError, ValueError):
        return ""
    ips, acc = s.get("images_per_s"), s.get("final_test_acc")
    note = f"{ips:,.1f} img/s" if ips else "no steady-state steps"
    if acc is not None:
        note += f", test acc {acc:.1%}"
    if s.get("stopped_by") == "time_budget":
        note += f" (time budget, {s.get('epochs')} epoch(s) started)"
    return note


# ---------------------------------------------------------------------------- records
def write_study_csv(path, lines):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=STUDY_COLUMNS)
        w.writeheader()
        for ln in lines:
            w.writerow({k: "" if ln.get(k) is None else ln.get(k) for k in STUDY_COLUMNS})
    os.replace(tmp, path)


def read_study_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def study_header(st, gpu, argv):
    from . import sysinfo

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return dict(settings=st, gpu_present=gpu, machine=sysinfo.machine_info(0 if gpu else None),
                versions=sysinfo.versions(), git_commit=sysinfo.git_commit(root),
                command=" ".join(["python -m experiments.study"] + list(argv)),
                started=datetime.datetime.now().isoformat(timespec="seconds"))


# ---------------------------------------------------------------------------- main
def parse(argv):
    a = build_parser().parse_args(argv)
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
    return a, out, st, header


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        a, out, st, header = parse(argv)
        gpu = gpu_present()
        rows = training_rows(st) + ([] if a.no_sweeps else sweep_rows(st, gpu))
        rows = select(rows, a.only)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.dry_run:
        for r in rows:
            skip = r["gpu"] and not gpu
            print(f"{r['row']:28s} " + ("(skipped: no GPU)" if skip else " ".join(row_command(r, st, out)[1:])))
        return 0
    os.makedirs(out, exist_ok=True)
    header_path = os.path.join(out, "study.json")
    if header is None:
        header = study_header(st, gpu, argv)
    header.setdefault("sessions", []).append(dict(command=" ".join(["python -m experiments.study"] + argv),
                                                  started=datetime.datetime.now().isoformat(timespec="seconds")))
    write_json(header_path, header)
    csv_path = os.path.join(out, "study.csv")
    done = {ln["row"]: ln for ln in read_study_csv(csv_path)}
    todo = [r for r in rows if done.get(r["row"], {}).get("status") != "ok"]
    print(f"study {st['preset']}: {st['about']}")
    print(f"  {len(rows)} row(s) selected, {len(rows) - len(todo)} already ok; writing {out}"
          + ("" if gpu else "; no GPU here: GPU rows are skipped"))
    code = 0
    for i, r in enumerate(todo, 1):
        tag = f"[{i}/{len(todo)}] {r['row']}"
        if r["gpu"] and not gpu:
            line = {k: r.get(k) for k in STUDY_COLUMNS}
            line.update(status="skipped", reason="no GPU here (NVML finds none)")
        else:
            print(f"{tag} ...", flush=True)
            try:
                line = run_row(r, st, out)
            except _Interrupted as e:
                done[r["row"]] = e.line
                write_study_csv(csv_path, list(done.values()))
                print(f"{tag}: interrupted; the study keeps what finished. Continue with: "
                      f"python -m experiments.study --out {out} --resume", file=sys.stderr)
                return 130
        done[r["row"]] = line
        write_study_csv(csv_path, list(done.values()))
        print(f"{tag}: {line['status']}" + (f" in {line['wall_s']:.0f} s" if line.get("wall_s") is not None else "")
              + (f" - {_row_note(line, out)}" if _row_note(line, out) else ""), flush=True)
        if line["status"] in ("failed", "diverged", "interrupted"):
            code = 1
    header["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    write_json(header_path, header)
    failed = [ln["row"] for ln in done.values() if ln["status"] not in ("ok", "skipped")]
    print(f"study.csv: {csv_path}" + (f"; not ok: {', '.join(failed)}" if failed else ""))
    if not a.no_compare:
        from . import compare

        try:
            if compare.main([out]) != 0:
                code = code or 1
        except Exception as e:      # the rows are measured and recorded: a report bug must not hide that
            print(f"error: the comparison failed ({type(e).__name__}: {e}); the study's records are complete: "
                  f"rerun python -m experiments.compare {out}", file=sys.stderr)
            code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
