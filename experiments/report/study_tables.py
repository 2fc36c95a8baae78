"""The study's tables and their Markdown: the main table (one line per training row, its
seeds summarised as mean, standard deviation and n, with speed-ups and scratch/torch and
scratch/torch-best ratios), the per-seed table under it, and checks of the sweeps against the
rows. The columns are documented in experiments/compare.py; the conclusions drawn from the
tables are in study_conclusions.py."""
import csv
import math
import os

from ..matrix.plan import split_row, variant_name
from .spread import mean_std, pm
from .study_load import EXECUTION_ORDER, IMPL_ORDER, MODEL_ORDER, TTA_KEYS, int_or_none, num

# figures given as mean and standard deviation over the seeds (a column <key>_std beside each)
SPREAD_KEYS = ["images_per_s", "peak_rss_mb", "peak_gpu_mem_mb", "final_test_acc"] + [f"tta_{k}_s"
                                                                                      for k in TTA_KEYS]
# figures given as the mean over the seeds alone
MEAN_KEYS = ["epoch_time_s", "warmup_time_s", "mean_cpu_percent", "mean_gpu_util_percent", "energy_per_image_j",
             "final_train_acc", "epochs", "train_time_s"]

MAIN_COLUMNS = ["row", "model", "execution", "impl", "variant", "backend_or_device", "threads", "precision",
                "batch_size", "dataset", "status", "reason", "n", "seeds", "images_per_s", "images_per_s_std",
                "speedup_vs_1core_scratch", "scratch_over_torch", "scratch_over_torch_best", "epoch_time_s",
                "epoch_time_estimated", "warmup_time_s", "peak_rss_mb", "peak_rss_mb_std", "mean_cpu_percent",
                "peak_gpu_mem_mb", "peak_gpu_mem_mb_std", "memory_scratch_over_torch",
                "memory_scratch_over_torch_best", "mean_gpu_util_percent", "energy_per_image_j", "final_train_acc",
                "final_test_acc", "final_test_acc_std", "tta_50_s", "tta_50_s_std", "tta_80_s", "tta_80_s_std",
                "tta_85_s", "tta_85_s_std", "tta_90_s", "tta_90_s_std", "epochs", "stopped_by", "train_time_s",
                "run_dir"]

# main_by_seed.csv: each row's seeds before they are summarised
SEED_COLUMNS = ["row", "seed", "model", "execution", "impl", "variant", "backend_or_device", "threads", "status",
                "reason", "images_per_s", "warmup_time_s", "peak_rss_mb", "peak_gpu_mem_mb", "final_test_acc",
                "tta_50_s", "tta_80_s", "tta_85_s", "tta_90_s", "epochs", "stopped_by", "run_dir"]


# ---------------------------------------------------------------------------- one seed of a row
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


def _variant(run, impl, torch_best):
    """A torch-best row's configuration in words: what its run recorded, else the probe's choice."""
    if impl != "torch-best":
        return None
    if run.summary:
        return variant_name(run.summary)
    model, execution = run.key.split("/")[:2]
    return (torch_best.get(f"{model}/{execution}") or {}).get("name")


def _record(run, study_dir, torch_best=None):
    """One seed of a row: the figures of its run folder (row = its id with the seed)."""
    s = run.summary or {}
    ln = run.line
    rec = dict.fromkeys(MAIN_COLUMNS)
    impl = ln.get("impl") or s.get("impl")
    rec.update(row=run.row, key=run.key, seed=run.seed, model=ln.get("model") or s.get("model"),
               execution=ln.get("execution"), impl=impl, variant=_variant(run, impl, torch_best or {}),
               backend_or_device=run.get("backend_or_device"), threads=int_or_none(run.get("threads")),
               precision=run.get("precision"), batch_size=int_or_none(run.get("batch_size")),
               dataset=s.get("dataset") or run.get("dataset"),
               status=ln.get("status") or ("ok" if s.get("status") == "completed" else s.get("status")),
               reason=ln.get("reason") or "")
    if run.dir and not run.summary and rec["status"] not in ("skipped",):
        rec["reason"] = "; ".join(x for x in (rec["reason"], "no summary.json in its run folder") if x)
    for k in ("images_per_s", "warmup_time_s", "peak_rss_mb", "mean_cpu_percent", "peak_gpu_mem_mb",
              "mean_gpu_util_percent", "energy_per_image_j", "final_train_acc", "final_test_acc", "train_time_s"):
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


