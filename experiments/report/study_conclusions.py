"""The conclusions of a study: sentences computed from its main table (and thread sweep), one
whose inputs are missing left out. A difference between two rows is called only where it
exceeds their spread over the seeds (spread.judge: "within run-to-run noise" otherwise); a row
of one seed has no spread, and a sentence built on one says so ("one seed: no spread
measured") rather than calling anything beyond noise."""
from .spread import judge
from .study_load import TTA_KEYS
from .study_tables import fmt_ips, fmt_secs, fmt_x, impl_name, models_of

NO_SPREAD = "one seed: no spread measured"


def _spread_tail(unmeasured, recs):
    """The closing words of a comparison: whether its rows measured a spread, and over how many seeds."""
    if unmeasured:
        return f"; {NO_SPREAD}"
    ns = sorted({r["n"] for r in recs if r.get("n")})
    n = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    return f"; n = {n} seeds a row, a difference called only beyond mean ± std"


def _c_scratch_speedup(main):
    """How far the hand-written layers go from one core: each scratch row against its model's
    1-core scratch row."""
    parts = []
    for model in models_of(main):
        rows = [r for r in main if r["model"] == model and r["impl"] == "scratch" and r["execution"] != "1-core"
                and r["speedup_vs_1core_scratch"]]
        if rows:
            parts.append(f"{model} " + ", ".join(f"{r['execution']} ({r['backend_or_device']}) "
                                                 f"{fmt_x(r['speedup_vs_1core_scratch'])} at "
                                                 f"{fmt_ips(r['images_per_s'])} images/s" for r in rows))
    return [f"Scratch against its own 1-core row: {'; '.join(parts)}."] if parts else []


def _c_scratch_vs(main, other):
    """Per model: scratch against `other` (torch or torch-best) on each execution, which is
    faster and by how much."""
    col = "scratch_over_torch" if other == "torch" else "scratch_over_torch_best"
    by = {(r["model"], r["execution"], r["impl"]): r for r in main}
    out = []
    for model in models_of(main):
        pairs = [(r, by[(model, r["execution"], other)]) for r in main
                 if r["model"] == model and r["impl"] == "scratch" and r[col] and (model, r["execution"], other) in by]
        if not pairs:
            continue
        parts, verdicts, unmeasured = [], [], False
        for s, t in pairs:
            q = s[col]
            verdict, spread = judge(s, t, "images_per_s")
            unmeasured |= not spread
            a, b = impl_name(s), impl_name(t)
            who = {"noise": f"{a} and {b} within run-to-run noise ({fmt_x(q)})",
                   "par": f"{a} and {b} on par ({fmt_x(q)})",
                   "higher": f"{a} is {fmt_x(q)} as fast as {b}"}.get(verdict, f"{b} is {fmt_x(1 / q)} as fast as {a}")
            parts.append(f"{s['execution']}: {who}")
            verdicts.append(verdict)
        n = len(verdicts)
        count = {v: verdicts.count(v) for v in ("higher", "lower", "par", "noise")}
        lead = (f"scratch is faster than {other} on every execution measured" if count["higher"] == n else
                f"{other} is faster than scratch on every execution measured" if count["lower"] == n else
                f"scratch and {other} are within run-to-run noise on every execution measured" if count["noise"] == n
                else f"of {n} executions, " + ", ".join(
                    f"{who} on {count[v]}" for v, who in (("higher", "scratch is faster"),
                                                          ("lower", f"{other} is faster"),
                                                          ("par", "they are on par"),
                                                          ("noise", "they are within run-to-run noise"))
                    if count[v]))
        tail = _spread_tail(unmeasured, [r for p in pairs for r in p])
        out.append(f"{model}: {lead} ({'; '.join(parts)}{tail}).")
    return out


def _c_best_over_torch(main):
    """What torch's best configuration buys over torch as configured plainly."""
    by = {(r["model"], r["execution"], r["impl"]): r for r in main}
    parts, unmeasured, recs = [], False, []
    for b in main:
        t = by.get((b["model"], b["execution"], "torch"))
        if b["impl"] != "torch-best" or not t or not b["images_per_s"] or not t["images_per_s"]:
            continue
        verdict, spread = judge(b, t, "images_per_s")
        unmeasured |= not spread
        recs += [b, t]
        q = b["images_per_s"] / t["images_per_s"]
        what = {"noise": f"within run-to-run noise ({fmt_x(q)})", "par": f"on par ({fmt_x(q)})"}.get(verdict, fmt_x(q))
        parts.append(f"{b['model']} {b['execution']} ({b.get('variant') or '?'}) {what}")
    if not parts:
        return []
    return [f"torch-best against plain torch, images/s: {'; '.join(parts)}{_spread_tail(unmeasured, recs)}."]


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
    verdict, spread = judge(worst[2], worst[3], "final_test_acc")
    text = (f"Test accuracy, scratch minus torch after the same training ({n} pair{'s' * (n > 1)}): "
            f"largest gap {worst[0]:+.1f} points ({worst[1]}: {100 * worst[2]['final_test_acc']:.1f}% vs "
            f"{100 * worst[3]['final_test_acc']:.1f}%" + (", within run-to-run noise" if verdict == "noise" else "")
            + ")")
    if n > 1:
        text += f", mean {sum(g[0] for g in gaps) / n:+.1f} points"
    if unequal:
        text += f"; {unequal} pair(s) left out: a time budget stopped them at different points"
    if not spread:
        text += f"; {NO_SPREAD}"
    return [text + "."]


def _c_time_to_accuracy(main):
    """The fastest row to the highest threshold any row reached, or the best accuracy if none."""
    for key in reversed(TTA_KEYS):
        col = f"tta_{key}_s"
        hits = sorted((r for r in main if r[col] is not None), key=lambda r: r[col])
        if not hits:
            continue
        best, others = hits[0], hits[1:3]
        more = "; then " + ", ".join(f"{o['row']} {fmt_secs(o[col])} s" for o in others) if others else ""
        note = ""
        if others:      # every runner-up named that the spreads cannot tell from the fastest
            verdicts = [(o, *judge(best, o, col)) for o in others]
            ties = [o["row"] for o, verdict, _ in verdicts if verdict == "noise"]
            note = (f"; {' and '.join(ties)} {'is' if len(ties) == 1 else 'are'} within run-to-run noise of it"
                    if ties else "" if all(spread for *_, spread in verdicts) else f"; {NO_SPREAD}")
        return [f"Fastest to {key}% test accuracy: {best['row']} in {fmt_secs(best[col])} s of training "
                f"({len(hits)} row(s) got there{more}{note})."]
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


def conclusions(main, threads=None, limit=10):
    """Sentences computed from the tables; one whose inputs are missing is left out."""
    out = (_c_scratch_speedup(main) + _c_scratch_vs(main, "torch") + _c_scratch_vs(main, "torch-best")
           + _c_best_over_torch(main) + _c_accuracy_gap(main) + _c_time_to_accuracy(main) + _c_threads(threads)
           + _c_memory(main))
    return out[:limit]
