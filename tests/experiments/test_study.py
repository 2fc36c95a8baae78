"""experiments.study (the matrix runner) and the run features it relies on: the time budget,
and per-epoch throughput on devices whose loss is read only on logged steps."""
import json
import os

import pandas as pd
import pytest

from experiments import run, study
from experiments.matrix import runner
from experiments.record import records
from experiments.train import trainer
from experiments.train.adapters import ScratchAdapter
from experiments.train.data import BatchLoader, make_synthetic
from scratch_nn.optim import make_schedule

FAST = ["--dataset", "synthetic", "--train-subset", "512", "--test-subset", "128", "--log-every", "2",
        "--warmup-steps", "2", "--quiet", "--sample-hz", "20"]


def test_time_budget_stops_mid_epoch_then_evaluates(tmp_path):
    code = run.main([*FAST, "--epochs", "50", "--time-budget", "0.05", "--out", str(tmp_path / "runs")])
    assert code == 0
    (d,) = os.listdir(tmp_path / "runs")
    s = json.loads((tmp_path / "runs" / d / "summary.json").read_text())
    assert s["stopped_by"] == "time_budget" and s["time_budget_s"] == 0.05
    # warm-up steps always run, then steady steps until the budget: far short of 50 epochs
    assert 3 <= s["steps"] < 8 * 50 and s["images_per_s"] > 0
    ep = pd.read_csv(tmp_path / "runs" / d / "epochs.csv")
    assert ep.test_acc.notna().iloc[-1]           # accuracy at the budget is measured


def test_without_budget_the_run_says_it_ran_its_epochs(tmp_path):
    assert run.main([*FAST, "--out", str(tmp_path / "runs")]) == 0
    (d,) = os.listdir(tmp_path / "runs")
    assert json.loads((tmp_path / "runs" / d / "summary.json").read_text())["stopped_by"] == "epochs"


def test_bad_budget_is_refused(tmp_path, capsys):
    assert run.main([*FAST, "--time-budget", "0", "--out", str(tmp_path / "runs")]) == 2
    assert "--time-budget" in capsys.readouterr().err and not (tmp_path / "runs").exists()


class _GpuLikeAdapter(ScratchAdapter):
    """Reads cost a sync here, so the trainer reads the loss only on logged steps."""
    reads_are_free = False


def test_epoch_throughput_counts_every_image_when_only_some_steps_are_read(tmp_path):
    ds = make_synthetic(640, 64, seed=0)
    train = BatchLoader(ds.x_train, ds.y_train, 64, shuffle=True, seed=0, augment=False)
    test = BatchLoader(ds.x_test, ds.y_test, 64, shuffle=False, seed=0, augment=False)
    ad = _GpuLikeAdapter("cnn", backend="numpy")
    folder = records.RunFolder(str(tmp_path), "r", {})
    state = trainer.train(ad, train, test, epochs=1, schedule=make_schedule("constant", 0.01, 10), folder=folder,
                          warmup_steps=0, log_every=5)
    folder.close()
    row = state["last_epoch"]
    # every one of the 640 images trained counts, not only the two logged batches
    assert row["train_images_per_s"] == pytest.approx(640 / row["epoch_time_s"])


# ---------------------------------------------------------------------------- the study runner
TINY = dict(about="test preset", recipe="seed", epochs=1, dataset="synthetic", train_subset=256, test_subset=64,
            cpu_budget_s=0.2, gpu_budget_s=0.2, row_timeout_s=120,
            sweeps=dict(models=("cnn",), batch_sizes=(8,), min_time=0.05, repeats=1))


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(study.PRESETS, "tiny", TINY)
    monkeypatch.setattr(study, "gpu_present", lambda: False)


