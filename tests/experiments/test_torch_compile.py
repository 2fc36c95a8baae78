"""experiments.run --impl torch --compile: torch.compile'd training follows eager training,
says so in its summary, and is refused with one line where it cannot run."""
import json
import os

import numpy as np
import pytest

from experiments import run
from experiments.train import torch_adapter

pytest.importorskip("torch")

FAST = ["--impl", "torch", "--device", "cpu", "--dataset", "synthetic", "--train-subset", "256", "--test-subset",
        "64", "--max-steps", "4", "--batch-size", "32", "--log-every", "1", "--warmup-steps", "2", "--quiet",
        "--threads", "1"]


@pytest.mark.parametrize("args, needle", [
    (["--impl", "scratch", "--compile"], "for --impl torch"),
    (["--impl", "torch", "--device", "cuda", "--compile", "--cuda-graph"], "choose one"),
])
def test_compile_is_refused_where_it_does_not_apply(tmp_path, capsys, args, needle):
    assert run.main([*args, "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and not (tmp_path / "runs").exists()


def test_compile_without_a_compiler_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch_adapter, "compile_unavailable", lambda device: "no C++ compiler here")
    assert run.main([*FAST, "--compile", "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err == "error: --compile: no C++ compiler here\n" and not (tmp_path / "runs").exists()


def _losses(run_dir):
    import pandas as pd

    return pd.read_csv(os.path.join(run_dir, "steps.csv")).loss.to_numpy()


@pytest.mark.skipif(torch_adapter.compile_unavailable("cpu") is not None,
                    reason=f"torch.compile cannot run here: {torch_adapter.compile_unavailable('cpu')}")
def test_a_compiled_run_follows_the_eager_one(tmp_path):
    dirs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        out = tmp_path / name
        assert run.main([*FAST, *extra, "--out", str(out)]) == 0
        (d,) = os.listdir(out)
        dirs[name] = os.path.join(out, d)
    s = json.loads(open(os.path.join(dirs["compiled"], "summary.json")).read())
    assert s["compile"] is True and s["warmup_time_s"] > 0
    assert json.loads(open(os.path.join(dirs["eager"], "summary.json")).read())["compile"] is False
    # the same weights, data and steps: the fused kernels reorder float32 sums, nothing more
    np.testing.assert_allclose(_losses(dirs["compiled"]), _losses(dirs["eager"]), rtol=2e-4)
