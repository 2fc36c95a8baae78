"""The charts of experiments.compare: PNG files drawn from a loaded study and its main table.

Every chart function takes what it draws from and a path, and returns the path, or None when
its data are absent (draw_all then prints a note): a study with failed, skipped or missing
pieces still gets every chart it has data for. Implementations keep one colour everywhere
(scratch blue, torch orange, torch-best purple) and executions one line style and marker, so
one legend per figure reads across its panels. A row's seeds show as its spread: error bars of
one standard deviation and a dot per seed on the throughput chart, one curve per seed on the
curves.
"""
import math
import os
import textwrap

from ..cli import headless_pyplot
from .spread import judge, pm
from .study_load import IMPL_ORDER
from .study_tables import (cell, consistency_notes, fmt_ips, fmt_secs, fmt_x, impl_name, machine_line, models_of,
                           settings_line)

COLOURS = {"scratch": "tab:blue", "torch": "tab:orange", "torch-best": "tab:purple"}
STYLES = {"1-core": dict(ls=":", marker="o"), "multi-core": dict(ls="--", marker="s"), "gpu": dict(ls="-", marker="^")}
DPI = 110


def _colour(impl):
    return COLOURS.get(impl, "tab:gray")


def _style(execution):
    return STYLES.get(execution, dict(ls="-.", marker="d"))


def _label(r):
    """A row in a legend: 'gpu scratch (cupy)', 'gpu torch (cuda)', 'gpu torch-best (channels-last + CUDA graph)'."""
    name = f"torch ({r['backend_or_device'] or '?'})" if r["impl"] == "torch" else impl_name(r)
    return f"{r['execution']} {name}"


def _seed_values(r, key):
    """A row's per-seed figures (empty for a row of one seed: its bar is its one value)."""
    vals = [sr[key] for sr in r.get("seed_records") or [] if sr["status"] == "ok" and sr[key] is not None]
    return vals if len(vals) > 1 else []



def _panels(plt, n, width=5.2, height=3.8, rows=1):
    # a one-panel figure stays wide enough for its title and a legend in one row
    fig, axes = plt.subplots(rows, n, figsize=(max(width * n, 8.0), height * rows), squeeze=False)
    return fig, axes


def _shared_legend(fig, axes, ncol=None):
    """One legend under the panels, entries deduplicated by label, so none sits on the data."""
    seen = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    if not seen:
        return 0
    ncol = ncol or min(len(seen), 4)
    fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    return math.ceil(len(seen) / ncol)


def _finish(fig, path, title, legend_rows=0):
    fig.suptitle(title, fontsize=11)
    bottom = 0.04 + 0.05 * legend_rows * (4.0 / fig.get_figheight())
    fig.tight_layout(rect=(0, bottom, 1, 0.95))
    fig.savefig(path, dpi=DPI)
    headless_pyplot().close(fig)
    return path


def _log_if_wide(ax, values, axis="x", span=20.0):
    """Log scale where the data cover more than `span`x (CPU and GPU rows differ 1000x); a
    linear one reads better over a narrow range."""
    pos = [v for v in values if v and v > 0]
    if pos and max(pos) / min(pos) > span:
        _log_axis(ax, axis)
        return True
    return False


def _plain(v):
    return f"{v:,.0f}" if v >= 1000 else f"{v:g}"


def _log_axis(ax, axis="x", fmt=_plain):
    """A log axis labelled in plain numbers, at 1, 2, 5 x 10^k over a range of two decades or
    less and at powers of ten over a wider one (no 2.66x10^1 crowding)."""
    import matplotlib.ticker as mt

    class Nice(mt.LogLocator):
        def __call__(self):
            lo, hi = sorted(self.axis.get_view_interval())
            wide = lo > 0 and math.log10(hi / lo) > 2.2
            self.set_params(subs=(1.0,) if wide else (1.0, 2.0, 5.0))
            return super().__call__()

    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    a = ax.xaxis if axis == "x" else ax.yaxis
    a.set_major_locator(Nice(base=10))
    a.set_major_formatter(mt.FuncFormatter(lambda v, _: fmt(v)))
    a.set_minor_formatter(mt.NullFormatter())


