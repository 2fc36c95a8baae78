"""Background resource sampler: writes resources.csv while a run trains.

A daemon thread wakes `hz` times a second and records the process's memory and CPU use,
the machine's CPU use and, where NVML answers, the GPU's memory, utilisation and power.
Rows are flushed as they are written so a crashed run still leaves its measurements.
Sampling never raises into the training loop: a reading that fails is left empty.
"""
from __future__ import annotations

import csv
import os
import threading
import time
from typing import Callable, List, Optional

import psutil

RESOURCE_COLUMNS = ["t_s", "rss_mb", "cpu_percent", "system_cpu_percent", "gpu_mem_used_mb",
                    "gpu_pool_mb", "gpu_util_percent", "gpu_power_w"]
PER_GPU_COLUMNS = ["t_s", "gpu", "mem_used_mb", "util_percent", "power_w"]

_MB = 1024.0 * 1024.0

try:  # nvidia-ml-py; optional, so the sampler works on machines without it
    import pynvml
except Exception:  # pragma: no cover - depends on the environment
    pynvml = None


def _nvml_init() -> bool:
    if pynvml is None:
        return False
    try:
        pynvml.nvmlInit()
        return True
    except Exception:
        return False


def _nvml_shutdown() -> None:
    try:
        pynvml.nvmlShutdown()  # reference-counted by NVML: pairs with our own init only
    except Exception:
        pass


def gpu_available(index: int = 0) -> bool:
    """True when NVML initialises and reports a GPU at `index`; never raises."""
    if not _nvml_init():
        return False
    try:
        pynvml.nvmlDeviceGetHandleByIndex(int(index))
        return True
    except Exception:
        return False
    finally:
        _nvml_shutdown()


def _cpu_times():
    """(total, busy) CPU seconds of the whole machine, summed over all cores."""
    t = psutil.cpu_times()
    total = sum(t)
    # On Linux guest time is already counted in user/nice; psutil excludes it the same way.
    total -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
    return total, total - t.idle - getattr(t, "iowait", 0.0)


def _safe(fn):
    try:
        return fn()
    except Exception:
        return None


