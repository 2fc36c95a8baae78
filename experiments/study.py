"""The whole study in one command: implementation x execution x model, one subprocess a row.

    python -m experiments.study --preset quick                     # under 10 minutes on 2 cores
    python -m experiments.study --preset full --out results/study/h100
    python -m experiments.study --preset seed --only 'resnet18/*' --out DIR
    python -m experiments.study --out DIR --resume                 # run what is not done yet

The matrix, for each model (cnn, resnet18):

    execution    scratch                       torch
    1-core       numpy, 1 thread               cpu, 1 thread (BLAS, intra- and inter-op)
    multi-core   numba, all threads            cpu, all threads
    gpu          cupy                          cuda              (only where a GPU exists)

Every row trains with the same recipe, data, seed, batch size and precision (experiments.run
with the preset's flags), in a subprocess of its own so that its memory figures are its own.
A row that fails is recorded with its reason and the study goes on. Slow rows are bounded
by a time budget: training stops once the steady-state training time reaches it, and the
row still reports its steady-state throughput and its test accuracy at the budget.

Sweeps for the charts run after the rows: thread scaling (experiments.scaling) and
batch-size scaling (experiments.bench at each batch size, CPU and GPU).

Writes, under --out DIR:
    study.json        the preset and settings, machine, versions, commit, command, times
    study.csv         one line per row: row, kind, status (ok | failed | skipped |
                      interrupted | diverged), reason, return code, wall time, run folder, log
    runs.csv          experiments.run's table, one line per training row
    runs/<row>/<run_id>/   each row's run folder (config, epochs, steps, resources, summary)
    logs/<row>.log    each subprocess's output
    sweeps/           threads/<model>-<N>cores.csv, batch_cpu.csv, batch_gpu.csv
and then the comparison tables and charts (python -m experiments.compare DIR).
"""
import sys

from .cli import Parser, UsageError
from .matrix.plan import PRESETS, row_command, select, settings, sweep_rows, training_rows
from .matrix.runner import gpu_present, run_study
from .report.study_load import StudyError
from .report.study_report import write_report


def build_parser():
    ap = Parser("python -m experiments.study", __doc__)
    ap.add_argument("--preset", default="quick", help=f"{' | '.join(PRESETS)} (default quick)")
    ap.add_argument("--only", default=None, metavar="PATTERN",
                    help="run only rows whose id matches: comma-separated shell patterns over ids such as "
                         "cnn/1-core/scratch, resnet18/gpu/torch, sweep/threads/cnn, sweep/batch-cpu/cnn/64 "
                         "(e.g. 'cnn/*', '*/gpu/*')")
    ap.add_argument("--out", default=None, help="study folder (default results/study/<preset>)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the study in --out with its own settings: run the rows not yet ok")
    ap.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py/ (see experiments.run)")
    ap.add_argument("--download", action="store_true",
                    help="download CIFAR-10 (with its checksum) into --data-dir first if it is not there")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of the multi-core rows (default: every core this process may use)")
    ap.add_argument("--precision", default="fp32", help="GPU rows: fp32 | tf32 | fp16 | bf16 (default fp32, like the "
                                                        "CPU rows)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu-budget", type=float, default=None, metavar="SECONDS",
                    help="steady-state training seconds per CPU row (default: the preset's; 0: no budget)")
    ap.add_argument("--gpu-budget", type=float, default=None, metavar="SECONDS",
                    help="the same for GPU rows (default: the preset's; 0: no budget)")
    ap.add_argument("--test-subset", type=int, default=None,
                    help="evaluate every row on the first N test images (default: the preset's)")
    ap.add_argument("--row-timeout", type=float, default=None, metavar="SECONDS",
                    help="kill a row's subprocess after this long (default: the preset's)")
    ap.add_argument("--no-sweeps", action="store_true", help="skip the thread and batch-size sweeps")
    ap.add_argument("--no-compare", action="store_true", help="do not write the comparison tables and charts")
    ap.add_argument("--dry-run", action="store_true", help="print each row's command and exit")
    return ap


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        a = build_parser().parse_args(argv)
        out, st, header = settings(a, argv)
        gpu = gpu_present()
        rows = training_rows(st) + ([] if a.no_sweeps else sweep_rows(st, gpu))
        rows = select(rows, a.only)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.dry_run:
        for r in rows:
            skip = r["gpu"] and not gpu
            print(f"{r['row']:28s} " + ("(skipped: no GPU)" if skip else " ".join(row_command(r, st, out)[1:])))
        return 0
    code = run_study(rows, st, out, header, gpu, argv, log=lambda line: print(line, flush=True))
    if code == 130 or a.no_compare:
        return code
    try:
        write_report(out)
    except (StudyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = code or 1
    except Exception as e:      # the rows are measured and recorded: a report bug must not hide that
        print(f"error: the comparison failed ({type(e).__name__}: {e}); the study's records are complete: "
              f"rerun python -m experiments.compare {out}", file=sys.stderr)
        code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