# ---------------------------------------------------------------------------- throughput
def throughput(main, path, title_suffix=""):
    if not any(r["images_per_s"] for r in main):
        return None
    plt = headless_pyplot()
    models = models_of(main)
    fig, axes = _panels(plt, len(models), width=5.8, height=1.4 + 1.1 * 3)
    impls = [i for i in IMPL_ORDER if any(r["impl"] == i for r in main)]    # one bar slot each, every panel
    impls += sorted({r["impl"] for r in main} - set(impls), key=str)
    h = 0.84 / len(impls)
    for ax, model in zip(axes[0], models):
        rows = [r for r in main if r["model"] == model]
        execs = list(dict.fromkeys(r["execution"] for r in rows))
        vals = [v for r in rows if r["images_per_s"] for v in [r["images_per_s"]] + _seed_values(r, "images_per_s")]
        for r in rows:
            y = execs.index(r["execution"]) + (impls.index(r["impl"]) - (len(impls) - 1) / 2) * h
            v, sd = r["images_per_s"], r["images_per_s_std"]
            if not v:   # say why there is no bar, at the left edge of the panel
                ax.text(0.01, y, f"{r['impl']}: {r['status']}", va="center", fontsize=7, color="gray",
                        transform=ax.get_yaxis_transform())
                continue
            err = None if sd is None else [[min(sd, 0.9 * v)], [sd]]     # a log axis has no room below 0
            ax.barh(y, v, height=0.92 * h, color=_colour(r["impl"]), label=r["impl"], xerr=err,
                    error_kw=dict(capsize=2, lw=0.8))
            points = _seed_values(r, "images_per_s")
            if points:
                ax.plot(points, [y] * len(points), ls="none", marker="o", ms=2.5, color="black", label="one seed")
            right = max([v + (sd or 0)] + points)
            ax.text(right * 1.08, y, pm(v, sd, fmt_ips), va="center", fontsize=7)
        ax.set_yticks(range(len(execs)))
        ax.set_yticklabels([_exec_label(rows, e) for e in execs], fontsize=7)
        ax.set_ylim(len(execs) - 0.5, -0.5)   # top to bottom, room for the status notes
        _log_axis(ax, "x")
        if vals:
            ax.set_xlim(min(vals) / 4, max(vals) * 8)
        ax.set_xlabel("training images/s (log scale)" + ("; bars: mean ± std over seeds" if any(
            r["images_per_s_std"] is not None for r in rows) else ""))
        ax.set_title(model)
        ax.grid(axis="x", alpha=0.3, which="both")
    rows = _shared_legend(fig, axes[0])
    return _finish(fig, path, "Training throughput, steady state" + title_suffix, rows)


def _exec_label(rows, execution):
    backs = [f"{r['impl']}: " + (r["variant"] if r["impl"] == "torch-best" and r.get("variant")
                                 else str(r["backend_or_device"])) for r in rows if r["execution"] == execution]
    return execution + "\n" + "\n".join(backs)


# ---------------------------------------------------------------------------- speed-up
def speedup(main, path, title_suffix=""):
    sp = [r for r in main if r["speedup_vs_1core_scratch"]]
    by = {(r["model"], r["execution"], r["impl"]): r for r in main}
    pairs = [(r, by[(r["model"], r["execution"], other)], r[col]) for r in main if r["impl"] == "scratch"
             for other, col in (("torch", "scratch_over_torch"), ("torch-best", "scratch_over_torch_best")) if r[col]]
    if not sp and not pairs:
        return None
    plt = headless_pyplot()
    n = max(len(sp), len(pairs), 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.6 + 0.42 * n), squeeze=False)
    a1, a2 = axes[0]
    _hbars(a1, [r["row"] for r in sp], [r["speedup_vs_1core_scratch"] for r in sp],
           [_colour(r["impl"]) for r in sp], "images/s over the same model's 1-core scratch row (log)")
    a1.set_title("speed-up against 1-core scratch", fontsize=10)
    verdict = [judge(s, t, "images_per_s")[0] for s, t, _ in pairs]
    cols = [{"higher": "tab:green", "lower": "tab:red"}.get(v, "tab:gray") for v in verdict]
    _hbars(a2, [f"{s['model']} {s['execution']}\n{s['backend_or_device']} vs {t['impl']}"
                + (f"\n({t['variant']})" if t.get("variant") else "") for s, t, _ in pairs],
           [q for _, _, q in pairs], cols, "scratch images/s / torch images/s (log; >1: scratch faster)",
           symmetric=True)
    a2.set_title("scratch against torch and torch-best, same hardware", fontsize=10)
    from matplotlib.patches import Patch

    handles = [Patch(color=COLOURS[i], label=f"{i} row") for i in IMPL_ORDER if any(r["impl"] == i for r in sp)]
    handles += [Patch(color="tab:green", label="scratch faster"), Patch(color="tab:red", label="torch faster"),
                Patch(color="tab:gray", label="within run-to-run noise (or on par: one seed)")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    return _finish(fig, path, "Speed-up factors" + title_suffix, legend_rows=1)


def _hbars(ax, labels, values, colours, xlabel, symmetric=False):
    if not values:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_axis_off()
        return
    y = range(len(values))
    # bars grow from 1x (no change) in either direction, so a slow-down reads as one
    ax.barh(list(y), [v - 1.0 for v in values], left=1.0, color=colours, height=0.6)
    _log_axis(ax, "x", lambda v: f"{v:g}x")
    lo, hi = min(values + [1.0]), max(values + [1.0])
    if symmetric:  # ratios: equal room either side of 1
        m = max(hi, 1 / lo) * 2.5
        lo, hi = 1 / m, m
    else:
        lo, hi = lo / 1.6, hi * 3
    ax.set_xlim(lo, hi)
    ax.axvline(1.0, color="black", lw=0.8)
    for yi, v in zip(y, values):
        ax.text(v * 1.06 if v >= 1 else v / 1.06, yi, f"{v:.2f}x" if v < 10 else f"{v:,.1f}x",
                va="center", ha="left" if v >= 1 else "right", fontsize=8)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel, fontsize=9)
    ax.grid(axis="x", alpha=0.3, which="both")


