"""Where a CPU training step goes: the backend's GEMM ceiling on a square product, the scratch
step beside torch's, its kernels, its convolutions by shape and pass, and its GEMMs by shape
with the rate each reaches, so that a step can be read against what the machine's BLAS does.

    python -m experiments.cpu_profile                                  # numpy, 1 thread, resnet18, batch 64
    python -m experiments.cpu_profile --backend numba --threads 16 --model resnet18
    python -m experiments.cpu_profile --model cnn --steps 10 --no-torch
    python -m experiments.cpu_profile --convs --backend numba --threads 16   # the choice table, measured here

With --convs, each distinct convolution of the model is timed forward and backward under every
algorithm the backend can be told to run (numpy: the table's pick, phase planes, channels
innermost, im2col; numba: the pick, unfused, F(2x2), F(4x4), im2col), beside torch's
convolution on the same threads: the measurements behind a backend's choice table, on this
machine.

Times are wall-clock seconds of whole calls on the calling thread (numba's kernels and GEMMs
wait for their threads before returning); a kernel's time excludes the kernels it calls
(KernelProfile). GEMMs that numba's fused Winograd runs inside its kernels are part of those
convolutions' time, not of the GEMM table.
"""
import argparse
import sys

from scratch_nn.backends.threads import usable_cores


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.cpu_profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18", choices=("cnn", "resnet18"))
    ap.add_argument("--backend", default="numpy", choices=("numpy", "numba"))
    ap.add_argument("--threads", type=int, default=None,
                    help="numba's threads and torch's (default: 1 for numpy, every core for numba)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2, help="steps each table averages over (default 2)")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps of each side for the step times (default 5)")
    ap.add_argument("--gemm-size", type=int, default=1024, help="the square GEMM of the ceiling (default 1024)")
    ap.add_argument("--no-torch", action="store_true", help="no torch step beside scratch's")
    ap.add_argument("--convs", action="store_true",
                    help="time each convolution under every algorithm the backend can run, instead of a step")
    a = ap.parse_args(argv)
    if a.threads is None:
        a.threads = 1 if a.backend == "numpy" else usable_cores()
    if a.backend == "numpy" and a.threads != 1:
        ap.error("the numpy backend is the single-core reference: use --threads 1, or --backend numba")
    if not 1 <= a.threads <= usable_cores():
        ap.error(f"--threads must be 1 to the {usable_cores()} cores this process may use")
    for name in ("batch_size", "steps", "repeats", "gemm_size"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.backend == "numba":
        from scratch_nn.backends.threads import start_numba_before_torch

        start_numba_before_torch(a.threads)     # its own OpenMP runtime, as in experiments.bench
    if not a.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("error: torch is not installed (pip install -e '.[torch]'), or pass --no-torch", file=sys.stderr)
            return 2
    from scratch_nn.backends import BackendUnavailable

    from .measure import cpu_kernel_profile as P
    from .record.sysinfo import machine_info

    if a.convs:
        try:
            lines = P.conv_variants(a.model, a.backend, a.threads, a.batch_size, a.repeats, with_torch=not a.no_torch)
        except BackendUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print("\n".join(lines))
        return 0
    try:
        ad, xb, tad, txb = P.adapters(a.model, a.backend, a.threads, a.batch_size, with_torch=not a.no_torch)
    except BackendUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = machine_info(None)
    print(f"{a.model}, batch {a.batch_size}, scratch {a.backend} and torch on {a.threads} thread(s) of "
          f"{info.get('cpu_model') or 'an unknown CPU'} ({info.get('logical_cores')} logical cores)")
    print(P.gemm_ceiling(ad.be, a.gemm_size))
    for _ in range(2):                       # warm-up: compilation, first-touch of buffers
        ad.train_step(*xb)
        if tad is not None:
            tad.train_step(*txb)
    for line in P.step_times(ad, xb, tad, txb, a.repeats):
        print(line)
    for title, lines in (("kernels", P.kernel_table(ad, xb, a.steps)),
                         ("convolutions by shape", P.conv_table(ad, xb, a.steps)),
                         ("GEMMs by shape", P.gemm_table(ad, xb, a.steps))):
        print(f"\n{title} ({a.steps} steps):")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
