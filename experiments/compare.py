"""Comparison tables and charts of a study folder (what experiments.study writes).

    python -m experiments.compare DIR                    # writes DIR/compare/
    python -m experiments.compare DIR --out OUTDIR --no-charts

Reads DIR/study.json, DIR/study.csv, each training row's run folder (summary.json,
epochs.csv, steps.csv, resources.csv) and DIR/sweeps/. Any of them may be missing or partial
(failed or skipped rows, --no-sweeps, a study still running): what is absent is left empty
and said, never guessed. Rows found under DIR/runs/ but not yet in study.csv are listed with
status `unrecorded`.

Writes, under OUTDIR (default DIR/compare):

main.csv / main.md, one line per training row, ordered by model, execution (1-core,
multi-core, gpu) and implementation (scratch, torch). Columns:

    row                       the study's row id, e.g. cnn/1-core/scratch
    model, execution, impl    cnn | resnet18; 1-core | multi-core | gpu; scratch | torch
    backend_or_device         numpy | numba | cupy (scratch), cpu | cuda (torch)
    threads                   threads the row ran with (empty on GPU rows)
    precision, batch_size, dataset   from the run's summary.json (config.json as fallback)
    status                    ok | failed | skipped | interrupted | diverged (study.csv), or
                              unrecorded (a run folder study.csv does not list yet)
    reason                    why a row is not ok (study.csv), or what is missing from its folder
    images_per_s              steady-state training images/s (warm-up excluded)
    speedup_vs_1core_scratch  images_per_s / the same model's 1-core scratch row's images_per_s
    scratch_over_torch        scratch images_per_s / torch images_per_s of the same model and
                              execution; written on BOTH rows of the pair (same value), so a
                              filter on either implementation keeps the comparison
    epoch_time_s              mean training time of the full epochs in epochs.csv (evaluation
                              excluded, warm-up included); with no full epoch (a time budget
                              stopped the row first) n_train / images_per_s
    epoch_time_estimated      true when epoch_time_s is that estimate
    peak_rss_mb, mean_cpu_percent (100 = one core), peak_gpu_mem_mb, mean_gpu_util_percent
    energy_per_image_j        GPU energy (NVML) / steady-state training images
    final_train_acc, final_test_acc   fractions in [0, 1] (the Markdown shows %)
    tta_50_s, tta_80_s, tta_85_s, tta_90_s   training seconds until test accuracy first reached
                              50/80/85/90 %; empty when not reached
    epochs                    epochs trained, fractional when a row stopped mid-epoch
    stopped_by                epochs | time_budget | max_steps
    train_time_s              training seconds (warm-up included, evaluation excluded)
    run_dir                   the run folder, relative to DIR

sweeps_threads.csv: every DIR/sweeps/threads/*.csv (experiments.scaling) in one table, with the
file it came from. sweeps_batch.csv: DIR/sweeps/batch_cpu.csv and batch_gpu.csv
(experiments.bench) in one table, `where` = cpu | gpu; a repeated measurement (a resumed study)
keeps its last line.

Charts (PNG, beside the tables; see experiments.study_charts): throughput, speedup,
accuracy_vs_time, loss_curves, memory_over_time, thread_scaling, batch_scaling and summary (one
page: machine, compact table and conclusions computed from these tables). A chart with no data
is skipped with a note.
"""
import argparse
import csv
import glob
import json
import math
import os
import sys

MAIN_COLUMNS = ["row", "model", "execution", "impl", "backend_or_device", "threads", "precision", "batch_size",
                "dataset", "status", "reason", "images_per_s", "speedup_vs_1core_scratch", "scratch_over_torch",
                "epoch_time_s", "epoch_time_estimated", "peak_rss_mb", "mean_cpu_percent", "peak_gpu_mem_mb",
                "mean_gpu_util_percent", "energy_per_image_j", "final_train_acc", "final_test_acc",
                "tta_50_s", "tta_80_s", "tta_85_s", "tta_90_s", "epochs", "stopped_by", "train_time_s", "run_dir"]
THREADS_COLUMNS = ["model", "impl", "threads", "images_per_s", "images_per_s_min", "images_per_s_max", "speedup",
                   "efficiency", "batch_size", "cpu", "cores", "date", "source"]
