"""Recipes and their overrides, time-to-accuracy, checkpoints, resume and divergence."""
import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest

from experiments import run
from experiments.record import records
from experiments.train import recipes
from experiments.train.adapters import ScratchAdapter

SMALL = ["--dataset", "synthetic", "--train-subset", "384", "--test-subset", "128", "--batch-size", "64",
         "--log-every", "2", "--warmup-steps", "1", "--quiet", "--sample-hz", "20", "--seed", "3"]


def parse(*args):
    return run.validate(run.build_parser().parse_args(list(args)))


# ---------------------------------------------------------------------- recipes
@pytest.mark.parametrize("model", ["cnn", "resnet18"])
def test_seed_recipe_is_the_original_study(model):
    a = parse("--recipe", "seed", "--model", model)
    assert (a.epochs, a.batch_size, a.norm, a.augment, a.weight_decay, a.schedule) == (10, 64, "half", False, 0.0,
                                                                                      "constant")
    if model == "cnn":
        assert (a.optimizer, a.lr, a.momentum) == ("sgd", 0.01, 0.0)
    else:
        assert (a.optimizer, a.lr) == ("adam", 1e-3)


def test_fast_recipe_and_explicit_flags_override_it():
    a = parse("--recipe", "fast", "--model", "resnet18")
    assert (a.optimizer, a.nesterov, a.momentum, a.schedule, a.batch_size) == ("sgd", True, 0.9, "onecycle", 512)
    assert (a.weight_decay, a.decay_norm_bias, a.label_smoothing, a.augment) == (5e-4, False, 0.1, True)
    b = parse("--recipe", "fast", "--model", "resnet18", "--batch-size", "128", "--lr", "0.05", "--no-augment",
              "--decay-norm-bias")
    assert (b.batch_size, b.lr, b.augment, b.decay_norm_bias, b.schedule) == (128, 0.05, False, True, "onecycle")
    c = parse("--model", "cnn")   # no recipe: the flags' own defaults
    assert {k: getattr(c, k) for k in recipes.BASE} == recipes.BASE


def test_every_recipe_sets_only_known_flags_and_is_valid():
    for name, per_model in recipes.RECIPES.items():
        for model, values in per_model.items():
            assert set(values) <= set(recipes.BASE), (name, model)
            parse("--recipe", name, "--model", model)      # passes validation


def test_unknown_recipe_is_a_usage_error(capsys):
    assert run.main(["--recipe", "slow"]) == 2
    assert "--recipe" in capsys.readouterr().err


def test_fast_recipe_exempts_batchnorm_and_biases_from_weight_decay():
    from experiments.train.adapters import OptimSpec, param_groups
    from scratch_nn import backends, models

    net = models.build("resnet18", backend=backends.reference("numpy"))
    groups = param_groups(list(net.named_parameters()), OptimSpec(weight_decay=5e-4, decay_norm_and_bias=False))
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0
    assert all(len(p.shape) == 1 for p in groups[1]["params"]) and all(len(p.shape) > 1 for p in groups[0]["params"])


# ---------------------------------------------------------------------- time to accuracy
def test_time_to_accuracy_records_first_crossings():
    from experiments.train.trainer import record_time_to_accuracy

    state = {"train_time_s": 10.0}
    record_time_to_accuracy(state, 0.55, 0)
    state["train_time_s"] = 25.0
    record_time_to_accuracy(state, 0.83, 1)
    state["train_time_s"] = 40.0
    record_time_to_accuracy(state, 0.81, 2)     # a dip does not move the first crossings
    assert state["time_to_accuracy"] == {"50": {"train_time_s": 10.0, "epoch": 1},
                                         "80": {"train_time_s": 25.0, "epoch": 2}}


def test_summary_and_runs_csv_carry_time_to_accuracy(tmp_path):
    out = tmp_path / "runs"
    assert run.main([*SMALL, "--epochs", "2", "--lr", "0.05", "--out", str(out)]) == 0
    d = out / os.listdir(out)[0]
    s = json.loads((d / "summary.json").read_text())
    row = pd.read_csv(tmp_path / "runs.csv").iloc[0]
    tta = s["time_to_accuracy"]
    assert set(tta) <= {"50", "80", "85", "90"}
    for key, hit in tta.items():
        assert 0 < hit["train_time_s"] <= s["train_time_s"] and hit["epoch"] in (1, 2)
        assert row[f"tta_{key}_s"] == pytest.approx(hit["train_time_s"], rel=1e-5)
    assert list(pd.read_csv(tmp_path / "runs.csv").columns) == records.RUNS_COLUMNS


# ---------------------------------------------------------------------- checkpoints and resume
def _final_state(run_dir):
    """(model state dict as numpy arrays, optimizer step count, checkpoint index) of a run's last checkpoint."""
    index = json.loads((run_dir / "checkpoint.json").read_text())
    path = run_dir / index["state_file"]
    if path.suffix == ".pt":
        import torch

        obj = torch.load(path, weights_only=False)
        return {k: v.numpy() for k, v in obj["model"].items()}, obj["optimizer"], index
    with open(path, "rb") as f:
        obj = pickle.load(f)
    return obj["model"], obj["optimizer"], index


