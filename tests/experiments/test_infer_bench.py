"""experiments.infer_bench: rows, CSVs, skipped/failed bookkeeping, flags, charts (CPU only, tiny
configurations; the GPU test runs only where a GPU is visible)."""
import csv
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from experiments.infer_bench import main  # noqa: E402
from experiments.measure.infer.plan import Probe  # noqa: E402
from experiments.measure.infer.table import COLUMNS, LATENCY_COLUMNS, latencies_path  # noqa: E402

TINY = ["--models", "cnn", "--batch-sizes", "1,2", "--warmup", "1", "--iters", "3", "--threads", "1"]
CPU = ["--impls", "scratch,torch", "--backends", "numpy", "--devices", "cpu", "--engines", "eager"]


def _gpu_visible():
    if torch.cuda.is_available():
        return True
    try:
        from scratch_nn import backends

        return "cupy" in backends.available()
    except Exception:
        return False


GPU = _gpu_visible()


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The bench sets torch's thread count process-wide: give the other tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def header(path):
    with open(path, newline="") as f:
        return next(csv.reader(f))


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """One tiny run, scratch numpy and torch cpu, fp64 and fp32, with charts."""
    d = tmp_path_factory.mktemp("infer")
    path = str(d / "infer.csv")
    n = torch.get_num_threads()
    try:
        assert main([*TINY, *CPU, "--precisions", "fp64,fp32", "--csv", path, "--plots", str(d / "plots")]) == 0
    finally:
        torch.set_num_threads(n)
    return path, d


def test_cpu_rows_are_ok_and_sane(cpu_run):
    path, _ = cpu_run
    assert header(path) == COLUMNS
    rows = read(path)
    keys = {(r["impl"], r["backend_or_device"], r["precision"], r["batch_size"]) for r in rows}
    assert keys == {(i, w, p, b) for i, w in (("scratch", "numpy"), ("torch", "cpu"))
                    for p in ("fp64", "fp32") for b in ("1", "2")}
    assert len({r["run_id"] for r in rows}) == 1
    for r in rows:
        assert r["status"] == "ok", r
        assert r["reason"] == "" and r["engine"] == "eager" and r["threads"] == "1" and r["model"] == "cnn"
        assert r["iters"] == "3" and r["warmup"] == "1"
        p50, p90, p99, mean = (float(r[f"latency_ms_{k}"]) for k in ("p50", "p90", "p99", "mean"))
        assert 0 < p50 <= p90 <= p99
        # images/s = batch * iterations / total time = batch / mean latency
        assert float(r["images_per_s"]) == pytest.approx(int(r["batch_size"]) * 1e3 / mean, rel=1e-3)
        assert r["h2d_ms_p50"] == ""                       # CPU rows: no host-to-device copy
        assert r["machine"]
        diff = float(r["max_abs_diff_vs_torch"])
        assert diff < (1e-12 if r["precision"] == "fp64" else 1e-4)


def test_latencies_csv_matches_rows(cpu_run):
    path, _ = cpu_run
    lat = read(latencies_path(path))
    assert header(latencies_path(path)) == LATENCY_COLUMNS
    rows = read(path)
    assert len(lat) == 3 * len(rows)
    for r in rows:
        mine = [x for x in lat if all(x[c] == r[c] for c in ("run_id", "impl", "backend_or_device", "engine",
                                                                 "precision", "batch_size", "threads"))]
        assert [x["iteration"] for x in mine] == ["0", "1", "2"]
        ms = np.array([float(x["latency_ms"]) for x in mine])
        assert ms.min() > 0
        assert float(r["latency_ms_mean"]) == pytest.approx(ms.mean(), rel=1e-3, abs=1e-3)


