"""What machine, which library versions and which commit produced a run (for config.json).

Nothing here imports torch or cupy: asking a version must not initialise CUDA or cost
seconds of import time, so versions come from installed package metadata. Every function
returns None for what it cannot find instead of raising.
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from typing import Optional

import psutil

# the checkout: this file is experiments/record/sysinfo.py
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Distribution names to try, first found wins; CuPy ships one wheel per CUDA major version.
_DISTRIBUTIONS = {
    "numpy": ("numpy",),
    "numba": ("numba",),
    "cupy": ("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x"),
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "psutil": ("psutil",),
    "pynvml": ("nvidia-ml-py", "pynvml"),
    "threadpoolctl": ("threadpoolctl",),
}


def _dist_version(names) -> Optional[str]:
    for name in names:
        try:
            return metadata.version(name)
        except Exception:
            continue
    return None


def versions() -> dict:
    """Versions of python and the numerical stack; None for what is not installed."""
    out = {"python": platform.python_version()}
    out.update({key: _dist_version(names) for key, names in _DISTRIBUTIONS.items()})
    return out


def _cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _gpu_info(index: int) -> dict:
    info = {"gpu_name": None, "gpu_memory_mb": None, "gpu_driver_version": None,
            "cuda_driver_version": None}
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:
        return info
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(int(index))
        info["gpu_name"] = _text(pynvml.nvmlDeviceGetName(h))
        info["gpu_memory_mb"] = round(pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**20)
        info["gpu_driver_version"] = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()  # e.g. 12040 for CUDA 12.4
        info["cuda_driver_version"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
    except Exception:
        pass  # keep whatever was read before the failure
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return info


def _gpu_count() -> int:
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:
        return 0
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")   # pin OpenBLAS's kernels whatever the CPU


def numpy_blas() -> str:
    """NumPy's BLAS as the study's CPU rows depend on it: library, version and the kernels it
    runs on this CPU (threadpoolctl), e.g. "openblas 0.3.31 SkylakeX", with any environment
    setting that picks them (OPENBLAS_CORETYPE=Haswell runs AVX2 kernels on an AVX-512 CPU,
    at about half a modern core's GEMM rate); "unknown" where none is found."""
    try:
        import numpy  # noqa: F401  (loads the BLAS that threadpoolctl then finds)
        from threadpoolctl import threadpool_info

        libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    except Exception:
        libs = []
    if not libs:
        return "unknown"
    lib = libs[0]
    text = " ".join(str(v) for v in (lib.get("internal_api"), lib.get("version"), lib.get("architecture")) if v)
    pinned = [f"{k}={os.environ[k]}" for k in BLAS_ENV if os.environ.get(k)]
    return text + (f" ({', '.join(pinned)})" if pinned else "")


def blas_pinned_warning() -> Optional[str]:
    """A line for the CPU benchmarks where the environment pins OpenBLAS's kernels, else None."""
    if not os.environ.get("OPENBLAS_CORETYPE"):
        return None
    return (f"warning: OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} pins numpy's BLAS kernels "
            f"({numpy_blas()}), while torch's oneDNN picks its own for this CPU; for the CPU's best on both "
            "sides, run with both unset: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m ...")


def machine_info(gpu_index: Optional[int] = None) -> dict:
    """The machine a run used. GPU fields describe device `gpu_index`; they are None for
    a CPU run (gpu_index None) or where NVML finds no GPU. gpu_count says what is there."""
    try:
        usable = len(os.sched_getaffinity(0))  # what a container or taskset really allows
    except (AttributeError, OSError):
        usable = psutil.cpu_count(logical=True)
    try:
        ram_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:
        ram_gb = None
    info = {
        "cpu_model": _cpu_model(),
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": usable,
        "ram_gb": ram_gb,
        "os": platform.platform(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "python_executable": sys.executable,
        "gpu_index": gpu_index,
        "gpu_count": _gpu_count(),
        "numpy_blas": numpy_blas(),
    }
    if gpu_index is not None:
        info.update(_gpu_info(gpu_index))
    else:
        info.update({"gpu_name": None, "gpu_memory_mb": None, "gpu_driver_version": None,
                     "cuda_driver_version": None})
    return info


def git_commit(repo_dir=None) -> Optional[str]:
    """Short commit hash of repo_dir (default: this project), "-dirty" when tracked files
    have uncommitted changes; None outside a git checkout or without git. Never raises."""
    repo_dir = os.fspath(repo_dir) if repo_dir is not None else PROJECT_ROOT

    def git(*args):
        r = subprocess.run(["git", "-C", repo_dir, *args], capture_output=True, text=True,
                           timeout=10)
        return r.stdout.strip() if r.returncode == 0 else None

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        if not commit:
            return None
        # Untracked files (run outputs, caches) do not change what the code computes.
        status = git("status", "--porcelain", "--untracked-files=no")
        return f"{commit}-dirty" if status else commit
    except Exception:
        return None
