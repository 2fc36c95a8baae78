"""The study's tables and their Markdown: the main table (one line per training row, with
speed-ups and scratch/torch ratios), conclusions computed from it, and checks of the sweeps
against the rows. The columns are documented in experiments/compare.py."""
import csv
import math
import os

from .study_load import EXECUTION_ORDER, IMPL_ORDER, MODEL_ORDER, TTA_KEYS, int_or_none, num

MAIN_COLUMNS = ["row", "model", "execution", "impl", "backend_or_device", "threads", "precision", "batch_size",
                "dataset", "status", "reason", "images_per_s", "speedup_vs_1core_scratch", "scratch_over_torch",
                "epoch_time_s", "epoch_time_estimated", "peak_rss_mb", "mean_cpu_percent", "peak_gpu_mem_mb",
                "mean_gpu_util_percent", "energy_per_image_j", "final_train_acc", "final_test_acc",
                "tta_50_s", "tta_80_s", "tta_85_s", "tta_90_s", "epochs", "stopped_by", "train_time_s", "run_dir"]

PAR = 0.03   # scratch/torch throughput ratios within 3% of 1 are called "on par"


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
        return num(hit["train_time_s"])
    return num(summary.get(f"tta_{key}_s"))


def _record(run, study_dir):
    s = run.summary or {}
    ln = run.line
    rec = dict.fromkeys(MAIN_COLUMNS)
    rec.update(row=run.row, model=ln.get("model") or s.get("model"), execution=ln.get("execution"),
               impl=ln.get("impl") or s.get("impl"), backend_or_device=run.get("backend_or_device"),
               threads=int_or_none(run.get("threads")), precision=run.get("precision"),
               batch_size=int_or_none(run.get("batch_size")), dataset=s.get("dataset") or run.get("dataset"),
               status=ln.get("status") or ("ok" if s.get("status") == "completed" else s.get("status")),
               reason=ln.get("reason") or "")
    if run.dir and not run.summary and rec["status"] not in ("skipped",):
        rec["reason"] = "; ".join(x for x in (rec["reason"], "no summary.json in its run folder") if x)
    for k in ("images_per_s", "peak_rss_mb", "mean_cpu_percent", "peak_gpu_mem_mb", "mean_gpu_util_percent",
              "energy_per_image_j", "final_train_acc", "final_test_acc", "train_time_s"):
        rec[k] = num(s.get(k))
    for key in TTA_KEYS:
        rec[f"tta_{key}_s"] = _tta(s, key)
    rec["stopped_by"] = s.get("stopped_by")
    n_train, bs = int_or_none(s.get("n_train")), rec["batch_size"]
    stopped_early = rec["stopped_by"] == "time_budget" or rec["status"] == "interrupted"
    full, fraction = _full_epochs(run.epochs, n_train, bs, stopped_early)
    rec["epochs"] = fraction if fraction is not None else num(s.get("epochs"))
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


# ---------------------------------------------------------------------------- conclusions
def fmt_x(v):
    return f"{v:,.0f}x" if v >= 100 else f"{v:.1f}x" if v >= 10 else f"{v:.2f}x"


def fmt_ips(v):
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _c_scratch_speedup(main):
    """How far the hand-written layers go from one core: each scratch row against its model's
    1-core scratch row."""
    parts = []
    for model in models_of(main):
        rows = [r for r in main if r["model"] == model and r["impl"] == "scratch" and r["execution"] != "1-core"
                and r["speedup_vs_1core_scratch"]]
        if rows:
            parts.append(f"{model} " + ", ".join(f"{r['execution']} ({r['backend_or_device']}) "
                                                 f"{fmt_x(r['speedup_vs_1core_scratch'])} at {fmt_ips(r['images_per_s'])} "
                                                 f"images/s" for r in rows))
    return [f"Scratch against its own 1-core row: {'; '.join(parts)}."] if parts else []