def test_charts_are_png(cpu_run):
    _, d = cpu_run
    pngs = sorted(os.listdir(d / "plots"))
    assert pngs == ["infer_batch_curves.png", "infer_latency_cnn.png", "infer_throughput.png"]
    for p in pngs:
        with open(d / "plots" / p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_only_redraws(cpu_run, tmp_path, capsys):
    path, _ = cpu_run
    assert main(["--plot-only", path, "--plots", str(tmp_path)]) == 0
    assert {"infer_batch_curves.png", "infer_latency_cnn.png", "infer_throughput.png"} <= set(os.listdir(tmp_path))
    assert "no GPU-over-CPU speed-up chart" in capsys.readouterr().out


def test_speedup_chart_from_gpu_rows(cpu_run, tmp_path):
    """The GPU chart, drawn from the CPU rows plus made-up GPU rows (no GPU needed to draw it)."""
    path, _ = cpu_run
    rows = read(path)
    fake = str(tmp_path / "mixed.csv")
    gpu_rows = [dict(r, impl="torch", backend_or_device="cuda", machine="Some GPU", threads="", precision="fp16",
                     images_per_s=str(float(r["images_per_s"]) * 10)) for r in rows if r["impl"] == "torch"]
    with open(fake, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows + gpu_rows)
    assert main(["--plot-only", fake, "--plots", str(tmp_path)]) == 0
    assert os.path.exists(tmp_path / "mixed_gpu_speedup.png")
    assert not os.path.exists(tmp_path / "mixed_latency_cnn.png")   # no latencies file beside it


def test_csv_is_appended_not_overwritten(tmp_path):
    path = str(tmp_path / "a.csv")
    args = [*TINY, "--impls", "scratch", "--backends", "numpy", "--precisions", "fp32", "--csv", path, "--no-plots"]
    assert main(args) == 0
    assert main([*args[:3], "1", *args[4:]]) == 0     # batch 1 only
    rows = read(path)
    assert len(rows) == 3 and len({r["run_id"] for r in rows}) == 2
    with open(path) as f:
        assert f.read().count("run_id,") == 1          # one header
    assert len(read(latencies_path(path))) == 9
    assert not os.path.exists(tmp_path / "a_throughput.png")   # --no-plots


def test_csv_with_other_columns_is_refused(tmp_path, capsys):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    assert main([*TINY, "--impls", "scratch", "--backends", "numpy", "--csv", str(path), "--no-plots"]) == 2
    assert "other columns" in capsys.readouterr().err
    assert path.read_text() == "a,b\n1,2\n"


def test_max_time_cuts_iterations_short(tmp_path):
    path = str(tmp_path / "t.csv")
    assert main(["--models", "cnn", "--batch-sizes", "2", "--warmup", "5", "--iters", "50", "--max-time", "1e-6",
                 "--impls", "scratch", "--backends", "numpy", "--precisions", "fp32", "--csv", path,
                 "--no-plots"]) == 0
    (r,) = read(path)
    assert r["status"] == "ok" and r["iters"] == "3" and r["warmup"] == "2"


@pytest.mark.skipif(GPU, reason="a GPU is visible: GPU rows run here")
def test_gpu_targets_are_skipped_with_a_reason(tmp_path, capsys):
    path = str(tmp_path / "g.csv")
    assert main([*TINY, "--impls", "scratch,torch", "--backends", "cupy", "--devices", "cuda",
                 "--engines", "eager,cuda-graph,compile", "--precisions", "fp32,fp16,bf16", "--csv", path]) == 0
    rows = read(path)
    # scratch cupy: eager, cuda-graph x 3 precisions; torch cuda: eager, compile, cuda-graph x 3; x 2 batches
    assert len(rows) == (2 * 3 + 3 * 3) * 2
    assert all(r["status"] == "skipped" and r["reason"] for r in rows)
    assert all(r["threads"] == "" and r["latency_ms_p50"] == "" for r in rows)
    assert all("GPU" in r["reason"] or "CuPy" in r["reason"] or "cupy" in r["reason"].lower() for r in rows)
    assert read(latencies_path(path)) == []
    assert "no ok rows" in capsys.readouterr().out


@pytest.mark.skipif(GPU, reason="a GPU is visible")
def test_default_selection_says_cpu_only(tmp_path, capsys):
    path = str(tmp_path / "d.csv")
    assert main([*TINY, "--impls", "scratch", "--backends", "numpy", "--precisions", "fp32", "--csv", path,
                 "--no-plots"]) == 0
    assert main([*TINY, "--impls", "torch", "--engines", "eager", "--precisions", "fp32", "--csv", path,
                 "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert out.count("no GPU is visible here") == 2
    assert {r["backend_or_device"] for r in read(path)} == {"numpy", "cpu"}


def test_onnxruntime_missing_is_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)    # import onnxruntime fails
    path = str(tmp_path / "o.csv")
    assert main([*TINY, "--impls", "torch", "--devices", "cpu", "--engines", "onnxruntime", "--precisions", "fp32",
                 "--csv", path, "--no-plots"]) == 0
    rows = read(path)
    assert [r["status"] for r in rows] == ["skipped", "skipped"]
    assert all("onnxruntime is not installed" in r["reason"] for r in rows)
    # not asked for: no rows, one note
    assert main([*TINY, "--impls", "torch", "--devices", "cpu", "--precisions", "fp32", "--csv", path,
                 "--no-plots"]) == 0
    assert "no onnxruntime rows" in capsys.readouterr().out
    assert "onnxruntime" not in {r["engine"] for r in read(path)[2:]}


def test_onnxruntime_rows(tmp_path):
    """Real ONNX Runtime rows where it is installed, skipped rows where not; fp64 is always skipped."""
    path = str(tmp_path / "o.csv")
    assert main([*TINY, "--impls", "torch", "--devices", "cpu", "--engines", "onnxruntime", "--precisions",
                 "fp64,fp32", "--csv", path, "--no-plots"]) == 0
    rows = read(path)
    fp64 = [r for r in rows if r["precision"] == "fp64"]
    fp32 = [r for r in rows if r["precision"] == "fp32"]
    assert all(r["status"] == "skipped" and r["reason"] for r in fp64)
    if Probe().ort is None:
        assert all(r["status"] == "ok" and float(r["max_abs_diff_vs_torch"]) < 1e-4 for r in fp32)
    else:
        assert all(r["status"] == "skipped" for r in fp32)


def test_compile_failure_is_recorded(tmp_path, monkeypatch):
    """torch.compile raising gives `failed` rows with its message, and the bench goes on."""
    def broken(*a, **k):
        raise RuntimeError("inductor exploded\nwith a long traceback")

    monkeypatch.setattr(torch, "compile", broken)
    path = str(tmp_path / "c.csv")
    assert main([*TINY, "--impls", "torch", "--devices", "cpu", "--engines", "eager,compile", "--precisions", "fp32",
                 "--csv", path, "--no-plots"]) == 0
    rows = read(path)
    assert [(r["engine"], r["status"]) for r in rows] == [("eager", "ok"), ("eager", "ok"),
                                                          ("compile", "failed"), ("compile", "failed")]
    assert rows[2]["reason"] == "inductor exploded with a long traceback"


def test_compile_rows_bookkeeping(tmp_path, monkeypatch):
    """The compile engine's rows with torch.compile stubbed out (the real one takes ~20 s here)."""
    monkeypatch.setattr(torch, "compile", lambda net, **kw: net)
    path = str(tmp_path / "c.csv")
    assert main([*TINY, "--impls", "torch", "--devices", "cpu", "--engines", "compile", "--precisions", "fp64",
                 "--csv", path, "--no-plots"]) == 0
    rows = read(path)
    assert [(r["engine"], r["status"]) for r in rows] == [("compile", "ok")] * 2
    assert all(float(r["max_abs_diff_vs_torch"]) < 1e-12 for r in rows)


@pytest.mark.skipif(not os.environ.get("INFER_BENCH_COMPILE"), reason="a real torch.compile takes 11-21 s cold on a "
                    "2-core machine: set INFER_BENCH_COMPILE=1 to run it")
def test_real_torch_compile(tmp_path):
    path = str(tmp_path / "c.csv")
    assert main(["--models", "cnn", "--batch-sizes", "2", "--warmup", "1", "--iters", "3", "--impls", "torch",
                 "--devices", "cpu", "--engines", "compile", "--precisions", "fp32", "--csv", path,
                 "--no-plots"]) == 0
    (r,) = read(path)
    assert r["status"] == "ok", r["reason"]
    assert float(r["max_abs_diff_vs_torch"]) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_gpu_rows(tmp_path):
    path = str(tmp_path / "g.csv")
    assert main([*TINY, "--impls", "scratch,torch", "--backends", "cupy", "--devices", "cuda",
                 "--engines", "eager,cuda-graph", "--precisions", "fp32,fp16", "--csv", path, "--no-plots"]) == 0
    rows = read(path)
    assert rows and all(r["status"] == "ok" for r in rows), [r["reason"] for r in rows if r["status"] != "ok"]
    assert all(float(r["h2d_ms_p50"]) > 0 for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["--models", "vgg"], "--models: unknown vgg; choose from cnn, resnet18"),
    (["--impls", "jax"], "choose from scratch, torch"),
    (["--backends", "tpu"], "choose from numpy, numba, cupy"),
    (["--devices", "mps"], "choose from cpu, cuda"),
    (["--engines", "tensorrt"], "choose from eager, compile, cuda-graph, onnxruntime"),
    (["--precisions", "fp8"], "choose from fp64, fp32, tf32, fp16, bf16"),
    (["--batch-sizes", "0"], "--batch-sizes: give whole numbers of at least 1"),
    (["--batch-sizes", "a,b"], "--batch-sizes: give comma-separated whole numbers"),
    (["--threads", "100000"], "--threads 100000: this machine lets the process use"),
    (["--iters", "0"], "--iters must be at least 1"),
    (["--warmup", "-1"], "--warmup must be 0 or more"),
    (["--max-time", "0"], "--max-time must be a positive number"),
    (["--plot-only", "/nonexistent/x.csv"], "--plot-only: no such file"),
    (["--impls", "scratch", "--engines", "compile"], "nothing to run"),
])
def test_bad_flags_are_argparse_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--csv", str(tmp_path / "x.csv")])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.csv")
