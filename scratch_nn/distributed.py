"""Data parallelism: each process trains its share of a global batch, and the gradients are
averaged across processes before the optimizer's step, in buckets that start while backward
is still running (as torch's DistributedDataParallel does).

    reducer = GradReducer(net, opt.param_groups, backend, comm)   # comm: backends.nccl.NcclComm
    opt.zero_grad(); loss = ...; net.backward(dlogits)            # buckets start as they fill
    reducer.finish()                                              # the rest; the stream waits
    opt.step()

Buckets. A packed parameter group (backend.pack_parameters) holds its gradients in one flat
buffer, in forward order; backward fills them from the end. A bucket is a contiguous slice of
that buffer, cut from the end until it holds `bucket_mb`, so the first bucket to fill is the
first in the buffer's tail. When the last layer whose parameters lie in a bucket has run its
backward, the bucket's all-reduce is queued on the communicator's stream, and the GPU runs it
beside the earlier layers' backward. Unpacked groups get one bucket per parameter.

Every rank runs the same layers in the same order, so the buckets start in one order on
every rank, which NCCL requires.
"""
BUCKET_MB = 25.0     # torch's DDP default


def plan_buckets(sizes, itemsize, bucket_mb=BUCKET_MB):
    """Split parameters 0..n-1 (sizes in elements, in buffer order) into buckets of whole
    parameters: (first, last + 1) index ranges, from the buffer's end backwards, each at least
    bucket_mb (the one nearest the start may be smaller)."""
    cap = bucket_mb * 2**20
    out, hi, nbytes = [], len(sizes), 0
    for i in range(len(sizes) - 1, -1, -1):
        nbytes += sizes[i] * itemsize
        if nbytes >= cap:
            out.append((i, hi))
            hi, nbytes = i, 0
    if hi > 0:
        out.append((0, hi))
    return out


class _Bucket:
    __slots__ = ("index", "arrays", "params", "pending", "started")

    def __init__(self, index, arrays, params):
        self.index, self.arrays, self.params = index, arrays, params
        self.pending, self.started = 0, False


class GradReducer:
    """Averages the gradients of `param_groups` across the ranks of `comm` (allreduce_async /
    wait), bucketed and started during net.backward()."""

    def __init__(self, net, param_groups, backend, comm, bucket_mb=BUCKET_MB):
        self.comm, self.be = comm, backend
        self.buckets = []
        owner = {}            # id(param) -> its bucket
        for group in param_groups:
            params = list(group["params"])
            if not params:
                continue
            flat = backend.flat_grads(params)
            if len(flat) == 1:
                sizes = [p.grad.size for p in params]
                starts = [0]
                for s in sizes:
                    starts.append(starts[-1] + s)
                for lo, hi in plan_buckets(sizes, flat[0].dtype.itemsize, bucket_mb):
                    self.buckets.append(_Bucket(len(self.buckets), [flat[0][starts[lo]:starts[hi]]], params[lo:hi]))
            else:
                for p in reversed(params):
                    self.buckets.append(_Bucket(len(self.buckets), [p.grad], [p]))
        for b in self.buckets:
            for p in b.params:
                owner[id(p)] = b
        # each layer that owns parameters reports when its backward has run
        self._layers = []
        for _, m in net.named_modules():
            mine = [owner[id(p)] for p in m._params.values() if id(p) in owner]
            if mine:
                self._layers.append(m)
                m.backward = self._hooked(m.backward, mine)
        self.launch_log = []      # (bucket index, layers done before it started): what tests read
        self._done = 0
        self.reset()

    def _hooked(self, backward, buckets):
        def run(*args, **kwargs):
            out = backward(*args, **kwargs)
            self._done += 1
            for b in buckets:
                b.pending -= 1
            ready = {b.index: b for b in buckets if b.pending == 0 and not b.started}
            for i in sorted(ready):        # several at once: in bucket order, as on every rank
                self._start(ready[i])
            return out
        return run

    def reset(self):
        """Arm every bucket for the next backward."""
        for b in self.buckets:
            b.pending, b.started = len(b.params), False
        self._done = 0
        self.launch_log = []

    def _start(self, b):
        b.started = True
        self.launch_log.append((b.index, self._done))
        # a captured step computes small layers' weight gradients on a side stream (cupy
        # backend): the all-reduce waits for those as well as for the caller's stream
        self.be.grads_ready_on(self.comm.stream)
        for a in b.arrays:
            self.comm.allreduce_async(a, average=True)

    def finish(self):
        """Start the buckets that backward did not fill (parameters it left alone, in bucket
        order), make the caller's stream wait for all of them, and arm for the next step."""
        for b in self.buckets:
            if not b.started:
                self._start(b)
        self.comm.wait()
        log = self.launch_log
        self.reset()
        return log