# ---------------------------------------------------------------------------- a row over its seeds
def _first(recs, key):
    return next((r[key] for r in recs if r[key] is not None), None)


def _summarise(recs):
    """One main-table line from the per-seed records of a row: means, and standard deviations
    of SPREAD_KEYS, over the seeds that ran ok (over every seed where none did, so that a lone
    interrupted run still shows what it measured); n: the seeds with images/s among them. A
    time to accuracy is given only when every one of those seeds reached it (a mean over the
    seeds that got there would flatter the row). seed_records keeps the seeds for the charts."""
    recs = sorted(recs, key=lambda r: (r["seed"] is None, r["seed"] or 0))
    use = [r for r in recs if r["status"] == "ok"] or recs
    out = dict.fromkeys(MAIN_COLUMNS)
    for k in ("model", "execution", "impl", "variant", "backend_or_device", "threads", "precision", "batch_size",
              "dataset"):
        out[k] = _first(recs, k)
    statuses = {r["status"] for r in recs}
    out.update(row=recs[0]["key"], status=statuses.pop() if len(statuses) == 1 else
               "ok" if any(r["status"] == "ok" for r in recs) else "failed", seed_records=recs)
    if len(recs) == 1:
        out["reason"] = recs[0]["reason"]
    else:   # which seeds are not ok, and why: the seeds sharing a status and reason in one clause
        why = {}
        for r in recs:
            if r["status"] != "ok" or r["reason"]:
                why.setdefault((r["status"], r["reason"]), []).append(str(r["seed"]))
        out["reason"] = "; ".join(f"seed{'s' * (len(seeds) > 1)} {', '.join(seeds)}: {status}"
                                  + (f": {reason}" if reason else "") for (status, reason), seeds in why.items())
    measured = [r for r in use if r["images_per_s"] is not None]
    out["n"] = len(measured)
    out["seeds"] = ",".join(str(r["seed"]) for r in measured if r["seed"] is not None) or None
    for k in SPREAD_KEYS:
        vals = [r[k] for r in use]
        if k.startswith("tta_") and any(v is None for v in vals):
            continue
        out[k], out[f"{k}_std"], _ = mean_std(vals)
    for k in MEAN_KEYS:
        out[k] = mean_std([r[k] for r in use])[0]
    if out["epoch_time_s"] is not None:
        out["epoch_time_estimated"] = any(r["epoch_time_estimated"] for r in use if r["epoch_time_s"] is not None)
    stops = list(dict.fromkeys(r["stopped_by"] for r in use if r["stopped_by"]))
    out["stopped_by"] = "/".join(stops) or None
    out["run_dir"] = ";".join(r["run_dir"] for r in recs if r["run_dir"]) or None
    return out


def _order(values, preferred):
    return {v: i for i, v in enumerate(list(preferred) + sorted(set(values) - set(preferred), key=str))}


def _ratio(a, b):
    return a / b if a and b else None


