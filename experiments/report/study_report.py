"""Everything experiments.compare writes for a study: the tables (CSV and Markdown) and the
charts, in one folder."""
import os

from . import study_charts
from .study_load import BATCH_COLUMNS, THREADS_COLUMNS, load_study
from .study_conclusions import conclusions
from .study_tables import (MAIN_COLUMNS, SEED_COLUMNS, df_records, main_table, markdown, seed_table,
                           write_csv)


def write_all(study, out, charts=True, log=print):
    """Write the tables (and charts); returns the paths written."""
    os.makedirs(out, exist_ok=True)
    seeds = seed_table(study)
    main = main_table(study, seeds)
    concl = conclusions(main, study.threads)
    written = []

    def path(name):
        written.append(os.path.join(out, name))
        return written[-1]

    write_csv(path("main.csv"), main, MAIN_COLUMNS)
    write_csv(path("main_by_seed.csv"), seeds, SEED_COLUMNS)
    md = markdown(study, main, concl)
    with open(path("main.md"), "w") as f:
        f.write(md)
    if study.threads is not None:
        write_csv(path("sweeps_threads.csv"), df_records(study.threads), THREADS_COLUMNS)
    if study.batch is not None:
        write_csv(path("sweeps_batch.csv"), df_records(study.batch), BATCH_COLUMNS)
    if charts:
        written += study_charts.draw_all(study, main, concl, out, log=log)
    return md, written


def write_report(study_dir, out=None, charts=True, log=print):
    """Load the study in study_dir and write its tables and charts into out (default
    study_dir/compare); logs the Markdown and the files written. Raises StudyError (no study
    there) and OSError (out cannot be written)."""
    study = load_study(study_dir)
    out = out or os.path.join(study_dir, "compare")
    md, written = write_all(study, out, charts=charts, log=log)
    log(md)
    log("wrote:")
    for p in written:
        log(f"  {p}")
    return written
