"""Running the study's rows: each in a subprocess of its own (its memory figures its own),
its output in a log, a timeout for hangs, Ctrl-C stopping the row in hand, and study.csv
rewritten after every row so that --resume can continue. Before the rows, the probe gives
the torch-best rows their configuration (probe.py)."""
import datetime
import json
import os
import time

from ..record.records import write_json
from . import probe
from .files import STUDY_COLUMNS, read_study_csv, study_header, write_study_csv
from .plan import row_command, row_slug
from .proc import display_command, run_logged


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
    log_path = os.path.join(out, "logs", row_slug(r["row"]) + ".log")
    line = {k: r.get(k) for k in STUDY_COLUMNS}
    line.update(log=os.path.relpath(log_path, out), command=display_command(cmd))
    t0 = time.perf_counter()
    try:
        line.update(run_logged(cmd, log_path, st["row_timeout_s"]))
    except KeyboardInterrupt:
        line.update(status="interrupted", reason="interrupted by the user", returncode=None,
                    wall_s=round(time.perf_counter() - t0, 1))
        raise _Interrupted(line) from None
    if r["kind"] == "train":
        d = _run_dir(out, r["row"])
        line["run_dir"] = os.path.relpath(d, out) if d else None
    return line


class _Interrupted(Exception):
    def __init__(self, line):
        self.line = line


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


def gpu_present():
    from ..record.sampler import gpu_available

    return gpu_available(0)


def run_study(rows, st, out, header, gpu, argv, log=print, warn=None):
    """Run the rows not yet ok in `out` (a GPU row where there is none is recorded as skipped),
    keeping study.json and study.csv current; returns 0, 1 (a row not ok) or 130 (Ctrl-C)."""
    import sys

    warn = warn or (lambda m: print(m, file=sys.stderr))
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
    log(f"study {st['preset']}: {st['about']}")
    log(f"  {len(rows)} row(s) selected, {len(rows) - len(todo)} already ok; writing {out}"
        + ("" if gpu else "; no GPU here: GPU rows are skipped"))
    try:
        probe.choose(todo, st, out, header, gpu, log=log)
    except KeyboardInterrupt:
        write_json(header_path, header)
        warn(f"the torch-best probe was interrupted; no row ran. Continue with: "
             f"python -m experiments.study --out {out} --resume")
        return 130
    write_json(header_path, header)
    code = 0
    for i, r in enumerate(todo, 1):
        tag = f"[{i}/{len(todo)}] {r['row']}"
        if r["gpu"] and not gpu:
            line = {k: r.get(k) for k in STUDY_COLUMNS}
            line.update(status="skipped", reason="no GPU here (NVML finds none)")
        elif r.get("best_error"):
            line = {k: r.get(k) for k in STUDY_COLUMNS}
            line.update(status="failed", reason=r["best_error"])
        else:
            log(f"{tag} ...")
            try:
                line = run_row(r, st, out)
            except _Interrupted as e:
                done[r["row"]] = e.line
                write_study_csv(csv_path, list(done.values()))
                warn(f"{tag}: interrupted; the study keeps what finished. Continue with: "
                     f"python -m experiments.study --out {out} --resume")
                return 130
        done[r["row"]] = line
        write_study_csv(csv_path, list(done.values()))
        note = _row_note(line, out)
        log(f"{tag}: {line['status']}" + (f" in {line['wall_s']:.0f} s" if line.get("wall_s") is not None else "")
            + (f" - {note}" if note else ""))
        if line["status"] in ("failed", "diverged", "interrupted"):
            code = 1
    header["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    write_json(header_path, header)
    failed = [ln["row"] for ln in done.values() if ln["status"] not in ("ok", "skipped")]
    log(f"study.csv: {csv_path}" + (f"; not ok: {', '.join(failed)}" if failed else ""))
    return code
