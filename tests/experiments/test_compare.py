"""experiments.compare on hand-built study folders: numbers, tables, charts, conclusions, CLI."""
import csv
import json
import os

import pytest

from experiments import compare
from experiments.report import study_charts, study_conclusions, study_load, study_tables

N_TRAIN, BATCH = 1000, 100

# row id -> what the fixture writes for it. ips: images/s; epochs: [(epoch_time_s, images, test_acc)];
# gpu: fill the GPU columns. A row without "ips" has no run folder.
ROWS = {
    "cnn/1-core/scratch": dict(backend="numpy", threads=1, ips=100.0,
                               epochs=[(10.0, 1000, 0.30), (10.0, 1000, 0.55)], tta={"50": 20.0}, rss=300),
    "cnn/1-core/torch": dict(backend="cpu", threads=1, ips=200.0, epochs=[(5.0, 1000, 0.31), (5.0, 1000, 0.56)],
                             tta={"50": 10.0}, rss=900),
    "cnn/multi-core/scratch": dict(backend="numba", threads=2, ips=400.0,
                                   epochs=[(2.5, 1000, 0.30), (2.5, 1000, 0.52)], tta={"50": 5.0}, rss=450),
    "cnn/multi-core/torch": dict(backend="cpu", threads=2, status="failed",
                                 reason="error: the fixture's torch ran out of threads"),
    "cnn/gpu/scratch": dict(backend="cupy", ips=20000.0, epochs=[(0.05, 1000, 0.33), (0.05, 1000, 0.60)],
                            tta={"50": 0.1}, rss=2000, gpu=dict(mem=3000.0, util=80.0, energy=0.02)),
    "cnn/gpu/torch": dict(backend="cuda", ips=25000.0, epochs=[(0.04, 1000, 0.32), (0.04, 1000, 0.58)],
                          tta={"50": 0.08}, rss=2500, gpu=dict(mem=1500.0, util=70.0, energy=0.015)),
    # stopped by its time budget after 100 of 1000 images: no full epoch
    "resnet18/1-core/scratch": dict(backend="numpy", threads=1, ips=20.0, epochs=[(5.0, 100, 0.12)],
                                    stopped_by="time_budget", rss=1800),
    "resnet18/gpu/scratch": dict(backend="cupy", status="skipped", reason="no GPU here (NVML finds none)"),
}

MACHINE = dict(cpu_model="Test CPU 9000", logical_cores=4, usable_cores=4, ram_gb=16.0, gpu_name="Fake GPU X",
               gpu_memory_mb=16384)


def _write_csv(path, columns, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r.get(k) for k in columns})


