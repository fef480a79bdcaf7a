"""Fast AT's early stop (`train_fgsm.py --early-stop`; METHODS.md §7.3), for a method that asks for it.

After each epoch the method's check (`early_stop_accuracy(model, x, y, hp) -> (correct, count)`: Fast AT's PGD-5 on
the epoch's **first** mini-batch, model still in train mode) gives a robust accuracy; if it is below the previous
epoch's by more than 0.2 (strictly: `accuracy − previous < −0.2`; the previous accuracy starts at 0, so the first
epoch never stops), training stops and the previous epoch's weights come back as the run's model. Otherwise the
current weights become the snapshot to come back to. On a 128-image batch accuracies are multiples of 1/128, so an
exact 0.2 drop cannot occur.

The training loop calls `capture` with each epoch's first batch and `after_epoch` at the end of the epoch; the state
(previous accuracy, snapshot, the epoch's first batch, the accuracies so far, where it stopped) is part of the resume
state, so a resumed run decides as an uninterrupted one. `record()` goes into the model file's info and run.json.
The check's seconds are not training seconds (the loop's train_seconds stop before it; Fast AT's own sec/epoch
includes its check).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

#: Stop when the check's accuracy falls by more than this from the previous epoch's.
DROP = 0.2


class EarlyStop:
    """The rule and its state. `check(model, x, y) -> (correct, count)`; `reduce(correct, count)` sums them over the
    processes of a DDP run (identity in one process), so every rank decides alike."""

    def __init__(self, check: Callable, reduce: Callable | None = None):
        self.check = check
        self.reduce = reduce
        self.previous = 0.0
        self.snapshot: dict | None = None
        self.first: tuple[torch.Tensor, torch.Tensor] | None = None
        self.accuracies: list[float] = []
        self.seconds = 0.0
        self.stopped_after: int | None = None

    @classmethod
    def for_run(cls, method, hp, reduce: Callable | None = None) -> EarlyStop | None:
        """An EarlyStop where the run's hparams ask for one (`early_stop: true`), else None."""
        if not getattr(hp, "early_stop", False):
            return None
        return cls(lambda model, x, y: method.early_stop_accuracy(model, x, y, hp), reduce)

    @property
    def stopped(self) -> bool:
        return self.stopped_after is not None

    def capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The epoch's first mini-batch (as trained on: augmented, on the device)."""
        self.first = (x.detach().clone(), y.detach().clone())

    def after_epoch(self, model: torch.nn.Module, epoch: int) -> bool:
        """The check on the epoch's first batch (model in train mode); True (and the previous epoch's weights loaded
        into `model`) where training stops after `epoch` (1-indexed)."""
        if self.first is None:
            raise RuntimeError(f"early stop: epoch {epoch}'s first batch was not captured")
        start = time.perf_counter()
        model.train()
        correct, count = self.check(model, *self.first)
        if self.reduce is not None:
            correct, count = self.reduce(correct, count)
        accuracy = float(correct) / float(count)
        self.accuracies.append(accuracy)
        self.first = None
        if accuracy - self.previous < -DROP:
            model.load_state_dict(self.snapshot)
            self.stopped_after = epoch
        else:
            self.previous = accuracy
            self.snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.seconds += time.perf_counter() - start
        return self.stopped

    def state_dict(self) -> dict:
        return {
            "previous": self.previous,
            "snapshot": self.snapshot,
            "first": self.first,
            "accuracies": list(self.accuracies),
            "seconds": self.seconds,
            "stopped_after": self.stopped_after,
        }

    def load_state_dict(self, state: dict | None) -> None:
        if not state:
            return
        self.previous, self.snapshot, self.first = state["previous"], state["snapshot"], state["first"]
        self.accuracies, self.seconds = list(state["accuracies"]), state["seconds"]
        self.stopped_after = state["stopped_after"]

    def record(self) -> dict:
        """What the model file and run.json say: the check's accuracy per epoch, where it stopped, which epoch's
        weights the model is."""
        epochs = len(self.accuracies)
        return {
            "rule": f"PGD accuracy on each epoch's first batch falls by more than {DROP}",
            "accuracies": self.accuracies,
            "check_seconds": self.seconds,
            "stopped_after_epoch": self.stopped_after,
            "weights_of_epoch": self.stopped_after - 1 if self.stopped else epochs,
        }