BATCH_COLUMNS = ["where", "model", "batch_size", "scratch_backend", "threads", "precision", "scratch_images_per_s",
                 "torch_images_per_s", "ratio", "scratch_peak_gpu_mem_mb", "torch_peak_gpu_mem_mb", "hardware",
                 "date"]

MODEL_ORDER = ("cnn", "resnet18")
EXECUTION_ORDER = ("1-core", "multi-core", "gpu")
IMPL_ORDER = ("scratch", "torch")
TTA_KEYS = ("50", "80", "85", "90")
EXECUTIONS = set(EXECUTION_ORDER)
PAR = 0.03   # scratch/torch throughput ratios within 3% of 1 are called "on par"


class StudyError(Exception):
    pass


# ---------------------------------------------------------------------------- reading
def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _read_csv(path):
    """A DataFrame, or None where the file is missing, empty or unreadable (a study still
    writing it)."""
    import pandas as pd

    if not os.path.isfile(path):
        return None
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    return df if len(df.columns) else None


def _read_lines(path):
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def _num(v):
    """float, or None for what is empty or not a finite number."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(v):
    f = _num(v)
    return int(f) if f is not None and f == int(f) else None


def _slug(row_id):
    return row_id.replace("/", "_")


def _row_from_slug(slug):
    """cnn_multi-core_torch -> (cnn, multi-core, torch); None when the folder name is not a row's."""
    parts = slug.split("_")
    if len(parts) != 3 or parts[1] not in EXECUTIONS:
        return None
    return tuple(parts)


def _newest_run(root):
    if not os.path.isdir(root):
        return None
    dirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    return os.path.join(root, dirs[-1]) if dirs else None


class Run:
    """One training row: its study.csv line and whatever its run folder holds."""

    def __init__(self, line, study_dir):
        self.line = line
        self.row = line["row"]
        rd = line.get("run_dir") or ""
        self.dir = os.path.join(study_dir, rd) if rd else _newest_run(os.path.join(study_dir, "runs",
                                                                                    _slug(self.row)))
        d = self.dir
        self.summary = _read_json(os.path.join(d, "summary.json")) if d else None
        self.config = _read_json(os.path.join(d, "config.json")) if d else None
        self.epochs = _read_csv(os.path.join(d, "epochs.csv")) if d else None
        self.steps = _read_csv(os.path.join(d, "steps.csv")) if d else None
        self.resources = _read_csv(os.path.join(d, "resources.csv")) if d else None

    def get(self, key):
        """A figure from summary.json, else config.json, else the study.csv line."""
        for src in (self.summary, self.config, self.line):
            if src and src.get(key) not in (None, ""):
                return src[key]
        return None


class Study:
    def __init__(self, path):
        self.dir = path
        self.header = _read_json(os.path.join(path, "study.json")) or {}
        self.lines = _read_lines(os.path.join(path, "study.csv"))
        train = [ln for ln in self.lines if (ln.get("kind") or "train") == "train"]
        known = {ln["row"] for ln in train}
        train += self._unrecorded(known)
        self.runs = [Run(ln, path) for ln in train]
        self.threads = threads_table(path)
        self.batch = batch_table(path)

    def _unrecorded(self, known):
        """Run folders of rows study.csv does not list yet: the row still running, or the
        study stopped before writing its line."""
        out = []
        for root in sorted(glob.glob(os.path.join(self.dir, "runs", "*"))):
            parsed = _row_from_slug(os.path.basename(root))
            if not parsed or "/".join(parsed) in known:
                continue
            model, execution, impl = parsed
            done = os.path.exists(os.path.join(_newest_run(root) or root, "summary.json"))
            out.append(dict(row="/".join(parsed), kind="train", model=model, execution=execution, impl=impl,
                            status="unrecorded",
                            reason="not in study.csv: " + ("the study stopped before recording it" if done
                                                           else "still running, or stopped before its summary")))
        return out

    @property
    def settings(self):
        return self.header.get("settings") or {}

    @property
    def machine(self):
        return self.header.get("machine") or {}

    @property
    def versions(self):
        return self.header.get("versions") or {}


