"""The inference benchmark's records: its CSV columns (results and per-iteration latencies),
the appending CSV writer, one row's fields, and the lines printed for them."""
import csv
import os

import numpy as np

from .timing import percentiles

COLUMNS = ["run_id", "machine", "impl", "backend_or_device", "engine", "model", "precision", "batch_size",
           "threads", "warmup", "warmup_s", "iters", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99",
           "latency_ms_mean", "images_per_s", "h2d_ms_p50", "max_abs_diff_vs_torch", "status", "reason", "date"]
KEY_COLUMNS = ["impl", "backend_or_device", "engine", "model", "precision", "batch_size", "threads"]
LATENCY_COLUMNS = ["run_id", *KEY_COLUMNS, "iteration", "latency_ms", "h2d_ms"]


def latencies_path(csv_path):
    return os.path.splitext(csv_path)[0] + "_latencies.csv"


class CsvMismatch(ValueError):
    """An existing CSV has other columns than this benchmark writes."""


class CsvSink:
    """Appends rows to a CSV, writing the header into a new or empty file; refuses a file whose
    header differs (a column change would shift every later row)."""

    def __init__(self, path, columns):
        self.path, self.columns = path, columns
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path, newline="") as f:
                head = next(csv.reader(f), [])
            if head != columns:
                raise CsvMismatch(f"{path} has other columns ({', '.join(head[:6])}...) than this benchmark "
                                 f"writes; give another --csv")

    def start(self):
        """Write the header into a new or empty file."""
        self.write([])

    def write(self, rows):
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            if new:
                w.writeheader()
            for r in rows:
                w.writerow({c: r.get(c, "") for c in self.columns})


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def make_row(cfg, batch, base, machine, status, reason="", result=None):
    row = dict(base, machine=machine, impl=cfg.impl, backend_or_device=cfg.where, engine=cfg.engine,
               model=cfg.model, precision=cfg.precision, batch_size=batch,
               threads="" if cfg.threads is None else cfg.threads, status=status, reason=reason)
    if result:
        row.update(warmup=result["warmup"], warmup_s=_fmt(result["warmup_s"], ".3f"),
                   max_abs_diff_vs_torch=_fmt(result["diff"], ".3e"))
        lat = result["latencies"]
        if lat:
            p = percentiles(lat)
            row.update({k: f"{v:.4f}" for k, v in p.items()})
            row.update(iters=len(lat), images_per_s=f"{batch * len(lat) / sum(lat):.2f}")
        if result["h2d"]:
            row["h2d_ms_p50"] = f"{np.median(result['h2d']) * 1e3:.4f}"
    return row


def print_row(i, n, row, out=print):
    key = f"{row['impl']}-{row['backend_or_device']} {row['engine']} {row['model']} {row['precision']}"
    t = f"{row['threads']}t" if row["threads"] != "" else "gpu"
    if row["status"] == "ok":
        h2d = f"  h2d {float(row['h2d_ms_p50']):.3f} ms" if row.get("h2d_ms_p50") else ""
        diff = row.get("max_abs_diff_vs_torch") or "-"
        out(f"[{i:>3}/{n}] {key:42s} b={row['batch_size']:<4} {t:>4}  p50 {float(row['latency_ms_p50']):9.3f} ms  "
            f"{float(row['images_per_s']):11.1f} img/s  ({row['iters']} iters){h2d}  diff {diff}")
    else:
        out(f"[{i:>3}/{n}] {key:42s} b={row['batch_size']:<4} {t:>4}  {row['status']}: {row['reason']}")


def print_table(rows, out=print):
    out("")
    head = (f"{'impl':8s} {'backend':8s} {'engine':12s} {'model':9s} {'prec':5s} {'batch':>5s} {'thr':>3s} "
            f"{'p50 ms':>9s} {'p90 ms':>9s} {'p99 ms':>9s} {'img/s':>11s} {'h2d ms':>8s} {'diff':>9s}  status")
    out(head)
    out("-" * len(head))
    i = 0
    while i < len(rows):
        r = rows[i]
        if r["status"] != "ok":
            # collapse a configuration's consecutive non-ok rows with one reason into one line
            j = i
            while j + 1 < len(rows) and all(rows[j + 1][c] == r[c] for c in KEY_COLUMNS + ["status", "reason"]
                                            if c != "batch_size"):
                j += 1
            batches = str(r["batch_size"]) if j == i else f"{r['batch_size']}-{rows[j]['batch_size']}"
            out(f"{r['impl']:8s} {r['backend_or_device']:8s} {r['engine']:12s} {r['model']:9s} {r['precision']:5s} "
                f"{batches:>5s} {str(r['threads']):>3s}  {r['status']}: {r['reason']}")
            i = j + 1
            continue
        h2d = r.get("h2d_ms_p50") or "-"
        h2d = f"{float(h2d):8.3f}" if h2d != "-" else f"{h2d:>8s}"
        out(f"{r['impl']:8s} {r['backend_or_device']:8s} {r['engine']:12s} {r['model']:9s} {r['precision']:5s} "
            f"{r['batch_size']:>5} {str(r['threads']):>3s} {float(r['latency_ms_p50']):9.3f} "
            f"{float(r['latency_ms_p90']):9.3f} {float(r['latency_ms_p99']):9.3f} {float(r['images_per_s']):11.1f} "
            f"{h2d} {r.get('max_abs_diff_vs_torch') or '-':>9s}  ok")
        i += 1
