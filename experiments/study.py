"""The whole study in one command: implementation x execution x model x seed, one subprocess a row.

    python -m experiments.study --preset quick                     # 11.5 minutes on 2 cores
    python -m experiments.study --preset full --out results/study/h100
    python -m experiments.study --preset seed --only 'resnet18/*' --seeds 0,1,2,3 --out DIR
    python -m experiments.study --out DIR --resume                 # run what is not done yet

The matrix, for each model (cnn, resnet18):

    execution    scratch                 torch                   torch-best
    1-core       numpy, 1 thread         cpu, 1 thread (BLAS,    -
                                         intra- and inter-op)
    multi-core   numba, all threads      cpu, all threads        cpu, all threads: eager, compile
                                                                 or channels-last
    gpu          cupy                    cuda                    cuda, channels-last + CUDA graph
                                                                 or + compile   (only where a GPU exists)

torch-best is torch as its users run it at their best: the configuration a short probe at
the study's start measures fastest for each model on this machine (experiments/matrix/
probe.py; the candidates, their images/s and the choice go into study.json). Every row trains
with the same recipe, data, batch size and precision (experiments.run with the preset's
flags), once per seed (--seeds; the presets' 2 or 3), in a subprocess of its own so that its
memory figures are its own. A row that fails is recorded with its reason and the study goes
on. Slow rows are bounded by a time budget: training stops once the steady-state training
time reaches it, and the row still reports its steady-state throughput and its test accuracy
at the budget.

Sweeps for the charts run after the rows, once (the first seed): thread scaling
(experiments.scaling) and batch-size scaling (experiments.bench at each batch size, CPU and GPU).

Row ids: cnn/1-core/scratch/s0 (model/execution/impl/seed), sweep/threads/cnn,
sweep/batch-cpu/cnn/64. --only takes shell patterns over them; a pattern without the seed
('cnn/gpu/torch', 'cnn/*', '*/gpu/*') picks every seed of the rows it matches.

Writes, under --out DIR:
    study.json        the preset and settings (seeds included), machine, versions, commit,
                      command, times, and torch_best: the probe's candidates and choices
    study.csv         one line per row and seed: row, kind, seed, status (ok | failed |
                      skipped | interrupted | diverged), reason, return code, wall time, run
                      folder, log
    runs.csv          experiments.run's table, one line per training row and seed
    runs/<row>/<run_id>/   each row's run folder (config, epochs, steps, resources, summary),
                      <row> as cnn_gpu_torch_s1
    logs/<row>.log    each subprocess's output; logs/probe/ the probe's
    probe/            the probe's short runs
    sweeps/           threads/<model>-<N>cores.csv, batch_cpu.csv, batch_gpu.csv
and then the comparison tables and charts (python -m experiments.compare DIR): mean, standard
deviation and n over the seeds of each row.
"""
import sys

from .cli import Parser, UsageError
from .matrix import probe
from .matrix.plan import PRESETS, row_command, select, settings, sweep_rows, training_rows
from .matrix.runner import gpu_present, run_study
from .report.study_load import StudyError
from .report.study_report import write_report


def build_parser():
    ap = Parser("python -m experiments.study", __doc__)
    ap.add_argument("--preset", default="quick", help=f"{' | '.join(PRESETS)} (default quick)")
    ap.add_argument("--only", default=None, metavar="PATTERN",
                    help="run only rows whose id matches: comma-separated shell patterns over ids such as "
                         "cnn/1-core/scratch/s0, resnet18/gpu/torch-best/s1, sweep/threads/cnn, "
                         "sweep/batch-cpu/cnn/64 (e.g. 'cnn/*', '*/gpu/*'); a pattern without the seed "
                         "(cnn/gpu/torch) picks every seed")
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
    ap.add_argument("--seeds", default=None, metavar="LIST",
                    help="run every training row once per seed, e.g. 0,1,2 (default: the preset's: quick 0,1; "
                         "seed and full 0,1,2); the tables give mean, standard deviation and n")
    ap.add_argument("--seed", type=int, default=None, metavar="N", help="one seed: the same as --seeds N")
    ap.add_argument("--no-torch-best", action="store_true",
                    help="no torch-best rows (and no probe): scratch and plain torch only")
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
            note = probe.dry_run_note(r, header) if r["impl"] == "torch-best" else ""
            cmd = " ".join(row_command(r, st, out)[1:] + ([note] if note else []))
            print(f"{r['row']:34s} " + ("(skipped: no GPU)" if r["gpu"] and not gpu else cmd))
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