def load_study(path):
    if not os.path.exists(path):
        raise StudyError(f"{path} does not exist")
    if not os.path.isdir(path):
        raise StudyError(f"{path} is not a folder")
    if not os.path.exists(os.path.join(path, "study.csv")) and not os.path.isdir(os.path.join(path, "runs")):
        raise StudyError(f"{path} holds no study (no study.csv and no runs/): run python -m experiments.study "
                         f"--out {path} first")
    return Study(path)


# ---------------------------------------------------------------------------- main table
def _full_epochs(epochs, n_train, batch_size, stopped_early):
    """(the epochs.csv rows of complete epochs, epochs trained as a fraction). A budget-stopped
    or interrupted epoch trained fewer than n_train images (a dropped last batch aside); where
    images per epoch cannot be told, only the last epoch of a row stopped early is partial."""
    if epochs is None or "epoch_time_s" not in epochs:
        return None, None
    ep = epochs[epochs["epoch_time_s"].notna()]
    if n_train and batch_size and "train_images_per_s" in ep:
        images = ep["epoch_time_s"] * ep["train_images_per_s"]
        full = images >= n_train - batch_size + 0.5
        fraction = float((images / n_train).clip(upper=1.0).fillna(0.0).sum())
    else:
        full = ep["epoch_time_s"] > 0
        if stopped_early and len(ep):
            full.iloc[-1] = False
        fraction = float(full.sum())
    return ep[full], round(fraction, 2)


def _tta(summary, key):
    hit = (summary.get("time_to_accuracy") or {}).get(key)
    if isinstance(hit, dict) and hit.get("train_time_s") is not None:
        return _num(hit["train_time_s"])
    return _num(summary.get(f"tta_{key}_s"))


def _record(run, study_dir):
    s = run.summary or {}
    ln = run.line
    rec = dict.fromkeys(MAIN_COLUMNS)
    rec.update(row=run.row, model=ln.get("model") or s.get("model"), execution=ln.get("execution"),
               impl=ln.get("impl") or s.get("impl"), backend_or_device=run.get("backend_or_device"),
               threads=_int(run.get("threads")), precision=run.get("precision"),
               batch_size=_int(run.get("batch_size")), dataset=s.get("dataset") or run.get("dataset"),
               status=ln.get("status") or ("ok" if s.get("status") == "completed" else s.get("status")),
               reason=ln.get("reason") or "")
    if run.dir and not run.summary and rec["status"] not in ("skipped",):
        rec["reason"] = "; ".join(x for x in (rec["reason"], "no summary.json in its run folder") if x)
    for k in ("images_per_s", "peak_rss_mb", "mean_cpu_percent", "peak_gpu_mem_mb", "mean_gpu_util_percent",
              "energy_per_image_j", "final_train_acc", "final_test_acc", "train_time_s"):
        rec[k] = _num(s.get(k))
    for key in TTA_KEYS:
        rec[f"tta_{key}_s"] = _tta(s, key)
    rec["stopped_by"] = s.get("stopped_by")
    n_train, bs = _int(s.get("n_train")), rec["batch_size"]
    stopped_early = rec["stopped_by"] == "time_budget" or rec["status"] == "interrupted"
    full, fraction = _full_epochs(run.epochs, n_train, bs, stopped_early)
    rec["epochs"] = fraction if fraction is not None else _num(s.get("epochs"))
    if full is not None and len(full):
        rec["epoch_time_s"], rec["epoch_time_estimated"] = float(full["epoch_time_s"].mean()), False
    elif n_train and rec["images_per_s"]:
        rec["epoch_time_s"], rec["epoch_time_estimated"] = n_train / rec["images_per_s"], True
    if run.dir:
        rec["run_dir"] = os.path.relpath(run.dir, study_dir)
    return rec


def _order(values, preferred):
    return {v: i for i, v in enumerate(list(preferred) + sorted(set(values) - set(preferred), key=str))}


