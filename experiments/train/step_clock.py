"""How the training loop times its steps without making the host wait for every one.

On a CPU a step's work is done when its call returns, so the host clock times it. On a GPU
the call returns once the step is queued; waiting for it after every step keeps the host
from queueing the next step while the GPU runs this one, which a normal training loop does.
So GPU steps are timed by CUDA events recorded on the stream: the time between two events
is the GPU timeline's wall time between two step ends (idle gaps included, so a host that
cannot keep up is still charged), and the loop reads them only at its logging points, where
it waits for the device anyway to read the loss. An event costs the host about a tenth of a
millisecond in CuPy (a small model's whole step is one), so events go only where a time is
needed: around the logged steps, at the end of warm-up and at each reading.

    clock.start()              # after a sync: the reference point
    clock.mark(event)          # after each step is queued; event: a time is needed right here
    clock.flush()              # -> [(steps, seconds)] since the last flush, in order (waits)
"""
import time


class HostClock:
    """Steps whose work is done when their call returns (host arrays): each timed alone."""

    waits = False

    def __init__(self):
        self._t = None
        self._pending = []

    def start(self):
        self._t = time.perf_counter()

    def mark(self, event=True):
        now = time.perf_counter()
        self._pending.append((1, now - self._t))
        self._t = now

    def flush(self):
        out, self._pending = self._pending, []
        return out


class EventClock:
    """Steps queued on a GPU stream, timed by events. `new_event()` returns an event recorded
    on the current stream now; `seconds(a, b)` the time between two completed events;
    `wait(e)` blocks until e has completed (and, the stream being in order, all before it)."""

    waits = True

    def __init__(self, new_event, seconds, wait):
        self._new, self._seconds, self._wait = new_event, seconds, wait
        self._last = None
        self._marks = []        # events after marked steps, None where no time was needed

    def start(self):
        self._last = self._new()
        self._marks = []

    def mark(self, event=False):
        self._marks.append(self._new() if event else None)

    def flush(self):
        if not self._marks:
            return []
        if self._marks[-1] is None:     # nothing was queued since that step: now is its end
            self._marks[-1] = self._new()
        self._wait(self._marks[-1])
        out, prev, steps = [], self._last, 0
        for e in self._marks:
            steps += 1
            if e is not None:
                out.append((steps, self._seconds(prev, e)))
                prev, steps = e, 0
        self._last, self._marks = prev, []
        return out


def torch_clock(torch):
    def new():
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    return EventClock(new, lambda a, b: a.elapsed_time(b) / 1e3, lambda e: e.synchronize())


def cupy_clock(cupy):
    def new():
        e = cupy.cuda.Event()
        e.record()
        return e

    return EventClock(new, lambda a, b: cupy.cuda.get_elapsed_time(a, b) / 1e3, lambda e: e.synchronize())
