"""Where a GPU training step goes: the two ceilings (copy bandwidth, GEMM rate), the scratch
step kernel by kernel, its GEMMs by shape, and optionally torch's top CUDA kernels; or, with
--convs, ResNet-18's convolutions one by one, the scratch tensor-core kernels beside cuDNN.

    python -m experiments.gpu_profile resnet18 128 fp32 [torch]
    python -m experiments.gpu_profile --convs 512 fp16 [--sm75] [--no-torch]
    SCRATCH_NN_TF32_WGRAD=wgmma python -m experiments.gpu_profile --convs 512 tf32   # H100 / H200
"""
import sys

USAGE = ("usage: python -m experiments.gpu_profile MODEL BATCH PRECISION [torch]\n"
         "       python -m experiments.gpu_profile --convs BATCH fp16|bf16|tf32 [--sm75] [--no-torch]")


STORAGE = {"fp16": "float16", "bf16": "bfloat16", "tf32": "float32"}   # --convs precision -> ConvKernels storage


def _gpu_or_error():
    from scratch_nn.backends import BackendUnavailable, get

    try:
        get("cupy")
    except BackendUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return False
    return True


def convs(argv):
    flags = {a for a in argv if a.startswith("--")}
    pos = [a for a in argv if not a.startswith("--")]
    if len(pos) != 2 or not pos[0].isdigit() or pos[1] not in STORAGE or flags - {"--sm75", "--no-torch"}:
        print(USAGE, file=sys.stderr)
        return 2
    if pos[1] == "tf32" and "--sm75" in flags:
        print("error: tf32 runs the warpgroup kernels (compute capability 9.0), which have no sm_75 variant",
              file=sys.stderr)
        return 2
    if not _gpu_or_error():
        return 2
    from .measure.conv_layers import format_table, layer_table

    storage = STORAGE[pos[1]]
    try:
        rows, ceilings = layer_table(int(pos[0]), storage, async_copy="--sm75" not in flags,
                                     with_torch="--no-torch" not in flags)
    except ValueError as e:     # e.g. tf32 below compute capability 9.0
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(rows, ceilings, int(pos[0]), storage))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--convs"]:
        return convs(argv[1:])
    if len(argv) not in (3, 4) or (len(argv) == 4 and argv[3] != "torch") or not argv[1].isdigit():
        print(USAGE, file=sys.stderr)
        return 2
    model, batch, precision = argv[0], int(argv[1]), argv[2]
    if not _gpu_or_error():
        return 2
    from .measure import kernel_profile as K

    for line in K.ceilings():
        print(line)
    ad, xb, step = K.scratch_step(model, batch, precision)
    print(f"{model} b{batch} {precision}: {step * 1e3:.2f} ms/step, {batch / step:.0f} img/s (eager, no sync)")
    print(K.kernel_table(ad, xb))
    try:
        import torch  # noqa: F401  (its profiler reads CUPTI)
    except ImportError:
        print("(no torch here: no GPU time per kernel)")
    else:
        print("\n".join(K.gpu_kernel_table(ad, xb)))
    total_ms, lines = K.gemm_shapes(ad, xb)
    print(f"GEMMs: {total_ms:.2f} ms/step")
    print("\n".join(lines))
    if len(argv) == 4:
        print(K.torch_top_kernels(model, batch, precision))
    return 0


if __name__ == "__main__":
    sys.exit(main())
