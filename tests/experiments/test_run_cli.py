"""experiments.run end to end: both implementations on synthetic data, every output file and
schema, every bad input (one line, exit 2, nothing written), interruption and divergence."""
import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest

from experiments import run
from experiments.record import records
from experiments.record.sampler import RESOURCE_COLUMNS

FAST = ["--dataset", "synthetic", "--train-subset", "512", "--test-subset", "256", "--max-steps", "6",
        "--log-every", "2", "--warmup-steps", "2", "--quiet", "--sample-hz", "20"]


def run_cli(tmp_path, *args):
    out = tmp_path / "runs"
    code = run.main([*FAST, "--out", str(out), *args])
    return code, out, tmp_path / "runs.csv"


def only_run_dir(out):
    dirs = os.listdir(out)
    assert len(dirs) == 1
    return out / dirs[0]


@pytest.mark.parametrize("impl", [["--impl", "scratch", "--backend", "numpy"], ["--impl", "torch", "--device", "cpu"]])
def test_end_to_end_writes_every_file_with_its_schema(tmp_path, impl):
    if impl[1] == "torch":
        pytest.importorskip("torch")
    code, out, runs_csv = run_cli(tmp_path, *impl)
    assert code == 0
    d = only_run_dir(out)
    cfg = json.loads((d / "config.json").read_text())
    for key in ("impl", "model", "batch_size", "versions", "machine", "dataset_identity", "git_commit", "seed"):
        assert key in cfg
    assert cfg["dataset_identity"]["source"] == "synthetic"
    epochs = pd.read_csv(d / "epochs.csv")
    assert list(epochs.columns) == records.EPOCH_COLUMNS and len(epochs) == 1
    assert 0 <= epochs.test_acc[0] <= 1
    steps = pd.read_csv(d / "steps.csv")
    assert list(steps.columns) == records.STEP_COLUMNS
    assert list(steps.step) == [0, 2, 4, 5]
    res = pd.read_csv(d / "resources.csv")
    assert list(res.columns) == RESOURCE_COLUMNS and len(res) >= 1
    summary = json.loads((d / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert summary["images_per_s"] > 0 and summary["warmup_steps"] == 2
    table = pd.read_csv(runs_csv)
    assert list(table.columns) == records.RUNS_COLUMNS and len(table) == 1
    assert table.impl[0] == impl[1] and table.dataset[0] == "synthetic"
    assert summary["memory_format"] == ("nchw" if impl[1] == "torch" else None) and summary["cuda_graph"] is False
    # scratch: the algorithm each convolution shape ran with (the cnn on numpy: im2col per image, Winograd)
    assert summary.get("conv_algorithms") == (None if impl[1] == "torch" else {
        "3->16 3x3 stride 1 pad 1 on 32x32": "im2col GEMM per image",
        "16->32 3x3 stride 1 pad 1 on 16x16": "Winograd F(2x2, 3x3) on phase planes"})


def test_torch_trains_channels_last_when_asked(tmp_path):
    pytest.importorskip("torch")
    code, out, _ = run_cli(tmp_path, "--impl", "torch", "--memory-format", "channels-last")
    assert code == 0
    d = only_run_dir(out)
    assert json.loads((d / "config.json").read_text())["memory_format"] == "channels-last"
    assert json.loads((d / "summary.json").read_text())["memory_format"] == "channels-last"


def test_same_seed_same_losses_on_both_implementations(tmp_path):
    pytest.importorskip("torch")
    losses = []
    for impl in (["--impl", "scratch"], ["--impl", "torch"]):
        sub = tmp_path / impl[1]
        run.main([*FAST, "--out", str(sub / "runs"), "--log-every", "1", *impl])
        losses.append(pd.read_csv(only_run_dir(sub / "runs") / "steps.csv").loss.to_numpy())
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-3)


BAD = [
    (["--model", "vgg"], "--model"),
    (["--impl", "jax"], "--impl"),
    (["--impl", "torch", "--backend", "numba"], "--backend"),
    (["--impl", "scratch", "--device", "cpu"], "--device"),
    (["--backend", "tpu"], "--backend"),
    (["--batch-size", "0"], "--batch-size"),
    (["--epochs", "-1"], "--epochs"),
    (["--lr", "0"], "--lr"),
    (["--precision", "fp8"], "--precision"),
    (["--optimizer", "lbfgs"], "--optimizer"),
    (["--threads", "4"], "numba"),
    (["--train-subset", "999999"], "train"),
    (["--nesterov", "--optimizer", "adam"], "nesterov"),
    (["--precision", "tf32"], "GPU mode"),
    (["--precision", "fp16", "--impl", "torch"], "GPU mode"),
    (["--precision", "bf16"], "GPU mode"),
    (["--precision", "bf16", "--impl", "torch"], "GPU mode"),
    (["--cuda-graph"], "--cuda-graph"),
    (["--host-data"], "--host-data"),
    (["--memory-format", "channels-last"], "--impl torch"),
    (["--impl", "torch", "--memory-format", "nhwc"], "--memory-format"),
]


@pytest.mark.parametrize("args,needle", BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, needle):
    code, out, runs_csv = run_cli(tmp_path, *args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error:") and "\n" not in err and needle in err
    assert not out.exists() and not runs_csv.exists()


def test_unavailable_devices_are_refused(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        assert run_cli(tmp_path, "--impl", "torch", "--device", "cuda")[0] == 2
        assert "cuda" in capsys.readouterr().err
    try:
        import cupy  # noqa: F401
    except ImportError:
        assert run_cli(tmp_path, "--backend", "cupy")[0] == 2
        assert "cupy" in capsys.readouterr().err.lower()


def write_batches(root, n=20, bad=None):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    r = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = r.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = list(r.integers(0, 10, n))
        if bad == "shape" and name == "data_batch_2":
            data = data[:, :100]
        if bad == "label" and name == "test_batch":
            labels[3] = 12
        with open(d / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    if bad == "truncated":
        p = d / "data_batch_3"
        p.write_bytes(p.read_bytes()[:50])
    return root


@pytest.mark.parametrize("bad", ["missing", "shape", "label", "truncated"])
def test_broken_dataset_is_one_line_exit_2(tmp_path, capsys, bad):
    root = tmp_path / "c10"
    if bad != "missing":
        write_batches(root, bad=bad)
    out = tmp_path / "runs"
    code = run.main(["--dataset", "cifar10", "--data-dir", str(root), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err
    assert not out.exists()


def test_reads_a_standard_batches_folder(tmp_path):
    root = write_batches(tmp_path / "c10", n=40)
    code = run.main(["--dataset", "cifar10", "--data-dir", str(root), "--out", str(tmp_path / "runs"),
                     "--quiet", "--batch-size", "50"])
    assert code == 0
    s = json.loads((only_run_dir(tmp_path / "runs") / "summary.json").read_text())
    assert s["dataset"] == "cifar10" and s["n_train"] == 200 and s["n_test"] == 40 and s["steps"] == 4


def test_ctrl_c_keeps_the_folder_marks_it_interrupted_and_runs_csv_stays_whole(tmp_path, monkeypatch):
    from experiments.train import adapters

    real = adapters.ScratchAdapter.train_step
    calls = {"n": 0}

    def interrupted(self, x, y):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, x, y)

    monkeypatch.setattr(adapters.ScratchAdapter, "train_step", interrupted)
    code, out, runs_csv = run_cli(tmp_path)
    assert code == 130
    d = only_run_dir(out)
    s = json.loads((d / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["steps"] == 3
    assert len(pd.read_csv(d / "steps.csv")) == 2 and len(pd.read_csv(d / "resources.csv")) >= 1
    table = pd.read_csv(runs_csv)
    assert len(table) == 1 and table.status[0] == "interrupted"
    monkeypatch.undo()
    assert run_cli(tmp_path)[0] == 0      # a second run appends a second whole row
    assert len(pd.read_csv(runs_csv)) == 2


def test_divergence_is_recorded(tmp_path, capsys):
    code, out, runs_csv = run_cli(tmp_path, "--lr", "1e9")
    assert code == 3
    s = json.loads((only_run_dir(out) / "summary.json").read_text())
    assert s["status"] == "diverged"
    assert pd.read_csv(runs_csv).status[0] == "diverged"
    assert "loss became" in capsys.readouterr().err


@pytest.mark.skipif(not os.environ.get("CIFAR10_SUBSET_DIR"), reason="needs the 5,000/1,000 CIFAR-10 subset "
                    "that .ci/run builds (CIFAR10_SUBSET_DIR)")
def test_scratch_cnn_learns_real_images(tmp_path):
    code = run.main(["--dataset", "cifar10", "--data-dir", os.environ["CIFAR10_SUBSET_DIR"], "--epochs", "3",
                     "--batch-size", "64", "--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9",
                     "--out", str(tmp_path / "runs"), "--quiet"])
    assert code == 0
    s = json.loads((only_run_dir(tmp_path / "runs") / "summary.json").read_text())
    assert s["n_train"] == 5000 and s["n_test"] == 1000
    assert s["final_test_acc"] > 0.30, s["final_test_acc"]


def test_synthetic_data_is_made_as_large_as_the_subset_asks(tmp_path):
    code, out, _ = run_cli(tmp_path, "--train-subset", "12000", "--max-steps", "1", "--quiet")
    assert code == 0
    summary = json.loads((only_run_dir(out) / "summary.json").read_text())
    assert summary["n_train"] == 12000 and summary["dataset"] == "synthetic"