def _add_ratios(recs):
    """Speed-ups against the model's 1-core scratch row, and scratch against torch and against
    torch-best of the same model and execution (images/s and peak memory: the GPU's on GPU rows,
    RSS on CPU rows), each ratio written on both rows of its pair. Ratios of the means."""
    by = {(r["model"], r["execution"], r["impl"]): r for r in recs}
    for r in recs:
        base = by.get((r["model"], "1-core", "scratch"))
        r["speedup_vs_1core_scratch"] = _ratio(r["images_per_s"], base and base["images_per_s"])
        s = by.get((r["model"], r["execution"], "scratch"))
        mem = "peak_gpu_mem_mb" if r["execution"] == "gpu" else "peak_rss_mb"
        for other, col in (("torch", "scratch_over_torch"), ("torch-best", "scratch_over_torch_best")):
            t = by.get((r["model"], r["execution"], other))
            if s and t and r["impl"] in ("scratch", other):
                r[col] = _ratio(s["images_per_s"], t["images_per_s"])
                r[f"memory_{col}"] = _ratio(s[mem], t[mem])


def seed_table(study):
    """Every training row's seeds, one record each (SEED_COLUMNS and the rest), in study order."""
    return [_record(run, study.dir, study.torch_best) for run in study.runs]


def main_table(study, seeds=None):
    """The main table as a list of dicts with MAIN_COLUMNS keys (and seed_records), one per row
    summarised over its seeds, in the documented order. seeds: seed_table(study), if at hand."""
    groups = {}
    for rec in seeds if seeds is not None else seed_table(study):
        groups.setdefault(rec["key"], []).append(rec)
    recs = [_summarise(g) for g in groups.values()]
    _add_ratios(recs)
    om = _order([r["model"] for r in recs], MODEL_ORDER)
    oe = _order([r["execution"] for r in recs], EXECUTION_ORDER)
    oi = _order([r["impl"] for r in recs], IMPL_ORDER)
    return sorted(recs, key=lambda r: (om[r["model"]], oe[r["execution"]], oi[r["impl"]]))


# ---------------------------------------------------------------------------- formatting helpers
def fmt_x(v):
    return f"{v:,.0f}x" if v >= 100 else f"{v:.1f}x" if v >= 10 else f"{v:.2f}x"


def fmt_ips(v):
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def impl_name(r):
    """'scratch (cupy)', 'torch', 'torch-best (channels-last + CUDA graph)'."""
    if r["impl"] == "scratch":
        return f"scratch ({r['backend_or_device']})"
    if r["impl"] == "torch-best" and r.get("variant"):
        return f"torch-best ({r['variant']})"
    return r["impl"]


def models_of(main):
    seen = []
    for r in main:
        if r["model"] not in seen:
            seen.append(r["model"])
    return seen


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


