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
    for row in ("cnn/1-core/scratch", "cnn/multi-core/torch", "resnet18/1-core/torch", "sweep/threads/cnn",
                "sweep/batch-cpu/cnn/8"):
        assert row in out
    assert "resnet18/gpu/scratch" in out and "(skipped: no GPU)" in out
    assert "--backend numpy" in out and "--time-budget 0.2" in out and "--threads 1" in out
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args, needle", [
    (["--preset", "huge"], "--preset"),
    (["--preset", "tiny", "--only", "nothing/*"], "matches no row"),
    (["--preset", "tiny", "--precision", "fp8"], "--precision"),
    (["--preset", "tiny", "--cpu-budget", "-1"], "--cpu-budget"),
    (["--resume"], "does not exist"),
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
        if r["row"] == "cnn/1-core/torch":
            return real(r, st, o) + ["--lr", "-1"]
        return real(r, st, o)

    monkeypatch.setattr(runner, "row_command", broken)
    only = "cnn/1-core/*,cnn/gpu/scratch,sweep/threads/cnn"
    assert study.main(["--preset", "tiny", "--out", str(out), "--only", only, "--no-compare"]) == 1
    lines = pd.read_csv(out / "study.csv").set_index("row")
    assert lines.loc["cnn/1-core/scratch", "status"] == "ok"
    assert lines.loc["cnn/gpu/scratch", "status"] == "skipped"
    assert lines.loc["cnn/1-core/torch", "status"] == "failed"
    assert "--lr" in lines.loc["cnn/1-core/torch", "reason"]
    assert lines.loc["sweep/threads/cnn", "status"] == "ok"
    assert (out / "sweeps" / "threads").is_dir()
    s = json.loads((out / lines.loc["cnn/1-core/scratch", "run_dir"] / "summary.json").read_text())
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
    assert "2 already ok" in printed and "cnn/1-core/torch: ok" in printed
    lines = pd.read_csv(out / "study.csv").set_index("row")
    assert set(lines.status) == {"ok", "skipped"}
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs.impl) == ["scratch", "torch"]
    assert len(header["sessions"]) == 1 and len(json.loads((out / "study.json").read_text())["sessions"]) == 2
