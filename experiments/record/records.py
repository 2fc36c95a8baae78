"""What a run writes: results/runs/<run_id>/{config.json, epochs.csv, steps.csv,
resources.csv, summary.json} and one row of results/runs.csv (DESIGN.md, "What a run records").

CSV files are written row by row and flushed, so an interrupted run keeps what it measured;
runs.csv is rewritten atomically (temp file + rename) so it is never left half-written.
"""
import csv
import json
import os
import tempfile

EPOCH_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_time_s",
                 "train_images_per_s", "data_time_s", "eval_time_s", "lr"]
STEP_COLUMNS = ["step", "epoch", "loss", "batch_acc", "step_time_s", "lr"]
RUNS_COLUMNS = ["run_id", "status", "impl", "backend_or_device", "model", "threads", "batch_size", "precision",
                "optimizer", "lr", "epochs", "steps", "dataset", "n_train", "n_test", "seed",
                "train_time_s", "images_per_s", "world_size", "data_on_gpu", "scaling_efficiency",
                "warmup_steps", "warmup_time_s",
                "peak_rss_mb", "mean_cpu_percent", "peak_gpu_mem_mb", "mean_gpu_util_percent", "energy_j",
                "final_train_loss", "final_train_acc", "final_test_loss", "final_test_acc",
                "tta_50_s", "tta_80_s", "tta_85_s", "tta_90_s", "tta_50_epoch", "tta_80_epoch", "tta_85_epoch",
                "tta_90_epoch", "cpu", "gpu", "date", "run_dir"]


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


class CsvLog:
    """A CSV written a row at a time, header first, flushed after every row. With keep (a
    predicate on a row of the existing file), the file is continued instead: the rows kept
    are rewritten, the others (written after the checkpoint a run resumes from) dropped."""

    def __init__(self, path, columns, keep=None):
        self.columns = columns
        rows = []
        if keep is not None and os.path.exists(path):
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if keep(r)]
        self._f = open(path, "w", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=columns)
        self._w.writeheader()
        for r in rows:
            self._w.writerow({k: r.get(k, "") for k in columns})
        self._f.flush()

    def write(self, row):
        self._w.writerow({k: _fmt(row.get(k)) for k in self.columns})
        self._f.flush()

    def close(self):
        if not self._f.closed:
            self._f.close()


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def read_runs(path):
    """runs.csv's rows as dicts of strings ([] where there is no table yet)."""
    if not os.path.exists(path) or not os.path.getsize(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_runs_row(path, row):
    """Add one row to runs.csv atomically (a temp file, then rename). A row of the same run_id
    (the same run before it was resumed) is replaced, so a run has one row."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    rows = []
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            # a table of an earlier version, whose columns this one only adds to, takes blanks
            if reader.fieldnames is None or not set(reader.fieldnames) <= set(RUNS_COLUMNS):
                raise ValueError(f"{path} has other columns than this version writes; move it aside")
            rows = [r for r in reader if r["run_id"] != row.get("run_id")]
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".runs.", suffix=".csv")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=RUNS_COLUMNS, restval="")
            w.writeheader()
            w.writerows(rows)
            w.writerow({k: _fmt(row.get(k)) for k in RUNS_COLUMNS})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class RunFolder:
    """Creates the run folder and owns its files. Create it only after every input has been
    validated, so that bad input never leaves a half-written folder behind.

    RunFolder.reopen continues an existing folder from a checkpoint: epochs.csv and steps.csv
    keep their rows before it (epochs < epochs_done, steps < step) and go on from there."""

    def __init__(self, out_root, run_id, config, resume_at=None):
        self.dir = os.path.join(out_root, run_id)
        if resume_at is None:
            os.makedirs(self.dir, exist_ok=False)
            write_json(self.path("config.json"), config)
            keep_epoch = keep_step = None
        else:
            epochs_done, step = resume_at
            keep_epoch = lambda r: int(r["epoch"]) < epochs_done  # noqa: E731
            keep_step = lambda r: int(r["step"]) < step  # noqa: E731
        self.epochs = CsvLog(self.path("epochs.csv"), EPOCH_COLUMNS, keep=keep_epoch)
        self.steps = CsvLog(self.path("steps.csv"), STEP_COLUMNS, keep=keep_step)

    @classmethod
    def reopen(cls, run_dir, epochs_done, step):
        run_dir = os.path.abspath(run_dir)
        return cls(os.path.dirname(run_dir), os.path.basename(run_dir), None, resume_at=(epochs_done, step))

    def path(self, name):
        return os.path.join(self.dir, name)

    def close(self):
        self.epochs.close()
        self.steps.close()


class NullFolder:
    """What a data-parallel rank other than 0 writes to: nothing (rank 0 owns the run folder)."""
    dir = None

    class _Null:
        def write(self, row):
            pass

        def close(self):
            pass

    def __init__(self):
        self.epochs = self.steps = self._Null()

    def close(self):
        pass