@pytest.mark.parametrize("impl", ["scratch", "torch", "cupy"])
def test_interrupted_and_resumed_run_ends_bitwise_where_an_uninterrupted_one_does(tmp_path, monkeypatch, impl):
    """Bitwise on the NumPy backend; torch on the CPU is deterministic too, so it is held to
    the same standard here. On the GPU (cupy, where one is visible) within float tolerance."""
    where = ["--impl", impl, "--threads", "1"]
    if impl == "torch":
        pytest.importorskip("torch")
        from experiments.train.adapters import TorchAdapter as Adapter
    else:
        Adapter = ScratchAdapter
    if impl == "cupy":
        from scratch_nn import backends

        try:
            backends.get("cupy")
        except backends.BackendUnavailable as e:
            pytest.skip(f"no GPU: {e}")
        where = ["--impl", "scratch", "--backend", "cupy"]
    args = [*SMALL, *where, "--epochs", "3", "--checkpoint-every", "1", "--lr", "0.05", "--schedule", "onecycle"]
    whole = tmp_path / "whole"
    assert run.main([*args, "--out", str(whole), "--runs-csv", str(tmp_path / "a.csv")]) == 0

    # the same run, killed a few steps into its third epoch (after the epoch-2 checkpoint)
    broken = tmp_path / "broken"
    real_step, calls = Adapter.train_step, {"n": 0}

    def dying_step(self, x, y):
        calls["n"] += 1
        if calls["n"] == 2 * 6 + 3:          # 6 steps an epoch
            raise KeyboardInterrupt
        return real_step(self, x, y)
    monkeypatch.setattr(Adapter, "train_step", dying_step)
    assert run.main([*args, "--out", str(broken), "--runs-csv", str(tmp_path / "b.csv")]) == 130
    monkeypatch.setattr(Adapter, "train_step", real_step)
    d = broken / os.listdir(broken)[0]
    assert json.loads((d / "summary.json").read_text())["status"] == "interrupted"
    assert json.loads((d / "checkpoint.json").read_text())["epochs_done"] == 2
    assert run.main(["--resume", str(d), "--quiet"]) == 0

    w = whole / os.listdir(whole)[0]
    (ref, ref_opt, ref_index), (got, got_opt, got_index) = _final_state(w), _final_state(d)
    assert got_index["epochs_done"] == ref_index["epochs_done"] == 3
    assert got_index["state"]["step"] == 18
    for k, v in ref.items():
        if impl == "cupy":
            assert np.allclose(got[k], v, rtol=1e-5, atol=1e-7), k
        else:
            assert np.array_equal(got[k], v), k
    if impl == "scratch":
        assert got_opt["step_count"] == ref_opt["step_count"] == 18
        for a, b in zip(got_opt["state"], ref_opt["state"]):
            for k in a:
                assert np.array_equal(a[k], b[k])
    # the CSVs continue: each epoch and logged step once, in order, no gaps
    for name, key in (("epochs.csv", "epoch"), ("steps.csv", "step")):
        ref_col, got_col = pd.read_csv(w / name)[key].tolist(), pd.read_csv(d / name)[key].tolist()
        assert got_col == ref_col
    assert np.allclose(pd.read_csv(d / "epochs.csv").train_loss, pd.read_csv(w / "epochs.csv").train_loss,
                       rtol=0 if impl != "cupy" else 1e-5)
    t = pd.read_csv(d / "resources.csv").t_s
    assert t.is_monotonic_increasing
    table = pd.read_csv(tmp_path / "b.csv")
    assert len(table) == 1 and table.status[0] == "completed" and table.steps[0] == 18
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["resumed"][0]["at_epoch"] == 2
    assert [f for f in os.listdir(d) if f.startswith("checkpoint-e")] == [f"checkpoint-e3{Adapter.checkpoint_suffix}"]


def test_resume_refuses_other_flags_and_finished_or_unknown_runs(tmp_path, capsys):
    out = tmp_path / "runs"
    assert run.main([*SMALL, "--epochs", "1", "--checkpoint-every", "1", "--out", str(out)]) == 0
    d = str(out / os.listdir(out)[0])
    assert run.main(["--resume", d, "--lr", "0.1"]) == 2
    assert "drop --lr" in capsys.readouterr().err
    assert run.main(["--resume", d]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert run.main(["--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real_step, calls = ScratchAdapter.train_step, {"n": 0}

    def nan_in_epoch_two(self, x, y):
        calls["n"] += 1
        loss = real_step(self, x, y)
        return float("nan") if calls["n"] > 6 + 2 else loss
    monkeypatch.setattr(ScratchAdapter, "train_step", nan_in_epoch_two)
    out = tmp_path / "runs"
    assert run.main([*SMALL, "--epochs", "3", "--checkpoint-every", "1", "--out", str(out)]) == 3
    d = out / os.listdir(out)[0]
    s = json.loads((d / "summary.json").read_text())
    assert s["status"] == "diverged" and s["checkpoint"].endswith("checkpoint-e1.pkl")
    assert json.loads((d / "checkpoint.json").read_text())["epochs_done"] == 1
    assert pd.read_csv(tmp_path / "runs.csv").status[0] == "diverged"
    err = capsys.readouterr().err
    assert "loss became nan" in err and "last good checkpoint" in err


def test_accuracy_time_chart_from_run_records(tmp_path):
    from experiments import plots

    out = tmp_path / "runs"
    for impl in ("scratch", "torch"):
        if impl == "torch":
            pytest.importorskip("torch")
        assert run.main([*SMALL, "--impl", impl, "--epochs", "2", "--recipe", "fast", "--out", str(out)]) == 0
    png = tmp_path / "chart.png"
    assert plots.main(["accuracy-time", str(tmp_path / "runs.csv"), "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert plots.main(["accuracy-time", str(tmp_path / "missing.csv"), "--out", str(png)]) == 2
