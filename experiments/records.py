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
                "train_time_s", "images_per_s", "warmup_steps", "warmup_time_s",
                "peak_rss_mb", "mean_cpu_percent", "peak_gpu_mem_mb", "mean_gpu_util_percent", "energy_j",
                "final_train_loss", "final_train_acc", "final_test_loss", "final_test_acc",
                "cpu", "gpu", "date", "run_dir"]


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


class CsvLog:
    """A CSV written a row at a time, header first, flushed after every row."""

    def __init__(self, path, columns):
        self.columns = columns
        self._f = open(path, "w", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=columns)
        self._w.writeheader()
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


def append_runs_row(path, row):
    """Append one row to runs.csv atomically: copy + row into a temp file, then rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    existing = ""
    if os.path.exists(path):
        with open(path, newline="") as f:
            existing = f.read()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".runs.", suffix=".csv")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            if existing:
                f.write(existing if existing.endswith("\n") else existing + "\n")
                header = existing.splitlines()[0].split(",")
                if header != RUNS_COLUMNS:
                    raise ValueError(f"{path} has other columns than this version writes; move it aside")
            w = csv.DictWriter(f, fieldnames=RUNS_COLUMNS)
            if not existing:
                w.writeheader()
            w.writerow({k: _fmt(row.get(k)) for k in RUNS_COLUMNS})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class RunFolder:
    """Creates the run folder and owns its files. Create it only after every input has been
    validated, so that bad input never leaves a half-written folder behind."""

    def __init__(self, out_root, run_id, config):
        self.dir = os.path.join(out_root, run_id)
        os.makedirs(self.dir, exist_ok=False)
        write_json(self.path("config.json"), config)
        self.epochs = CsvLog(self.path("epochs.csv"), EPOCH_COLUMNS)
        self.steps = CsvLog(self.path("steps.csv"), STEP_COLUMNS)

    def path(self, name):
        return os.path.join(self.dir, name)

    def close(self):
        self.epochs.close()
        self.steps.close()
