"""One process per GPU, started with torchrun's environment contract.

    python -m experiments.run --gpus 2 ...                        # this machine: ranks 0 and 1
    NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 MASTER_PORT=29500 python -m experiments.run --gpus 2 ...
    NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 MASTER_PORT=29500 python -m experiments.run --gpus 2 ...
    torchrun --nproc-per-node 2 -m experiments.run --gpus 2 ...    # torchrun's launcher sets the same variables

Each rank is `python -m <module> <the same arguments>` with RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT in its environment (what torchrun sets), so a
multi-node run is the same command on every node, told apart by NODE_RANK. A process that
finds RANK in its environment is a rank and launches nothing.

Failure: when a rank exits with an error the launcher stops the others (SIGTERM, then SIGKILL
after a grace period) and exits with that rank's code, naming it; Ctrl-C is passed to every
rank. A MASTER_PORT that is taken is refused before any rank starts. Ranks on other nodes are
ended by the rendezvous link (experiments/dist/rendezvous.py) or torch.distributed's timeout.

SIGINT: every rank starts with SIGINT at its default (Python's KeyboardInterrupt), whatever the
launcher inherited: SIGINT is how a rank is asked to stop and save, and ranks run in sessions of
their own that no terminal reaches. The launcher keeps the SIGINT it inherited, as Python does:
a non-interactive shell ignores SIGINT in a job it starts with `&` (`nohup ... &` in a script,
a CI wrapper) so that a Ctrl-C meant for the foreground leaves that job running, and `kill -INT`
then does nothing to it either. `kill <launcher pid>` (SIGTERM) stops every rank as Ctrl-C
does, wherever the job was started.
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class LaunchError(Exception):
    """Bad launch settings: the CLI prints the message on one line and exits 2."""


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int

    @property
    def is_main(self):
        return self.rank == 0


def _int_env(env, key, default=None):
    v = env.get(key)
    if v is None or v == "":
        if default is None:
            raise LaunchError(f"{key} is not set")
        return default
    try:
        return int(v)
    except ValueError:
        raise LaunchError(f"{key}={v!r} is not a whole number") from None


def rank_from_env(env=None) -> Optional[RankInfo]:
    """This process's place in a job, or None when it was not started as a rank."""
    env = os.environ if env is None else env
    if "RANK" not in env:
        return None
    info = RankInfo(rank=_int_env(env, "RANK"), world_size=_int_env(env, "WORLD_SIZE"),
                    local_rank=_int_env(env, "LOCAL_RANK"),
                    local_world_size=_int_env(env, "LOCAL_WORLD_SIZE", default=_int_env(env, "WORLD_SIZE")),
                    master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
                    master_port=_int_env(env, "MASTER_PORT"))
    if not 0 <= info.rank < info.world_size:
        raise LaunchError(f"RANK={info.rank} is outside WORLD_SIZE={info.world_size}")
    if not 0 <= info.local_rank < info.local_world_size:
        raise LaunchError(f"LOCAL_RANK={info.local_rank} is outside LOCAL_WORLD_SIZE={info.local_world_size}")
    return info


def free_port(addr="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def check_port_free(addr, port):
    """Refuse a MASTER_PORT that something on this machine already holds (rank 0 would fail to
    listen on it, and the other ranks would wait for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((addr if addr not in ("localhost",) else "127.0.0.1", port))
        except OSError as e:
            raise LaunchError(f"MASTER_PORT {port} on {addr} is taken ({e.strerror}); choose a free one with "
                              f"MASTER_PORT=... (or leave it unset on a single machine)") from None


def rank_envs(nproc, env=None):
    """The environment of each local rank of this node."""
    env = dict(os.environ if env is None else env)
    nnodes = _int_env(env, "NNODES", default=1)
    node_rank = _int_env(env, "NODE_RANK", default=0)
    if nproc < 1 or nnodes < 1 or not 0 <= node_rank < nnodes:
        raise LaunchError(f"--gpus {nproc}, NNODES={nnodes}, NODE_RANK={node_rank}: need --gpus >= 1 and "
                          f"0 <= NODE_RANK < NNODES")
    if nnodes > 1 and not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
        raise LaunchError("a multi-node run needs MASTER_ADDR (node 0's address) and MASTER_PORT on every node")
    addr = env.get("MASTER_ADDR") or "127.0.0.1"
    if env.get("MASTER_PORT"):
        port = _int_env(env, "MASTER_PORT")
        if node_rank == 0:
            check_port_free(addr if nnodes == 1 else "0.0.0.0", port)
    else:
        port = free_port(addr)
    out = []
    for local in range(nproc):
        e = dict(env, RANK=str(node_rank * nproc + local), WORLD_SIZE=str(nnodes * nproc), LOCAL_RANK=str(local),
                 LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR=addr, MASTER_PORT=str(port), PYTHONUNBUFFERED="1")
        out.append(e)
    return out


def _stop(procs, sig, grace_s):
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def default_sigint():
    # Runs in a child between fork and exec (each rank here, each study row in
    # experiments/matrix/proc.py). A SIG_IGN inherited from whoever started us survives the exec, and Python then installs no KeyboardInterrupt handler: the
    # rank would train on through a SIGINT, and a stop would end in SIGKILL, unsaved.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _terminate_as_interrupt(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def launch(module, argv, nproc, env=None, grace_s=10.0, poll_s=0.1, log=None):
    """Run `python -m module argv` as this node's nproc ranks; return the job's exit code: 0
    when every rank succeeded, else the first failing rank's code (the others are stopped)."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    envs = rank_envs(nproc, env)
    # SIGTERM (`kill`, `timeout`, a CI's cancel: no shell masks it) stops the job as Ctrl-C does;
    # at its default it would end the launcher alone and leave the ranks, in sessions of their
    # own, training on. Only Python's main thread can set a handler.
    term = (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    if term:
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    procs = []
    try:
        for e in envs:
            procs.append(subprocess.Popen([sys.executable, "-m", module, *argv], env=e, start_new_session=True,
                                          preexec_fn=default_sigint))
        ranks = [int(e["RANK"]) for e in envs]
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in zip(ranks, codes) if c not in (None, 0)]
            if failed:
                rank, code = failed[0]
                running = [r for r, c in zip(ranks, codes) if c is None]
                how = (f"was killed by signal {-code} ({signal.Signals(-code).name})" if code < 0
                       else f"exited with code {code}")
                log(f"error: rank {rank} {how}" + (f"; stopping rank(s) {', '.join(map(str, running))}" if running else ""))
                _stop(procs, signal.SIGTERM, grace_s)
                return code if code > 0 else 128 - code      # as a shell reports a signal
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_s)
    except KeyboardInterrupt as e:
        log(f"interrupted{' (SIGTERM)' if e.args else ''}: passing Ctrl-C to every rank")
        _stop(procs, signal.SIGINT, grace_s)
        return 130
    finally:
        if term:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
