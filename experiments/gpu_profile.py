"""Where a GPU training step goes: the two ceilings (copy bandwidth, GEMM rate), the scratch
step kernel by kernel, its GEMMs by shape, and optionally torch's top CUDA kernels.

    python -m experiments.gpu_profile resnet18 128 fp32 [torch]
"""
import sys

USAGE = "usage: python -m experiments.gpu_profile MODEL BATCH PRECISION [torch]"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) not in (3, 4) or (len(argv) == 4 and argv[3] != "torch") or not argv[1].isdigit():
        print(USAGE, file=sys.stderr)
        return 2
    model, batch, precision = argv[0], int(argv[1]), argv[2]
    from scratch_nn.backends import BackendUnavailable, get

    try:
        get("cupy")
    except BackendUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from .measure import kernel_profile as K

    for line in K.ceilings():
        print(line)
    ad, xb, step = K.scratch_step(model, batch, precision)
    print(f"{model} b{batch} {precision}: {step * 1e3:.2f} ms/step, {batch / step:.0f} img/s (eager, no sync)")
    print(K.kernel_table(ad, xb))
    total_ms, lines = K.gemm_shapes(ad, xb)
    print(f"GEMMs: {total_ms:.2f} ms/step")
    print("\n".join(lines))
    if len(argv) == 4:
        print(K.torch_top_kernels(model, batch, precision))
    return 0


if __name__ == "__main__":
    sys.exit(main())
