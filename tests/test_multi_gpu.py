"""Data parallelism on real GPUs (skipped without two): two ranks of batch b follow one GPU of
batch 2b, on the scratch side (NCCL through CuPy) and the torch side (DistributedDataParallel).
The cnn has no BatchNorm, so only the order of float sums differs; resnet18 with --sync-bn
(torch) normalises over the global batch as one GPU does."""
import json
import os

import numpy as np
import pandas as pd
import pytest

from experiments import run
from experiments.launch import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gpus():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_gpus() < 2, reason="needs two CUDA GPUs")]

COMMON = ["--dataset", "synthetic", "--train-subset", "1024", "--test-subset", "256", "--epochs", "2",
          "--lr", "0.05", "--log-every", "1", "--warmup-steps", "1", "--quiet", "--host-data"]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _pair(tmp_path, impl, model, extra=()):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run.main([*impl, "--model", model, *COMMON, *extra, "--batch-size", "64", "--out", str(one)]) == 0
    assert launch("experiments.run", [*impl, "--model", model, *COMMON, *extra, "--gpus", "2", "--batch-size", "32",
                                      "--out", str(two)], 2, env=_env()) == 0
    (d1,), (d2,) = list(one.iterdir()), list(two.iterdir())
    return d1, d2


@pytest.mark.parametrize("impl", [["--impl", "scratch", "--backend", "cupy"], ["--impl", "torch", "--device", "cuda"]])
def test_two_gpus_follow_one_gpu_with_the_global_batch(tmp_path, impl):
    d1, d2 = _pair(tmp_path, impl, "cnn")
    s1, s2 = pd.read_csv(d1 / "steps.csv"), pd.read_csv(d2 / "steps.csv")
    assert len(s1) == len(s2) == 32
    np.testing.assert_allclose(s2.loss, s1.loss, rtol=1e-4)
    summary = json.loads((d2 / "summary.json").read_text())
    assert summary["world_size"] == 2
    res = pd.read_csv(d2 / "resources.csv")
    assert res.gpu_mem_used_mb.notna().any() and (d2 / "resources_gpus.csv").exists()


def test_torch_sync_bn_follows_one_gpu(tmp_path):
    d1, d2 = _pair(tmp_path, ["--impl", "torch", "--device", "cuda"], "resnet18", extra=["--sync-bn"])
    s1, s2 = pd.read_csv(d1 / "steps.csv"), pd.read_csv(d2 / "steps.csv")
    np.testing.assert_allclose(s2.loss, s1.loss, rtol=2e-3)
