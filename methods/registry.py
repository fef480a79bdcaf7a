"""The method interface, and where each method lives.

A method is one module under `methods/` that defines:

- ``Hparams``: a frozen dataclass of its hyper-parameters with the paper's defaults (checked in ``__post_init__``);
- ``THREAT_MODEL``: "l2-smoothing", "linf-certified" or "linf-empirical" (it picks the evaluator);
- ``draw(x, hp)``: the random draws one batch needs (e.g. Gaussian noise), from torch's global RNG;
- ``objective(model, x, y, draws, hp) -> StepResult``: the training loss, a pure function of its arguments, so a
  test can fix the draws and compare the loss with a hand computation;
- optionally ``train_step(model, optimizer, x, y, hp, epoch) -> StepResult`` when one loader batch is more than one
  draw + one optimizer step (SmoothAdv's attack and its m mini-batches). `epoch` is the progress in epochs, from 0:
  the epoch index plus the fraction of its batches already done (3.25 = a quarter into the fourth epoch), so
  per-epoch warm-ups use floor(epoch) and per-batch schedules (ℓ∞-dist nets' p) use it as it is.
  The shared loop in `methods.train` owns everything else.
- optionally ``build_model(dataset, hp, model_cfg)`` when the architecture is part of the method (ℓ∞-dist nets;
  `model_cfg` is the config's `model` section, or a model file's info) and ``optimizer_params(model, lr, hp)`` when
  some parameters train at their own learning rate;
- ``SOURCE``: where the implementation's details come from ("official code", or "reconstructed: …" when there was
  no official code); the report's tables carry it as a footnote.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import NamedTuple

import torch

#: method name (as written in configs) -> module
METHODS = {
    "cohen": "methods.cohen",
    "salman": "methods.salman",
    "macer": "methods.macer",
    "feng": "methods.feng",
    "linf_dist": "methods.linf_dist",
    "backward_smoothing": "methods.backward_smoothing",
}

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


def get_method(name: str) -> ModuleType:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    module = importlib.import_module(METHODS[name])
    assert module.THREAT_MODEL in THREAT_MODELS, module.__name__
    return module