# ---------------------------------------------------------------------------- curves over time
def accuracy_vs_time(study, main, path, title_suffix=""):
    curves = {}
    for run, r in _runs_by_row(study, main):
        ep = run.epochs
        if ep is None or "test_acc" not in ep or "epoch_time_s" not in ep:
            continue
        t = ep["epoch_time_s"].cumsum()
        ok = ep["test_acc"].notna() & t.notna() & (t > 0)
        if ok.any():
            curves.setdefault(r["model"], []).append((r, t[ok].tolist(), (100 * ep["test_acc"][ok]).tolist()))
    if not curves:
        return None
    def draw(ax, cs):
        for r, t, acc in cs:
            st = _style(r["execution"])
            ax.plot(t, acc, color=_colour(r["impl"]), ls=st["ls"] if len(t) > 1 else "none", marker=st["marker"],
                    ms=6 if len(t) == 1 else 4, label=_label(r))
        log = _log_if_wide(ax, [v for _, t, _ in cs for v in t], span=10)
        ax.set_xlabel(f"cumulative training time (s{', log' if log else ''}; evaluation excluded)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3, which="both")
    return _curve_panels(curves, draw, path, "Test accuracy against training wall-clock time" + title_suffix)


def _curve_panels(curves, draw, path, title):
    """One panel per model (curves: model -> its rows' curves), drawn by draw(ax, curves), with
    one legend for all."""
    plt = headless_pyplot()
    fig, axes = _panels(plt, len(curves), width=5.4, height=4.0)
    for ax, (model, cs) in zip(axes[0], curves.items()):
        draw(ax, cs)
        ax.set_title(model)
    rows = _shared_legend(fig, axes[0], ncol=3)
    return _finish(fig, path, title, rows)


def loss_curves(study, main, path, title_suffix=""):
    curves = {}
    for run, r in _runs_by_row(study, main):
        s = run.steps
        if s is None or not {"step", "loss"} <= set(s.columns):
            continue
        s = s.dropna(subset=["loss"])
        if len(s):
            curves.setdefault(r["model"], []).append((r, s["step"].tolist(), s["loss"].tolist()))
    if not curves:
        return None
    def draw(ax, cs):
        for r, x, y in cs:
            st = _style(r["execution"])
            ax.plot(x, y, color=_colour(r["impl"]), ls=st["ls"], marker=st["marker"], ms=3, lw=1.2,
                    label=_label(r), alpha=0.85)
        ax.set_xlabel("training step (same batches on every row)")
        ax.set_ylabel("training loss (logged steps)")
        ax.grid(alpha=0.3)
    return _curve_panels(curves, draw, path, "Training loss" + title_suffix)


def memory_over_time(study, main, path, title_suffix=""):
    series = {}
    gpu = False
    for run, r in _runs_by_row(study, main):
        res = run.resources
        if res is None or "t_s" not in res:
            continue
        g = res.get("gpu_mem_used_mb")
        has_gpu = g is not None and g.notna().any()
        gpu |= bool(has_gpu)
        series.setdefault(r["model"], []).append((r, res))
    if not series:
        return None
    plt = headless_pyplot()
    kinds = [("rss_mb", "process RSS (MB)")] + ([("gpu_mem_used_mb", "GPU memory used (MB, NVML)")] if gpu else [])
    fig, axes = _panels(plt, len(series), width=5.4, height=3.4, rows=len(kinds))
    for j, (model, rs) in enumerate(series.items()):
        for i, (col, ylabel) in enumerate(kinds):
            ax = axes[i][j]
            drawn = []
            for r, res in rs:
                if col not in res or not res[col].notna().any():
                    continue
                d = res.dropna(subset=[col])
                st = _style(r["execution"])
                ax.plot(d["t_s"], d[col], color=_colour(r["impl"]), ls=st["ls"], lw=1.4, label=_label(r))
                drawn.append(d["t_s"].max())
            if not drawn:
                ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes, color="gray")
                ax.set_xticks([])
                ax.set_yticks([])
            elif _log_if_wide(ax, drawn):
                ax.set_xlabel("time since the run started (s, log)")
            else:
                ax.set_xlabel("time since the run started (s)")
            ax.set_ylabel(ylabel)
            ax.set_title(model if i == 0 else f"{model}: GPU", fontsize=10)
            ax.grid(alpha=0.3)
    rows = _shared_legend(fig, [a for row in axes for a in row], ncol=3)
    return _finish(fig, path, "Memory over time (resources.csv)" + title_suffix, rows)


