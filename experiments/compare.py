"""Comparison tables and charts of a study folder (what experiments.study writes).

    python -m experiments.compare DIR                    # writes DIR/compare/
    python -m experiments.compare DIR --out OUTDIR --no-charts

Reads DIR/study.json, DIR/study.csv, each training row's run folder (summary.json,
epochs.csv, steps.csv, resources.csv) and DIR/sweeps/. Any of them may be missing or partial
(failed or skipped rows, --no-sweeps, a study still running): what is absent is left empty
and said, never guessed. Rows found under DIR/runs/ but not yet in study.csv are listed with
status `unrecorded`.

Writes, under OUTDIR (default DIR/compare):

main.csv / main.md, one line per training row (its seeds summarised), ordered by model,
execution (1-core, multi-core, gpu) and implementation (scratch, torch, torch-best). A figure
is the mean over the row's seeds that ran ok (over every seed where none did); the figures
that vary from run to run carry their sample standard deviation beside them (<column>_std,
empty with one seed: no spread measured). Ratios are ratios of the means. Columns:

    row                       the row's id without its seed, e.g. cnn/1-core/scratch
    model, execution, impl    cnn | resnet18; 1-core | multi-core | gpu; scratch | torch |
                              torch-best (torch in the configuration the study's probe measured
                              fastest on this machine, study.json's torch_best)
    variant                   torch-best rows: that configuration in words, from the run's
                              summary.json, e.g. "channels-last + CUDA graph", "compile", "eager"
    backend_or_device         numpy | numba | cupy (scratch), cpu | cuda (torch)
    threads                   threads the row ran with (empty on GPU rows)
    precision, batch_size, dataset   from the run's summary.json (config.json as fallback)
    status                    ok | failed | skipped | interrupted | diverged (study.csv), or
                              unrecorded (a run folder study.csv does not list yet); a row whose
                              seeds differ is ok when one of them is, and its reason names the others
    reason                    why a row (or which of its seeds) is not ok, or what is missing
    n                         seeds measured (with images/s) among the ones summarised
    seeds                     those seeds, e.g. 0,1,2
    images_per_s, images_per_s_std   steady-state training images/s (warm-up excluded)
    speedup_vs_1core_scratch  images_per_s / the same model's 1-core scratch row's images_per_s
    scratch_over_torch        scratch images_per_s / torch images_per_s of the same model and
                              execution; written on BOTH rows of the pair (same value), so a
                              filter on either implementation keeps the comparison
    scratch_over_torch_best   the same against the torch-best row (on the scratch and torch-best rows)
    epoch_time_s              mean training time of the full epochs in epochs.csv (evaluation
                              excluded, warm-up included); with no full epoch (a time budget
                              stopped the row first) n_train / images_per_s
    epoch_time_estimated      true when epoch_time_s is that estimate
    warmup_time_s             time of the warm-up steps, apart from images/s: torch.compile's
                              compilation and the CUDA graph's capture are in it
    peak_rss_mb, peak_rss_mb_std, mean_cpu_percent (100 = one core), peak_gpu_mem_mb,
    peak_gpu_mem_mb_std
    memory_scratch_over_torch, memory_scratch_over_torch_best   scratch's peak memory / torch's
                              (torch-best's): GPU memory (NVML) on GPU rows, RSS on CPU rows
    mean_gpu_util_percent
    energy_per_image_j        GPU energy (NVML) / steady-state training images
    final_train_acc, final_test_acc, final_test_acc_std   fractions in [0, 1] (the Markdown shows %)
    tta_50_s, tta_80_s, tta_85_s, tta_90_s   training seconds until test accuracy first
                              reached 50/80/85/90 %; empty unless every seed summarised reached it
    tta_50_s_std, tta_80_s_std, tta_85_s_std, tta_90_s_std
    epochs                    epochs trained, fractional when a row stopped mid-epoch
    stopped_by                epochs | time_budget | max_steps ("/"-joined where seeds differ)
    train_time_s              training seconds (warm-up included, evaluation excluded)
    run_dir                   the seeds' run folders, relative to DIR, ";"-separated

main_by_seed.csv: the training rows before their seeds are summarised, one line per row and
seed (row is then the id with the seed, e.g. cnn/1-core/scratch/s1): row, seed, model,
execution, impl, variant, backend_or_device, threads, status, reason, images_per_s,
warmup_time_s, peak_rss_mb, peak_gpu_mem_mb, final_test_acc, tta_*_s, epochs, stopped_by, run_dir.

A study folder from before seeds (no seeds in its study.json, ids like cnn/1-core/scratch)
reads as one seed a row: n = 1, every _std empty.

sweeps_threads.csv: every DIR/sweeps/threads/*.csv (experiments.scaling) in one table, with the
file it came from. sweeps_batch.csv: DIR/sweeps/batch_cpu.csv and batch_gpu.csv
(experiments.bench) in one table, `where` = cpu | gpu; a repeated measurement (a resumed study)
keeps its last line.

Charts (PNG, beside the tables; see experiments/report/study_charts.py): throughput (mean ± std
error bars and a dot per seed), speedup, accuracy_vs_time, loss_curves, memory_over_time (a
curve per seed), thread_scaling, batch_scaling and summary (one page: machine, compact table
and conclusions computed from these tables). A chart with no data is skipped with a note.
Conclusions call a difference only where it exceeds the rows' spreads (mean ± std apart):
"within run-to-run noise" otherwise, and "one seed: no spread measured" where a row has one seed.
"""
import argparse
import os
import sys

from .report.study_load import StudyError
from .report.study_report import write_report


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="a study folder (python -m experiments.study --out DIR)")
    ap.add_argument("--out", default=None, help="output folder (default DIR/compare)")
    ap.add_argument("--no-charts", action="store_true", help="write the tables only")
    return ap


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    out = a.out or os.path.join(a.dir, "compare")
    try:
        write_report(a.dir, out, charts=not a.no_charts)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {out}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