def _add_ratios(recs):
    ips = {(r["model"], r["execution"], r["impl"]): r["images_per_s"] for r in recs}
    for r in recs:
        base = ips.get((r["model"], "1-core", "scratch"))
        if base and r["images_per_s"]:
            r["speedup_vs_1core_scratch"] = r["images_per_s"] / base
        s, t = ips.get((r["model"], r["execution"], "scratch")), ips.get((r["model"], r["execution"], "torch"))
        if s and t and r["impl"] in IMPL_ORDER:
            r["scratch_over_torch"] = s / t


def main_table(study):
    """The main table as a list of dicts with MAIN_COLUMNS keys, in the documented order."""
    recs = [_record(run, study.dir) for run in study.runs]
    _add_ratios(recs)
    om = _order([r["model"] for r in recs], MODEL_ORDER)
    oe = _order([r["execution"] for r in recs], EXECUTION_ORDER)
    oi = _order([r["impl"] for r in recs], IMPL_ORDER)
    return sorted(recs, key=lambda r: (om[r["model"]], oe[r["execution"]], oi[r["impl"]]))


# ---------------------------------------------------------------------------- sweeps
def threads_table(study_dir):
    import pandas as pd

    frames = []
    for path in sorted(glob.glob(os.path.join(study_dir, "sweeps", "threads", "*.csv"))):
        df = _read_csv(path)
        if df is not None and len(df) and {"impl", "threads", "images_per_s"} <= set(df.columns):
            frames.append(df.assign(source=os.path.relpath(path, study_dir)))
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True).reindex(columns=THREADS_COLUMNS)
    return df.sort_values(["model", "impl", "threads"], kind="stable", ignore_index=True)


def batch_table(study_dir):
    import pandas as pd

    frames = []
    for where in ("cpu", "gpu"):
        df = _read_csv(os.path.join(study_dir, "sweeps", f"batch_{where}.csv"))
        if df is None or not len(df) or "batch_size" not in df:
            continue
        df = df.assign(where=where)
        if where == "cpu":
            df = df.rename(columns={"cpu": "hardware"}).assign(precision="fp32")
        else:  # bench writes no backend or thread column for the GPU: cupy, on the device
            df = df.rename(columns={"gpu": "hardware"}).assign(scratch_backend="cupy", threads=float("nan"))
        frames.append(df.reindex(columns=BATCH_COLUMNS))
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    key = ["where", "model", "batch_size", "scratch_backend", "threads", "precision"]
    df = df.drop_duplicates(subset=key, keep="last")
    return df.sort_values(["where", "model", "batch_size"], kind="stable", ignore_index=True)


# ---------------------------------------------------------------------------- conclusions
def _x(v):
    return f"{v:,.0f}x" if v >= 100 else f"{v:.1f}x" if v >= 10 else f"{v:.2f}x"


def _ips(v):
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _c_scratch_speedup(main):
    """How far the hand-written layers go from one core: each scratch row against its model's
    1-core scratch row."""
    parts = []
    for model in _models(main):
        rows = [r for r in main if r["model"] == model and r["impl"] == "scratch" and r["execution"] != "1-core"
                and r["speedup_vs_1core_scratch"]]
        if rows:
            parts.append(f"{model} " + ", ".join(f"{r['execution']} ({r['backend_or_device']}) "
                                                 f"{_x(r['speedup_vs_1core_scratch'])} at {_ips(r['images_per_s'])} "
                                                 f"images/s" for r in rows))
    return [f"Scratch against its own 1-core row: {'; '.join(parts)}."] if parts else []


