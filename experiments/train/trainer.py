"""The one training loop both implementations run (through experiments/train/adapters.py), so the
same code measures both and writes the same files.

Timing: a step's time runs from the end of the previous one to its own end, on the host clock
on a CPU and between CUDA events on a GPU (experiments/train/step_clock.py), read at the
logging points only, so the host queues the next GPU step while the device runs this one and
asynchronous launches are never mistaken for finished work.
The first `warmup_steps` steps (JIT compilation, allocator growth, autotuning) are reported
apart and excluded from the steady-state images/s. Evaluation runs outside the training
clock and is reported as eval_time_s.
"""
import math
import time

import numpy as np


TTA_THRESHOLDS = (0.50, 0.80, 0.85, 0.90)   # test accuracies whose first crossing is timed


class Diverged(RuntimeError):
    pass


def evaluate(adapter, loader, label_smoothing=0.0):
    """(mean loss, accuracy) over a loader, eval mode, in float64 on the host."""
    total_loss, correct, n = 0.0, 0, 0
    for x, y in loader.epoch(0):
        logits = adapter.predict(adapter.to_device(x, y)[0]).astype(np.float64)
        y = adapter.host(y)
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        nll = -logp[np.arange(len(y)), y]
        if label_smoothing:
            nll = (1 - label_smoothing) * nll - label_smoothing * logp.mean(axis=1)
        total_loss += float(nll.sum())
        correct += int((logits.argmax(axis=1) == y).sum())
        n += len(y)
    return total_loss / n, correct / n


def record_time_to_accuracy(state, test_acc, epoch):
    """Note the training seconds (evaluation excluded) and epochs at which test accuracy first
    reached each of TTA_THRESHOLDS."""
    tta = state.setdefault("time_to_accuracy", {})
    for thr in TTA_THRESHOLDS:
        key = f"{round(thr * 100)}"
        if key not in tta and test_acc >= thr:
            tta[key] = {"train_time_s": state["train_time_s"], "epoch": epoch + 1}