class ResourceSampler:
    """Samples resources into a CSV on a daemon thread; a context manager.

    gpu_index: the NVML device to watch, a list of them (a data-parallel job's GPUs on this
    node: the GPU columns then hold the total memory and power and the mean utilisation, and
    resources_gpus.csv beside the CSV holds each GPU's readings), or None for a CPU-only run
    (GPU columns empty).
    pool_bytes_fn: returns the framework allocator's reserved bytes (CuPy's memory pool,
    torch.cuda.memory_reserved); it is called from the sampler thread, so it must report
    the right device without relying on the training thread's current-device setting.
    """

    def __init__(self, csv_path, hz: float = 5.0, gpu_index: Optional[int] = None,
                 pool_bytes_fn: Optional[Callable[[], float]] = None, resume: bool = False):
        if not hz > 0:
            raise ValueError(f"sampling rate must be positive, got hz={hz!r}")
        self.csv_path = os.fspath(csv_path)
        self.hz = float(hz)
        self.gpu_index = gpu_index
        self.pool_bytes_fn = pool_bytes_fn
        self.resume = resume        # continue an existing CSV (a resumed run): its clock goes on
        self._t_offset = 0.0
        self.gpu_available = False
        self.samples: List[dict] = []
        self._proc = psutil.Process()
        self._handles = []          # (index, NVML handle) of every GPU watched
        self._gpu_writer = self._gpu_file = None
        self._nvml = False
        self._file = None
        self._writer = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._t0 = 0.0
        self._started = self._stopped = False
        self._energy_mj0 = None
        self._last_cpu = None
        self._last_t = 0.0
        self.energy_j_counter: Optional[float] = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "ResourceSampler":
        if self._started:
            raise RuntimeError("ResourceSampler.start() called twice; create a new sampler")
        self._started = True
        parent = os.path.dirname(self.csv_path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        if self.resume and os.path.exists(self.csv_path):
            with open(self.csv_path, newline="") as f:
                self.samples = [{c: (float(r[c]) if r.get(c) not in (None, "") else None) for c in RESOURCE_COLUMNS}
                                for r in csv.DictReader(f)]
            if self.samples:
                self._t_offset = self.samples[-1]["t_s"] + 1.0 / self.hz
            self._file = open(self.csv_path, "a", newline="", buffering=1)
            self._writer = csv.writer(self._file)
        else:
            self._file = open(self.csv_path, "w", newline="", buffering=1)
            self._writer = csv.writer(self._file)
            self._writer.writerow(RESOURCE_COLUMNS)
        self._file.flush()
        if self.gpu_index is not None and _nvml_init():
            self._nvml = True
            indices = list(self.gpu_index) if isinstance(self.gpu_index, (list, tuple)) else [self.gpu_index]
            for i in indices:
                h = _safe(lambda: pynvml.nvmlDeviceGetHandleByIndex(int(i)))
                if h is not None:
                    self._handles.append((int(i), h))
            self.gpu_available = bool(self._handles)
            if self.gpu_available:
                # Where the GPU keeps an energy counter (Volta and newer) it is more exact
                # than integrating sampled power; summary() reports both.
                self._energy_mj0 = self._energy_mj()
            if len(indices) > 1:
                path = os.path.join(os.path.dirname(self.csv_path), "resources_gpus.csv")
                new = not (self.resume and os.path.exists(path))
                self._gpu_file = open(path, "w" if new else "a", newline="", buffering=1)
                self._gpu_writer = csv.writer(self._gpu_file)
                if new:
                    self._gpu_writer.writerow(PER_GPU_COLUMNS)
        # Both CPU figures are deltas since the previous reading, so take a first reading
        # now. The system one is computed here rather than by psutil.cpu_percent(), whose
        # state is kept per calling thread (the final sample is taken from the caller's).
        _safe(lambda: self._proc.cpu_percent(None))
        self._last_cpu = _safe(_cpu_times)
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="ResourceSampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread, take a final sample, close the file, release NVML. Idempotent."""
        if self._stopped or not self._started:
            return
        self._stopped = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._tick()  # the last moments of the run, however short it was
        if self._energy_mj0 is not None:
            end = self._energy_mj()
            if end is not None:
                self.energy_j_counter = (end - self._energy_mj0) / 1000.0
        for f in (self._file, self._gpu_file):
            try:
                if f is not None:
                    f.close()
            except Exception:
                pass
        if self._nvml:
            _nvml_shutdown()
            self._nvml = False
            self._handles = []

    def _energy_mj(self):
        """The watched GPUs' energy counters summed (mJ), or None where one has none."""
        total = 0.0
        for _, h in self._handles:
            e = _safe(lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(h))
            if e is None:
                return None
            total += e
        return total

    def __enter__(self) -> "ResourceSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ sampling

    def _run(self) -> None:
        period = 1.0 / self.hz
        deadline = self._t0 + period
        # Deadlines advance by a fixed period so the rate does not drift with sampling cost;
        # after a stall (a long GIL hold) skip the missed ticks rather than bursting.
        while not self._stop.wait(max(0.0, deadline - time.perf_counter())):
            self._tick()
            deadline += period
            now = time.perf_counter()
            if deadline < now:
                deadline = now + period

    def _read(self) -> dict:
        row = dict.fromkeys(RESOURCE_COLUMNS)
        row["t_s"] = time.perf_counter() - self._t0 + self._t_offset
        mem = _safe(self._proc.memory_info)
        row["rss_mb"] = None if mem is None else mem.rss / _MB
        cpu = _safe(lambda: self._proc.cpu_percent(None))
        system_cpu = _safe(self._system_cpu_percent)
        # CPU times tick in 10 ms steps, so a percentage over a much shorter interval (the
        # final sample right after a tick) is noise: 0 or several cores. Leave it empty.
        if row["t_s"] - self._last_t >= 0.5 / self.hz:
            row["cpu_percent"], row["system_cpu_percent"] = cpu, system_cpu
        self._last_t = row["t_s"]
        per_gpu = []
        for i, h in self._handles:
            info = _safe(lambda: pynvml.nvmlDeviceGetMemoryInfo(h))
            util = _safe(lambda: pynvml.nvmlDeviceGetUtilizationRates(h))
            mw = _safe(lambda: pynvml.nvmlDeviceGetPowerUsage(h))
            per_gpu.append((i, None if info is None else info.used / _MB, None if util is None else float(util.gpu),
                            None if mw is None else mw / 1000.0))
        if per_gpu:
            mems, utils, powers = ([g[k] for g in per_gpu if g[k] is not None] for k in (1, 2, 3))
            row["gpu_mem_used_mb"] = sum(mems) if mems else None
            row["gpu_util_percent"] = sum(utils) / len(utils) if utils else None
            row["gpu_power_w"] = sum(powers) if powers else None
        if self._gpu_writer is not None:
            for g in per_gpu:
                self._gpu_writer.writerow([_fmt(row["t_s"]), g[0]] + ["" if v is None else _fmt(v) for v in g[1:]])
        if self.pool_bytes_fn is not None:
            pool = _safe(self.pool_bytes_fn)
            row["gpu_pool_mb"] = None if pool is None else float(pool) / _MB
        return row

    def _system_cpu_percent(self) -> Optional[float]:
        now = _cpu_times()
        last, self._last_cpu = self._last_cpu, now
        if last is None or now[0] <= last[0]:
            return None
        return min(100.0, max(0.0, 100.0 * (now[1] - last[1]) / (now[0] - last[0])))

    def _tick(self) -> None:
        try:
            row = self._read()
            self.samples.append(row)
            self._writer.writerow(["" if row[c] is None else _fmt(row[c])
                                   for c in RESOURCE_COLUMNS])
            self._file.flush()
        except Exception:
            pass  # a full disk or closed file must not kill training; the CSV just ends

    # ------------------------------------------------------------------ results

    def summary(self) -> dict:
        rows = list(self.samples)

        def col(name):
            return [r[name] for r in rows if r[name] is not None]

        def peak(name):
            v = col(name)
            return max(v) if v else None

        def mean(name):
            v = col(name)
            return sum(v) / len(v) if v else None

        power = [(r["t_s"], r["gpu_power_w"]) for r in rows if r["gpu_power_w"] is not None]
        energy = None
        if power:
            energy = sum((t1 - t0) * (p0 + p1) / 2.0
                         for (t0, p0), (t1, p1) in zip(power, power[1:]))
        return {
            "peak_rss_mb": peak("rss_mb"),
            "mean_cpu_percent": mean("cpu_percent"),
            "mean_system_cpu_percent": mean("system_cpu_percent"),
            "peak_gpu_mem_mb": peak("gpu_mem_used_mb"),
            "peak_gpu_pool_mb": peak("gpu_pool_mb"),
            "mean_gpu_util_percent": mean("gpu_util_percent"),
            "energy_j": energy,
            "energy_j_counter": self.energy_j_counter,
            "mean_power_w": mean("gpu_power_w"),
            "n_samples": len(rows),
            "duration_s": rows[-1]["t_s"] if rows else 0.0,
        }


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)
