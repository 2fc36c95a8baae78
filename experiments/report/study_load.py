"""A study folder read back (what experiments.study writes): study.json, study.csv, each
training row's run folder, and the sweeps. Any of them may be missing or partial (failed or
skipped rows, --no-sweeps, a study still running): what is absent is None, never guessed."""
import csv
import glob
import json
import math
import os

from ..matrix.plan import row_id, row_slug, split_row

THREADS_COLUMNS = ["model", "impl", "threads", "images_per_s", "images_per_s_min", "images_per_s_max", "speedup",
                   "efficiency", "batch_size", "cpu", "cores", "date", "source"]
BATCH_COLUMNS = ["where", "model", "batch_size", "scratch_backend", "threads", "precision", "scratch_images_per_s",
                 "torch_images_per_s", "ratio", "scratch_peak_gpu_mem_mb", "torch_peak_gpu_mem_mb", "hardware",
                 "date"]

MODEL_ORDER = ("cnn", "resnet18")
EXECUTION_ORDER = ("1-core", "multi-core", "gpu")
IMPL_ORDER = ("scratch", "torch", "torch-best")
TTA_KEYS = ("50", "80", "85", "90")
EXECUTIONS = set(EXECUTION_ORDER)


class StudyError(Exception):
    pass


# ---------------------------------------------------------------------------- reading
def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _read_csv(path):
    """A DataFrame, or None where the file is missing, empty or unreadable (a study still
    writing it)."""
    import pandas as pd

    if not os.path.isfile(path):
        return None
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    return df if len(df.columns) else None


def read_lines(path):
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def num(v):
    """float, or None for what is empty or not a finite number."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def int_or_none(v):
    f = num(v)
    return int(f) if f is not None and f == int(f) else None


def _row_from_slug(slug):
    """cnn_multi-core_torch_s1 -> (cnn, multi-core, torch, 1); cnn_multi-core_torch (a study from
    before seeds) -> (cnn, multi-core, torch, None); None when the folder name is not a row's."""
    parts = slug.split("_")
    seed = None
    if len(parts) == 4 and parts[3][:1] == "s" and parts[3][1:].isdigit():
        seed, parts = int(parts[3][1:]), parts[:3]
    if len(parts) != 3 or parts[1] not in EXECUTIONS:
        return None
    return (*parts, seed)


def _newest_run(root):
    if not os.path.isdir(root):
        return None
    dirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    return os.path.join(root, dirs[-1]) if dirs else None


class Run:
    """One training row and seed: its study.csv line and whatever its run folder holds. row is
    its id (cnn/gpu/torch/s1), key the row's id without the seed (cnn/gpu/torch), seed its seed:
    from the id, else study.csv's seed column, else summary.json (a study from before seeds)."""

    def __init__(self, line, study_dir):
        self.line = line
        self.row = line["row"]
        self.key, seed = split_row(self.row)
        rd = line.get("run_dir") or ""
        self.dir = os.path.join(study_dir, rd) if rd else _newest_run(os.path.join(study_dir, "runs",
                                                                                    row_slug(self.row)))
        d = self.dir
        self.summary = _read_json(os.path.join(d, "summary.json")) if d else None
        self.config = _read_json(os.path.join(d, "config.json")) if d else None
        self.epochs = _read_csv(os.path.join(d, "epochs.csv")) if d else None
        self.steps = _read_csv(os.path.join(d, "steps.csv")) if d else None
        self.resources = _read_csv(os.path.join(d, "resources.csv")) if d else None
        for v in (seed, line.get("seed"), (self.summary or {}).get("seed")):
            if int_or_none(v) is not None:
                seed = int_or_none(v)
                break
        self.seed = seed

    def get(self, key):
        """A figure from summary.json, else config.json, else the study.csv line."""
        for src in (self.summary, self.config, self.line):
            if src and src.get(key) not in (None, ""):
                return src[key]
        return None


class Study:
    def __init__(self, path):
        self.dir = path
        self.header = _read_json(os.path.join(path, "study.json")) or {}
        self.lines = read_lines(os.path.join(path, "study.csv"))
        train = [ln for ln in self.lines if (ln.get("kind") or "train") == "train"]
        known = {ln["row"] for ln in train}
        train += self._unrecorded(known)
        self.runs = [Run(ln, path) for ln in train]
        self.threads = threads_table(path)
        self.batch = batch_table(path)

    def _unrecorded(self, known):
        """Run folders of rows study.csv does not list yet: the row still running, or the
        study stopped before writing its line."""
        out = []
        for root in sorted(glob.glob(os.path.join(self.dir, "runs", "*"))):
            parsed = _row_from_slug(os.path.basename(root))
            if not parsed:
                continue
            model, execution, impl, seed = parsed
            base = f"{model}/{execution}/{impl}"
            row = base if seed is None else row_id(base, seed)
            if row in known:
                continue
            done = os.path.exists(os.path.join(_newest_run(root) or root, "summary.json"))
            out.append(dict(row=row, kind="train", model=model, execution=execution, impl=impl, seed=seed,
                            status="unrecorded",
                            reason="not in study.csv: " + ("the study stopped before recording it" if done
                                                           else "still running, or stopped before its summary")))
        return out

    @property
    def settings(self):
        return self.header.get("settings") or {}

    @property
    def machine(self):
        return self.header.get("machine") or {}

    @property
    def versions(self):
        return self.header.get("versions") or {}

    @property
    def torch_best(self):
        """The probe's record per "<model>/<execution>" (study.json's torch_best), or {}."""
        return self.header.get("torch_best") or {}


def load_study(path):
    if not os.path.exists(path):
        raise StudyError(f"{path} does not exist")
    if not os.path.isdir(path):
        raise StudyError(f"{path} is not a folder")
    if not os.path.exists(os.path.join(path, "study.csv")) and not os.path.isdir(os.path.join(path, "runs")):
        raise StudyError(f"{path} holds no study (no study.csv and no runs/): run python -m experiments.study "
                         f"--out {path} first")
    return Study(path)


# ---------------------------------------------------------------------------- sweeps
def threads_table(study_dir):
    import pandas as pd

    frames = []
    for path in sorted(glob.glob(os.path.join(study_dir, "sweeps", "threads", "*.csv"))):
        df = _read_csv(path)
        if df is not None and len(df) and {"impl", "threads", "images_per_s"} <= set(df.columns):
            frames.append(df.assign(source=os.path.relpath(path, study_dir)))
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True).reindex(columns=THREADS_COLUMNS)
    return df.sort_values(["model", "impl", "threads"], kind="stable", ignore_index=True)


def batch_table(study_dir):
    import pandas as pd

    frames = []
    for where in ("cpu", "gpu"):
        df = _read_csv(os.path.join(study_dir, "sweeps", f"batch_{where}.csv"))
        if df is None or not len(df) or "batch_size" not in df:
            continue
        df = df.assign(where=where)
        if where == "cpu":
            df = df.rename(columns={"cpu": "hardware"}).assign(precision="fp32")
        else:  # bench writes no backend or thread column for the GPU: cupy, on the device
            df = df.rename(columns={"gpu": "hardware"}).assign(scratch_backend="cupy", threads=float("nan"))
        frames.append(df.reindex(columns=BATCH_COLUMNS))
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    key = ["where", "model", "batch_size", "scratch_backend", "threads", "precision"]
    df = df.drop_duplicates(subset=key, keep="last")
    return df.sort_values(["where", "model", "batch_size"], kind="stable", ignore_index=True)
