"""Bucketed gradient averaging (scratch_nn.distributed) on the CPU: two ranks in two threads,
exchanging through an in-process stand-in for NCCL, against one process with the whole batch."""
import threading

import numpy as np
import pytest

from scratch_nn import losses, models, optim
from scratch_nn.backends.numpy_backend import NumpyBackend
from scratch_nn.distributed import GradReducer, plan_buckets


@pytest.mark.parametrize("sizes,cap_elems", [([5, 1, 7, 3, 2], 6), ([100], 10), ([1, 1, 1], 1000), ([4, 4], 4)])
def test_buckets_cover_every_parameter_once_from_the_end(sizes, cap_elems):
    buckets = plan_buckets(sizes, 4, bucket_mb=cap_elems * 4 / 2**20)
    covered = [i for lo, hi in buckets for i in range(lo, hi)]
    assert sorted(covered) == list(range(len(sizes)))
    assert [hi for _, hi in buckets] == sorted((hi for _, hi in buckets), reverse=True)   # tail first
    assert buckets[0][1] == len(sizes)
    for lo, hi in buckets[:-1]:          # only the one nearest the buffer's start may be short
        assert sum(sizes[lo:hi]) >= cap_elems


class PackedNumpy(NumpyBackend):
    """NumPy with one flat gradient buffer per group, as the CuPy backend packs them."""

    def __init__(self):
        super().__init__()
        self.flats = {}
        self.events = []       # "ready" (grads_ready_on) and "reduce" (ThreadComm), in call order

    def grads_ready_on(self, stream):
        self.events.append("ready")

    def pack_parameters(self, params):
        sizes = [p.data.size for p in params]
        flat = np.zeros(sum(sizes), dtype=params[0].data.dtype)
        o = 0
        for p, s in zip(params, sizes):
            p.grad = flat[o:o + s].reshape(p.data.shape)
            o += s
        self.flats[id(params[0])] = flat

    def flat_grads(self, params):
        return [self.flats[id(params[0])]]


class ThreadComm:
    """allreduce_async/wait as NcclComm offers them, for ranks that are threads of this process.
    Records which memory each call reduced."""

    stream = None      # NcclComm's collectives stream; here everything runs in call order

    def __init__(self, hub, rank, events=None):
        self.hub, self.rank, self.world_size = hub, rank, hub["world"]
        self.reduced = []
        self.events = [] if events is None else events

    def allreduce_async(self, a, average=False):
        self.reduced.append(a)
        self.events.append("reduce")
        hub = self.hub
        hub["slots"][self.rank] = a.copy()
        hub["barrier"].wait()
        total = sum(hub["slots"])
        hub["barrier"].wait()
        a[...] = total / self.world_size if average else total
        return a

    def wait(self):
        pass


def _batch(n=8):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, 3, 32, 32)), rng.integers(0, 10, n)


def _grads(be, x, y, comm=None, bucket_mb=0.005):
    net = models.build("cnn", backend=be, seed=0, dtype="float64")
    opt = optim.SGD(net.parameters(), lr=0.1)
    reducer = GradReducer(net, opt.param_groups, be, comm, bucket_mb=bucket_mb) if comm else None
    opt.zero_grad()
    _, dlogits = losses.softmax_cross_entropy(net.forward(x), y, backend=be)
    net.backward(dlogits, input_grad=False)
    log = reducer.finish() if reducer else None
    return net, [p.grad.copy() for p in net.parameters()], log, reducer


@pytest.mark.parametrize("packed", [True, False])
def test_two_ranks_with_half_batches_get_the_whole_batchs_gradient(packed):
    x, y = _batch()
    _, whole, _, _ = _grads(NumpyBackend(), x, y)
    hub = {"world": 2, "slots": [None, None], "barrier": threading.Barrier(2, timeout=30)}
    out = {}

    def rank(r):
        be = PackedNumpy() if packed else NumpyBackend()
        comm = ThreadComm(hub, r, getattr(be, "events", None))
        out[r] = (*_grads(be, x[r * 4:(r + 1) * 4], y[r * 4:(r + 1) * 4], comm), comm, be)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(out) == {0, 1}
    for r in (0, 1):
        net, grads, log, reducer, comm, be = out[r]
        for g, w in zip(grads, whole):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
        # each gradient element reduced exactly once
        params = net.parameters()
        if packed:
            flat = be.flat_grads(params)[0]
            hits = np.zeros(flat.size, int)
            for a in comm.reduced:
                start = (a.__array_interface__["data"][0] - flat.__array_interface__["data"][0]) // 8
                hits[start:start + a.size] += 1
            assert (hits == 1).all() and len(comm.reduced) == len(reducer.buckets) > 2
            # every bucket first waits for gradients computed beside the caller's stream
            assert be.events == ["ready", "reduce"] * len(reducer.buckets)
        else:
            assert sorted(id(a) for a in comm.reduced) == sorted(id(p.grad) for p in params)
        # buckets start while backward runs: the first before the last layer with parameters
        n_layers = len(reducer._layers)
        assert log[0][1] < n_layers and [i for i, _ in log] == sorted(i for i, _ in log)
    assert out[0][2] == out[1][2]           # the same bucket order on both ranks


def test_the_reducer_rearms_for_the_next_step():
    hub = {"world": 1, "slots": [None], "barrier": threading.Barrier(1)}
    comm = ThreadComm(hub, 0)
    be = PackedNumpy()
    x, y = _batch(4)
    net = models.build("cnn", backend=be, seed=0, dtype="float64")
    opt = optim.SGD(net.parameters(), lr=0.1)
    reducer = GradReducer(net, opt.param_groups, be, comm, bucket_mb=0.005)
    logs = []
    for _ in range(2):
        opt.zero_grad()
        _, d = losses.softmax_cross_entropy(net.forward(x), y, backend=be)
        net.backward(d, input_grad=False)
        logs.append(reducer.finish())
        opt.step()
    assert logs[0] == logs[1] and len(comm.reduced) == 2 * len(reducer.buckets)