def _c_scratch_vs_torch(main):
    """Per model: which implementation is faster on each execution, and by how much."""
    out = []
    for model in _models(main):
        pairs = [r for r in main if r["model"] == model and r["impl"] == "scratch" and r["scratch_over_torch"]]
        if not pairs:
            continue
        parts = []
        for r in pairs:
            q = r["scratch_over_torch"]
            if abs(q - 1) < PAR:   # inside the run-to-run noise of a shared machine
                who = f"scratch ({r['backend_or_device']}) and torch on par ({_x(q)})"
            elif q > 1:
                who = f"scratch ({r['backend_or_device']}) is {_x(q)} as fast as torch"
            else:
                who = f"torch is {_x(1 / q)} as fast as scratch ({r['backend_or_device']})"
            parts.append(f"{r['execution']}: {who}")
        q = [r["scratch_over_torch"] for r in pairs]
        wins, losses = sum(v >= 1 + PAR for v in q), sum(v <= 1 - PAR for v in q)
        lead = ("scratch is faster than torch on every execution measured" if wins == len(q) else
                "torch is faster than scratch on every execution measured" if losses == len(q) else
                f"of {len(q)} executions, " + ", ".join(
                    f"{who} on {n}" for who, n in (("scratch is faster", wins), ("torch is faster", losses),
                                                   ("they are on par", len(q) - wins - losses)) if n))
        out.append(f"{model}: {lead} ({'; '.join(parts)}).")
    return out


def _c_accuracy_gap(main):
    """Test-accuracy gap over scratch/torch pairs that trained the same number of epochs."""
    gaps, unequal = [], 0
    by = {(r["model"], r["execution"], r["impl"]): r for r in main}
    for (model, execution, impl), s in by.items():
        t = by.get((model, execution, "torch"))
        if impl != "scratch" or not t or s["final_test_acc"] is None or t["final_test_acc"] is None:
            continue
        if s["epochs"] is None or t["epochs"] is None or abs(s["epochs"] - t["epochs"]) > 1e-6:
            unequal += 1
            continue
        gaps.append((100 * (s["final_test_acc"] - t["final_test_acc"]), f"{model} {execution}", s, t))
    if not gaps:
        return []
    worst = max(gaps, key=lambda g: abs(g[0]))
    n = len(gaps)
    text = (f"Test accuracy, scratch minus torch after the same training ({n} pair{'s' * (n > 1)}): "
            f"largest gap {worst[0]:+.1f} points ({worst[1]}: {100 * worst[2]['final_test_acc']:.1f}% vs "
            f"{100 * worst[3]['final_test_acc']:.1f}%)")
    if n > 1:
        text += f", mean {sum(g[0] for g in gaps) / n:+.1f} points"
    if unequal:
        text += f"; {unequal} pair(s) left out: a time budget stopped them at different points"
    return [text + "."]


def _c_time_to_accuracy(main):
    """The fastest row to the highest threshold any row reached, or the best accuracy if none."""
    for key in reversed(TTA_KEYS):
        hits = [r for r in main if r[f"tta_{key}_s"] is not None]
        if hits:
            best = min(hits, key=lambda r: r[f"tta_{key}_s"])
            others = sorted(hits, key=lambda r: r[f"tta_{key}_s"])[1:3]
            more = "; then " + ", ".join(f"{o['row']} {_secs(o[f'tta_{key}_s'])} s" for o in others) if others else ""
            return [f"Fastest to {key}% test accuracy: {best['row']} in {_secs(best[f'tta_{key}_s'])} s of training "
                    f"({len(hits)} row(s) got there{more})."]
    accs = [r for r in main if r["final_test_acc"] is not None]
    if not accs:
        return []
    best = max(accs, key=lambda r: r["final_test_acc"])
    return [f"No row reached {TTA_KEYS[0]}% test accuracy; the best is {best['row']} at "
            f"{100 * best['final_test_acc']:.1f}% after {best['epochs']:g} epoch(s)."]


def _c_memory(main):
    out = []
    for col, what in (("peak_rss_mb", "Peak RAM (RSS)"), ("peak_gpu_mem_mb", "Peak GPU memory")):
        rows = [r for r in main if r[col] is not None]
        if len(rows) < 2:
            continue
        lo, hi = min(rows, key=lambda r: r[col]), max(rows, key=lambda r: r[col])
        out.append(f"{what} ranges from {lo[col]:,.0f} MB ({lo['row']}) to {hi[col]:,.0f} MB ({hi['row']}).")
    return out


def _c_threads(threads):
    if threads is None or not len(threads):
        return []
    parts = []
    for (model, impl), g in threads.groupby(["model", "impl"], sort=True):
        g = g.sort_values("threads")
        if len(g) < 2:
            continue
        top = g.iloc[-1]
        speed = top["images_per_s"] / g.iloc[0]["images_per_s"]
        parts.append(f"{model} {impl} {speed:.2f}x on {int(top['threads'])} threads vs {int(g.iloc[0]['threads'])} "
                     f"({speed / (top['threads'] / g.iloc[0]['threads']):.0%} efficiency)")
    return ["Thread scaling: " + "; ".join(parts) + "."] if parts else []


