"""experiments.record.sampler: the background resource sampler behind resources.csv."""
import csv
import time

import pytest

from experiments.record.sampler import RESOURCE_COLUMNS, ResourceSampler, gpu_available

GPU_COLUMNS = ["gpu_mem_used_mb", "gpu_util_percent", "gpu_power_w"]
SUMMARY_KEYS = {"peak_rss_mb", "mean_cpu_percent", "peak_gpu_mem_mb", "mean_gpu_util_percent",
                "energy_j", "mean_power_w", "n_samples"}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _busy(seconds):
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += sum(range(1000))
    return x


def _until(cond, timeout_s=30):
    """Wait for the sampler thread to have done something, however loaded the machine."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "the sampler thread took no sample"
        time.sleep(0.01)


def test_writes_header_and_rows_as_it_goes(tmp_path):
    path = tmp_path / "run" / "resources.csv"
    with ResourceSampler(path, hz=20) as sampler:
        _busy(0.3)
        _until(lambda: len(_rows(path)) >= 2)  # already on disk while running: a crash keeps them
        rows = _rows(path)
        assert rows[0] == RESOURCE_COLUMNS
        _busy(0.2)
    rows = _rows(path)
    assert rows[0] == RESOURCE_COLUMNS and len(rows) >= 3
    body = [dict(zip(rows[0], r)) for r in rows[1:]]
    times = [float(r["t_s"]) for r in body]
    assert times == sorted(times) and times[-1] >= 0.45
    assert all(float(r["rss_mb"]) > 1 for r in body)
    cpu = [float(r["cpu_percent"]) for r in body if r["cpu_percent"]]
    assert cpu and max(cpu) > 10  # the busy loop shows up (100 = one core)
    assert all(0 <= float(r["system_cpu_percent"]) <= 100 for r in body if r["system_cpu_percent"])
    assert all(r["gpu_pool_mb"] == "" for r in body)
    if not sampler.gpu_available:
        assert all(r[c] == "" for r in body for c in GPU_COLUMNS)


def test_no_gpu_columns_without_gpu_index(tmp_path):
    with ResourceSampler(tmp_path / "r.csv", hz=50) as sampler:
        time.sleep(0.1)
    assert sampler.gpu_available is False
    assert all(r[4] == "" and r[6] == "" and r[7] == "" for r in _rows(tmp_path / "r.csv")[1:])
    s = sampler.summary()
    assert s["peak_gpu_mem_mb"] is None and s["energy_j"] is None and s["mean_power_w"] is None


def test_gpu_index_without_gpu_is_tolerated(tmp_path):
    expected = gpu_available(0)
    with ResourceSampler(tmp_path / "r.csv", hz=50, gpu_index=0) as sampler:
        time.sleep(0.1)
    assert sampler.gpu_available is expected
    if not expected:
        assert sampler.summary()["energy_j"] is None


def test_pool_bytes_and_failing_readings(tmp_path):
    with ResourceSampler(tmp_path / "a.csv", hz=50, pool_bytes_fn=lambda: 3 * 2**20) as sampler:
        time.sleep(0.1)
    assert {r[5] for r in _rows(tmp_path / "a.csv")[1:]} == {"3.000"}

    def broken():
        raise RuntimeError("allocator gone")
    with ResourceSampler(tmp_path / "b.csv", hz=50, pool_bytes_fn=broken):
        time.sleep(0.1)  # the error stays in the sampler, the column stays empty
    rows = _rows(tmp_path / "b.csv")[1:]
    assert rows and all(r[5] == "" for r in rows)


def test_stop_is_idempotent_and_summary_fields(tmp_path):
    sampler = ResourceSampler(tmp_path / "r.csv", hz=20)
    sampler.stop()  # before start: nothing to do
    sampler.start()
    with pytest.raises(RuntimeError):
        sampler.start()
    _until(lambda: len(sampler.samples) >= 1)   # one from the thread; stop() takes another
    sampler.stop()
    n = len(_rows(tmp_path / "r.csv"))
    sampler.stop()
    assert len(_rows(tmp_path / "r.csv")) == n  # nothing written after the first stop
    s = sampler.summary()
    assert SUMMARY_KEYS <= set(s)
    assert s["n_samples"] == n - 1 == len(sampler.samples) >= 2
    assert s["peak_rss_mb"] > 1 and s["mean_cpu_percent"] is not None


def test_energy_is_the_trapezoid_of_power(tmp_path):
    sampler = ResourceSampler(tmp_path / "r.csv")
    base = dict.fromkeys(RESOURCE_COLUMNS)
    sampler.samples = [dict(base, t_s=0.0, gpu_power_w=100.0),
                       dict(base, t_s=1.0, gpu_power_w=200.0),
                       dict(base, t_s=3.0, gpu_power_w=200.0)]
    s = sampler.summary()
    assert s["energy_j"] == pytest.approx(150.0 + 400.0)
    assert s["mean_power_w"] == pytest.approx(500.0 / 3)
    assert s["n_samples"] == 3


def test_rejects_bad_rate(tmp_path):
    with pytest.raises(ValueError):
        ResourceSampler(tmp_path / "r.csv", hz=0)


class _FakeNvml:
    """Two GPUs with fixed readings (memory MiB, utilisation %, power mW, energy mJ)."""
    GPUS = {0: (1000, 50, 200_000), 1: (3000, 100, 300_000)}

    def __init__(self):
        self.energy = {0: 0.0, 1: 0.0}

    def nvmlDeviceGetHandleByIndex(self, i):
        if i not in self.GPUS:
            raise RuntimeError("no such GPU")
        return i

    def nvmlDeviceGetMemoryInfo(self, h):
        return type("M", (), {"used": self.GPUS[h][0] * 2**20})()

    def nvmlDeviceGetUtilizationRates(self, h):
        return type("U", (), {"gpu": self.GPUS[h][1]})()

    def nvmlDeviceGetPowerUsage(self, h):
        return self.GPUS[h][2]

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self.energy[h] += 1000.0 * (h + 1)
        return self.energy[h]


def test_a_data_parallel_job_samples_every_gpu(tmp_path, monkeypatch):
    from experiments.record import sampler as S

    monkeypatch.setattr(S, "pynvml", _FakeNvml())
    monkeypatch.setattr(S, "_nvml_init", lambda: True)
    monkeypatch.setattr(S, "_nvml_shutdown", lambda: None)
    with ResourceSampler(tmp_path / "resources.csv", hz=50, gpu_index=[0, 1]) as s:
        time.sleep(0.1)
    rows = _rows(tmp_path / "resources.csv")
    head, last = rows[0], dict(zip(rows[0], rows[-1]))
    assert head == RESOURCE_COLUMNS
    # the job's totals: memory and power summed, utilisation averaged
    assert float(last["gpu_mem_used_mb"]) == 4000 and float(last["gpu_power_w"]) == 500
    assert float(last["gpu_util_percent"]) == 75
    per = _rows(tmp_path / "resources_gpus.csv")
    assert per[0] == ["t_s", "gpu", "mem_used_mb", "util_percent", "power_w"]
    assert {r[1] for r in per[1:]} == {"0", "1"} and len(per) - 1 == 2 * (len(rows) - 1)
    # both GPUs' energy counters: +1 J and +2 J between start and stop
    assert s.energy_j_counter == pytest.approx(3.0)
    assert s.summary()["peak_gpu_mem_mb"] == 4000
