"""Checkpoints of a run, in its folder, and what --resume reads back.

    <run_dir>/checkpoint.json          what the trainer had measured, the epoch and step reached,
                                       and the name of the state file below
    <run_dir>/checkpoint-e<K>.pkl|.pt  model, optimizer (with its step count and learning rates),
                                       loss scaler, RNG states: the adapter's own format

The data order needs no state: epoch e's order and crops are functions of (seed, e) alone
(data.BatchLoader), and the schedule's position is the step count. A checkpoint is written
after an epoch's evaluation, state file first and checkpoint.json last, each by an atomic
rename, so the json always names a complete state file; older state files are removed after.
A run that diverges writes nothing more: its last checkpoint is the last good one.
"""
import json
import os

from ..record.records import write_json

INDEX = "checkpoint.json"


class Checkpointer:
    def __init__(self, run_dir, adapter, every, seed):
        self.dir, self.adapter, self.every, self.seed = run_dir, adapter, every, seed
        self.last_path = None

    def on_epoch_end(self, epoch, state, last):
        """Save after epoch `epoch` (0-based) when it is a multiple of `every`, or the last."""
        if self.every and ((epoch + 1) % self.every == 0 or last):
            self.save(epoch + 1, state)

    def save(self, epochs_done, state):
        name = f"checkpoint-e{epochs_done}{self.adapter.checkpoint_suffix}"
        path = os.path.join(self.dir, name)
        self.adapter.save_checkpoint(path + ".tmp")
        os.replace(path + ".tmp", path)
        write_json(os.path.join(self.dir, INDEX),
                   {"epochs_done": epochs_done, "state_file": name,
                    # where the data and the schedule go on: epoch e's order is a function of (seed, e)
                    "data_order": {"seed": self.seed, "next_epoch": epochs_done}, "schedule_step": state["step"],
                    "state": state})     # trainer.train's measurements so far, carried across the resume
        for old in os.listdir(self.dir):
            if old.startswith("checkpoint-e") and old != name and not old.endswith(".tmp"):
                os.unlink(os.path.join(self.dir, old))
        self.last_path = path


def read(run_dir):
    """The checkpoint index of a run folder, or a ValueError saying why there is none."""
    path = os.path.join(run_dir, INDEX)
    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        raise ValueError(f"{run_dir} is not a run folder (no config.json)")
    if not os.path.isfile(path):
        raise ValueError(f"{run_dir} has no checkpoint to resume from (was it run with --checkpoint-every?)")
    with open(path) as f:
        index = json.load(f)
    state_path = os.path.join(run_dir, index["state_file"])
    if not os.path.isfile(state_path):
        raise ValueError(f"{run_dir}: {index['state_file']} named by {INDEX} is missing")
    index["state_path"] = state_path
    return index