def _models(main):
    seen = []
    for r in main:
        if r["model"] not in seen:
            seen.append(r["model"])
    return seen


def conclusions(main, threads=None, limit=6):
    """Sentences computed from the tables; one whose inputs are missing is left out."""
    out = (_c_scratch_speedup(main) + _c_scratch_vs_torch(main) + _c_accuracy_gap(main) + _c_time_to_accuracy(main)
           + _c_threads(threads) + _c_memory(main))
    return out[:limit]


# ---------------------------------------------------------------------------- consistency
def _sweep_points(threads, batch):
    """(model, impl, backend, batch_size, threads or None, images/s, where) of every sweep
    measurement, in the training rows' terms."""
    pts = []
    if threads is not None:
        for r in _records(threads):
            impl, _, backend = str(r["impl"]).partition("-")
            pts.append((r["model"], impl, backend, r["batch_size"], r["threads"], r["images_per_s"],
                        "sweeps_threads.csv"))
    if batch is not None:
        for r in _records(batch):
            torch_backend = "cpu" if r["where"] == "cpu" else "cuda"
            for impl, backend in (("scratch", r["scratch_backend"]), ("torch", torch_backend)):
                pts.append((r["model"], impl, backend, r["batch_size"], r["threads"], r[f"{impl}_images_per_s"],
                            f"sweeps_batch.csv ({r['where']})"))
    return [p for p in pts if _num(p[5]) and _num(p[3])]


def consistency_notes(main, threads=None, batch=None, factor=2.0):
    """Sweep measurements more than `factor`x away from the training row of the same model,
    implementation, backend, batch size and threads: one of the two was disturbed (another
    load on the machine, threads oversubscribed in the sweep's process) and needs a rerun."""
    notes = []
    for r in main:
        if not r["images_per_s"] or not r["batch_size"]:
            continue
        for model, impl, backend, bs, t, ips, src in _sweep_points(threads, batch):
            same_t = (r["threads"] is None and _num(t) is None) or (_num(t) is not None and r["threads"] == int(t))
            if (model, impl, backend) != (r["model"], r["impl"], r["backend_or_device"]) or int(bs) != r["batch_size"] \
                    or not same_t:
                continue
            q = ips / r["images_per_s"]
            if q > factor or q < 1 / factor:
                notes.append(f"{src}: {model} {impl} ({backend}), batch {int(bs)}"
                             + (f", {int(t)} thread(s)" if _num(t) is not None else "")
                             + f": {_ips(ips)} images/s, {_x(max(q, 1 / q))} "
                             + ("above" if q > 1 else "below") + f" the training row {r['row']} "
                             f"({_ips(r['images_per_s'])} images/s)")
    return notes


