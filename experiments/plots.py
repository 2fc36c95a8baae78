"""Charts from run records.

    python -m experiments.plots accuracy-time results/recipes/runs.csv --epochs-dir results/recipes/epochs \
        --out results/recipes/accuracy_vs_time.png

accuracy-time: test accuracy against training seconds (evaluation excluded: the cumulative
epoch_time_s of epochs.csv), one panel per (recipe, model), scratch and torch in two colours,
one line per seed. The table is a runs.csv (or a subset of its columns: run_id, impl, model,
seed, and optionally recipe, precision, gpu); each run's epochs.csv is <epochs-dir>/<run_id>.csv
or <run_dir>/epochs.csv.
"""
import argparse
import sys

from .report.accuracy_time import accuracy_vs_time


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.plots", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="chart", required=True)
    p = sub.add_parser("accuracy-time", help="test accuracy against training time, per recipe and model")
    p.add_argument("runs_csv")
    p.add_argument("--epochs-dir", default=None, help="folder of <run_id>.csv epoch tables (default: each run_dir)")
    p.add_argument("--out", required=True, help="PNG to write")
    a = ap.parse_args(argv)
    try:
        print(accuracy_vs_time(a.runs_csv, a.out, a.epochs_dir))
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