def test_dry_run_lists_the_matrix_and_skips_gpu_rows_without_a_gpu(tiny, tmp_path, capsys):
    assert study.main(["--preset", "tiny", "--out", str(tmp_path / "s"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for row in ("cnn/1-core/scratch/s0", "cnn/multi-core/torch/s0", "resnet18/1-core/torch/s0", "sweep/threads/cnn",
                "sweep/batch-cpu/cnn/8", "cnn/multi-core/torch-best/s0"):
        assert row in out
    assert "resnet18/gpu/scratch/s0" in out and "(skipped: no GPU)" in out
    assert "+ the probe's fastest of: eager | compile | channels-last" in out
    assert "--backend numpy" in out and "--time-budget 0.2" in out and "--threads 1" in out
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args, needle", [
    (["--preset", "huge"], "--preset"),
    (["--preset", "tiny", "--only", "nothing/*"], "matches no row"),
    (["--preset", "tiny", "--precision", "fp8"], "--precision"),
    (["--preset", "tiny", "--cpu-budget", "-1"], "--cpu-budget"),
    (["--resume"], "does not exist"),
    (["--preset", "tiny", "--seeds", "0,x"], "--seeds"),
    (["--preset", "tiny", "--seeds", "0,1", "--seed", "2"], "not both"),
])
def test_bad_input_is_one_line_exit_2(tiny, tmp_path, capsys, args, needle):
    assert study.main(["--out", str(tmp_path / "s"), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_a_study_runs_rows_records_failures_and_resumes(tiny, tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    out = tmp_path / "s"
    real = runner.row_command     # what runs each row's subprocess

    def broken(r, st, o):   # one row fails: its subprocess exits 2 with an error line
        if r["row"] == "cnn/1-core/torch/s0":
            return real(r, st, o) + ["--lr", "-1"]
        return real(r, st, o)

    monkeypatch.setattr(runner, "row_command", broken)
    only = "cnn/1-core/*,cnn/gpu/scratch,sweep/threads/cnn"
    assert study.main(["--preset", "tiny", "--out", str(out), "--only", only, "--no-compare"]) == 1
    lines = pd.read_csv(out / "study.csv").set_index("row")
    assert lines.loc["cnn/1-core/scratch/s0", "status"] == "ok"
    assert lines.loc["cnn/gpu/scratch/s0", "status"] == "skipped"
    assert lines.loc["cnn/1-core/torch/s0", "status"] == "failed"
    assert "--lr" in lines.loc["cnn/1-core/torch/s0", "reason"]
    assert lines.loc["sweep/threads/cnn", "status"] == "ok"
    assert (out / "sweeps" / "threads").is_dir()
    s = json.loads((out / lines.loc["cnn/1-core/scratch/s0", "run_dir"] / "summary.json").read_text())
    assert s["stopped_by"] in ("time_budget", "epochs") and s["dataset"] == "synthetic" and s["threads"] == 1
    header = json.loads((out / "study.json").read_text())
    assert header["settings"]["preset"] == "tiny" and "finished" in header

    # a second study into the same folder is refused; --resume reruns only what is not ok
    assert study.main(["--preset", "tiny", "--out", str(out)]) == 2
    assert study.main(["--out", str(out), "--resume", "--threads", "1"]) == 2
    monkeypatch.setattr(runner, "row_command", real)
    capsys.readouterr()
    assert study.main(["--out", str(out), "--resume", "--only", only, "--no-compare"]) == 0
    printed = capsys.readouterr().out
    assert "2 already ok" in printed and "cnn/1-core/torch/s0: ok" in printed
    lines = pd.read_csv(out / "study.csv").set_index("row")
    assert set(lines.status) == {"ok", "skipped"}
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs.impl) == ["scratch", "torch"]
    assert len(header["sessions"]) == 1 and len(json.loads((out / "study.json").read_text())["sessions"]) == 2


# ---------------------------------------------------------------------------- seeds
from experiments.matrix import plan, probe  # noqa: E402
from experiments.matrix.files import STUDY_COLUMNS  # noqa: E402


def _settings(**kw):
    """Settings as plan.resolve makes them for the tiny preset, without looking for data."""
    st = dict(TINY, preset="tiny", data_dir=None, threads=2, precision="fp32", seeds=[0, 1, 2], seed=0,
              torch_best=True, sweeps=dict(TINY["sweeps"], models=["cnn"], batch_sizes=[8]))
    st.update(kw)
    return st


def test_seeds_expand_the_rows_and_patterns_still_pick_them():
    st = _settings()
    rows = plan.training_rows(st)
    ids = [r["row"] for r in rows]
    # 3 seeds x 2 models x (3 executions x scratch, torch + torch-best on multi-core and gpu)
    assert len(ids) == 3 * 2 * 8 and len(set(ids)) == len(ids)
    assert ids[0] == "cnn/1-core/scratch/s0" and ids[-1] == "resnet18/gpu/torch-best/s2"
    assert ids.index("resnet18/gpu/torch-best/s0") < ids.index("cnn/1-core/scratch/s1")    # seed outermost

    def pick(only):
        return [r["row"] for r in plan.select(rows, only)]

    assert pick("cnn/gpu/torch") == ["cnn/gpu/torch/s0", "cnn/gpu/torch/s1", "cnn/gpu/torch/s2"]
    assert pick("cnn/gpu/torch/s1") == ["cnn/gpu/torch/s1"]
    assert len(pick("cnn/*")) == 24 and len(pick("*/gpu/*")) == 18 and len(pick("*/s2")) == 16
    assert pick("cnn/*/torch-best") == [f"cnn/{e}/torch-best/s{s}" for s in range(3) for e in ("multi-core", "gpu")]
    r = next(r for r in rows if r["row"] == "cnn/1-core/scratch/s1")
    cmd = plan.row_command(r, st, "OUT")
    assert cmd[cmd.index("--seed") + 1] == "1" and cmd[cmd.index("--out") + 1] == os.path.join(
        "OUT", "runs", "cnn_1-core_scratch_s1")
    # a torch-best row is torch with the probe's flags
    r = next(r for r in rows if r["row"] == "cnn/gpu/torch-best/s0")
    cmd = plan.row_command(dict(r, best_flags=["--memory-format", "channels-last", "--cuda-graph"]), st, "OUT")
    assert cmd[cmd.index("--impl") + 1] == "torch" and cmd[cmd.index("--device") + 1] == "cuda"
    assert "--cuda-graph" in cmd and cmd[cmd.index("--memory-format") + 1] == "channels-last"
    assert plan.split_row("cnn/gpu/torch-best/s12") == ("cnn/gpu/torch-best", 12)
    assert plan.split_row("sweep/batch-cpu/cnn/64") == ("sweep/batch-cpu/cnn/64", None)


def test_a_study_from_before_seeds_keeps_its_row_ids():
    st = _settings()
    del st["seeds"], st["torch_best"]        # what study.json held before seeds
    ids = [r["row"] for r in plan.training_rows(st)]
    assert ids[:2] == ["cnn/1-core/scratch", "cnn/1-core/torch"] and len(ids) == 12


def test_seed_flags_and_presets(tiny, tmp_path, capsys):
    assert study.PRESETS["quick"]["seeds"] == (0, 1)
    assert study.PRESETS["seed"]["seeds"] == study.PRESETS["full"]["seeds"] == (0, 1, 2)
    base = ["--preset", "tiny", "--out", str(tmp_path / "s"), "--dry-run", "--only", "cnn/1-core/scratch"]
    assert study.main([*base, "--seeds", "3,1,3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ["cnn/1-core/scratch/s3", "cnn/1-core/scratch/s1"]
    assert "--seed 3 " in lines[0] and "--seed 1 " in lines[1]
    assert study.main([*base, "--seed", "5"]) == 0        # one seed, as before
    assert [ln.split()[0] for ln in capsys.readouterr().out.splitlines()] == ["cnn/1-core/scratch/s5"]
    assert study.main([*base, "--no-torch-best", "--only", "*/torch-best"]) == 2


def _fake_rows(monkeypatch, fail):
    """runner.run_row without subprocesses: every row ok but those in `fail`; returns the rows run
    (with the flags a torch-best row was given)."""
    ran = []

    def fake(r, st, out, log=print):
        ran.append((r["row"], r.get("best_flags")))
        line = {k: r.get(k) for k in STUDY_COLUMNS}
        bad = r["row"] in fail
        line.update(status="failed" if bad else "ok", reason="error: fake failure" if bad else "",
                    returncode=2 if bad else 0, wall_s=0.0)
        return line

    monkeypatch.setattr(runner, "run_row", fake)
    return ran


def test_resume_runs_only_the_seeds_not_ok(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s"
    fail = {"cnn/1-core/torch/s1"}
    ran = _fake_rows(monkeypatch, fail)
    args = ["--only", "cnn/1-core/*", "--no-compare", "--no-sweeps"]
    assert study.main(["--preset", "tiny", "--seeds", "0,1,2", "--out", str(out), *args]) == 1
    assert [r for r, _ in ran] == [f"cnn/1-core/{i}/s{s}" for s in range(3) for i in ("scratch", "torch")]
    assert json.loads((out / "study.json").read_text())["settings"]["seeds"] == [0, 1, 2]
    lines = pd.read_csv(out / "study.csv").set_index("row")
    assert lines.loc["cnn/1-core/torch/s1", "status"] == "failed" and lines.loc["cnn/1-core/torch/s2", "seed"] == 2
    ran.clear()
    fail.clear()
    capsys.readouterr()
    assert study.main(["--out", str(out), "--resume", *args]) == 0
    assert [r for r, _ in ran] == ["cnn/1-core/torch/s1"]
    assert "5 already ok" in capsys.readouterr().out
    assert set(pd.read_csv(out / "study.csv").status) == {"ok"}


# ---------------------------------------------------------------------------- the torch-best probe
def _fake_probe(monkeypatch, figures):
    """probe.measure without subprocesses: images/s per (probe folder, candidate folder), or a
    failure reason where the figure is a string; returns the commands it was given."""
    calls = []

    def fake(cmd, folder, log_path, timeout_s):
        calls.append((cmd, timeout_s))
        v = figures[(os.path.basename(os.path.dirname(folder)), os.path.basename(folder))]
        if isinstance(v, str):
            return dict(status="failed", images_per_s=None, warmup_time_s=None, reason=v, wall_s=1.0)
        return dict(status="ok", images_per_s=v, warmup_time_s=2.0, reason="", wall_s=1.0)

    monkeypatch.setattr(probe, "measure", fake)
    return calls


FIGURES = {("cnn_gpu", "channels-last+CUDA-graph"): 900.0, ("cnn_gpu", "channels-last+compile"): 1200.0,
           ("cnn_multi-core", "eager"): 100.0, ("cnn_multi-core", "compile"): "error: no C++ compiler found",
           ("cnn_multi-core", "channels-last"): 90.0}


def test_the_probe_picks_the_fastest_candidate_records_it_and_resume_reuses_it(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "gpu_present", lambda: True)
    out = tmp_path / "s"
    calls = _fake_probe(monkeypatch, FIGURES)
    fail = {"cnn/gpu/torch-best/s1"}
    ran = _fake_rows(monkeypatch, fail)
    args = ["--only", "cnn/*/torch-best", "--no-compare", "--no-sweeps"]
    assert study.main(["--preset", "tiny", "--seeds", "0,1", "--out", str(out), *args]) == 1
    assert len(calls) == 5                   # each candidate once, before the rows, for both seeds
    best = json.loads((out / "study.json").read_text())["torch_best"]
    gpu = best["cnn/gpu"]
    assert gpu["name"] == "channels-last + compile" and gpu["flags"] == ["--memory-format", "channels-last",
                                                                          "--compile"]
    assert [(c["name"], c["images_per_s"]) for c in gpu["candidates"]] == [("channels-last + CUDA graph", 900.0),
                                                                            ("channels-last + compile", 1200.0)]
    cpu = best["cnn/multi-core"]
    assert cpu["name"] == "eager" and cpu["flags"] == [] and cpu["choice"] == {}
    failed = [c for c in cpu["candidates"] if c["status"] == "failed"]
    assert [(c["name"], c["reason"]) for c in failed] == [("compile", "error: no C++ compiler found")]
    assert dict(ran)["cnn/gpu/torch-best/s0"] == gpu["flags"] and dict(ran)["cnn/multi-core/torch-best/s1"] == []
    # each candidate is a short run of experiments.run, bounded by the row timeout
    cmd, timeout = next(c for c in calls if "cuda" in c[0])
    assert cmd[cmd.index("-m") + 1] == "experiments.run" and timeout == TINY["row_timeout_s"]
    for flag, value in (("--impl", "torch"), ("--device", "cuda"), ("--dataset", "synthetic"), ("--time-budget", "3"),
                        ("--precision", "fp32"), ("--recipe", "seed"), ("--model", "cnn")):
        assert cmd[cmd.index(flag) + 1] == value, flag
    assert "--cuda-graph" in cmd and str(out) in cmd[cmd.index("--runs-csv") + 1]
    # --resume reruns the failed seed with the recorded choice, probing nothing again
    fail.clear()
    ran.clear()
    assert study.main(["--out", str(out), "--resume", *args]) == 0
    assert len(calls) == 5 and ran == [("cnn/gpu/torch-best/s1", gpu["flags"])]


def test_when_every_candidate_fails_the_rows_fail_with_the_reasons(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "gpu_present", lambda: True)
    figures = {**FIGURES, ("cnn_gpu", "channels-last+CUDA-graph"): "error: graph capture failed",
               ("cnn_gpu", "channels-last+compile"): "timed out after 120 s (--row-timeout)"}
    calls = _fake_probe(monkeypatch, figures)
    ran = _fake_rows(monkeypatch, set())
    out = tmp_path / "s"
    args = ["--only", "cnn/gpu/torch-best", "--no-compare", "--no-sweeps"]
    assert study.main(["--preset", "tiny", "--seeds", "0,1", "--out", str(out), *args]) == 1
    assert ran == [] and len(calls) == 2     # probed once for both seeds
    lines = pd.read_csv(out / "study.csv").set_index("row")
    assert lines.loc["cnn/gpu/torch-best/s1", "reason"] == lines.loc["cnn/gpu/torch-best/s0", "reason"]
    line = lines.loc["cnn/gpu/torch-best/s0"]
    assert line.status == "failed" and line.reason == (
        "no torch-best candidate ran in the probe (channels-last + CUDA graph: error: graph capture failed; "
        "channels-last + compile: timed out after 120 s (--row-timeout))")
    assert json.loads((out / "study.json").read_text())["torch_best"]["cnn/gpu"]["choice"] is None
    assert study.main(["--out", str(out), "--resume", *args]) == 1
    assert len(calls) == 4                   # no choice recorded: probed again


def test_no_probe_in_a_dry_run_or_without_torch_best_rows(tiny, tmp_path, monkeypatch):
    calls = _fake_probe(monkeypatch, FIGURES)
    _fake_rows(monkeypatch, set())
    assert study.main(["--preset", "tiny", "--out", str(tmp_path / "a"), "--dry-run"]) == 0
    assert study.main(["--preset", "tiny", "--out", str(tmp_path / "b"), "--only", "cnn/1-core/*", "--no-compare"]) == 0
    assert calls == [] and json.loads((tmp_path / "b" / "study.json").read_text())["torch_best"] == {}


def test_measure_reads_the_candidates_summary(tmp_path, monkeypatch):
    folder = tmp_path / "probe" / "cnn_gpu" / "compile"

    def run(cmd, log_path, timeout_s):
        os.makedirs(folder / "20260101-000000-torch-cuda-cnn-s0")
        (folder / "20260101-000000-torch-cuda-cnn-s0" / "summary.json").write_text(
            json.dumps(dict(images_per_s=1234.5, warmup_time_s=42.0)))
        return dict(returncode=0, status="ok", reason="", wall_s=50.0)

    monkeypatch.setattr(probe, "run_logged", run)
    res = probe.measure(["cmd"], str(folder), str(tmp_path / "log"), 60)
    assert (res["status"], res["images_per_s"], res["warmup_time_s"]) == ("ok", 1234.5, 42.0)
    monkeypatch.setattr(probe, "run_logged", lambda *a: dict(returncode=2, status="failed", wall_s=1.0,
                                                            reason="error: unrecognized arguments: --compile"))
    res = probe.measure(["cmd"], str(tmp_path / "none"), str(tmp_path / "log"), 60)
    assert res["status"] == "failed" and "--compile" in res["reason"]


def test_the_probe_runs_real_candidates(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    # eager and channels-last only: what torch.compile costs to compile does not belong in a unit test
    monkeypatch.setitem(plan.TORCH_BEST_CANDIDATES, "multi-core", [dict(), dict(memory_format="channels-last")])
    monkeypatch.setitem(probe.PROBE, "multi-core", dict(warmup_steps=1, time_budget_s=0.5, max_steps=50))
    rec = probe.probe("cnn", "multi-core", _settings(threads=1), str(tmp_path), log=lambda m: None)
    assert [c["status"] for c in rec["candidates"]] == ["ok", "ok"], rec["candidates"]
    fastest = max(rec["candidates"], key=lambda c: c["images_per_s"])
    assert rec["name"] == fastest["name"] and rec["flags"] == fastest["flags"]
    assert (tmp_path / rec["candidates"][0]["log"]).exists()
    assert not (tmp_path / "runs.csv").exists()          # the probe's runs stay out of the study's table
