"""The torch-best rows' configuration, measured at the study's start (design rule 7: torch as
its users run it at their best).

For each model and execution with a torch-best row to run, each candidate of
plan.TORCH_BEST_CANDIDATES trains briefly: experiments.run in a subprocess of its own, on
synthetic data (the timing does not depend on the pixels) with the study's recipe, batch size,
precision and threads. The fastest steady-state images/s wins: the winner can differ between
models and GPUs, so each model is probed on its own. A candidate that fails (torch.compile with
no C++ compiler, say) is recorded with its reason and the others compete; a subprocess is
bounded by the row timeout.

study.json keeps it all under torch_best["<model>/<execution>"]: the candidates with their
figures, the choice and its flags. --resume reuses a recorded choice; a key whose candidates
all failed is probed again (a compiler installed since, say).
"""
import datetime
import glob
import json
import os
import sys

from .plan import TORCH_BEST_CANDIDATES, row_slug, variant_flags, variant_name
from .proc import display_command, run_logged

# A candidate's run: warm-up steps (compilation; the CUDA graph's 3 eager steps and capture),
# then steady steps until time_budget_s of steady state (a fixed step count would time a CNN's
# GPU steps for a few milliseconds and a ResNet-18's CPU steps for minutes), max_steps at most.
PROBE = {"gpu": dict(warmup_steps=10, time_budget_s=3, max_steps=5000),
         "multi-core": dict(warmup_steps=2, time_budget_s=8, max_steps=500)}
STEPS_PER_EPOCH = 100   # synthetic images: 100 batches, repeated as epochs (evaluated only at the end)
PROBE_TIMEOUT_S = 900   # at most, and never more than the study's row timeout


def key_of(r):
    return f"{r['model']}/{r['execution']}"


def probe_command(model, execution, candidate, st, folder):
    """The argv of one candidate's short run."""
    from ..train.recipes import resolve

    p = PROBE[execution]
    batch = resolve(st["recipe"], model, {})["batch_size"]
    cmd = [sys.executable, "-m", "experiments.run", "--impl", "torch",
           "--device", "cuda" if execution == "gpu" else "cpu", *variant_flags(candidate), "--model", model,
           "--recipe", st["recipe"], "--dataset", "synthetic", "--seed", str(st["seed"]),
           "--train-subset", str(batch * STEPS_PER_EPOCH), "--epochs", str(-(-p["max_steps"] // STEPS_PER_EPOCH)),
           "--eval-every", "1000000", "--test-subset", "256", "--max-steps", str(p["max_steps"]),
           "--warmup-steps", str(p["warmup_steps"]), "--time-budget", f"{p['time_budget_s']:g}",
           "--out", folder, "--runs-csv", os.path.join(os.path.dirname(folder), "runs.csv"), "--quiet"]
    if execution == "gpu":
        cmd += ["--precision", st["precision"]]
    else:
        cmd += ["--threads", str(st["threads"])]
    return cmd


def measure(cmd, folder, log_path, timeout_s):
    """Run one candidate; returns dict(status ok | failed, images_per_s, warmup_time_s, reason,
    wall_s) from the summary.json its run wrote."""
    res = run_logged(cmd, log_path, timeout_s)
    out = dict(status="failed", images_per_s=None, warmup_time_s=None, reason=res["reason"], wall_s=res["wall_s"])
    if res["status"] != "ok":
        out["reason"] = res["reason"] or res["status"]
        return out
    runs = sorted(glob.glob(os.path.join(folder, "*", "summary.json")))
    try:
        with open(runs[-1]) as f:
            s = json.load(f)
    except (IndexError, OSError, ValueError):
        out["reason"] = "no summary.json in its run folder"
        return out
    if not s.get("images_per_s"):
        out["reason"] = "no steady-state steps"
        return out
    out.update(status="ok", images_per_s=s["images_per_s"], warmup_time_s=s.get("warmup_time_s"), reason="")
    return out


def probe(model, execution, st, out, log=print):
    """Measure every candidate of one model and execution; returns its study.json record."""
    slug = row_slug(f"{model}/{execution}")
    timeout = min(st["row_timeout_s"], PROBE_TIMEOUT_S)
    cands = []
    for c in TORCH_BEST_CANDIDATES[execution]:
        name = variant_name(c)
        tag = name.replace(" + ", "+").replace(" ", "-")       # channels-last+CUDA-graph
        folder = os.path.join(out, "probe", slug, tag)
        cmd = probe_command(model, execution, c, st, folder)
        log_path = os.path.join(out, "logs", "probe", f"{slug}_{tag}.log")
        log(f"probe {model}/{execution}: {name} ...")
        res = measure(cmd, folder, log_path, timeout)     # the tests fake this one
        cands.append(dict(name=name, config=c, flags=variant_flags(c), log=os.path.relpath(log_path, out),
                          command=display_command(cmd), **res))
        log(f"probe {model}/{execution}: {name}: " + (f"{res['images_per_s']:,.1f} img/s" if res["status"] == "ok"
                                                       else f"failed: {res['reason']}"))
    ok = [c for c in cands if c["status"] == "ok"]
    best = max(ok, key=lambda c: c["images_per_s"]) if ok else None
    rec = dict(candidates=cands, choice=best["config"] if best else None, name=best["name"] if best else None,
               flags=best["flags"] if best else None,
               probe=dict(PROBE[execution], dataset="synthetic", timeout_s=timeout),
               measured=datetime.datetime.now().isoformat(timespec="seconds"))
    log(f"probe {model}/{execution}: torch-best = " + (f"{best['name']}" if best else "none: every candidate failed"))
    return rec


def dry_run_note(r, header):
    """For --dry-run, before the row's command is built: a torch-best row takes the choice
    study.json records (a study resumed); returns what to print after the command: that choice,
    or the candidates the probe will choose from."""
    rec = ((header or {}).get("torch_best") or {}).get(key_of(r)) or {}
    if rec.get("choice") is not None:
        r["best_flags"] = list(rec["flags"])
        return f"(torch-best: {rec['name']}, recorded in study.json)"
    names = " | ".join(variant_name(c) for c in TORCH_BEST_CANDIDATES[r["execution"]])
    return f"+ the probe's fastest of: {names}"


def choose(rows, st, out, header, gpu, log=print):
    """Give each torch-best row of `rows` its flags (r['best_flags'], r['variant']) or the
    reason it cannot run (r['best_error']), probing each model and execution that study.json
    (header['torch_best']) holds no choice for yet. GPU rows where there is no GPU are not
    probed (they are skipped)."""
    best = header.setdefault("torch_best", {})
    probed = set()      # once a session: the other seeds of a key whose candidates all failed wait for --resume
    for r in rows:
        if r.get("impl") != "torch-best" or (r["gpu"] and not gpu):
            continue
        key = key_of(r)
        if key not in probed and (best.get(key) or {}).get("choice") is None:   # eager's choice is {}
            best[key] = probe(r["model"], r["execution"], st, out, log=log)
            probed.add(key)
        rec = best[key]
        if rec.get("choice") is not None:
            r["best_flags"], r["variant"] = list(rec["flags"]), rec["name"]
        else:
            why = "; ".join(f"{c['name']}: {c['reason']}" for c in rec["candidates"])
            r["best_error"] = f"no torch-best candidate ran in the probe ({why})"
