"""summary.json, the runs.csv row and the closing table of a run."""
import datetime


def build_summary(a, cfg, ds, state, res, status, wall_s):
    last = state.get("last_epoch") or {}
    steady_s, steady_n = state.get("steady_time_s", 0.0), state.get("steady_images", 0)
    machine = cfg["machine"]
    ips = steady_n / steady_s if steady_s > 0 else None
    energy = res.get("energy_j")
    return {
        "run_id": cfg["run_id"], "status": status, "stopped_by": state.get("stopped_by"),
        "time_budget_s": getattr(a, "time_budget", None), "impl": a.impl, "backend_or_device": cfg["backend_or_device"],
        "model": a.model, "threads": a.threads, "batch_size": a.batch_size, "precision": a.precision,
        "memory_format": getattr(a, "memory_format", None), "cuda_graph": bool(getattr(a, "cuda_graph", False)),
        "compile": bool(getattr(a, "compile", False)),
        "optimizer": a.optimizer, "lr": a.lr, "epochs": state.get("epochs_done", 0), "steps": state.get("step", 0),
        "dataset": ds.source, "n_train": ds.n_train, "n_test": ds.n_test, "seed": a.seed,
        "data_on_gpu": bool(getattr(a, "device_data", False)),
        "world_size": a.dist.world_size if getattr(a, "dist", None) else 1,
        "images_per_s_per_process": ips / a.dist.world_size if ips and getattr(a, "dist", None) else ips,
        "train_time_s": state.get("train_time_s", 0.0), "images_per_s": ips,
        "warmup_steps": min(a.warmup_steps, state.get("step", 0)), "warmup_time_s": state.get("warmup_time_s", 0.0),
        "data_time_s": state.get("data_time_s", 0.0), "eval_time_s": state.get("eval_time_s", 0.0),
        "wall_time_s": wall_s,
        "peak_rss_mb": res.get("peak_rss_mb"), "mean_cpu_percent": res.get("mean_cpu_percent"),
        "peak_gpu_mem_mb": res.get("peak_gpu_mem_mb"), "mean_gpu_util_percent": res.get("mean_gpu_util_percent"),
        "energy_j": energy, "energy_per_image_j": energy / steady_n if energy and steady_n else None,
        "final_train_loss": last.get("train_loss"), "final_train_acc": last.get("train_acc"),
        "final_test_loss": last.get("test_loss"), "final_test_acc": last.get("test_acc"),
        "time_to_accuracy": state.get("time_to_accuracy") or {},
        **_tta_columns(state.get("time_to_accuracy") or {}),
        "cpu": machine.get("cpu_model"), "gpu": machine.get("gpu_name"),
        "date": datetime.date.today().isoformat(),
    }


SCALING_KEYS = ("impl", "backend_or_device", "model", "batch_size", "precision", "dataset", "data_on_gpu", "gpu")


def add_scaling(summary, runs):
    """A data-parallel run's scaling efficiency: its images/s over world_size times those of
    the newest completed one-process run of the same configuration (per-GPU batch and all) in
    `runs` (runs.csv's rows); None without one. Rank 0 alone writes, so the rows are whole."""
    world = summary.get("world_size") or 1
    summary.update(one_gpu_images_per_s=None, speedup=None, scaling_efficiency=None, scaling_baseline=None)
    if world == 1 or not summary.get("images_per_s"):
        return summary
    want = {k: "" if summary.get(k) is None else str(summary.get(k)) for k in SCALING_KEYS}
    want["data_on_gpu"] = str(bool(summary.get("data_on_gpu")))
    for r in reversed(runs):
        if (r.get("status") == "completed" and r.get("world_size", "") in ("", "1") and r.get("images_per_s")
                and all(r.get(k, "") == v for k, v in want.items())):
            one = float(r["images_per_s"])
            summary.update(one_gpu_images_per_s=one, speedup=summary["images_per_s"] / one,
                           scaling_efficiency=summary["images_per_s"] / (world * one),
                           scaling_baseline=r.get("run_dir"))
            break
    return summary


def _tta_columns(tta):
    """runs.csv's flat view of time_to_accuracy: training seconds and epochs to each threshold."""
    out = {}
    for key in ("50", "80", "85", "90"):
        hit = tta.get(key)
        out[f"tta_{key}_s"] = hit["train_time_s"] if hit else None
        out[f"tta_{key}_epoch"] = hit["epoch"] if hit else None
    return out


def runs_row(summary, run_dir):
    return dict(summary, run_dir=run_dir)


def print_summary(s, run_dir, runs_csv):
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    rows = [
        ("run", f"{s['impl']} {s['backend_or_device']} {s['model']} ({s['status']})"),
        ("data", f"{s['dataset']} {s['n_train']} train / {s['n_test']} test"
                 + (", resident on the GPU" if s.get("data_on_gpu") else "")),
        ("steps", f"{s['steps']} in {s['epochs']} epoch(s), batch {s['batch_size']}, {s['threads']} thread(s)"
                  + (f"; stopped by the {s['time_budget_s']:g} s time budget" if s.get("stopped_by") == "time_budget"
                     else "")),
        ("train time", f"{f(s['train_time_s'], '.1f')} s (warm-up {s['warmup_steps']} steps "
                       f"{f(s['warmup_time_s'], '.2f')} s; data {f(s['data_time_s'], '.1f')} s; "
                       f"eval {f(s['eval_time_s'], '.1f')} s apart)"),
        ("throughput", f"{f(s['images_per_s'], '.1f')} images/s (steady state)"
                       + (f", {s['world_size']} processes, {f(s['images_per_s_per_process'], '.1f')} each"
                          if s.get("world_size", 1) > 1 else "")),
    ]
    if s.get("world_size", 1) > 1:
        rows.append(("scaling", "no completed one-process run of this configuration in the runs table: run the "
                                "same command without --gpus for the scaling efficiency"
                     if s.get("scaling_efficiency") is None else
                     f"{s['speedup']:.2f}x one process's {s['one_gpu_images_per_s']:.1f} images/s, efficiency "
                     f"{s['scaling_efficiency']:.0%} of {s['world_size']}x"))
    rows += [
        ("train", f"loss {f(s['final_train_loss'], '.4f')}  acc {f(s['final_train_acc'], '.2%')}"),
        ("test", f"loss {f(s['final_test_loss'], '.4f')}  acc {f(s['final_test_acc'], '.2%')}"),
        ("to accuracy", "  ".join(f"{k}%: {v['train_time_s']:.1f} s (epoch {v['epoch']})"
                                  for k, v in s["time_to_accuracy"].items()) or "below 50% test accuracy"),
        ("memory / CPU", f"peak RSS {f(s['peak_rss_mb'], '.0f')} MB, mean CPU {f(s['mean_cpu_percent'], '.0f')}%"),
    ]
    if s.get("peak_gpu_mem_mb") is not None:
        rows.append(("GPU", f"peak {f(s['peak_gpu_mem_mb'], '.0f')} MB, util {f(s['mean_gpu_util_percent'], '.0f')}%, "
                            f"energy {f(s['energy_j'], '.0f')} J"))
    rows += [("run folder", run_dir), ("runs table", runs_csv)]
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