def _runs_by_row(study, main):
    """(run, its row's main-table line) of every seed of every row."""
    by = {r["row"]: r for r in main}
    return [(run, by[run.key]) for run in study.runs if run.key in by]


# ---------------------------------------------------------------------------- sweeps
def thread_scaling(threads, path, title_suffix=""):
    if threads is None or not len(threads):
        return None
    plt = headless_pyplot()
    import matplotlib.ticker as mt

    models = list(dict.fromkeys(threads["model"]))
    fig, axes = _panels(plt, len(models), width=5.2, height=3.4, rows=2)
    for j, model in enumerate(models):
        a1, a2 = axes[0][j], axes[1][j]
        sub = threads[threads["model"] == model]
        for impl, g in sub.groupby("impl", sort=True):
            g = g.sort_values("threads")
            colour = _colour("scratch" if impl.startswith("scratch") else "torch")
            t, ips = g["threads"].tolist(), g["images_per_s"].tolist()
            err = None
            if g["images_per_s_min"].notna().all() and g["images_per_s_max"].notna().all():
                err = [(g["images_per_s"] - g["images_per_s_min"]).tolist(),
                       (g["images_per_s_max"] - g["images_per_s"]).tolist()]
            a1.errorbar(t, ips, yerr=err, marker="o", capsize=3, color=colour, label=impl)
            a1.plot(t, [ips[0] * x / t[0] for x in t], ls=":", color=colour, alpha=0.6)
            eff = (g["efficiency"] if g["efficiency"].notna().all()
                   else [v / ips[0] / (x / t[0]) for x, v in zip(t, ips)])
            a2.plot(t, list(eff), marker="o", color=colour, label=impl)
        ticks = sorted(set(sub["threads"].astype(int)))
        for ax in (a1, a2):
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks)
            ax.xaxis.set_major_formatter(mt.ScalarFormatter())
            ax.xaxis.set_minor_locator(mt.NullLocator())
            ax.set_xlabel("threads")
            ax.grid(alpha=0.3)
        batch = sub["batch_size"].dropna()
        a1.set_title(f"{model}" + (f", batch {int(batch.iloc[0])}" if len(batch) else ""), fontsize=10)
        a1.set_ylabel("images/s (dotted: linear scaling)")
        a2.set_ylabel("parallel efficiency")
        a2.set_ylim(0, 1.15)
    rows = _shared_legend(fig, [a for row in axes for a in row])
    cpu = threads["cpu"].dropna()
    return _finish(fig, path, "Thread scaling, median [min-max]" + (f" on {cpu.iloc[0]}" if len(cpu) else "")
                   + title_suffix, rows)