# Markdown columns: (header, key, formatter, optional: dropped when empty in every row); a
# figure of SPREAD_KEYS shows as mean ± standard deviation where its row measured a spread
_MD = [
    ("row", "row", str, False),
    ("variant", "variant", str, True),
    ("status", "status", str, False),
    ("backend", "backend_or_device", str, False),
    ("threads", "threads", lambda v: f"{v:d}", False),
    ("n", "n", lambda v: f"{v:d}", False),
    ("img/s", "images_per_s", fmt_ips, False),
    ("vs 1-core scratch", "speedup_vs_1core_scratch", fmt_x, False),
    ("scratch/torch", "scratch_over_torch", fmt_x, False),
    ("scratch/torch-best", "scratch_over_torch_best", fmt_x, True),
    ("s/epoch", "epoch_time_s", fmt_secs, False),
    ("warm-up s", "warmup_time_s", fmt_secs, True),
    ("peak RAM MB", "peak_rss_mb", lambda v: f"{v:,.0f}", False),
    ("CPU %", "mean_cpu_percent", lambda v: f"{v:.0f}", False),
    ("peak GPU MB", "peak_gpu_mem_mb", lambda v: f"{v:,.0f}", True),
    ("memory scratch/torch", "memory_scratch_over_torch", fmt_x, True),
    ("memory scratch/torch-best", "memory_scratch_over_torch_best", fmt_x, True),
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
    s = pm(v, r.get(f"{key}_std"), fmt) if key in SPREAD_KEYS else fmt(v)
    if key == "epoch_time_s" and r.get("epoch_time_estimated"):
        s += "*"
    return s.replace("|", "\\|")


_TEXT_KEYS = {"row", "variant", "status", "backend_or_device", "stopped_by", "model", "impl", "where",
              "scratch_backend"}


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
    seeds = st.get("seeds") or ([st["seed"]] if st.get("seed") is not None else None)
    if seeds:
        bits.append(f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))} (each training row once per seed)")
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
    notes = [spread_note(main)] if main else []
    if any(r["epoch_time_estimated"] for r in main):
        notes.append("\\* s/epoch estimated as training images / images/s: no full epoch ran before the time "
                     "budget stopped the row.")
    if any(r["impl"] == "torch-best" for r in main):
        notes.append("torch-best: torch in the configuration the probe at the study's start measured fastest "
                     "(below); same recipe, data and precision as the other rows. warm-up s: the warm-up steps' "
                     "time (torch.compile's compilation, the CUDA graph's capture), excluded from img/s.")
    budget = [r["row"] for r in main if "time_budget" in (r["stopped_by"] or "")]
    if budget:
        notes.append(f"Stopped by the time budget (throughput is steady state; accuracy is at the budget): "
                     f"{', '.join(budget)}.")
    if notes:
        out += [""] + notes
    bad = not_ok_lines(study, main)
    if bad:
        out += ["", "### Rows not ok", ""] + [f"- {b}" for b in bad]
    probe = probe_lines(study.torch_best)
    if probe:
        out += ["", "### torch-best: the probe (study.json's torch_best)", ""] + [f"- {p}" for p in probe]
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


def not_ok_lines(study, main):
    """The rows (and seeds) not ok, and the ok ones with something missing, with their reasons;
    the seeds of a row that share a status and reason take one line."""
    bad = [ln for ln in study.lines if ln.get("status") not in ("ok", None, "")]
    bad += [{"row": sr["row"], "status": sr["status"], "reason": sr["reason"]} for r in main
            for sr in r["seed_records"] if sr["status"] == "unrecorded" or (sr["status"] == "ok" and sr["reason"])]
    groups = {}
    for ln in bad:
        key, seed = split_row(ln["row"])
        groups.setdefault((key, ln["status"], ln.get("reason") or ""), []).append(seed)
    out = []
    for (key, status, reason), seeds in groups.items():
        seeds = [s for s in seeds if s is not None]
        which = f" (seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))})" if seeds else ""
        out.append(f"`{key}`{which}: {status}" + (f": {reason}" if reason else ""))
    return out


def spread_note(main):
    """What the n column and the ± mean, and how many seeds the rows have."""
    ns = sorted({r["n"] for r in main if r["n"]})
    if not ns or ns == [1]:
        return "n: seeds measured (one seed: no spread measured; a study with --seeds 0,1,2 gives mean ± std)."
    return ("n: seeds measured; img/s, memory, test accuracy and times to accuracy are mean ± sample standard "
            "deviation over them (the mean alone where n = 1); a time to accuracy only where every seed reached it; "
            "ratios are ratios of the means.")


def probe_lines(torch_best):
    """One line per probed model and execution: its candidates' images/s (or why they failed)
    and the choice."""
    out = []
    for key, rec in torch_best.items():
        cands = "; ".join(f"{c['name']} " + (f"{fmt_ips(c['images_per_s'])} img/s" if c.get("status") == "ok"
                                             else f"failed: {c.get('reason') or '?'}")
                          for c in rec.get("candidates") or [])
        p = rec.get("probe") or {}
        how = (f" ({p['warmup_steps']} warm-up steps, then {p['time_budget_s']:g} s of steady state, synthetic data)"
               if p.get("time_budget_s") else "")
        chosen = f"{rec['name']}, the fastest of" if rec.get("name") else "no candidate ran of"
        out.append(f"{key}: {chosen}: {cands}{how}")
    return out


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
