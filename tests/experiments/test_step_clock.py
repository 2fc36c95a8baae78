"""The training loop times GPU steps by events read at logging points, never waiting for the
device after every step (experiments/train/step_clock.py), on a fake device timeline."""
import numpy as np
import pandas as pd
import pytest

from experiments.record import records
from experiments.train import trainer
from experiments.train.data import BatchLoader, make_synthetic
from experiments.train.scratch_adapter import ScratchAdapter
from experiments.train.step_clock import EventClock, HostClock
from scratch_nn.optim import make_schedule


class _FakeDevice:
    """A GPU timeline: each queued step takes its own known time; an event's timestamp is the
    end of the work queued before it. Counts how often the host waits."""

    def __init__(self, durations):
        self.durations = list(durations)
        self.queued = 0.0      # device time at the end of everything queued so far
        self.steps = 0
        self.waits = 0
        self.syncs = 0
        self.events = 0

    def queue_step(self):
        self.queued += self.durations[self.steps % len(self.durations)]
        self.steps += 1

    def clock(self):
        events = []

        def new():
            self.events += 1
            events.append({"t": self.queued, "done": False})
            return events[-1]

        def wait(e):    # the stream is in order: everything recorded before e is done too
            self.waits += 1
            for f in events[:events.index(e) + 1]:
                f["done"] = True

        def seconds(a, b):
            assert b["done"], "an event's time was read before the host waited for it"
            return b["t"] - a["t"]

        return EventClock(new, seconds, wait)


class _FakeGpuAdapter(ScratchAdapter):
    """The numpy backend's arithmetic with a GPU's costs: reads are syncs, steps are timed by
    the fake device's events."""
    reads_are_free = False

    def __init__(self, device, nan_from=None):
        super().__init__("cnn", backend="numpy")
        self.dev, self.nan_from = device, nan_from

    def step_clock(self):
        return self.dev.clock()

    def synchronize(self):
        self.dev.syncs += 1

    def train_step(self, x, y):
        loss = super().train_step(x, y)
        self.dev.queue_step()
        if self.nan_from is not None and self.dev.steps > self.nan_from:
            return np.float32("nan")
        return loss


def _loaders(n=640, batch=32):
    ds = make_synthetic(n, 64, seed=0)
    return (BatchLoader(ds.x_train, ds.y_train, batch, shuffle=True, seed=0, augment=False),
            BatchLoader(ds.x_test, ds.y_test, 64, shuffle=False, seed=0, augment=False))


def test_gpu_steps_are_timed_by_events_and_the_host_waits_only_at_logging_points(tmp_path):
    dev = _FakeDevice([0.010, 0.030, 0.020])
    train, test = _loaders()          # 20 steps an epoch
    folder = records.RunFolder(str(tmp_path), "r", {})
    state = trainer.train(_FakeGpuAdapter(dev), train, test, epochs=2, schedule=make_schedule("constant", 0.01, 40),
                          folder=folder, warmup_steps=3, log_every=5)
    folder.close()
    assert dev.steps == 40
    # logged steps 0, 5, ..., 35 and each epoch's last step: 10 waits, not 40
    assert dev.waits == 10 and dev.syncs == 2
    # events around the logged steps and at warm-up's end, not after every step
    assert dev.events <= 2 * 10 + 2 + 1
    steps = pd.read_csv(tmp_path / "r" / "steps.csv")
    want = [dev.durations[s % 3] for s in steps.step]
    assert steps.step_time_s.tolist() == pytest.approx(want)
    total = sum(dev.durations[s % 3] for s in range(40))
    warm = sum(dev.durations[s % 3] for s in range(3))
    assert state["train_time_s"] == pytest.approx(total)
    assert state["warmup_time_s"] == pytest.approx(warm)
    assert state["steady_images"] == 37 * 32
    ep = pd.read_csv(tmp_path / "r" / "epochs.csv")
    assert ep.epoch_time_s.tolist() == pytest.approx([sum(dev.durations[s % 3] for s in range(e * 20, e * 20 + 20))
                                                      for e in range(2)])


def test_a_non_finite_loss_stops_within_one_logging_interval(tmp_path):
    dev = _FakeDevice([0.01])
    train, test = _loaders()
    folder = records.RunFolder(str(tmp_path), "r", {})
    with pytest.raises(trainer.Diverged, match="at step 10 "):
        trainer.train(_FakeGpuAdapter(dev, nan_from=7), train, test, epochs=1,
                      schedule=make_schedule("constant", 0.01, 20), folder=folder, warmup_steps=0, log_every=5)
    folder.close()
    assert dev.steps == 11      # steps 7-9 went unread; step 10 is logged and read


def test_the_time_budget_is_checked_at_logging_points_on_the_gpu_clock(tmp_path):
    dev = _FakeDevice([0.1])
    train, test = _loaders()
    folder = records.RunFolder(str(tmp_path), "r", {})
    state = trainer.train(_FakeGpuAdapter(dev), train, test, epochs=3, schedule=make_schedule("constant", 0.01, 60),
                          folder=folder, warmup_steps=2, log_every=4, time_budget_s=0.75)
    folder.close()
    # at logged step 8, 7 steady steps have taken 0.7 s; the budget is seen spent at the next
    # logging point, step 12 (11 steady steps), not at step 9 where it ran out
    assert state["stopped_by"] == "time_budget"
    assert dev.steps == 13 and state["steady_time_s"] == pytest.approx(1.1)


def test_host_clock_times_each_step_where_it_returns():
    c = HostClock()
    c.start()
    c.mark()
    c.mark()
    spans = c.flush()
    assert [n for n, _ in spans] == [1, 1] and all(s >= 0 for _, s in spans) and c.flush() == []


def test_event_clock_times_spans_between_its_events():
    dev = _FakeDevice([1.0, 2.0, 4.0, 8.0, 16.0])
    c = dev.clock()
    c.start()
    for event in (False, True, False, False, False):
        dev.queue_step()
        c.mark(event)
    # steps 1-2 end at the first event; steps 3-5 at the one flush records
    assert c.flush() == [(2, 3.0), (3, 28.0)] and dev.events == 3 and c.flush() == []