def batch_scaling(batch, path, title_suffix=""):
    if batch is None or not len(batch):
        return None
    plt = headless_pyplot()
    import matplotlib.ticker as mt

    models = list(dict.fromkeys(batch["model"]))
    fig, axes = _panels(plt, len(models), width=5.4, height=4.0)
    for ax, model in zip(axes[0], models):
        sub = batch[batch["model"] == model]
        for where, g in sub.groupby("where", sort=True):
            g = g.sort_values("batch_size")
            ls = "-" if where == "gpu" else "--"
            backend = g["scratch_backend"].dropna()
            for impl, col in (("scratch", "scratch_images_per_s"), ("torch", "torch_images_per_s")):
                d = g.dropna(subset=[col])
                if not len(d):
                    continue
                name = f"{impl} ({backend.iloc[0]})" if impl == "scratch" and len(backend) else impl
                ax.plot(d["batch_size"], d[col], ls=ls, marker="^" if where == "gpu" else "s",
                        color=_colour(impl), label=f"{name}, {where.upper()}")
        ax.set_xscale("log", base=2)
        _log_axis(ax, "y")
        ax.set_xticks(sorted(set(sub["batch_size"].astype(int))))
        ax.xaxis.set_major_formatter(mt.ScalarFormatter())
        ax.xaxis.set_minor_locator(mt.NullLocator())
        ax.set_xlabel("batch size")
        ax.set_ylabel("training images/s (log)")
        ax.set_title(model)
        ax.grid(alpha=0.3, which="both")
    rows = _shared_legend(fig, axes[0])
    return _finish(fig, path, "Batch-size scaling (experiments.bench)" + title_suffix, rows)


# ---------------------------------------------------------------------------- summary page
# (header, main-table key, relative column width); a column empty in every row is left out
_SUMMARY_COLS = [("row", "row", 0.2), ("torch-best\nvariant", "variant", 0.2), ("status", "status", 0.06),
                 ("n", "n", 0.03), ("img/s", "images_per_s", 0.11),
                 ("vs 1-core\nscratch", "speedup_vs_1core_scratch", 0.07),
                 ("scratch/\ntorch", "scratch_over_torch", 0.06),
                 ("scratch/\ntorch-best", "scratch_over_torch_best", 0.07), ("test acc", "final_test_acc", 0.1),
                 ("epochs\ntrained", "epochs", 0.06), ("s to 50%\ntest acc", "tta_50_s", 0.08),
                 ("peak RAM\nMB", "peak_rss_mb", 0.07), ("peak GPU\nMB", "peak_gpu_mem_mb", 0.07)]


def _summary_cell(r, key):
    fmt = {"images_per_s": fmt_ips, "speedup_vs_1core_scratch": fmt_x, "scratch_over_torch": fmt_x,
           "scratch_over_torch_best": fmt_x, "final_test_acc": lambda v: f"{100 * v:.1f}%",
           "epochs": lambda v: f"{v:g}", "tta_50_s": fmt_secs, "peak_rss_mb": lambda v: f"{v:,.0f}",
           "peak_gpu_mem_mb": lambda v: f"{v:,.0f}"}.get(key, str)
    return cell(r, key, fmt)


def summary_page(study, main, concl, path):
    if not main:
        return None
    plt = headless_pyplot()

    hw, soft = machine_line(study)
    # 12 inches hold the table of a study without torch-best rows; more columns widen the page
    width = 12 * max(1.0, sum(w for _, _, w in _summary_columns(main)))
    wrap, line_h, row_h = int(175 * width / 12), 0.22, 0.27
    commit = f"; commit {study.header['git_commit']}" if study.header.get("git_commit") else ""
    head = [ln for h in ("Machine: " + hw, "Software: " + soft + commit, "Settings: " + settings_line(study, main))
            for ln in textwrap.wrap(h, wrap)]
    notes = [ln for n in _status_notes(main) for ln in textwrap.wrap(n, wrap + 10)]
    bullets = [textwrap.wrap(c, wrap - 4) for c in concl] or [["(none: too few measured rows)"]]
    checks = consistency_notes(main, study.threads, study.batch)
    if checks:
        bullets.append(textwrap.wrap(f"Caution: {len(checks)} sweep measurement(s) lie more than 2x from the "
                                     f"training row of the same settings (listed in main.md): rerun them.", wrap - 4))
    table_h = row_h * (len(main) + 2)
    text_lines = len(head) + len(notes) + sum(len(b) for b in bullets)
    fig_h = 1.6 + table_h + line_h * text_lines + (0.2 if notes else 0)
    fig = plt.figure(figsize=(width, fig_h))
    inch = 1.0 / fig_h   # layout in inches from the top, converted to figure fractions

    y = 1 - 0.3 * inch
    fig.text(0.5, y, f"Scratch vs PyTorch training study: preset {study.settings.get('preset', '?')}",
             ha="center", va="top", fontsize=14, weight="bold")
    y -= 0.45 * inch
    for ln in head:
        fig.text(0.03, y, ln, va="top", fontsize=9)
        y -= line_h * inch
    y -= 0.12 * inch
    _summary_table(fig, main, (0.03, y - table_h * inch, 0.94, table_h * inch))
    y -= table_h * inch + 0.12 * inch
    for ln in notes:   # why a shaded row has no figures
        fig.text(0.05, y, ln, va="top", fontsize=8, color="dimgray")
        y -= line_h * inch
    y -= 0.2 * inch
    fig.text(0.03, y, "Conclusions (computed from the measurements)", va="top", fontsize=11, weight="bold")
    y -= 0.3 * inch
    for b in bullets:
        for k, ln in enumerate(b):
            fig.text(0.03, y, ("- " if k == 0 else "  ") + ln, va="top", fontsize=9)
            y -= line_h * inch
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _status_notes(main):
    """One line per (status, reason) of the rows not ok, naming its rows: four rows skipped for
    want of a GPU take one line."""
    groups = {}
    for r in main:
        if r["status"] != "ok" or r["reason"]:
            groups.setdefault((r["status"], r["reason"]), []).append(r["row"])
    return [f"{', '.join(rows)}: " + (reason if reason.startswith("seed") else   # "seeds 0, 1: failed: ..."
                                      f"{status}" + (f": {reason}" if reason else ""))
            for (status, reason), rows in groups.items()]