# ---------------------------------------------------------------------------- formatting
def _fmt_csv(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def write_csv(path, recs, columns):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in recs:
            w.writerow({k: _fmt_csv(r.get(k)) for k in columns})


def _secs(v):
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


# Markdown columns: (header, key, formatter, optional: dropped when empty in every row)
_MD = [
    ("row", "row", str, False),
    ("status", "status", str, False),
    ("backend", "backend_or_device", str, False),
    ("threads", "threads", lambda v: f"{v:d}", False),
    ("img/s", "images_per_s", _ips, False),
    ("vs 1-core scratch", "speedup_vs_1core_scratch", _x, False),
    ("scratch/torch", "scratch_over_torch", _x, False),
    ("s/epoch", "epoch_time_s", _secs, False),
    ("peak RAM MB", "peak_rss_mb", lambda v: f"{v:,.0f}", False),
    ("CPU %", "mean_cpu_percent", lambda v: f"{v:.0f}", False),
    ("peak GPU MB", "peak_gpu_mem_mb", lambda v: f"{v:,.0f}", True),
    ("GPU util %", "mean_gpu_util_percent", lambda v: f"{v:.0f}", True),
    ("J/image", "energy_per_image_j", lambda v: f"{v:.3g}", True),
    ("train acc", "final_train_acc", lambda v: f"{100 * v:.1f}%", False),
    ("test acc", "final_test_acc", lambda v: f"{100 * v:.1f}%", False),
    ("s to 50%", "tta_50_s", _secs, True),
    ("s to 80%", "tta_80_s", _secs, True),
    ("s to 85%", "tta_85_s", _secs, True),
    ("s to 90%", "tta_90_s", _secs, True),
    ("epochs", "epochs", lambda v: f"{v:g}", False),
    ("stopped by", "stopped_by", str, False),
]


def _cell(r, key, fmt):
    v = r.get(key)
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return "-"
    s = fmt(v)
    if key == "epoch_time_s" and r.get("epoch_time_estimated"):
        s += "*"
    return s.replace("|", "\\|")


_TEXT_KEYS = {"row", "status", "backend_or_device", "stopped_by", "model", "impl", "where", "scratch_backend"}


def md_table(recs, spec):
    cols = [(h, k, f) for h, k, f, optional in spec
            if not optional or any(r.get(k) is not None for r in recs)]
    lines = ["| " + " | ".join(h for h, _, _ in cols) + " |",
             "|" + "|".join("---" if k in _TEXT_KEYS else "---:" for _, k, _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(r, k, f) for _, k, f in cols) + " |" for r in recs]
    return "\n".join(lines)


def machine_line(study, main=None):
    m, v = study.machine, study.versions
    cores = m.get("usable_cores") or m.get("logical_cores")
    gpu = m.get("gpu_name") or next((r.get("gpu") for r in (run.summary or {} for run in study.runs)
                                     if r.get("gpu")), None)
    gpu_text = "none" if not gpu else gpu + (f" ({m['gpu_memory_mb'] / 1024:.0f} GiB)" if m.get("gpu_memory_mb")
                                             else "")
    parts = [f"CPU {m.get('cpu_model') or 'unknown'}" + (f", {cores} cores" if cores else "")
             + (f", {m['ram_gb']:g} GiB RAM" if m.get("ram_gb") else ""), f"GPU {gpu_text}"]
    soft = ", ".join(f"{k} {v[k]}" for k in ("python", "numpy", "numba", "torch", "cupy") if v.get(k))
    return "; ".join(parts), soft


def settings_line(study, main):
    st = study.settings
    n_train = next((run.summary.get("n_train") for run in study.runs if run.summary), None)
    n_test = next((run.summary.get("n_test") for run in study.runs if run.summary), None)
    bits = []
    if st.get("recipe"):
        bits.append(f"recipe {st['recipe']}" + (f", {st['epochs']} epoch(s)" if st.get("epochs") else ""))
    if st.get("dataset"):
        sizes = f" ({n_train:,} train / {n_test:,} test images)" if n_train and n_test else ""
        bits.append(f"data {st['dataset']}{sizes}")
    for key, what in (("cpu_budget_s", "CPU"), ("gpu_budget_s", "GPU")):
        if key in st:
            bits.append(f"{what} time budget " + (f"{st[key]:g} s" if st[key] else "none"))
    if st.get("threads"):
        bits.append(f"multi-core = {st['threads']} threads")
    if st.get("precision"):
        bits.append(f"GPU precision {st['precision']}")
    return ", ".join(bits)


def markdown(study, main, concl):
    st, h = study.settings, study.header
    hw, soft = machine_line(study)
    out = [f"# Study comparison: preset `{st.get('preset', '?')}`", "",
           f"- Machine: {hw}", f"- Software: {soft}" + (f"; commit {h['git_commit']}" if h.get("git_commit") else ""),
           f"- Settings: {settings_line(study, main)}"]
    if h.get("started"):
        out.append(f"- Started {h['started']}" + (f", finished {h['finished']}" if h.get("finished")
                                                  else " (not finished: a study still running or stopped)"))
    out += ["", "## Training rows", ""]
    out.append(md_table(main, _MD) if main else "No training row in this study.")
    notes = []
    if any(r["epoch_time_estimated"] for r in main):
        notes.append("\\* s/epoch estimated as training images / images/s: no full epoch ran before the time "
                     "budget stopped the row.")
    budget = [r["row"] for r in main if r["stopped_by"] == "time_budget"]
    if budget:
        notes.append(f"Stopped by the time budget (throughput is steady state; accuracy is at the budget): "
                     f"{', '.join(budget)}.")
    if notes:
        out += [""] + notes
    bad = [ln for ln in study.lines if ln.get("status") not in ("ok", None, "")]
    bad += [{"row": r["row"], "status": r["status"], "reason": r["reason"]} for r in main
            if r["status"] == "unrecorded" or (r["status"] == "ok" and r["reason"])]
    if bad:
        out += ["", "### Rows not ok", ""]
        out += [f"- `{ln['row']}`: {ln['status']}" + (f": {ln['reason']}" if ln.get("reason") else "") for ln in bad]
    if concl:
        out += ["", "## Conclusions (computed from the tables)", ""] + [f"- {c}" for c in concl]
    checks = consistency_notes(main, study.threads, study.batch)
    if checks:
        out += ["", "### Sweeps that disagree with the training rows", "",
                "More than 2x apart at the same model, backend, batch size and threads: one of the two was "
                "disturbed; rerun before trusting either.", ""]
        out += [f"- {c}" for c in checks]
    if study.threads is not None:
        out += ["", "## Thread scaling (sweeps_threads.csv)", "", _threads_md(study.threads)]
    if study.batch is not None:
        out += ["", "## Batch-size scaling (sweeps_batch.csv)", "", _batch_md(study.batch)]
    return "\n".join(out) + "\n"


def _records(df):
    import pandas as pd

    return [{k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in r.items()}
            for r in df.to_dict("records")]


def _threads_md(df):
    spec = [("model", "model", str, False), ("impl", "impl", str, False), ("threads", "threads", lambda v: f"{v:g}",
                                                                           False),
            ("img/s", "images_per_s", _ips, False), ("speed-up", "speedup", _x, False),
            ("efficiency", "efficiency", lambda v: f"{v:.0%}", False)]
    return md_table(_records(df), spec)


def _batch_md(df):
    spec = [("where", "where", str, False), ("model", "model", str, False),
            ("batch", "batch_size", lambda v: f"{v:g}", False), ("scratch", "scratch_backend", str, False),
            ("scratch img/s", "scratch_images_per_s", _ips, False), ("torch img/s", "torch_images_per_s", _ips, False),
            ("scratch/torch", "ratio", _x, False)]
    return md_table(_records(df), spec)


# ---------------------------------------------------------------------------- main
def build_parser():
    ap = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="a study folder (python -m experiments.study --out DIR)")
    ap.add_argument("--out", default=None, help="output folder (default DIR/compare)")
    ap.add_argument("--no-charts", action="store_true", help="write the tables only")
    return ap


def write_all(study, out, charts=True, log=print):
    """Write the tables (and charts); returns the paths written."""
    os.makedirs(out, exist_ok=True)
    main = main_table(study)
    concl = conclusions(main, study.threads)
    written = []

    def path(name):
        written.append(os.path.join(out, name))
        return written[-1]

    write_csv(path("main.csv"), main, MAIN_COLUMNS)
    md = markdown(study, main, concl)
    with open(path("main.md"), "w") as f:
        f.write(md)
    if study.threads is not None:
        write_csv(path("sweeps_threads.csv"), _records(study.threads), THREADS_COLUMNS)
    if study.batch is not None:
        write_csv(path("sweeps_batch.csv"), _records(study.batch), BATCH_COLUMNS)
    if charts:
        from . import study_charts

        written += study_charts.draw_all(study, main, concl, out, log=log)
    return md, written


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    try:
        study = load_study(a.dir)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = a.out or os.path.join(a.dir, "compare")
    try:
        md, written = write_all(study, out, charts=not a.no_charts)
    except OSError as e:
        print(f"error: cannot write {out}: {e}", file=sys.stderr)
        return 2
    print(md)
    print("wrote:")
    for p in written:
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
