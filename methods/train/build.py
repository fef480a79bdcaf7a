"""What one run trains with: the model, the path (reference or fast), the optimizer, the schedule, the train step.

The training loop (methods/train/loop.py), the training-cost benchmark (methods/bench/train_cost.py) and the
generated method tests build a run's training the same way, from its resolved spec.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from ..core import models
from ..core.interface import StepResult, descend
from ..registry import get_method
from . import fast as fast_train


def build_optimizer(params, cfg: dict, **impl) -> torch.optim.Optimizer:
    """The config's optimizer; `impl` (fused=True / foreach=True) picks torch's implementation (the fast path)."""
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"], **impl)
    return torch.optim.Adam(
        params,
        lr=cfg["lr"],
        betas=tuple(cfg["adam_betas"]),
        eps=cfg["adam_eps"],
        weight_decay=cfg["weight_decay"],
        **impl,
    )


def method_optimizer(method, model, hp, cfg: dict, **impl) -> torch.optim.Optimizer:
    """The config's optimizer over the model's parameters, in the method's groups where it has its own."""
    if hasattr(method, "optimizer_params"):
        return build_optimizer(method.optimizer_params(model, cfg["lr"], hp), cfg, **impl)
    return build_optimizer(model.parameters(), cfg, **impl)


def path_optimizer(method, model, hp, cfg: dict, path: fast_train.FastPath) -> tuple[torch.optim.Optimizer, str]:
    """(optimizer, implementation): torch's default on the reference path, fused (else foreach) on the fast path."""
    if not path.fast:
        return method_optimizer(method, model, hp, cfg), "default"
    return fast_train.fast_optimizer(lambda **impl: method_optimizer(method, model, hp, cfg, **impl))


def build_scheduler(optimizer, cfg: dict, batches_per_epoch: int = 1):
    """The config's lr schedule. `train.schedule_step: epoch` (default): stepped once per epoch, after it, so epoch e
    trains at the lr the schedule gives e. `iteration`: stepped after every mini-batch, with the schedule's epochs
    (step_size, milestones, cosine_start, epochs) counted in iterations of `batches_per_epoch` each — the ℓ∞-dist
    references' cosine, and the references that step MultiStepLR per iteration at fractions of the run."""
    sched = torch.optim.lr_scheduler
    kind = cfg["schedule"]
    unit = batches_per_epoch if cfg.get("schedule_step", "epoch") == "iteration" else 1
    if kind == "step":
        return sched.StepLR(optimizer, step_size=cfg["step_size"] * unit, gamma=cfg["gamma"])
    if kind == "multistep":
        return sched.MultiStepLR(optimizer, milestones=[m * unit for m in cfg["milestones"]], gamma=cfg["gamma"])
    if kind == "cosine":  # constant until cosine_start (ℓ∞-dist v1: epoch 100; default 0), then cosine to 0
        start, span = (cfg["cosine_start"] or 0) * unit, (cfg["epochs"] - (cfg["cosine_start"] or 0)) * unit
        if not start:
            return sched.CosineAnnealingLR(optimizer, T_max=span)
        return sched.LambdaLR(
            optimizer, lambda t: 1.0 if t < start else 0.5 * (1 + math.cos(math.pi * (t - start) / span))
        )
    return sched.LambdaLR(optimizer, lambda epoch: 1.0)


def default_train_step(method, model, optimizer, x, y, hp, epoch: float) -> StepResult:
    """One draw, one loss, one optimizer step: what every method does unless it defines its own train_step."""
    return descend(optimizer, method.objective(model, x, y, method.draw(x, hp), hp))


class Training(NamedTuple):
    """What one run trains with, on the path its spec asks for (the training loop, bench_train and tests share it)."""

    model: torch.nn.Module  # the weights: checkpointed, evaluated, saved
    step_model: torch.nn.Module  # what the train steps call: the model, or its fast-path forward (DDP wraps it later)
    optimizer: torch.optim.Optimizer
    optimizer_impl: str  # "default" (reference), "fused" or "foreach"
    path: fast_train.FastPath
    step: Callable  # step(step_model, optimizer, x, y, hp, epoch) -> StepResult
    hp: object


def build_training(spec: dict, device: torch.device, dataset: str | None = None) -> Training:
    """The model (from torch's global RNG: seed it first), its path, optimizer and train step for `spec` on
    `dataset` (default the spec's)."""
    method = get_method(spec["method"])
    hp = method.Hparams(**spec["hparams"])
    dataset = dataset or spec["dataset"]
    model = models.for_method(method, hp, spec["model"], dataset).to(device)
    path = fast_train.plan(spec, model, device, dataset)  # the reference path unless train.fast
    fast_train.prepare_model(model, path)
    optimizer, optimizer_impl = path_optimizer(method, model, hp, spec["train"], path)
    step = getattr(method, "train_step", None) or (lambda *a: default_train_step(method, *a))
    return Training(model, fast_train.step_model(model, path, device), optimizer, optimizer_impl, path, step, hp)
