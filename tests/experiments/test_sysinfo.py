"""experiments.record.sysinfo: machine, versions and git commit for config.json."""
import json
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT

from experiments.record import sysinfo

MACHINE_KEYS = {"cpu_model", "logical_cores", "physical_cores", "ram_gb", "os", "hostname",
                "gpu_name", "gpu_memory_mb", "gpu_driver_version", "cuda_driver_version"}
VERSION_KEYS = {"python", "numpy", "numba", "cupy", "torch", "torchvision", "psutil", "pynvml"}


def test_machine_info_keys_and_values():
    info = sysinfo.machine_info()
    assert MACHINE_KEYS <= set(info)
    assert info["logical_cores"] >= 1 and info["ram_gb"] > 0
    assert info["gpu_name"] is None  # a CPU run records no GPU
    json.dumps(info)  # goes straight into config.json


def test_machine_info_with_gpu_index_never_raises():
    info = sysinfo.machine_info(gpu_index=0)
    assert MACHINE_KEYS <= set(info)
    if info["gpu_count"] == 0:
        assert info["gpu_name"] is None and info["cuda_driver_version"] is None


def test_versions():
    v = sysinfo.versions()
    assert VERSION_KEYS <= set(v)
    assert v["python"] == platform.python_version() and v["numpy"] == np.__version__
    assert all(x is None or isinstance(x, str) for x in v.values())
    json.dumps(v)


def test_asking_versions_imports_no_framework():
    code = ("import sys; from experiments.record import sysinfo; sysinfo.versions(); "
            "sysinfo.machine_info(); print([m for m in ('torch', 'cupy') if m in sys.modules])")
    root = ROOT
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


def test_git_commit_outside_a_repo_is_none(tmp_path):
    assert sysinfo.git_commit(tmp_path) is None
    assert sysinfo.git_commit(tmp_path / "missing") is None


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_commit_and_dirty_flag(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                       check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "a.txt").write_text("one")
    git("add", "a.txt")
    git("commit", "-q", "-m", "first")
    commit = sysinfo.git_commit(tmp_path)
    assert commit and len(commit) >= 7 and not commit.endswith("-dirty")
    (tmp_path / "untracked.txt").write_text("x")
    assert sysinfo.git_commit(tmp_path) == commit  # run outputs do not make the tree dirty
    (tmp_path / "a.txt").write_text("two")
    assert sysinfo.git_commit(tmp_path) == commit + "-dirty"