def _c_scratch_vs_torch(main):
    """Per model: which implementation is faster on each execution, and by how much."""
    out = []
    for model in models_of(main):
        pairs = [r for r in main if r["model"] == model and r["impl"] == "scratch" and r["scratch_over_torch"]]
        if not pairs:
            continue
        parts = []
        for r in pairs:
            q = r["scratch_over_torch"]
            if abs(q - 1) < PAR:   # inside the run-to-run noise of a shared machine
                who = f"scratch ({r['backend_or_device']}) and torch on par ({fmt_x(q)})"
            elif q > 1:
                who = f"scratch ({r['backend_or_device']}) is {fmt_x(q)} as fast as torch"
            else:
                who = f"torch is {fmt_x(1 / q)} as fast as scratch ({r['backend_or_device']})"
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
            more = "; then " + ", ".join(f"{o['row']} {fmt_secs(o[f'tta_{key}_s'])} s" for o in others) if others else ""
            return [f"Fastest to {key}% test accuracy: {best['row']} in {fmt_secs(best[f'tta_{key}_s'])} s of training "
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


def models_of(main):
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
        for r in df_records(threads):
            impl, _, backend = str(r["impl"]).partition("-")
            pts.append((r["model"], impl, backend, r["batch_size"], r["threads"], r["images_per_s"],
                        "sweeps_threads.csv"))
    if batch is not None:
        for r in df_records(batch):
            torch_backend = "cpu" if r["where"] == "cpu" else "cuda"
            for impl, backend in (("scratch", r["scratch_backend"]), ("torch", torch_backend)):
                pts.append((r["model"], impl, backend, r["batch_size"], r["threads"], r[f"{impl}_images_per_s"],
                            f"sweeps_batch.csv ({r['where']})"))
    return [p for p in pts if num(p[5]) and num(p[3])]


def consistency_notes(main, threads=None, batch=None, factor=2.0):
    """Sweep measurements more than `factor`x away from the training row of the same model,
    implementation, backend, batch size and threads: one of the two was disturbed (another
    load on the machine, threads oversubscribed in the sweep's process) and needs a rerun."""
    notes = []
    for r in main:
        if not r["images_per_s"] or not r["batch_size"]:
            continue
        for model, impl, backend, bs, t, ips, src in _sweep_points(threads, batch):
            same_t = (r["threads"] is None and num(t) is None) or (num(t) is not None and r["threads"] == int(t))
            if (model, impl, backend) != (r["model"], r["impl"], r["backend_or_device"]) or int(bs) != r["batch_size"] \
                    or not same_t:
                continue
            q = ips / r["images_per_s"]
            if q > factor or q < 1 / factor:
                notes.append(f"{src}: {model} {impl} ({backend}), batch {int(bs)}"
                             + (f", {int(t)} thread(s)" if num(t) is not None else "")
                             + f": {fmt_ips(ips)} images/s, {fmt_x(max(q, 1 / q))} "
                             + ("above" if q > 1 else "below") + f" the training row {r['row']} "
                             f"({fmt_ips(r['images_per_s'])} images/s)")
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


def fmt_secs(v):
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


# Markdown columns: (header, key, formatter, optional: dropped when empty in every row)
_MD = [
    ("row", "row", str, False),
    ("status", "status", str, False),
    ("backend", "backend_or_device", str, False),
    ("threads", "threads", lambda v: f"{v:d}", False),
    ("img/s", "images_per_s", fmt_ips, False),
    ("vs 1-core scratch", "speedup_vs_1core_scratch", fmt_x, False),
    ("scratch/torch", "scratch_over_torch", fmt_x, False),
    ("s/epoch", "epoch_time_s", fmt_secs, False),
    ("peak RAM MB", "peak_rss_mb", lambda v: f"{v:,.0f}", False),
    ("CPU %", "mean_cpu_percent", lambda v: f"{v:.0f}", False),
    ("peak GPU MB", "peak_gpu_mem_mb", lambda v: f"{v:,.0f}", True),
    ("GPU util %", "mean_gpu_util_percent", lambda v: f"{v:.0f}", True),
    ("J/image", "energy_per_image_j", lambda v: f"{v:.3g}", True),
    ("train acc", "final_train_acc", lambda v: f"{100 * v:.1f}%", False),
    ("test acc", "final_test_acc", lambda v: f"{100 * v:.1f}%", False),
    ("s to 50%", "tta_50_s", fmt_secs, True),
    ("s to 80%", "tta_80_s", fmt_secs, True),
    ("s to 85%", "tta_85_s", fmt_secs, True),
    ("s to 90%", "tta_90_s", fmt_secs, True),
    ("epochs", "epochs", lambda v: f"{v:g}", False),
    ("stopped by", "stopped_by", str, False),
]


def cell(r, key, fmt):
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
    lines += ["| " + " | ".join(cell(r, k, f) for _, k, f in cols) + " |" for r in recs]
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


def df_records(df):
    import pandas as pd

    return [{k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in r.items()}
            for r in df.to_dict("records")]


def _threads_md(df):
    spec = [("model", "model", str, False), ("impl", "impl", str, False), ("threads", "threads", lambda v: f"{v:g}",
                                                                           False),
            ("img/s", "images_per_s", fmt_ips, False), ("speed-up", "speedup", fmt_x, False),
            ("efficiency", "efficiency", lambda v: f"{v:.0%}", False)]
    return md_table(df_records(df), spec)


def _batch_md(df):
    spec = [("where", "where", str, False), ("model", "model", str, False),
            ("batch", "batch_size", lambda v: f"{v:g}", False), ("scratch", "scratch_backend", str, False),
            ("scratch img/s", "scratch_images_per_s", fmt_ips, False), ("torch img/s", "torch_images_per_s", fmt_ips, False),
            ("scratch/torch", "ratio", fmt_x, False)]
    return md_table(df_records(df), spec)
