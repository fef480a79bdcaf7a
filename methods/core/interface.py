"""The method interface: what a method module defines, and the small types and checks it is written with.

A method is one module under `methods/` (registered by name in `methods/registry.py`) that defines:

- ``Hparams``: a frozen dataclass of its hyper-parameters with the paper's defaults (checked in ``__post_init__``);
- ``THREAT_MODEL``: one of ``THREAT_MODELS`` (it picks the certifiers that can evaluate it);
- ``SOURCE``: where the implementation's details come from ("official code (...)", or "reconstructed: ..." where
  there was no official code); the report's tables carry it as a footnote;
- ``PAPER``: the papers' settings, one entry per setting (dataset or named setting), each with an ``hparams`` dict,
  and ``DEFAULTS``: the name of the setting whose ``hparams`` the ``Hparams`` defaults are (a generated test checks);
- ``draw(x, hp)``: the random draws one batch needs (e.g. Gaussian noise), from torch's global RNG;
- ``objective(model, x, y, draws, hp) -> StepResult``: the training loss, a pure function of its arguments, so a
  test can fix the draws and compare the loss with a hand computation;
- optionally ``train_step(model, optimizer, x, y, hp, epoch) -> StepResult`` when one loader batch is more than one
  draw + one optimizer step (SmoothAdv's attack and its m mini-batches). `epoch` is the progress in epochs, from 0:
  the epoch index plus the fraction of its batches already done (3.25 = a quarter into the fourth epoch), so
  per-epoch warm-ups use floor(epoch) and per-batch schedules (ℓ∞-dist nets' p) use it as it is;
- optionally ``build_model(dataset, hp, model_cfg)`` and ``ARCH`` when the architecture is part of the method
  (ℓ∞-dist nets; `model_cfg` is the config's `model` section, or a model file's info) and
  ``optimizer_params(model, lr, hp)`` when some parameters train at their own learning rate;
- optionally ``precision(hp, device) -> (autocast dtype or None, note)`` when the method trains in mixed precision
  itself (Fast AT's apex amp, replaced by autocast around the train step's forwards: methods/train/build.py), and
  ``early_stop_accuracy(model, x, y, hp) -> (correct, count)`` when an hparam ``early_stop`` asks the loop to stop on
  a falling robust accuracy of each epoch's first batch (Fast AT; methods/train/early_stop.py).
The shared training loop (`methods.train`) owns everything else.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

THREAT_MODELS = ("l2-smoothing", "linf-certified", "linf-empirical")


class StepResult(NamedTuple):
    loss: torch.Tensor  # scalar, mean over the batch, differentiable
    correct: torch.Tensor  # number of training examples the step counts as classified correctly
    count: int  # number of examples the loss and `correct` are over


class HparamError(ValueError):
    """A hyper-parameter out of its range; `field` names it so config errors can point at it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def descend(optimizer: torch.optim.Optimizer, result: StepResult) -> StepResult:
    """One optimizer step on `result.loss` (fresh gradients), for the train steps of every method."""
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    optimizer.step()
    return result


def require_positive(hp, *fields: str) -> None:
    for name in fields:
        value = getattr(hp, name)
        if not value > 0:
            raise HparamError(name, f"must be > 0, got {value!r}")


def require_non_negative(hp, *fields: str) -> None:
    for name in fields:
        value = getattr(hp, name)
        if not value >= 0:
            raise HparamError(name, f"must be >= 0, got {value!r}")


def require_choice(hp, field: str, choices) -> None:
    value = getattr(hp, field)
    if value not in choices:
        raise HparamError(field, f"must be one of {', '.join(choices)}, got {value!r}")
