import csv

import pytest

from experiments import scaling
from experiments.measure import thread_scaling, train_steps
from scratch_nn import backends
from scratch_nn.backends.threads import usable_cores


def test_more_threads_than_cores_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        scaling.main(["--threads", f"1,{usable_cores() + 1}"])
    assert e.value.code == 2
    assert "cores" in capsys.readouterr().err


@pytest.mark.skipif("numba" not in backends.available(), reason="numba is not installed")
def test_writes_csv_and_chart_and_redraws_it(tmp_path, capsys):
    rc = scaling.main(["--model", "cnn", "--threads", "1", "--no-torch", "--repeats", "2", "--warmup", "1",
                       "--min-time", "0.05", "--batch-size", "8", "--out", str(tmp_path)])
    assert rc == 0
    stem = tmp_path / f"cnn-{usable_cores()}cores"
    rows = list(csv.DictReader(open(f"{stem}.csv")))
    assert [r["impl"] for r in rows] == ["scratch-numba"] and list(rows[0]) == thread_scaling.COLUMNS
    assert float(rows[0]["images_per_s"]) > 0 and float(rows[0]["efficiency"]) == 1.0
    png = tmp_path / f"cnn-{usable_cores()}cores.png"
    assert png.stat().st_size > 10_000
    png.unlink()
    assert scaling.main(["--plot", f"{stem}.csv"]) == 0 and png.exists()