def _run_folder(d, row, spec, seed=0):
    model, execution, impl = row.split("/")[:3]
    run_dir = os.path.join(d, "runs", row.replace("/", "_"), f"20260101-000000-{impl}-{model}-s{seed}")
    os.makedirs(run_dir)
    gpu = spec.get("gpu")
    eps = spec["epochs"]
    last_acc = eps[-1][2]
    summary = dict(status="completed", stopped_by=spec.get("stopped_by", "epochs"), impl=impl,
                   backend_or_device=spec["backend"], model=model, threads=spec.get("threads"), batch_size=BATCH,
                   precision="fp32", epochs=len(eps), steps=10 * len(eps), dataset="synthetic", n_train=N_TRAIN,
                   n_test=500, train_time_s=sum(e[0] for e in eps), images_per_s=spec["ips"],
                   peak_rss_mb=spec["rss"], mean_cpu_percent=100.0 * (spec.get("threads") or 1),
                   peak_gpu_mem_mb=gpu and gpu["mem"], mean_gpu_util_percent=gpu and gpu["util"],
                   energy_per_image_j=gpu and gpu["energy"], final_train_acc=last_acc + 0.05,
                   final_test_acc=last_acc,
                   time_to_accuracy={k: dict(train_time_s=v, epoch=2) for k, v in spec.get("tta", {}).items()},
                   gpu=MACHINE["gpu_name"] if gpu else None, seed=seed, warmup_time_s=spec.get("warmup", 0.5),
                   memory_format="nchw", cuda_graph=False)
    summary.update(spec.get("summary", {}))     # what a torch-best run records of its configuration
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f)
    _write_csv(os.path.join(run_dir, "epochs.csv"), ["epoch", "train_acc", "test_acc", "epoch_time_s",
                                                     "train_images_per_s"],
               [dict(epoch=i, train_acc=a + 0.05, test_acc=a, epoch_time_s=t, train_images_per_s=n / t)
                for i, (t, n, a) in enumerate(eps)])
    _write_csv(os.path.join(run_dir, "steps.csv"), ["step", "epoch", "loss", "batch_acc", "step_time_s"],
               [dict(step=s, epoch=s // 10, loss=2.3 - 0.05 * s, batch_acc=0.1, step_time_s=0.1)
                for s in range(0, 10 * len(eps), 5)])
    _write_csv(os.path.join(run_dir, "resources.csv"), ["t_s", "rss_mb", "cpu_percent", "gpu_mem_used_mb",
                                                        "gpu_power_w"],
               [dict(t_s=0.2 * (i + 1), rss_mb=spec["rss"] * (0.8 + 0.02 * i), cpu_percent=100,
                     gpu_mem_used_mb=gpu and gpu["mem"] * i / 10, gpu_power_w=gpu and 250.0) for i in range(10)])
    return os.path.relpath(run_dir, d)


def make_study(d, rows=None, sweeps=True, finished=True, seeds=None, header_extra=None):
    """A study folder as experiments.study writes it, from ROWS (or `rows`). Without `seeds`, as
    a study from before seeds wrote it (ids cnn/1-core/scratch, no seeds in study.json); with
    seeds, each row once per seed (ids cnn/1-core/scratch/s0), a spec's by_seed list giving each
    seed's own figures."""
    d = str(d)
    os.makedirs(d, exist_ok=True)
    rows = ROWS if rows is None else rows
    settings = dict(preset="fixture", recipe="seed", epochs=2, dataset="synthetic", cpu_budget_s=20,
                    gpu_budget_s=None, threads=2, precision="fp32")
    if seeds is not None:
        settings.update(seeds=list(seeds), seed=seeds[0], torch_best=True)
    header = dict(settings=settings, machine=MACHINE, versions=dict(python="3.11", numpy="2.0", torch="2.5",
                                                                    cupy="13.0"),
                  git_commit="abc123", started="2026-01-01T00:00:00", **(header_extra or {}))
    if finished:
        header["finished"] = "2026-01-01T01:00:00"
    with open(os.path.join(d, "study.json"), "w") as f:
        json.dump(header, f)
    lines = []
    for row, spec in rows.items():
        model, execution, impl = row.split("/")
        for i, seed in enumerate([None] if seeds is None else seeds):
            one = dict(spec, **(spec.get("by_seed") or [{}] * (i + 1))[i])
            rid = row if seed is None else f"{row}/s{seed}"
            run_dir = _run_folder(d, rid, one, seed or 0) if one.get("ips") else ""
            lines.append(dict(row=rid, kind="train", model=model, execution=execution, impl=impl, seed=seed,
                              backend_or_device=one["backend"], threads=one.get("threads"),
                              status=one.get("status", "ok"), reason=one.get("reason", ""), run_dir=run_dir))
    if sweeps:
        lines.append(dict(row="sweep/batch-gpu/cnn/64", kind="sweep-batch-gpu", model="cnn", status="failed",
                          reason="error: fixture GPU sweep failed"))
        _write_sweeps(d)
    columns = ["row", "kind", "model", "execution", "impl", "backend_or_device", "threads", "status", "reason",
               "returncode", "wall_s", "run_dir", "log", "command"]    # study.csv before seeds
    if seeds is not None:
        from experiments.matrix.files import STUDY_COLUMNS as columns
    _write_csv(os.path.join(d, "study.csv"), columns, [{k: ln.get(k) for k in columns} for ln in lines])
    return d


def _write_sweeps(d):
    from experiments.measure.train_steps import CSV_COLUMNS, GPU_CSV_COLUMNS
    from experiments.measure.thread_scaling import COLUMNS

    _write_csv(os.path.join(d, "sweeps", "threads", "cnn-2cores.csv"), COLUMNS,
               [dict(cpu="Test CPU 9000", cores=2, model="cnn", batch_size=64, impl=impl, threads=t,
                     images_per_s=base * s, images_per_s_min=base * s * 0.95, images_per_s_max=base * s * 1.05,
                     speedup=s, efficiency=s / t, date="2026-01-01")
                for impl, base in (("scratch-numba", 300.0), ("torch-cpu", 250.0)) for t, s in ((1, 1.0), (2, 1.8))])
    cpu = [dict(cpu="Test CPU 9000", threads=2, model="cnn", batch_size=b, scratch_backend="numba",
                scratch_images_per_s=100.0 * b ** 0.5, torch_images_per_s=90.0 * b ** 0.5, ratio=1.11,
                date="2026-01-01") for b in (16, 64, 256)]
    cpu.append(dict(cpu[0], scratch_images_per_s=999.0))   # a repeated measurement: the last one counts
    _write_csv(os.path.join(d, "sweeps", "batch_cpu.csv"), CSV_COLUMNS, cpu)
    _write_csv(os.path.join(d, "sweeps", "batch_gpu.csv"), GPU_CSV_COLUMNS,
               [dict(gpu="Fake GPU X", model="cnn", batch_size=b, precision="fp32", cuda_graph=0, torch_cuda_graph=0,
                     scratch_images_per_s=1000.0 * b, torch_images_per_s=1200.0 * b, ratio=0.83,
                     scratch_peak_gpu_mem_mb=100 * b, torch_peak_gpu_mem_mb=80 * b, date="2026-01-01")
                for b in (16, 64, 256)])


def _by_row(main):
    return {r["row"]: r for r in main}


# ---------------------------------------------------------------------------- numbers
def test_main_table_numbers(tmp_path):
    main = _by_row(study_tables.main_table(study_load.load_study(make_study(tmp_path))))
    assert list(main) == ["cnn/1-core/scratch", "cnn/1-core/torch", "cnn/multi-core/scratch", "cnn/multi-core/torch",
                          "cnn/gpu/scratch", "cnn/gpu/torch", "resnet18/1-core/scratch", "resnet18/gpu/scratch"]
    assert main["cnn/1-core/scratch"]["speedup_vs_1core_scratch"] == pytest.approx(1.0)
    assert main["cnn/1-core/torch"]["speedup_vs_1core_scratch"] == pytest.approx(2.0)
    assert main["cnn/multi-core/scratch"]["speedup_vs_1core_scratch"] == pytest.approx(4.0)
    assert main["cnn/gpu/scratch"]["speedup_vs_1core_scratch"] == pytest.approx(200.0)
    # scratch/torch on both rows of the pair; none where torch failed
    for row in ("cnn/gpu/scratch", "cnn/gpu/torch"):
        assert main[row]["scratch_over_torch"] == pytest.approx(20000 / 25000)
    assert main["cnn/1-core/torch"]["scratch_over_torch"] == pytest.approx(0.5)
    assert main["cnn/multi-core/scratch"]["scratch_over_torch"] is None
    # full epochs: the mean; budget-stopped with no full epoch: n_train / images/s, flagged
    assert main["cnn/1-core/scratch"]["epoch_time_s"] == pytest.approx(10.0)
    assert main["cnn/1-core/scratch"]["epoch_time_estimated"] is False
    r18 = main["resnet18/1-core/scratch"]
    assert r18["epoch_time_s"] == pytest.approx(N_TRAIN / 20.0) and r18["epoch_time_estimated"] is True
    assert r18["epochs"] == pytest.approx(0.1) and r18["stopped_by"] == "time_budget"
    assert r18["speedup_vs_1core_scratch"] == pytest.approx(1.0)
    gpu = main["cnn/gpu/scratch"]
    assert (gpu["peak_gpu_mem_mb"], gpu["mean_gpu_util_percent"], gpu["energy_per_image_j"]) == (3000, 80, 0.02)
    assert gpu["tta_50_s"] == pytest.approx(0.1) and gpu["tta_80_s"] is None
    failed = main["cnn/multi-core/torch"]
    assert failed["status"] == "failed" and "ran out of threads" in failed["reason"]
    assert failed["images_per_s"] is None and failed["run_dir"] is None
    assert main["resnet18/gpu/scratch"]["status"] == "skipped"


def test_files_columns_and_markdown(tmp_path, capsys):
    d = make_study(tmp_path / "s")
    assert compare.main([d, "--no-charts"]) == 0
    out = os.path.join(d, "compare")
    with open(os.path.join(out, "main.csv")) as f:
        header = next(csv.reader(f))
    assert header == study_tables.MAIN_COLUMNS
    # the documented columns, spelled out: renaming one breaks readers of main.csv
    assert header[:19] == ["row", "model", "execution", "impl", "variant", "backend_or_device", "threads",
                           "precision", "batch_size", "dataset", "status", "reason", "n", "seeds", "images_per_s",
                           "images_per_s_std", "speedup_vs_1core_scratch", "scratch_over_torch",
                           "scratch_over_torch_best"]
    for col in header:
        assert col in compare.__doc__, f"{col} is not documented in the module docstring"
    import pandas as pd

    df = pd.read_csv(os.path.join(out, "main.csv"))
    assert df.loc[df.row == "cnn/gpu/torch", "speedup_vs_1core_scratch"].item() == pytest.approx(250.0)
    assert df.loc[df.row == "resnet18/1-core/scratch", "epoch_time_estimated"].item() == True  # noqa: E712
    md = open(os.path.join(out, "main.md")).read()
    assert md == capsys.readouterr().out.split("wrote:")[0].rstrip("\n") + "\n"
    for text in ("Test CPU 9000", "Fake GPU X", "fixture", "error: the fixture's torch ran out of threads",
                 "no GPU here (NVML finds none)", "error: fixture GPU sweep failed", "20,000", "4.00x", "200x",
                 "55.0%", "50.0*", "peak GPU MB"):
        assert text in md, text
    assert "nan" not in md.lower()
    threads = pd.read_csv(os.path.join(out, "sweeps_threads.csv"))
    assert list(threads.columns) == study_load.THREADS_COLUMNS and len(threads) == 4
    batch = pd.read_csv(os.path.join(out, "sweeps_batch.csv"))
    assert list(batch.columns) == study_load.BATCH_COLUMNS
    assert sorted(batch["where"].unique()) == ["cpu", "gpu"] and len(batch) == 6
    assert batch.loc[(batch["where"] == "cpu") & (batch.batch_size == 16), "scratch_images_per_s"].item() == 999.0
    assert set(batch.loc[batch["where"] == "gpu", "scratch_backend"]) == {"cupy"}


def test_cpu_only_markdown_drops_empty_gpu_columns(tmp_path):
    rows = {k: v for k, v in ROWS.items() if "gpu" not in k}
    study = study_load.load_study(make_study(tmp_path, rows, sweeps=False))
    main = study_tables.main_table(study)
    md = study_tables.markdown(study, main, study_conclusions.conclusions(main))
    assert "peak GPU MB" not in md and "J/image" not in md and "Thread scaling" not in md


# ---------------------------------------------------------------------------- charts
CHARTS = ["throughput.png", "speedup.png", "accuracy_vs_time.png", "loss_curves.png", "memory_over_time.png",
          "thread_scaling.png", "batch_scaling.png", "summary.png"]


def test_every_chart_is_written(tmp_path):
    d = make_study(tmp_path / "s")
    out = str(tmp_path / "out")
    assert compare.main([d, "--out", out]) == 0
    for name in CHARTS:
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name


def test_charts_without_data_are_skipped(tmp_path, capsys):
    rows = {k: v for k, v in ROWS.items() if "ips" not in v}    # the failed and the skipped rows only
    d = make_study(tmp_path / "s", rows, sweeps=False, finished=False)
    assert compare.main([d]) == 0
    out = capsys.readouterr().out
    written = set(os.listdir(os.path.join(d, "compare")))
    assert written == {"main.csv", "main_by_seed.csv", "main.md", "summary.png"}
    for name in set(CHARTS) - {"summary.png"}:
        assert f"note: {name} skipped" in out
    assert "not finished" in out


# ---------------------------------------------------------------------------- conclusions
def _conclusions(d, rows):
    study = study_load.load_study(make_study(d, rows, sweeps=False))
    return study_conclusions.conclusions(study_tables.main_table(study), study.threads)


def test_conclusions_follow_the_data(tmp_path):
    text = " ".join(_conclusions(tmp_path / "a", ROWS))
    assert ("Scratch against its own 1-core row: cnn multi-core (numba) 4.00x at 400 images/s, gpu (cupy) 200x at "
            "20,000 images/s." in text)
    assert "torch is faster than scratch on every execution measured" in text
    assert "Fastest to 50% test accuracy: cnn/gpu/torch in 0.08 s" in text
    # swap the two GPU rows' throughput and the two CPU rows': scratch now wins everywhere
    swapped = {k: dict(v) for k, v in ROWS.items()}
    for a, b in (("cnn/gpu/scratch", "cnn/gpu/torch"), ("cnn/1-core/scratch", "cnn/1-core/torch")):
        swapped[a]["ips"], swapped[b]["ips"] = ROWS[b]["ips"], ROWS[a]["ips"]
    text2 = " ".join(_conclusions(tmp_path / "b", swapped))
    assert "scratch is faster than torch on every execution measured" in text2
    assert "scratch (cupy) is 1.25x as fast as torch" in text2
    assert "cnn multi-core (numba) 2.00x at 400 images/s, gpu (cupy) 125x at 25,000 images/s" in text2
    assert text != text2


def test_conclusions_skip_what_is_missing(tmp_path):
    rows = {k: dict(v, tta={}) for k, v in ROWS.items() if k.startswith("cnn/1-core")}
    text = " ".join(_conclusions(tmp_path, rows))
    assert "No row reached 50% test accuracy" in text and "Fastest to" not in text
    assert "Thread scaling" not in text and "GPU memory" not in text
    assert study_conclusions.conclusions([]) == []


# ---------------------------------------------------------------------------- partial folders and CLI
def test_partial_study_never_crashes(tmp_path):
    d = make_study(tmp_path / "s", sweeps=False, finished=False)
    # a row still running: a run folder study.csv does not list yet, no summary, header-only CSVs
    running = os.path.join(d, "runs", "resnet18_1-core_torch", "20260101-000001-torch-resnet18")
    os.makedirs(running)
    open(os.path.join(running, "epochs.csv"), "w").write("epoch,test_acc,epoch_time_s\n")
    open(os.path.join(running, "resources.csv"), "w").write("")
    # a truncated summary.json and a missing epochs.csv on a listed row
    r = os.path.join(d, study_load.read_lines(os.path.join(d, "study.csv"))[0]["run_dir"])
    open(os.path.join(r, "summary.json"), "w").write('{"images_per')
    os.remove(os.path.join(r, "epochs.csv"))
    os.makedirs(os.path.join(d, "sweeps", "threads"))
    open(os.path.join(d, "sweeps", "batch_cpu.csv"), "w").write("")
    study = study_load.load_study(d)
    main = _by_row(study_tables.main_table(study))
    assert main["resnet18/1-core/torch"]["status"] == "unrecorded"
    assert "no summary.json" in main["cnn/1-core/scratch"]["reason"]
    assert main["cnn/1-core/torch"]["speedup_vs_1core_scratch"] is None   # no baseline now
    assert compare.main([d]) == 0


def test_runs_folder_without_study_csv(tmp_path):
    d = make_study(tmp_path / "s", sweeps=False)
    os.remove(os.path.join(d, "study.csv"))
    main = study_tables.main_table(study_load.load_study(d))
    assert {r["row"] for r in main} == {k for k, v in ROWS.items() if "ips" in v}
    assert {r["status"] for r in main} == {"unrecorded"}


@pytest.mark.parametrize("setup", ["missing", "empty"])
def test_cli_bad_dir(tmp_path, capsys, setup):
    d = tmp_path / "nope"
    if setup == "empty":
        d.mkdir()
    assert compare.main([str(d)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert not (d / "compare").exists()


def test_draw_all_notes_missing_matplotlib(monkeypatch, tmp_path):
    def no_mpl():
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(study_charts, "headless_pyplot", no_mpl)
    study = study_load.load_study(make_study(tmp_path / "s", sweeps=False))
    notes = []
    assert study_charts.draw_all(study, study_tables.main_table(study), [], str(tmp_path), log=notes.append) == []
    assert notes and "matplotlib" in notes[0]


def test_sweeps_far_from_training_rows_are_flagged(tmp_path):
    study = study_load.load_study(make_study(tmp_path))
    main = study_tables.main_table(study)
    assert study_tables.consistency_notes(main, study.threads, study.batch) == []   # batch 64 sweeps, batch 100 rows
    threads = study.threads.assign(batch_size=BATCH)   # at the rows' batch size: 540 vs 400, 250 vs 200 agree
    assert study_tables.consistency_notes(main, threads) == []
    threads.loc[(threads.impl == "scratch-numba") & (threads.threads == 2), "images_per_s"] = 40.0  # 10x below
    notes = study_tables.consistency_notes(main, threads)
    assert len(notes) == 1 and "10.0x below the training row cnn/multi-core/scratch" in notes[0]


def test_a_chart_that_fails_costs_only_itself(monkeypatch, tmp_path):
    def broken(*a, **k):
        raise ValueError("odd record")

    monkeypatch.setattr(study_charts, "loss_curves", broken)
    study = study_load.load_study(make_study(tmp_path / "s", sweeps=False))
    notes = []
    written = study_charts.draw_all(study, study_tables.main_table(study), [], str(tmp_path), log=notes.append)
    assert [os.path.basename(p) for p in written] == ["throughput.png", "speedup.png", "accuracy_vs_time.png",
                                                      "memory_over_time.png", "summary.png"]
    assert notes == ["note: loss_curves.png skipped: not drawn: ValueError: odd record",
                     "note: thread_scaling.png skipped: no sweeps/threads/*.csv",
                     "note: batch_scaling.png skipped: no sweeps/batch_*.csv"]


def test_close_throughputs_read_as_on_par(tmp_path):
    rows = {k: dict(v) for k, v in ROWS.items()}
    rows["cnn/gpu/scratch"]["ips"] = 25000.0 * 1.01
    text = " ".join(_conclusions(tmp_path, rows))
    assert "gpu: scratch (cupy) and torch on par (1.01x)" in text
    assert "of 2 executions, torch is faster on 1, they are on par on 1" in text


# ---------------------------------------------------------------------------- seeds and torch-best
def _gpu_row(backend, ips, acc=(0.6, 0.6, 0.6), tta=None, mem=3000.0, **extra):
    """A GPU row of three seeds: images/s and final test accuracy per seed; tta per seed (None: not reached)."""
    return dict(backend=backend, ips=ips[0], rss=2000, gpu=dict(mem=mem, util=80.0, energy=0.02), **extra,
                by_seed=[dict(ips=v, epochs=[(0.05, 1000, 0.3), (0.05, 1000, a)],
                              tta={} if tta is None or tta[i] is None else {"50": tta[i]})
                         for i, (v, a) in enumerate(zip(ips, acc))])


BEST = dict(summary=dict(memory_format="channels-last", cuda_graph=True), warmup=4.0)
PROBE_RECORD = {"cnn/gpu": dict(name="channels-last + CUDA graph", flags=["--memory-format", "channels-last",
                                                                           "--cuda-graph"],
                                choice=dict(memory_format="channels-last", cuda_graph=True),
                                probe=dict(warmup_steps=10, time_budget_s=3, max_steps=5000),
                                candidates=[dict(name="channels-last + CUDA graph", status="ok", images_per_s=250.0),
                                            dict(name="channels-last + compile", status="failed",
                                                 reason="error: no C++ compiler")])}


def _seeded(d, rows):
    return study_load.load_study(make_study(d, rows, sweeps=False, seeds=(0, 1, 2),
                                            header_extra=dict(torch_best=PROBE_RECORD)))


def test_seeds_give_mean_std_and_n(tmp_path):
    rows = {"cnn/gpu/scratch": _gpu_row("cupy", (100.0, 110.0, 120.0), acc=(0.50, 0.52, 0.54), tta=(1.0, 2.0, 3.0)),
            "cnn/gpu/torch": _gpu_row("cuda", (190.0, 200.0, 210.0), tta=(1.0, None, 1.0), mem=1500.0),
            "cnn/gpu/torch-best": _gpu_row("cuda", (240.0, 250.0, 260.0), mem=1000.0, **BEST)}
    study = _seeded(tmp_path / "s", rows)
    main = _by_row(study_tables.main_table(study))
    assert list(main) == ["cnn/gpu/scratch", "cnn/gpu/torch", "cnn/gpu/torch-best"]
    s, t, b = main["cnn/gpu/scratch"], main["cnn/gpu/torch"], main["cnn/gpu/torch-best"]
    assert (s["n"], s["seeds"]) == (3, "0,1,2")
    assert s["images_per_s"] == pytest.approx(110.0) and s["images_per_s_std"] == pytest.approx(10.0)
    assert s["final_test_acc"] == pytest.approx(0.52) and s["final_test_acc_std"] == pytest.approx(0.02)
    assert s["tta_50_s"] == pytest.approx(2.0) and s["tta_50_s_std"] == pytest.approx(1.0)
    assert t["tta_50_s"] is None           # one seed never got there: no mean over the two that did
    assert s["peak_gpu_mem_mb"] == pytest.approx(3000.0) and s["peak_gpu_mem_mb_std"] == pytest.approx(0.0)
    # scratch/torch and scratch/torch-best side by side, images/s and memory, on both rows of each pair
    assert s["scratch_over_torch"] == t["scratch_over_torch"] == pytest.approx(110 / 200)
    assert s["scratch_over_torch_best"] == b["scratch_over_torch_best"] == pytest.approx(110 / 250)
    assert t["scratch_over_torch_best"] is None and b["scratch_over_torch"] is None
    assert s["memory_scratch_over_torch"] == pytest.approx(2.0) and s["memory_scratch_over_torch_best"] == 3.0
    assert b["variant"] == "channels-last + CUDA graph" and b["warmup_time_s"] == pytest.approx(4.0)
    d = study.dir
    assert compare.main([d, "--no-charts"]) == 0
    import pandas as pd

    df = pd.read_csv(os.path.join(d, "compare", "main.csv")).set_index("row")
    assert df.loc["cnn/gpu/scratch", "images_per_s_std"] == pytest.approx(10.0)
    assert df.loc["cnn/gpu/scratch", "n"] == 3
    seeds = pd.read_csv(os.path.join(d, "compare", "main_by_seed.csv"))
    assert list(seeds.columns) == study_tables.SEED_COLUMNS and len(seeds) == 9
    assert seeds.loc[seeds.row == "cnn/gpu/scratch/s2", "images_per_s"].item() == 120.0
    md = open(os.path.join(d, "compare", "main.md")).read()
    for text in ("110 ± 10", "52.0% ± 2.0%", "scratch/torch-best", "0.44x", "channels-last + CUDA graph",
                 "cnn/gpu: channels-last + CUDA graph, the fastest of: channels-last + CUDA graph 250 img/s; "
                 "channels-last + compile failed: error: no C++ compiler (10 warm-up steps, then 3 s of steady state",
                 "mean ± sample standard deviation"):
        assert text in md, text


def test_a_failed_seed_leaves_the_others(tmp_path):
    row = _gpu_row("cupy", (100.0, 110.0, 120.0))
    row["by_seed"][2] = dict(status="failed", reason="error: out of memory", ips=None)    # no run folder
    main = _by_row(study_tables.main_table(_seeded(tmp_path, {"cnn/gpu/scratch": row})))
    r = main["cnn/gpu/scratch"]
    assert (r["status"], r["n"], r["seeds"]) == ("ok", 2, "0,1")
    assert r["images_per_s"] == pytest.approx(105.0) and r["reason"] == "seed 2: failed: error: out of memory"


def test_conclusions_call_a_difference_only_beyond_the_spread(tmp_path):
    rows = {"cnn/gpu/scratch": _gpu_row("cupy", (100.0, 104.0, 96.0)),
            "cnn/gpu/torch": _gpu_row("cuda", (101.0, 97.0, 105.0)),
            "cnn/gpu/torch-best": _gpu_row("cuda", (120.0, 121.0, 119.0), **BEST)}
    text = " ".join(study_conclusions.conclusions(study_tables.main_table(_seeded(tmp_path / "a", rows))))
    assert "scratch and torch are within run-to-run noise on every execution measured" in text
    assert "gpu: scratch (cupy) and torch within run-to-run noise (0.99x)" in text
    # torch-best's spread (1) and scratch's (4) are far apart: called, with its configuration named
    assert ("torch-best is faster than scratch on every execution measured (gpu: torch-best (channels-last + CUDA "
            "graph) is 1.20x as fast as scratch (cupy); n = 3 seeds a row, a difference called only beyond mean "
            "± std)") in text
    assert "torch-best against plain torch, images/s: cnn gpu (channels-last + CUDA graph) 1.19x" in text
    assert "one seed" not in text
    # the same means with spreads that overlap no more: 100 ± 1 against 103 ± 1 is a difference
    rows["cnn/gpu/scratch"] = _gpu_row("cupy", (100.0, 101.0, 99.0))
    rows["cnn/gpu/torch"] = _gpu_row("cuda", (103.0, 104.0, 102.0))
    concl = study_conclusions.conclusions(study_tables.main_table(_seeded(tmp_path / "b", rows)))
    assert concl[0] == ("cnn: torch is faster than scratch on every execution measured (gpu: torch is 1.03x as fast "
                        "as scratch (cupy); n = 3 seeds a row, a difference called only beyond mean ± std).")


def test_one_seed_studies_never_call_a_difference_beyond_noise(tmp_path):
    # a study from before seeds: n = 1, std empty, every comparison says it measured no spread
    d = make_study(tmp_path / "s", sweeps=False)
    study = study_load.load_study(d)
    main = study_tables.main_table(study)
    assert {r["n"] for r in main if r["images_per_s"]} == {1}
    assert all(r["images_per_s_std"] is None and r["final_test_acc_std"] is None for r in main)
    assert _by_row(main)["cnn/1-core/scratch"]["seeds"] == "0"
    concl = study_conclusions.conclusions(main)
    text = " ".join(concl)
    assert "within run-to-run noise" not in text and "beyond" not in text
    compared = [c for c in concl if "as fast as" in c or "Test accuracy" in c]
    assert compared and all("one seed: no spread measured" in c for c in compared)
    assert compare.main([d]) == 0
    import pandas as pd

    df = pd.read_csv(os.path.join(d, "compare", "main.csv"))
    assert df.images_per_s_std.isna().all() and set(df.n) == {0, 1}


def test_seeded_study_charts_are_drawn(tmp_path):
    rows = {"cnn/gpu/scratch": _gpu_row("cupy", (100.0, 110.0, 120.0)),
            "cnn/gpu/torch": _gpu_row("cuda", (190.0, 200.0, 210.0)),
            "cnn/gpu/torch-best": _gpu_row("cuda", (240.0, 250.0, 260.0), **BEST)}
    study = _seeded(tmp_path / "s", rows)
    main = study_tables.main_table(study)
    notes = []
    os.makedirs(tmp_path / "out")
    written = study_charts.draw_all(study, main, study_conclusions.conclusions(main), str(tmp_path / "out"),
                                    log=notes.append)
    assert {os.path.basename(p) for p in written} >= {"throughput.png", "speedup.png", "accuracy_vs_time.png",
                                                      "loss_curves.png", "memory_over_time.png", "summary.png"}
    assert not [n for n in notes if "not drawn" in n]
    assert study_charts._label(_by_row(main)["cnn/gpu/torch-best"]) == "gpu torch-best (channels-last + CUDA graph)"


def test_an_unrecorded_seed_joins_its_row(tmp_path):
    d = make_study(tmp_path / "s", {"cnn/gpu/scratch": _gpu_row("cupy", (100.0, 110.0, 120.0))}, sweeps=False,
                   seeds=(0, 1, 2))
    os.makedirs(os.path.join(d, "runs", "cnn_gpu_scratch_s3", "20260101-000009-scratch-cupy-cnn-s3"))  # running
    study = study_load.load_study(d)
    assert (study.runs[-1].row, study.runs[-1].key, study.runs[-1].seed) == ("cnn/gpu/scratch/s3", "cnn/gpu/scratch", 3)
    (r,) = study_tables.main_table(study)
    assert r["n"] == 3 and r["status"] == "ok" and r["reason"].startswith("seed 3: unrecorded: not in study.csv")


def test_fastest_to_accuracy_names_every_runner_up_within_the_noise():
    def row(name, secs, std):
        r = {"row": name, "final_test_acc": 0.9}
        for key in study_conclusions.TTA_KEYS:
            r[f"tta_{key}_s"], r[f"tta_{key}_s_std"] = (secs, std) if key == "50" else (None, None)
        return r

    # 82 ± 4 first; 88 ± 8 and 89 ± 5 both lie within the spreads' sum of it, 120 ± 1 beyond
    main = [row("a", 82.0, 4.0), row("b", 88.0, 8.0), row("c", 89.0, 5.0)]
    (text,) = study_conclusions._c_time_to_accuracy(main)
    assert text.startswith("Fastest to 50% test accuracy: a in 82") and "b and c are within run-to-run noise" in text
    main[2] = row("c", 120.0, 1.0)
    (text,) = study_conclusions._c_time_to_accuracy(main)
    assert "; b is within run-to-run noise of it" in text and "c is" not in text
