"""The one-process-per-GPU launcher (torchrun's environment contract) and the torch-free
rendezvous: ranks meet and share bytes, and a rank that dies or a port that is taken ends the
whole job with a clear message within a bounded time. CPU only: the ranks are stand-ins."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from experiments.dist.launch import LaunchError, RankInfo, launch, rank_envs, rank_from_env
from experiments.dist.rendezvous import Rendezvous, RendezvousError

from tests.helpers import ROOT


def _env(**kw):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                                            "MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in kw.items()})
    return env


def _signal_launcher_when(tmp_path, module, args, sigint, ready, sig, what, timeout_s):
    """Start `launch(module, args, 2)` in a subprocess whose SIGINT is `sigint` (what a shell
    hands its jobs), wait until ready() (failing if the job ends first or `what` takes over
    timeout_s), send it `sig`, and return its exit code. Modules in tmp_path can be ranks."""

    env = _env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    code = f"import sys; from experiments.dist.launch import launch; sys.exit(launch({module!r}, {args!r}, 2))"
    p = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert p.poll() is None, f"the job ended with code {p.returncode} before {what}"
            assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
            time.sleep(0.05)
        p.send_signal(sig)
        return p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()


def test_rank_envs_follow_torchrun_and_nodes_add_up():
    envs = rank_envs(2, _env(NNODES=2, NODE_RANK=1, MASTER_ADDR="10.0.0.1", MASTER_PORT=29511))
    assert [(e["RANK"], e["LOCAL_RANK"], e["WORLD_SIZE"], e["LOCAL_WORLD_SIZE"]) for e in envs] == \
        [("2", "0", "4", "2"), ("3", "1", "4", "2")]
    assert {e["MASTER_ADDR"] for e in envs} == {"10.0.0.1"} and {e["MASTER_PORT"] for e in envs} == {"29511"}
    info = rank_from_env(envs[1])
    assert info == RankInfo(3, 4, 1, 2, "10.0.0.1", 29511) and not info.is_main
    assert rank_from_env(_env()) is None


@pytest.mark.parametrize("kw, needle", [
    (dict(NNODES=2, NODE_RANK=0), "MASTER_ADDR"),
    (dict(NNODES=2, NODE_RANK=2, MASTER_ADDR="a", MASTER_PORT=1), "NODE_RANK"),
    (dict(MASTER_PORT="x"), "whole number"),
])
def test_bad_launch_settings_are_refused(kw, needle):
    with pytest.raises(LaunchError, match=needle):
        rank_envs(2, _env(**kw))


def test_ranks_meet_share_and_finish(tmp_path):
    t0 = time.monotonic()
    assert launch("tests.experiments.dist_worker", [str(tmp_path), "ok"], 3, env=_env()) == 0
    lines = sorted(p.read_text() for p in tmp_path.glob("rank*.txt"))
    assert lines == ["job-id-42 3 0 3\n", "job-id-42 3 1 3\n", "job-id-42 3 2 3\n"]
    assert time.monotonic() - t0 < 30


def test_a_rank_that_dies_ends_the_job_with_its_code(tmp_path, capsys):
    t0 = time.monotonic()
    code = launch("tests.experiments.dist_worker", [str(tmp_path), "die-early"], 2, env=_env(), grace_s=2)
    assert code == 3 and time.monotonic() - t0 < 45       # rank 0 would sleep 60 s: it was stopped
    assert "rank 1 exited with code 3; stopping rank(s) 0" in capsys.readouterr().err


def test_a_launcher_that_ignores_sigint_still_stops_its_ranks_on_sigterm(tmp_path):
    """SIGINT is how a rank is asked to stop and save: each rank takes it (Python's
    KeyboardInterrupt) also under a launcher that inherited SIGINT ignored, as a job a script
    started with `&` does; and `kill <launcher>` (SIGTERM) passes Ctrl-C to every rank."""

    (tmp_path / "sigint_probe.py").write_text(
        "import os, signal, sys, time\n"
        "out = os.path.join(sys.argv[1], 'rank' + os.environ['RANK'])\n"
        "try:\n"
        "    open(out + '.tmp', 'w').write(repr(signal.getsignal(signal.SIGINT)))\n"
        "    os.replace(out + '.tmp', out)\n"
        "    time.sleep(120)\n"
        "except KeyboardInterrupt:\n"
        "    open(out, 'a').write(' stopped')\n"
        "    sys.exit(130)\n")
    code = _signal_launcher_when(tmp_path, "sigint_probe", [str(tmp_path)], signal.SIG_IGN,
                                 lambda: all((tmp_path / f"rank{r}").exists() for r in (0, 1)), signal.SIGTERM,
                                 "both ranks' start", 120)
    assert code == 130
    assert {(tmp_path / f"rank{r}").read_text() for r in (0, 1)} == {f"{signal.default_int_handler!r} stopped"}


def test_a_taken_port_is_refused_before_any_rank_starts(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(LaunchError, match=f"MASTER_PORT {port} on 127.0.0.1 is taken"):
            launch("tests.experiments.dist_worker", [str(tmp_path), "ok"], 2, env=_env(MASTER_PORT=port))
    assert not list(tmp_path.iterdir())


def test_across_nodes_a_dead_rank_ends_the_other_node_through_the_link(tmp_path):
    """Two 'nodes' (two launchers, one rank each): node 1's rank dies after the meeting; node 0's
    launcher cannot see it, so node 0's rank must end itself through the watchdog."""
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    p = port.getsockname()[1]
    port.close()
    codes = {}

    def node(r):
        codes[r] = launch("tests.experiments.dist_worker", [str(tmp_path), "die"], 1,
                          env=_env(NNODES=2, NODE_RANK=r, MASTER_ADDR="127.0.0.1", MASTER_PORT=p), grace_s=2)

    t0 = time.monotonic()
    threads = [threading.Thread(target=node, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    # node 0's rank: SIGKILL from its watcher, well before its 60 s sleep would end
    assert codes == {0: 128 + 9, 1: 3} and time.monotonic() - t0 < 45


def test_rendezvous_without_rank_0_times_out_with_a_message():
    info = RankInfo(1, 2, 1, 2, "127.0.0.1", 1)      # nobody listens on port 1
    t0 = time.monotonic()
    with pytest.raises(RendezvousError, match="could not reach rank 0 at 127.0.0.1:1 within 0.5 s"):
        Rendezvous(info, timeout_s=0.5)
    assert time.monotonic() - t0 < 5


def test_rank_0_names_the_ranks_that_never_came():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
    with pytest.raises(RendezvousError, match=r"rank\(s\) 1, 2 did not reach rank 0 within 0.3 s"):
        Rendezvous(RankInfo(0, 3, 0, 3, "127.0.0.1", p), timeout_s=0.3)


# ---------------------------------------------------------------------------- data-parallel training
DP = ["--impl", "torch", "--device", "cpu", "--threads", "1", "--model", "cnn", "--dataset", "synthetic",
      "--train-subset", "256", "--test-subset", "64", "--epochs", "2", "--lr", "0.05", "--log-every", "1",
      "--warmup-steps", "1", "--quiet", "--sample-hz", "20"]


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("nodes, per_node", [(1, 2), (1, 4), (2, 2)], ids=["2-ranks", "4-ranks", "2-nodes-x-2"])
def test_ranks_with_global_batch_b_follow_one_process_with_batch_b(tmp_path, nodes, per_node):
    """torch DistributedDataParallel (gloo on the CPU), started with torchrun's variables: N
    ranks of batch 32/N train as one process of batch 32 (the cnn has no BatchNorm, so only the
    order of float sums differs), and rank 0 alone writes the run folder. Two 'nodes' are two
    launchers on this machine, NNODES=2, each starting its two ranks, as on two machines."""
    pytest.importorskip("torch")
    from experiments import run

    world = nodes * per_node
    one = tmp_path / "one"
    assert run.main([*DP, "--batch-size", "32", "--out", str(one / "runs")]) == 0
    many = tmp_path / "many"
    argv = [*DP, "--batch-size", str(32 // world), "--out", str(many / "runs")]
    if nodes == 1:
        codes = {0: launch("experiments.run", argv, per_node, env=_env())}
    else:
        port, codes = _free_port(), {}

        def node(r):
            codes[r] = launch("experiments.run", argv, per_node,
                              env=_env(NNODES=nodes, NODE_RANK=r, MASTER_ADDR="127.0.0.1", MASTER_PORT=port))

        threads = [threading.Thread(target=node, args=(r,)) for r in range(nodes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    assert codes == {r: 0 for r in range(nodes)}
    (d1,) = (one / "runs").iterdir()
    (d2,) = (many / "runs").iterdir()       # one folder: the other ranks wrote nothing
    import pandas as pd

    s1, s2 = pd.read_csv(d1 / "steps.csv"), pd.read_csv(d2 / "steps.csv")
    assert len(s1) == len(s2) == 16                      # 256 / 32 global batches, two epochs
    np.testing.assert_allclose(s2.loss, s1.loss, rtol=1e-5)
    np.testing.assert_allclose(s2.batch_acc, s1.batch_acc)
    e1, e2 = pd.read_csv(d1 / "epochs.csv"), pd.read_csv(d2 / "epochs.csv")
    np.testing.assert_allclose(e2.test_loss, e1.test_loss, rtol=1e-5)
    import json

    summary = json.loads((d2 / "summary.json").read_text())
    assert summary["world_size"] == world and summary["steps"] == 16
    assert summary["images_per_s_per_process"] == pytest.approx(summary["images_per_s"] / world)


def test_parallel_runs_refuse_what_they_cannot_do(tmp_path, capsys):
    from experiments import run

    assert run.main([*DP, "--gpus", "2", "--out", str(tmp_path / "r")]) == 2
    assert "--gpus needs a GPU run" in capsys.readouterr().err
    assert run.main([*DP, "--sync-bn", "--out", str(tmp_path / "r")]) == 2
    assert "use it with --gpus" in capsys.readouterr().err
    env = _env(RANK=0, WORLD_SIZE=2, LOCAL_RANK=0, MASTER_PORT=1)
    old = dict(os.environ)
    try:
        os.environ.update(env)
        assert run.main(["--impl", "scratch", "--dataset", "synthetic", "--out", str(tmp_path / "r")]) == 2
        assert "scratch data parallelism runs on GPUs" in capsys.readouterr().err
        assert run.main([*DP, "--sync-bn", "--out", str(tmp_path / "r")]) == 2
        assert "SyncBatchNorm runs on CUDA devices only" in capsys.readouterr().err
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert not (tmp_path / "r").exists()


def test_a_time_budget_stops_every_rank_at_the_same_step(tmp_path):
    """Each rank measures its own time; they agree (an all-reduce) so none waits for ever."""
    pytest.importorskip("torch")
    args = [*DP, "--epochs", "50", "--batch-size", "16", "--time-budget", "0.3", "--out", str(tmp_path / "runs")]
    t0 = time.monotonic()
    assert launch("experiments.run", args, 2, env=_env()) == 0
    assert time.monotonic() - t0 < 60
    import json

    (d,) = (tmp_path / "runs").iterdir()
    s = json.loads((d / "summary.json").read_text())
    assert s["stopped_by"] == "time_budget" and s["steps"] < 50 * 8 and s["final_test_acc"] is not None


def test_an_interrupted_job_resumes_on_every_rank_where_an_uninterrupted_one_ends(tmp_path):
    """Ctrl-C to the launcher reaches every rank; rank 0 keeps its epoch checkpoint; --resume
    restarts both ranks from it, and the job ends as an uninterrupted one does."""
    pytest.importorskip("torch")
    import json

    import pandas as pd

    args = [*DP, "--epochs", "12", "--batch-size", "16", "--checkpoint-every", "1"]
    assert launch("experiments.run", [*args, "--out", str(tmp_path / "whole")], 2, env=_env()) == 0
    # The cut job's ranks run experiments.run held where epoch 1 begins (after rank 0's first
    # checkpoint, outside any collective; for at most 5 minutes), so the job cannot end before
    # the Ctrl-C however fast the machine is, and both ranks take it in step.
    (tmp_path / "held_run.py").write_text(
        "import runpy, time\n"
        "from experiments.train.data import BatchLoader\n"
        "epoch = BatchLoader.epoch\n"
        "def held(self, e):\n"
        "    end = time.monotonic() + 300\n"
        "    while e == 1 and time.monotonic() < end:\n"
        "        time.sleep(0.05)\n"
        "    return epoch(self, e)\n"
        "BatchLoader.epoch = held\n"
        "runpy.run_module('experiments.run', run_name='__main__', alter_sys=True)\n")
    # SIGINT at its default in the launcher, as in a terminal's foreground job: pytest may run
    # where it is ignored (a background job of a script), and children inherit that.
    code = _signal_launcher_when(tmp_path, "held_run", args + ["--out", str(tmp_path / "cut")], signal.SIG_DFL,
                                 lambda: list((tmp_path / "cut").glob("*/checkpoint.json")), signal.SIGINT,
                                 "its first checkpoint", 300)
    assert code == 130
    (cut,) = (tmp_path / "cut").iterdir()
    assert json.loads((cut / "checkpoint.json").read_text())["epochs_done"] == 1
    assert launch("experiments.run", ["--resume", str(cut), "--quiet"], 2, env=_env()) == 0
    (whole,) = (tmp_path / "whole").iterdir()
    a, b = pd.read_csv(whole / "epochs.csv"), pd.read_csv(cut / "epochs.csv")
    assert list(b.epoch) == list(range(12))
    np.testing.assert_allclose(b.test_loss, a.test_loss, rtol=1e-6)
    np.testing.assert_allclose(b.train_loss, a.train_loss, rtol=1e-6)


def test_scaling_efficiency_comes_from_the_newest_matching_one_process_run(tmp_path):
    from experiments.record import records
    from experiments.record.summary import add_scaling

    base = dict(status="completed", impl="scratch", backend_or_device="cupy", model="resnet18", batch_size=256,
                precision="fp32", dataset="synthetic", data_on_gpu=True, gpu="H200", world_size=1)
    path = str(tmp_path / "runs.csv")
    for ips, extra in ((900.0, {}), (1000.0, {}), (5000.0, {"batch_size": 128}), (7000.0, {"world_size": 2}),
                       (3000.0, {"status": "interrupted"})):
        records.append_runs_row(path, dict(base, run_id=f"r{ips}", images_per_s=ips, run_dir=f"d{ips}", **extra))
    s = add_scaling(dict(base, world_size=2, images_per_s=1900.0), records.read_runs(path))
    assert s["one_gpu_images_per_s"] == 1000.0 and s["scaling_baseline"] == "d1000.0"
    assert s["speedup"] == pytest.approx(1.9) and s["scaling_efficiency"] == pytest.approx(0.95)
    none = add_scaling(dict(base, world_size=2, images_per_s=1900.0, precision="fp16"), records.read_runs(path))
    assert none["scaling_efficiency"] is None


def test_an_older_runs_table_takes_the_new_columns(tmp_path):
    from experiments.record import records

    path = tmp_path / "runs.csv"
    old = [c for c in records.RUNS_COLUMNS if c not in ("world_size", "data_on_gpu", "scaling_efficiency")]
    path.write_text(",".join(old) + "\n" + ",".join("a" if c == "run_id" else "" for c in old) + "\n")
    records.append_runs_row(str(path), {"run_id": "b", "world_size": 2})
    rows = records.read_runs(str(path))
    assert [r["run_id"] for r in rows] == ["a", "b"] and rows[1]["world_size"] == "2"
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match="move it aside"):
        records.append_runs_row(str(tmp_path / "bad.csv"), {"run_id": "c"})


def test_a_captured_ddp_step_is_warm_up_by_default():
    """torch captures its DDP step after 11 eager steps: by default the timing starts after it;
    one process, scratch, or an explicit --warmup-steps keep theirs."""
    from experiments import run

    def warmup(*argv):
        return run.validate(run.build_parser().parse_args(["--dataset", "synthetic", *argv])).warmup_steps

    torch_gpu = ["--impl", "torch", "--device", "cuda", "--cuda-graph"]
    assert warmup(*torch_gpu, "--gpus", "2") == 12
    assert warmup(*torch_gpu) == 5
    assert warmup(*torch_gpu, "--gpus", "2", "--warmup-steps", "3") == 3
    assert warmup("--impl", "scratch", "--backend", "cupy", "--cuda-graph", "--gpus", "2") == 5
