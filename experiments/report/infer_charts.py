"""Charts of the inference benchmark (experiments.infer_bench), drawn from its CSVs:

    <stem>_latency_<model>.png   per-iteration latency box plots, one panel per focus batch size
    <stem>_throughput.png        images/s bars (log scale) at the focus batch sizes, a panel per model
    <stem>_batch_curves.png      images/s against batch size, one line per configuration (log-log)
    <stem>_gpu_speedup.png       each GPU row's images/s over the best CPU row's at that batch size

The focus batch sizes are the smallest measured and 64 (or the largest, where 64 was not run).
Only `ok` rows are drawn. From a whole CSV (--plot-only), the latest row of each configuration
and batch size is drawn; after a run, that run's rows.
"""
import os

import numpy as np

from ..cli import headless_pyplot
from ..measure.infer.table import KEY_COLUMNS, latencies_path

GPU_TARGETS = ("cupy", "cuda")


def _batch_axes(ax, batch_sizes, ylabel, title):
    """Log-log axes over batch size, ticked at the sizes measured."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    ax.set_xlabel("batch size (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)


def label(r):
    threads = r["threads"]
    t = f" {int(threads)}t" if threads == threads and str(threads) != "" else ""   # NaN for GPU rows
    eng = "" if r["engine"] == "eager" else f" {r['engine']}"
    return f"{r['impl']}-{r['backend_or_device']}{eng} {r['precision']}{t}"


def load(csv_path, run_id=None):
    """(ok rows, latencies) as pandas DataFrames, each row labelled; the latencies may be empty."""
    import pandas as pd


    rows = pd.read_csv(csv_path, dtype={"threads": "float64", "reason": "str"})
    rows = rows[rows["status"] == "ok"].copy()
    if run_id is not None:
        rows = rows[rows["run_id"] == run_id]
    rows["threads"] = rows["threads"].astype("float64")
    rows = rows.drop_duplicates(subset=KEY_COLUMNS, keep="last")
    rows["label"] = [label(r) for _, r in rows.iterrows()]
    rows["gpu"] = rows["backend_or_device"].isin(GPU_TARGETS)
    lat_path = latencies_path(csv_path)
    lat = pd.DataFrame()
    if os.path.exists(lat_path):
        lat = pd.read_csv(lat_path, dtype={"threads": "float64"})
        keys = ["run_id"] + KEY_COLUMNS
        lat = lat.merge(rows[keys + ["label"]], on=keys, how="inner")
    return rows, lat


def focus_batches(batches):
    batches = sorted(set(int(b) for b in batches))
    if not batches:
        return []
    second = 64 if 64 in batches else batches[-1]
    return sorted({batches[0], second})


def _order(rows):
    """Labels in a stable reading order: scratch before torch, CPU before GPU, then by name."""
    seen = rows.drop_duplicates("label")
    keyed = sorted(seen.itertuples(), key=lambda r: (r.impl != "scratch", bool(r.gpu), r.label))
    return [r.label for r in keyed]


def _colors(labels):
    plt = headless_pyplot()
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}


def _machines(rows):
    parts = []
    cpu = sorted(set(rows.loc[~rows["gpu"], "machine"]))
    gpu = sorted(set(rows.loc[rows["gpu"], "machine"]))
    if cpu:
        parts.append("CPU: " + "; ".join(cpu))
    if gpu:
        parts.append("GPU: " + "; ".join(gpu))
    return "   ".join(parts)


def latency_boxes(rows, lat, out_png, model):
    """Per-iteration latencies at the focus batch sizes, one horizontal box per configuration."""
    plt = headless_pyplot()
    sub = lat[lat["model"] == model]
    batches = focus_batches(rows.loc[rows["model"] == model, "batch_size"])
    batches = [b for b in batches if (sub["batch_size"] == b).any()]
    if not batches:
        return None
    labels = _order(rows[rows["model"] == model])
    colors = _colors(labels)
    fig, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 1.0 + 0.38 * len(labels) + 1.2),
                             squeeze=False, sharey=True)
    for ax, b in zip(axes[0], batches):
        data, names = [], []
        for lab in labels:
            v = sub.loc[(sub["batch_size"] == b) & (sub["label"] == lab), "latency_ms"].to_numpy()
            data.append(v if len(v) else np.array([np.nan]))
            names.append(lab)
        kw = dict(widths=0.6, patch_artist=True, showfliers=True, flierprops=dict(markersize=3, alpha=0.5))
        try:
            bp = ax.boxplot(data, orientation="horizontal", **kw)    # matplotlib >= 3.10
        except TypeError:
            bp = ax.boxplot(data, vert=False, **kw)
        for patch, lab in zip(bp["boxes"], names):
            patch.set_facecolor(colors[lab])
            patch.set_alpha(0.55)
        ax.set_yticks(range(1, len(names) + 1), names)
        ax.set_xscale("log")
        ax.set_xlabel("latency per forward (ms, log scale)")
        ax.set_title(f"batch {b}")
        ax.grid(True, axis="x", which="both", alpha=0.3)
    axes[0, 0].invert_yaxis()   # once: the panels share the y axis; first configuration on top
    _title(fig, f"{model}: inference latency per iteration (box: p25-p75, whiskers 1.5 IQR)\n{_machines(rows)}")
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def throughput_bars(rows, out_png):
    """images/s at the focus batch sizes, grouped horizontal bars, a panel per model."""
    plt = headless_pyplot()
    models = [m for m in ("cnn", "resnet18") if (rows["model"] == m).any()]
    models += sorted(set(rows["model"]) - set(models))
    heights = []
    for m in models:
        heights.append(len(_order(rows[rows["model"] == m])))
    fig, axes = plt.subplots(len(models), 1, figsize=(10, sum(0.5 * h + 1.4 for h in heights) + 0.6),
                             squeeze=False, gridspec_kw=dict(height_ratios=[h + 2 for h in heights]))
    shades = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    for ax, m in zip(axes[:, 0], models):
        sub = rows[rows["model"] == m]
        labels = _order(sub)
        batches = focus_batches(sub["batch_size"])
        h = 0.8 / len(batches)
        top = 0
        for j, b in enumerate(batches):
            vals = [sub.loc[(sub["label"] == lab) & (sub["batch_size"] == b), "images_per_s"] for lab in labels]
            vals = np.array([float(v.iloc[0]) if len(v) else np.nan for v in vals])
            y = np.arange(len(labels)) + (j - (len(batches) - 1) / 2) * h
            ax.barh(y, vals, height=h, color=shades[j % len(shades)], label=f"batch {b}")
            for yi, v in zip(y, vals):
                if v == v:
                    ax.text(v, yi, f" {v:,.0f}", va="center", fontsize=7)
            top = max(top, np.nanmax(vals) if np.isfinite(vals).any() else 0)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(len(labels) - 0.5, -0.5)     # first configuration on top, no empty band
        ax.set_xscale("log")
        if top > 0:
            ax.set_xlim(right=top * 4)   # room for the value labels
        ax.set_xlabel("images/s (log scale)")
        ax.set_title(m)
        ax.grid(True, axis="x", which="both", alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    _title(fig, f"Inference throughput\n{_machines(rows)}")
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def _title(fig, text, right=0.0):
    """A two-line title at the top, the panels laid out below it (tight_layout leaves room for a
    suptitle) and left of a figure legend `right` inches wide."""
    h = fig.get_figheight()
    fig.suptitle(text, fontsize=10, y=1 - 0.08 / h, va="top")
    fig.tight_layout(rect=(0, 0, 1 - right / fig.get_figwidth(), 1))   # it leaves room for the suptitle


def _style(rows, lab):
    r = rows[rows["label"] == lab].iloc[0]
    return dict(marker="o" if r["impl"] == "scratch" else "s", linestyle="--" if r["gpu"] else "-")


def batch_curves(rows, out_png):
    """images/s against batch size, log-log, a panel per model and a line per configuration."""
    plt = headless_pyplot()
    models = [m for m in ("cnn", "resnet18") if (rows["model"] == m).any()]
    models += sorted(set(rows["model"]) - set(models))
    labels = _order(rows)
    colors = _colors(labels)
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models) + 3.2, 5), squeeze=False)
    handles = {}
    for ax, m in zip(axes[0], models):
        sub = rows[rows["model"] == m]
        for lab in labels:
            s = sub[sub["label"] == lab].sort_values("batch_size")
            if s.empty:
                continue
            (line,) = ax.plot(s["batch_size"], s["images_per_s"], color=colors[lab], label=lab, markersize=4,
                              **_style(rows, lab))
            handles.setdefault(lab, line)
        _batch_axes(ax, sorted(set(sub["batch_size"])), "images/s (log scale)", m)
        ax.grid(True, which="both", alpha=0.3)
    fig.legend([handles[k] for k in labels if k in handles], [k for k in labels if k in handles],
               loc="center left", bbox_to_anchor=(0.995 - 3.0 / fig.get_figwidth(), 0.5), fontsize=8, frameon=False)
    _title(fig, f"Inference throughput against batch size (solid: CPU, dashed: GPU; o scratch, s torch)\n"
                f"{_machines(rows)}", right=3.2)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def gpu_speedup(rows, out_png):
    """Each GPU configuration's images/s over the best CPU configuration's at the same batch size
    (of the same model); None when there are no GPU rows or no CPU rows to compare with."""
    plt = headless_pyplot()
    gpu, cpu = rows[rows["gpu"]], rows[~rows["gpu"]]
    models = [m for m in sorted(set(gpu["model"])) if (cpu["model"] == m).any()]
    if gpu.empty or not models:
        return None
    labels = _order(gpu)
    colors = _colors(labels)
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models) + 3.2, 5), squeeze=False)
    handles = {}
    for ax, m in zip(axes[0], models):
        best = cpu[cpu["model"] == m].groupby("batch_size")["images_per_s"].max()
        sub = gpu[gpu["model"] == m]
        for lab in labels:
            s = sub[sub["label"] == lab].sort_values("batch_size")
            s = s[s["batch_size"].isin(best.index)]
            if s.empty:
                continue
            ratio = s["images_per_s"].to_numpy() / best.loc[s["batch_size"]].to_numpy()
            (line,) = ax.plot(s["batch_size"], ratio, color=colors[lab], label=lab, markersize=4, **_style(rows, lab))
            handles.setdefault(lab, line)
        ax.axhline(1.0, color="grey", linewidth=1)
        _batch_axes(ax, sorted(set(sub["batch_size"]) & set(best.index)),
                    "speed-up over the best CPU row (x, log scale)", m)
        ax.grid(True, which="both", alpha=0.3)
    fig.legend([handles[k] for k in labels if k in handles], [k for k in labels if k in handles],
               loc="center left", bbox_to_anchor=(0.995 - 3.0 / fig.get_figwidth(), 0.5), fontsize=8, frameon=False)
    _title(fig, f"GPU images/s over the fastest CPU configuration at each batch size\n{_machines(rows)}", right=3.2)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def draw_all(csv_path, out_dir, run_id=None, log=print):
    """Every chart from the CSV's ok rows (one run's, or the latest per configuration); returns the
    paths written."""
    rows, lat = load(csv_path, run_id)
    if rows.empty:
        log("note: no ok rows to draw")
        return []
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(csv_path))[0]
    out = []
    if lat.empty:
        log(f"note: no latencies beside {csv_path}: no box plots")
    else:
        for m in sorted(set(rows["model"])):
            p = latency_boxes(rows, lat, os.path.join(out_dir, f"{stem}_latency_{m}.png"), m)
            if p:
                out.append(p)
    out.append(throughput_bars(rows, os.path.join(out_dir, f"{stem}_throughput.png")))
    out.append(batch_curves(rows, os.path.join(out_dir, f"{stem}_batch_curves.png")))
    if not rows["gpu"].any():
        log("note: no GPU rows: no GPU-over-CPU speed-up chart")
    else:
        p = gpu_speedup(rows, os.path.join(out_dir, f"{stem}_gpu_speedup.png"))
        if p:
            out.append(p)
        else:
            log("note: no CPU rows of the same models to compare the GPU rows with: no speed-up chart")
    return out