def test_bench_gpu_flags_are_validated():
    from experiments import bench

    a = bench.parse_args(["--scratch-backends", "cupy", "--precision", "tf32", "--cuda-graph", "both", "--csv"])
    assert a.gpu and a.csv == train_steps.DEFAULT_GPU_CSV
    assert bench.parse_args(["--csv"]).csv == train_steps.DEFAULT_CSV
    labels = [label for label, _ in train_steps.bench_sides(a)]
    assert labels == ["scratch-cupy", "torch-cuda", "scratch-cupy+graph", "torch-cuda+graph"]
    # torch's fp16 step is captured too (fused optimizer, found_inf on the GPU)
    a16 = bench.parse_args(["--scratch-backends", "cupy", "--precision", "fp16", "--cuda-graph", "on"])
    assert [label for label, _ in train_steps.bench_sides(a16)] == ["scratch-cupy+graph", "torch-cuda+graph"]
    # torch channels-last beside NCHW: one torch side per layout, ratios per layout
    ab = bench.parse_args(["--scratch-backends", "cupy", "--precision", "bf16", "--torch-memory-format", "both"])
    assert [label for label, _ in train_steps.bench_sides(ab)] == ["scratch-cupy", "torch-cuda", "torch-cuda-cl"]
    assert [kw.get("memory_format") for _, kw in train_steps.bench_sides(ab)] == [None, "nchw", "channels-last"]
    for bad in (["--precision", "tf32"], ["--cuda-graph", "on"], ["--scratch-backends", "cupy,numba"],
                ["--precision", "bf16"], ["--torch-memory-format", "channels-last"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


# ---------------------------------------------------------------------------- experiments.dp_scaling
def test_dp_scaling_plans_one_and_n_gpu_runs_of_the_same_per_gpu_batch(capsys):
    from experiments import dp_scaling

    assert dp_scaling.main(["--gpus", "4", "--precision", "fp32,fp16", "--impl", "scratch", "--steps", "30",
                            "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    one, four = lines[0].split(), lines[1].split()
    assert "--gpus" not in one and four[four.index("--gpus") + 1] == "4"
    for cmd, gpus in ((one, 1), (four, 4)):
        assert cmd[cmd.index("--batch-size") + 1] == "256"
        assert int(cmd[cmd.index("--train-subset") + 1]) == 30 * 256 * gpus     # 30 global steps each
        assert cmd[cmd.index("--epochs") + 1] == "1"
    assert "fp16" in lines[2] and "--backend" in lines[2] and "--cuda-graph" not in lines[2]
    # --cuda-graph: both runs of a pair capture, so the ratio stays within one mode
    assert dp_scaling.main(["--gpus", "2", "--impl", "torch", "--cuda-graph", "--dry-run"]) == 0
    graphed = capsys.readouterr().out.splitlines()
    assert len(graphed) == 2 and all("--cuda-graph" in line for line in graphed)


@pytest.mark.parametrize("argv,needle", [(["--gpus", "1"], "at least 2"), (["--impl", "jax"], "jax"),
                                         (["--steps", "5", "--warmup-steps", "5"], "more than --warmup-steps")])
def test_dp_scaling_refuses_bad_settings(argv, needle, capsys):
    from experiments import dp_scaling

    with pytest.raises(SystemExit):
        dp_scaling.parse_args(argv)
    assert needle in capsys.readouterr().err


def test_bench_summarises_one_row_per_torch_layout_and_upgrades_old_tables(tmp_path):
    from experiments import bench

    a = bench.parse_args(["--scratch-backends", "cupy", "--precision", "fp16", "--torch-memory-format", "both",
                          "--cuda-graph", "both", "--repeats", "2"])
    runners = {label: dict(ips=[100.0 * (i + 1), 110.0 * (i + 1)], peak_mb=10.0 * (i + 1))
               for i, (label, _) in enumerate(train_steps.bench_sides(a))}
    rows = train_steps.summarise("resnet18", runners, a)
    assert [(r["cuda_graph"], r["torch_memory_format"]) for r in rows] == \
        [(False, "nchw"), (False, "channels-last"), (True, "nchw"), (True, "channels-last")]
    assert rows[1]["ratio"] == pytest.approx(100 / 300) and rows[3]["ratio"] == pytest.approx(400 / 600)
    # a table written before the column gets it, its old rows marked nchw
    old = tmp_path / "gpu.csv"
    cols = train_steps.GPU_CSV_COLUMNS[:-1]
    old.write_text(",".join(cols) + "\n" + ",".join("1" for _ in cols) + "\n")
    train_steps.append_csv(str(old), rows, a, "Test GPU")
    back = list(csv.DictReader(open(old)))
    assert list(back[0]) == train_steps.GPU_CSV_COLUMNS and back[0]["torch_memory_format"] == "nchw"
    assert [r["torch_memory_format"] for r in back[1:]] == ["nchw", "channels-last"] * 2


def test_cpu_bench_rows_record_numpy_blas_and_old_tables_get_the_column(tmp_path, monkeypatch):
    from experiments import bench
    from experiments.record import sysinfo

    a = bench.parse_args(["--models", "cnn", "--repeats", "2"])
    runners = {label: dict(ips=[50.0, 60.0], peak_mb=None) for label, _ in train_steps.bench_sides(a)}
    rows = train_steps.summarise("cnn", runners, a)
    old = tmp_path / "cpu.csv"
    cols = train_steps.CSV_COLUMNS[:-1]
    old.write_text(",".join(cols) + "\n" + ",".join("1" for _ in cols) + "\n")
    train_steps.append_csv(str(old), rows, a, "Test CPU", blas="openblas 0.3.31 SkylakeX")
    back = list(csv.DictReader(open(old)))
    assert list(back[0]) == train_steps.CSV_COLUMNS and back[0]["numpy_blas"] == ""
    assert [r["numpy_blas"] for r in back[1:]] == ["openblas 0.3.31 SkylakeX"] * len(rows)
    # the kernels numpy's BLAS runs, and the environment setting that pinned them, by name
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert "OPENBLAS_CORETYPE=Haswell" in sysinfo.numpy_blas()
    assert "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE" in sysinfo.blas_pinned_warning()
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert sysinfo.blas_pinned_warning() is None and "OPENBLAS_CORETYPE" not in sysinfo.numpy_blas()


@pytest.mark.parametrize("argv,needle", [(["--convs", "512", "fp8"], "usage"),
                                         (["--convs", "512", "tf32", "--sm75"], "no sm_75 variant"),
                                         (["--convs", "x", "fp16"], "usage")])
def test_gpu_profile_convs_refuses_bad_input_before_touching_a_gpu(argv, needle, capsys):
    from experiments import gpu_profile

    assert gpu_profile.main(argv) == 2
    assert needle in capsys.readouterr().err
