"""The cupy backend's CUDA sources (scratch_nn/backends/cuda/): every file is compiled, every
kernel instantiation is found, for the T4's compute_75 and the H200's sm_90, by NVRTC through
ctypes (no GPU and no CuPy needed: CI runs this); a compile error names its file and line."""
import glob
import os
import re
import shutil
import subprocess

import pytest

from scratch_nn.backends import cuda_kernels as K
from tests import nvrtc

NVRTC = nvrtc.find()
needs_nvrtc = pytest.mark.skipif(NVRTC is None, reason="no NVRTC library here (torch's CUDA wheels bring one)")
ARCHS = ("compute_75", "sm_90")


def test_every_source_file_is_compiled_and_includes_resolve():
    on_disk = sorted(f for f in os.listdir(K.CUDA_DIR) if f.endswith(".cu"))
    assert sorted(K.FILES + K.CONV_FILES + K.WGMMA_FILES) == on_disk
    src = K.source()
    assert '#include "' not in src and src.count('#line 1 "common.cuh"') == 1
    for f in K.FILES:
        assert f'#line 1 "{f}"' in src


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("storage", sorted(K.STORAGE))
def test_every_kernel_compiles(storage, arch):
    names = K.name_expressions(storage)
    ok, log, lowered = NVRTC.compile(K.source(), arch, names)
    assert ok, log
    assert sorted(lowered) == sorted(names) and all(lowered.values())


@needs_nvrtc
def test_a_compile_error_names_its_file_and_line(tmp_path):
    cuda = tmp_path / "scratch_nn" / "backends" / "cuda"
    shutil.copytree(K.CUDA_DIR, cuda)
    path = cuda / "batchnorm.cu"
    lines = path.read_text().split("\n")
    at = next(i for i, line in enumerate(lines) if "__global__ void bn_apply" in line) + 2
    lines.insert(at, "    int planted = undefined_name;")
    path.write_text("\n".join(lines))
    ok, log, _ = NVRTC.compile(K.source(cuda_dir=str(cuda)), "compute_75", K.name_expressions("float32"))
    assert not ok
    err = K.compile_error(log, cuda_dir=str(cuda))
    first = str(err).split("\n")[0]
    assert re.match(rf"scratch_nn/backends/cuda/batchnorm\.cu:{at + 1}: .*undefined_name", first), first


def test_the_sources_ship_as_package_data():
    text = open(os.path.join(os.path.dirname(K.CUDA_DIR), "..", "..", "pyproject.toml")).read()
    assert '"scratch_nn.backends" = ["cuda/*.cu", "cuda/*.cuh"]' in text


@needs_nvrtc
@pytest.mark.parametrize("kind,async_copy,arch", [(0, True, "sm_90"), (1, True, "sm_90"), (0, False, "compute_75")])
def test_the_tensor_core_convolutions_compile(kind, async_copy, arch):
    """conv_igemm.cu for the H200 (fp16, bf16: cp.async, m16n8k16) and the T4 (fp16: register
    staging, m16n8k8), one tile of each kernel shape family (the full set takes minutes)."""
    from scratch_nn.backends import conv_igemm as G

    names = sorted({G.igemm_name(kind, G.igemm_default(f, c, async_copy), async_copy)
                    for f, c in ((64, 16), (64, 64), (128, 128), (16, 16))}
                   | {G.wgrad_name(kind, G.wgrad_default(f, 9 * c, async_copy), async_copy)
                      for f, c in ((64, 16), (64, 64), (512, 512))}) + \
        ["wgrad_reduce", f"pack_weights<{kind}>", f"nchw_to_nhwc<{kind}>"]
    assert set(names) <= set(G.name_expressions(kind, async_copy))
    ok, log, lowered = NVRTC.compile(K.source(files=K.CONV_FILES), arch, names)
    assert ok, log
    assert sorted(lowered) == sorted(names)


CUOBJDUMP = next(iter(glob.glob(os.path.join(os.path.dirname(os.path.dirname(pytest.__file__)), "triton", "backends",
                                             "nvidia", "bin", "cuobjdump"))), None)


@needs_nvrtc
def test_fp32_storage_needs_only_the_helpers_from_the_mma_sync_file():
    """tf32 (KIND 2) runs every GEMM on the warpgroup kernels: from conv_igemm.cu only the
    packing (rounding to tf32), the input conversion and the partials' reduction."""
    from scratch_nn.backends import conv_igemm as G

    names = G.name_expressions(2, True)
    assert names == ["wgrad_reduce", "pack_weights<2>", "nchw_to_nhwc<2>"]
    ok, log, lowered = NVRTC.compile(K.source(files=K.CONV_FILES), "sm_90", names)
    assert ok, log


@needs_nvrtc
@pytest.mark.parametrize("kind", [0, 1, 2])
def test_the_warpgroup_convolutions_compile_for_sm90a(kind, tmp_path):
    """conv_wgmma.cu for sm_90a, every tile: no register spills, and (where Triton's cuobjdump
    is at hand) warpgroup mma (HGMMA) in the machine code rather than a slower path."""
    from scratch_nn.backends import conv_igemm as G

    names = G.wgmma_names(kind)
    ok, log, lowered, cubin = NVRTC.compile(K.source(files=K.WGMMA_FILES), "sm_90a", names,
                                            options=("--std=c++17", "-Xptxas=-v"), cubin=True)
    assert ok, log
    assert sorted(lowered) == sorted(names)
    assert "0 bytes spill" in log and not re.search(r"[1-9]\d* bytes spill", log), log
    assert "C7511" not in log, log        # wgmma serialised for want of registers
    if CUOBJDUMP:
        path = tmp_path / "wgmma.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([CUOBJDUMP, "--dump-sass", str(path)], capture_output=True, text=True, check=True).stdout
        # conv_wgrad_tf32 multiplies with mma.sync (HMMA): wgmma has no MN-major tf32 form
        wg = [n for n in names if not n.startswith("conv_wgrad_tf32<")]
        assert sass.count("HGMMA") >= 4 * len(wg), "expected the warpgroup mma in every tile's main loop"