def _summary_columns(main):
    """_SUMMARY_COLS less those empty in every row."""
    return [(h, k, w) for h, k, w in _SUMMARY_COLS if k in ("row", "status") or any(r[k] is not None for r in main)]


def _summary_table(fig, main, rect):
    ax = fig.add_axes(rect)
    ax.set_axis_off()
    cols = _summary_columns(main)
    cells = [[_summary_cell(r, k) for _, k, _ in cols] for r in main]
    total = sum(w for _, _, w in cols)    # the columns kept share the page's width
    tab = ax.table(cellText=cells, colLabels=[h for h, _, _ in cols], loc="upper center", cellLoc="right",
                   colLoc="center", colWidths=[w / total for _, _, w in cols])
    tab.auto_set_font_size(False)
    tab.set_fontsize(9)
    n = len(main) + 2   # the header takes two lines
    for (i, j), box in tab.get_celld().items():
        box.set_height((1.0 if i else 2.0) / n)
        if i == 0:
            box.set_facecolor("#dde5f0")
            box.set_text_props(weight="bold")
        elif cols[j][1] in ("row", "variant"):     # text reads from the left
            box.set_text_props(ha="left")
            box._loc = "left"
        if i and main[i - 1]["status"] != "ok":
            box.set_facecolor("#f3e3e3" if main[i - 1]["status"] != "skipped" else "#eeeeee")


# ---------------------------------------------------------------------------- all
def draw_all(study, main, concl, out, log=print):
    """Draw every chart with data into `out`; returns the paths written."""
    preset = study.settings.get("preset")
    sfx = f" (preset {preset})" if preset else ""
    jobs = [
        ("throughput.png", lambda p: throughput(main, p, sfx), "no row measured images/s"),
        ("speedup.png", lambda p: speedup(main, p, sfx), "no 1-core scratch baseline and no scratch/torch pair"),
        ("accuracy_vs_time.png", lambda p: accuracy_vs_time(study, main, p, sfx), "no epochs.csv with test accuracy"),
        ("loss_curves.png", lambda p: loss_curves(study, main, p, sfx), "no steps.csv"),
        ("memory_over_time.png", lambda p: memory_over_time(study, main, p, sfx), "no resources.csv"),
        ("thread_scaling.png", lambda p: thread_scaling(study.threads, p, sfx), "no sweeps/threads/*.csv"),
        ("batch_scaling.png", lambda p: batch_scaling(study.batch, p, sfx), "no sweeps/batch_*.csv"),
        ("summary.png", lambda p: summary_page(study, main, concl, p), "no training row"),
    ]
    written = []
    for name, draw, why in jobs:
        path = os.path.join(out, name)
        try:
            done = draw(path)
        except ImportError as e:
            log(f"note: no charts: {e} (pip install matplotlib)")
            return written
        except Exception as e:  # noqa: BLE001 - one odd record must not cost the tables and other charts
            headless_pyplot().close("all")
            done, why = None, f"not drawn: {type(e).__name__}: {e}"
        if done:
            written.append(done)
            continue
        log(f"note: {name} skipped: {why}")
        if os.path.exists(path):  # a chart of an earlier pass that no longer has data
            os.remove(path)
    return written
