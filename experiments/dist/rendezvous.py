"""The ranks of a job meet at MASTER_ADDR:MASTER_PORT, without torch (scratch runs must work
with torch absent): rank 0 listens, every other rank connects, and rank 0 hands each the same
bytes (the NCCL unique id the communicator is built from).

The connections then stay open as a liveness link. A watcher process beside every rank reads
them: a peer that goes away without saying goodbye (its process died) ends this rank at once
with a message naming it, and rank 0 passes the news on, its links closing as it ends. So a dead rank, on
this node or another, never leaves the others waiting in a collective that cannot complete.

    rv = Rendezvous(info, timeout_s=60)             # info: experiments.dist.launch.RankInfo
    uid = rv.share(nccl_uid_bytes if info.is_main else None)
    rv.watch()                                      # from here on a lost peer ends this process
    ...
    rv.close()                                      # says goodbye: a clean end is no failure
"""
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

BYE = b"\x00BYE"


class RendezvousError(RuntimeError):
    pass


def _send(sock, data):
    sock.sendall(struct.pack("!I", len(data)) + data)


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return buf


def _recv(sock):
    (n,) = struct.unpack("!I", _recv_exact(sock, 4))
    return _recv_exact(sock, n)


def _watch_links(parent, rank, is_main, links):
    """The watcher process's loop (see Rendezvous.watch): links maps socket -> peer rank. A
    peer that closes its link without a goodbye ends `parent` (SIGKILL: the rank may hold its
    interpreter's lock inside a blocked GPU call, where nothing in-process could act), after
    a message; rank 0 passes the news on by closing the others' links as it goes."""
    while links:
        if os.getppid() != parent:      # our rank has ended: nothing left to guard
            return
        ready, _, _ = select.select(list(links), [], [], 0.5)
        for conn in ready:
            try:
                msg = _recv(conn)
            except (ConnectionError, OSError):
                msg = None
            peer = links.pop(conn)
            if msg == BYE:
                continue
            why = f"rank {peer} stopped without finishing" if is_main else "the job lost a rank (rank 0 closed the link)"
            print(f"error: {why}; ending rank {rank}", file=sys.stderr, flush=True)
            os.kill(parent, signal.SIGKILL)
            return


class Rendezvous:
    def __init__(self, info, timeout_s=60.0):
        self.info = info
        self.timeout_s = timeout_s
        self._watcher = None
        self.peers = {}          # rank -> socket (rank 0: every other rank; others: {0: rank 0})
        self._closing = False
        self._watching = False
        self._server = None
        if info.world_size > 1:
            self._connect()

    # ------------------------------------------------------------------ meeting
    def _connect(self):
        info = self.info
        if info.is_main:
            srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                srv.bind(("0.0.0.0", info.master_port))
            except OSError as e:
                srv.close()
                raise RendezvousError(f"rank 0 cannot listen on MASTER_PORT {info.master_port} ({e.strerror}): "
                                      f"choose a free port with MASTER_PORT=...") from None
            srv.listen(info.world_size)
            srv.settimeout(self.timeout_s)
            self._server = srv
            deadline = time.monotonic() + self.timeout_s
            while len(self.peers) < info.world_size - 1:
                srv.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    conn, _ = srv.accept()
                except socket.timeout:
                    missing = sorted(set(range(1, info.world_size)) - set(self.peers))
                    raise RendezvousError(f"rank(s) {', '.join(map(str, missing))} did not reach rank 0 within "
                                          f"{self.timeout_s:g} s") from None
                conn.settimeout(self.timeout_s)
                rank = struct.unpack("!I", _recv_exact(conn, 4))[0]
                self.peers[rank] = conn
        else:
            deadline = time.monotonic() + self.timeout_s
            while True:
                try:
                    conn = socket.create_connection((info.master_addr, info.master_port), timeout=self.timeout_s)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RendezvousError(f"rank {info.rank} could not reach rank 0 at {info.master_addr}:"
                                              f"{info.master_port} within {self.timeout_s:g} s") from None
                    time.sleep(0.1)
            conn.settimeout(self.timeout_s)
            conn.sendall(struct.pack("!I", info.rank))
            self.peers[0] = conn

    def share(self, payload=None):
        """Rank 0's payload, on every rank (rank 0 passes it, the others pass None)."""
        if self.info.world_size == 1:
            return payload
        if self.info.is_main:
            if payload is None:
                raise ValueError("rank 0 must pass the payload")
            for conn in self.peers.values():
                _send(conn, payload)
            return payload
        try:
            return _recv(self.peers[0])
        except (ConnectionError, socket.timeout) as e:
            raise RendezvousError(f"rank {self.info.rank} lost rank 0 before it sent the job's id ({e})") from None

    def barrier(self):
        """Every rank waits for every other (over the link: no GPU involved). Only before
        watch(): from then on the watchdog owns the link."""
        if self.info.world_size == 1:
            return
        if self._watching:
            raise RuntimeError("barrier() after watch(): synchronise with a collective instead")
        if self.info.is_main:
            for conn in self.peers.values():
                _recv(conn)
            for conn in self.peers.values():
                _send(conn, b"go")
        else:
            _send(self.peers[0], b"ready")
            _recv(self.peers[0])

    # ------------------------------------------------------------------ liveness
    def watch(self):
        """From now on a peer that goes away without a goodbye ends this rank. A small watcher
        process reads the links: a thread needs the interpreter's lock, which a rank blocked
        inside a GPU call may hold (a launch queue full behind a NCCL kernel that waits for
        the dead peer), and that is exactly when the watchdog must act."""
        if self.info.world_size == 1:
            return
        for conn in self.peers.values():
            conn.settimeout(None)
        self._watching = True
        links = [f"{conn.fileno()}:{rank}" for rank, conn in self.peers.items()]
        self._watcher = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(os.getpid()), str(self.info.rank),
             "1" if self.info.is_main else "0", *links], pass_fds=[c.fileno() for c in self.peers.values()],
            stdin=subprocess.DEVNULL)

    def close(self):
        """A clean end: say goodbye, so the peers' watchdogs do not take it for a failure."""
        self._closing = True
        for conn in self.peers.values():
            try:
                _send(conn, BYE)
            except OSError:
                pass
        if self._watcher is not None:       # before the links close, or it would take that for a loss
            self._watcher.kill()
            self._watcher.wait()
            self._watcher = None
        for conn in self.peers.values():
            conn.close()
        self.peers = {}
        if self._server is not None:
            self._server.close()
            self._server = None


if __name__ == "__main__":       # the watcher process: PARENT_PID RANK IS_MAIN FD:PEER...
    _parent, _rank, _main = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    _links = {}
    for _spec in sys.argv[4:]:
        _fd, _peer = map(int, _spec.split(":"))
        _links[socket.socket(fileno=_fd)] = _peer
    try:
        _watch_links(_parent, _rank, _main, _links)
    except KeyboardInterrupt:
        pass
