"""The cupy backend's CUDA C++ kernels: their sources, cuda/*.cu (one file per op family,
each forward beside its backward, sharing cuda/common.cuh), compiled by NVRTC through CuPy's
RawModule once per storage type and process (CuPy caches the binaries on disk). A compile
error names the file and line it comes from (`#line` markers in the joined source).

Layout. The cupy backend keeps activations channel-major in memory, (C, N, H, W), and hands
the layers NCHW-shaped views of it (`buf.transpose(1, 0, 2, 3)`). A convolution's GEMM
W (F, C*k*k) @ cols (C*k*k, N*OH*OW) then writes its output straight into that layout, the
backward GEMMs read dy with no transpose, and every channel's values lie contiguous, which
is what BatchNorm's per-channel reductions want. Kernels that take "CNHW" arrays take them
contiguous; im2col and the max-pool also read NCHW (the data batch) through (n, c) strides.
The max-pool writes its output NCHW (a following Flatten then needs no copy) and its input
gradient CNHW (what the convolution before it consumes).

Templates: T is the storage type (float, double, or __half for the fp16 mode) and A the type
sums are kept in (double for double, float otherwise), so fp16 activations are reduced in
fp32, as cuDNN and torch's autocast do.

Grids: per-channel kernels put the channel on blockIdx.y and cover the channel's M = N*H*W
values along x, so no thread divides by the channel stride; reductions split a channel into
blockIdx.x chunks and write one partial per chunk (no atomics: results do not depend on
scheduling), and a finalize kernel of one thread per channel combines them.
"""

import os
import re

CUDA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda")
FILES = ("im2col.cu", "activation.cu", "batchnorm.cu", "pooling.cu", "loss.cu", "optim.cu", "nhwc.cu")
CONV_FILES = ("conv_igemm.cu",)     # the tensor-core convolutions: a module of their own (conv_igemm.py)
WGMMA_FILES = ("conv_wgmma.cu",)    # ... their sm_90a warpgroup variant, another (compiled for H100 / H200 only)
_INCLUDE = re.compile(r'^#include "([^"]+)"\s*$', re.M)


def source(files=FILES, cuda_dir=CUDA_DIR):
    """The files joined into one translation unit: each local `#include "x.cuh"` expanded in
    place the first time (a header's `#pragma once` is dropped), with `#line` markers so that
    NVRTC's messages name the file and line of the text they are about."""
    seen = set()

    def expand(name):
        path = os.path.join(cuda_dir, name)
        with open(path) as f:
            lines = f.read().split("\n")
        out = [f'#line 1 "{name}"']
        for i, line in enumerate(lines, 1):
            m = _INCLUDE.match(line)
            if m:
                if m.group(1) not in seen:
                    seen.add(m.group(1))
                    out.append(expand(m.group(1)))
                out.append(f'#line {i + 1} "{name}"')
            elif line.strip() != "#pragma once":
                out.append(line)
            else:
                out.append("")
        return "\n".join(out)

    return "\n".join(expand(f) for f in files) + "\n"


class CudaCompileError(RuntimeError):
    """NVRTC rejected a kernel source: the message leads with file:line of the first error."""


def compile_error(log, cuda_dir=CUDA_DIR):
    """A CudaCompileError whose first line is `scratch_nn/backends/cuda/FILE:LINE: message`,
    from NVRTC's log (`FILE(LINE): error: message` lines), the whole log after it."""
    first = re.search(r"^(\S+?)\((\d+)\): (?:catastrophic )?error: (.*)$", log, re.M)
    if first is None:
        return CudaCompileError(f"NVRTC failed on the cupy backend's kernels:\n{log}")
    root = os.path.dirname(os.path.dirname(os.path.dirname(cuda_dir)))     # the checkout
    where = os.path.relpath(os.path.join(cuda_dir, first.group(1)), root)
    return CudaCompileError(f"{where}:{first.group(2)}: {first.group(3)}\n{log}")


def compile_module(cupy, code, names, options=("--std=c++17",)):
    """cupy.RawModule of `code` with its template instantiations, NVRTC's errors translated."""
    try:
        module = cupy.RawModule(code=code, options=options, name_expressions=names)
        module.get_function(names[0])       # NVRTC runs at the first lookup
    except cupy.cuda.compiler.CompileException as e:
        raise compile_error(str(e)) from None
    return module


# (C++ type of the storage, C++ type of the parameters/statistics) per mode
STORAGE = {"float32": ("float", "float"), "float64": ("double", "double"), "float16": ("__half", "float"),
           "bfloat16": ("bf16_t", "float")}

_TEMPLATES_T = ["im2col", "col2im", "relu_backward", "maxpool2x2_forward",
                "maxpool2x2_backward", "global_avgpool_forward", "global_avgpool_backward", "softmax_xent",
                "bn_backward_apply", "nhwc_stats", "bn_bwd_sums_nhwc", "bn_bwd_apply_nhwc", "maxpool2x2_nhwc_forward",
                "maxpool2x2_nhwc_backward", "avgpool_nhwc_forward", "avgpool_nhwc_backward", "add_nhwc"]
_TEMPLATES_TP = ["bias_relu", "bias_rows", "bn_stats", "bn_apply", "bn_grad_coeffs", "bn_apply_nhwc"]
_TEMPLATES_P = ["sgd_update", "adam_update", "amp_check", "bn_merge_stats"]
_PLAIN = ["set_scalars", "amp_update", "sum_partials", "bn_grad_coeffs_nhwc", "bn_merge_partial"]


def name_expressions(storage):
    t, p = STORAGE[storage]
    names = [f"{k}<{t}>" for k in _TEMPLATES_T]
    names += [f"channel_sums<{t}, {m}>" for m in (0, 1)]
    names += [f"{k}<{t}, {p}>" for k in _TEMPLATES_TP]
    names += [f"{k}<{p}>" for k in _TEMPLATES_P]
    return names + _PLAIN


class Kernels:
    """The compiled kernels for one storage type: k("im2col") -> cupy RawKernel function."""

    def __init__(self, storage):
        import cupy

        self.storage = storage
        self.t, self.p = STORAGE[storage]
        self._names = name_expressions(storage)
        self.module = compile_module(cupy, source(), self._names)
        self._cache = {}

    def __call__(self, name, *template_args):
        key = (name,) + template_args
        fn = self._cache.get(key)
        if fn is None:
            if name in _PLAIN:
                expr = name
            elif name in _TEMPLATES_TP:
                expr = f"{name}<{self.t}, {self.p}>"
            elif name in _TEMPLATES_P:
                expr = f"{name}<{self.p}>"
            elif template_args:
                expr = f"{name}<{self.t}, {', '.join(map(str, template_args))}>"
            else:
                expr = f"{name}<{self.t}>"
            fn = self._cache[key] = self.module.get_function(expr)
        return fn