def train(adapter, train_loader, test_loader, *, epochs, schedule, folder, warmup_steps=5, max_steps=None,
          log_every=10, eval_every=1, label_smoothing=0.0, progress=None, state=None, on_epoch_end=None,
          time_budget_s=None, world=1, evaluates=True):
    """Train for `epochs` (or until max_steps) and return the measurements for the summary.

    `schedule(step) -> lr` is applied before every step. `progress` (optional) is a callable
    factory progress(epoch, total_batches) returning an object with update(n, **postfix) and
    close(). `state` (a dict, filled in as the run goes) lets the caller keep what was
    measured when an exception such as KeyboardInterrupt ends the loop early; a state restored
    from a checkpoint resumes at its epochs_done and step. The first `warmup_steps` steps of
    every (re)start are warm-up. `on_epoch_end(epoch, state, last)` runs after each epoch's row
    is written (checkpoints). `time_budget_s` ends training, mid-epoch if need be, once the
    steady-state training time reaches it (warm-up steps always run and one steady step at
    least, so a slow run still measures its throughput); the test set is then evaluated and
    state["stopped_by"] is "time_budget" (else "epochs" or "max_steps"). On a GPU the budget
    and a non-finite loss are checked at the logging points (every `log_every` steps).

    Data parallel (`world` processes, each training its share of a global batch): images
    are counted for the whole global batch (a rank's batch times `world`; losses and correct
    counts come from the adapter already reduced over the ranks), and only the rank with
    `evaluates` runs the evaluation.
    """
    steps_per_epoch = len(train_loader)
    total_steps = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    state = {} if state is None else state
    fresh = dict(step=0, warmup_time_s=0.0, steady_time_s=0.0, steady_images=0, train_time_s=0.0,
                 epochs_done=0, last_epoch=None, data_time_s=0.0, eval_time_s=0.0, time_to_accuracy={})
    for k, v in fresh.items():
        state.setdefault(k, v)
    session_steps = 0
    out_of_time = False
    clock = adapter.step_clock()

    def is_logged(step):
        return step % log_every == 0 or step == total_steps - 1

    for epoch in range(state["epochs_done"], epochs):
        if state["step"] >= total_steps or out_of_time:
            break
        bar = progress(epoch, min(steps_per_epoch, total_steps - state["step"])) if progress else None
        ep = dict(loss=0.0, correct=0, n=0, images=0, time=0.0)
        pending = []    # steps queued since the clock was last read: (step, images, lr, warm, logged, loss, correct)

        def account():
            """Charge the pending steps their times (a GPU clock waits for them here). A span of
            several steps is all warm-up or all steady state; a logged step is timed alone."""
            i = 0
            for n, seconds in clock.flush():
                span, i = pending[i:i + n], i + n
                images = sum(p[1] for p in span)
                if span[0][3]:
                    state["warmup_time_s"] += seconds
                else:
                    state["steady_time_s"] += seconds
                    state["steady_images"] += images
                state["train_time_s"] += seconds
                ep["time"] += seconds
                ep["images"] += images
                step, last_images, lr, _, logged, loss_v, correct = span[-1]
                if logged and n == 1:
                    folder.steps.write(dict(step=step, epoch=epoch, loss=loss_v, batch_acc=correct / last_images,
                                            step_time_s=seconds, lr=lr))
                if bar is not None:
                    bar.update(n, loss=loss_v, acc=None if correct is None else correct / last_images,
                               ips=images / seconds if seconds > 0 else None)
            pending.clear()

        lr = schedule(state["step"])
        adapter.synchronize()
        clock.start()
        batches = train_loader.epoch(epoch)
        accounted = False
        try:
            for x, y in batches:
                if state["step"] >= total_steps:
                    break
                lr = schedule(state["step"])
                adapter.set_lr(lr)
                xb, yb = adapter.to_device(x, y)
                loss = adapter.train_step(xb, yb)
                step = state["step"]
                images = len(y) * world
                logged = is_logged(step)
                # a time is needed after a logged step, before one (its own time) and where warm-up ends
                clock.mark(logged or is_logged(step + 1) or session_steps + 1 == warmup_steps)
                # Reading the loss is a device sync: every step on CPU, only when logged on a GPU
                # (the epoch loss then averages the logged steps), where the host otherwise runs ahead.
                loss_v = float(loss) if (logged or adapter.reads_are_free) else None
                correct = adapter.last_batch_correct(yb) if loss_v is not None else None
                if loss_v is not None:
                    if not math.isfinite(loss_v):
                        raise Diverged(f"loss became {loss_v} at step {step} (epoch {epoch}); "
                                       f"lower --lr or check the data")
                    ep["loss"] += loss_v * images
                    ep["correct"] += correct
                    ep["n"] += images
                pending.append((step, images, lr, session_steps < warmup_steps, logged, loss_v, correct))
                state["step"] += 1
                session_steps += 1
                if logged or not clock.waits:
                    account()
                    if time_budget_s is not None:
                        spent = session_steps > warmup_steps and state["steady_time_s"] >= time_budget_s
                        # ranks of a data-parallel job stop at the same step, or one would wait for ever
                        if (adapter.any_rank(spent) if world > 1 else spent):
                            out_of_time = True
                            break
            account()
            accounted = True
        finally:
            if not accounted and pending:
                # an interrupted epoch keeps the time of the steps it ran; the exception that
                # ended it is what the caller must see, not a second one from the device
                try:
                    account()
                except Exception:
                    pass
            if bar is not None:
                bar.close()
        state["data_time_s"] += train_loader.data_time_s
        row = dict(epoch=epoch, train_loss=ep["loss"] / ep["n"] if ep["n"] else None,
                   train_acc=ep["correct"] / ep["n"] if ep["n"] else None, epoch_time_s=ep["time"],
                   train_images_per_s=ep["images"] / ep["time"] if ep["time"] > 0 else None,
                   data_time_s=train_loader.data_time_s, lr=lr)
        last = epoch == epochs - 1 or state["step"] >= total_steps or out_of_time
        if evaluates and ((eval_every and (epoch + 1) % eval_every == 0) or last):
            t0 = time.perf_counter()
            row["test_loss"], row["test_acc"] = evaluate(adapter, test_loader, label_smoothing)
            row["eval_time_s"] = time.perf_counter() - t0
            state["eval_time_s"] += row["eval_time_s"]
            record_time_to_accuracy(state, row["test_acc"], epoch)
        folder.epochs.write(row)
        state["epochs_done"] = epoch + 1
        state["last_epoch"] = row
        if on_epoch_end is not None:
            on_epoch_end(epoch, state, last)
    state["stopped_by"] = ("time_budget" if out_of_time else
                           "max_steps" if max_steps is not None and state["step"] >= max_steps else "epochs")
    return state
