"""The study's own files: study.csv (one line per row and its outcome) and study.json's
header (settings, machine, versions, commit, command; the probe adds torch_best)."""
import csv
import datetime
import os

from ..record import sysinfo

# seed: the training row's seed (empty on sweeps; absent from studies made before seeds)
STUDY_COLUMNS = ["row", "kind", "model", "execution", "impl", "seed", "backend_or_device", "threads", "status",
                 "reason", "returncode", "wall_s", "run_dir", "log", "command"]


def write_study_csv(path, lines):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=STUDY_COLUMNS)
        w.writeheader()
        for ln in lines:
            w.writerow({k: "" if ln.get(k) is None else ln.get(k) for k in STUDY_COLUMNS})
    os.replace(tmp, path)


def read_study_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def study_header(st, gpu, argv):
    return dict(settings=st, gpu_present=gpu, machine=sysinfo.machine_info(0 if gpu else None),
                versions=sysinfo.versions(), git_commit=sysinfo.git_commit(),
                command=" ".join(["python -m experiments.study"] + list(argv)),
                started=datetime.datetime.now().isoformat(timespec="seconds"))
