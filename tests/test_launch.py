"""The one-process-per-GPU launcher (torchrun's environment contract) and the torch-free
rendezvous: ranks meet and share bytes, and a rank that dies or a port that is taken ends the
whole job with a clear message within a bounded time. CPU only: the ranks are stand-ins."""
import os
import socket
import threading
import time

import pytest

from experiments.launch import LaunchError, RankInfo, launch, rank_envs, rank_from_env
from experiments.rendezvous import Rendezvous, RendezvousError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**kw):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                                            "MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in kw.items()})
    return env


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
    assert launch("tests.dist_worker", [str(tmp_path), "ok"], 3, env=_env()) == 0
    lines = sorted(p.read_text() for p in tmp_path.glob("rank*.txt"))
    assert lines == ["job-id-42 3 0 3\n", "job-id-42 3 1 3\n", "job-id-42 3 2 3\n"]
    assert time.monotonic() - t0 < 30


def test_a_rank_that_dies_ends_the_job_with_its_code(tmp_path, capsys):
    t0 = time.monotonic()
    code = launch("tests.dist_worker", [str(tmp_path), "die-early"], 2, env=_env(), grace_s=2)
    assert code == 3 and time.monotonic() - t0 < 20       # rank 0 would sleep 60 s: it was stopped
    assert "rank 1 exited with code 3; stopping rank(s) 0" in capsys.readouterr().err


def test_a_taken_port_is_refused_before_any_rank_starts(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(LaunchError, match=f"MASTER_PORT {port} on 127.0.0.1 is taken"):
            launch("tests.dist_worker", [str(tmp_path), "ok"], 2, env=_env(MASTER_PORT=port))
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
        codes[r] = launch("tests.dist_worker", [str(tmp_path), "die"], 1,
                          env=_env(NNODES=2, NODE_RANK=r, MASTER_ADDR="127.0.0.1", MASTER_PORT=p), grace_s=2)

    t0 = time.monotonic()
    threads = [threading.Thread(target=node, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=40)
    assert codes == {0: 1, 1: 3} and time.monotonic() - t0 < 30


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
