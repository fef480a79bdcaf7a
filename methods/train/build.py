"""What one run trains with: the model, the path (reference or fast), the optimizer, the schedule, the train step.

The training loop (methods/train/loop.py), the training-cost benchmark (methods/bench/train_cost.py) and the
generated method tests build a run's training the same way, from its resolved spec.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from ..core import models
from ..core.errors import ConfigError
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


def multistep_milestones(cfg: dict, unit: int = 1) -> list[int]:
    """MultiStepLR's milestones in scheduler steps: `milestones` (epochs) × `unit`, or `milestone_fractions` of all
    epochs × `unit` steps, each rounded up to the first whole step at or after the fraction. The references write
    MultiStepLR(milestones=[lr_steps / 2, lr_steps * 3 / 4]) with float milestones, which fire only where they happen
    to be whole numbers (never at Fast AT's 15 × 391 / 2 = 2932.5, nor at the BS code's 30-epoch 8,797.5:
    METHODS.md §7.4); rounding up reproduces the fractions they meant, not that accident. At 100 epochs of 391
    batches, fractions [0.5, 0.75] are iterations 19,550 and 29,325 = epochs [50, 75]."""
    fractions = cfg.get("milestone_fractions")
    if fractions:
        total = cfg["epochs"] * unit
        return [math.ceil(round(f * total, 9)) for f in fractions]
    return [m * unit for m in cfg["milestones"]]


#: The cyclic schedules (stepped once per scheduler step; `train.schedule_step: iteration` makes that a mini-batch):
#: "cyclic" = Fast AT's triangle (`train_fgsm.py`: lr_min → lr over the first half of the run, back to lr_min over
#: the second), "cyclic_jump" = the BS repository's `--lr-sch cyclic` (CyclicLR with step_size_up = 1 and
#: step_size_down = all steps: lr_min on the first step, lr on the second, then linearly down to lr_min at the end).
CYCLIC = ("cyclic", "cyclic_jump")


def cyclic_scheduler(optimizer, cfg: dict, total: int):
    """torch's CyclicLR over `total` scheduler steps (METHODS.md §7.3, §7.4), with the momentum cycling the references
    leave on (CyclicLR's default cycle_momentum=True): momentum max_momentum (0.9) at the lowest lr, base_momentum
    (0.8) at the peak, linearly in between, inversely to the lr — so train.momentum is overridden while
    `cycle_momentum` is on (the default). Keys: lr (the peak), lr_min (default 0), cycle_momentum (default true),
    base_momentum / max_momentum (defaults 0.8 / 0.9, PyTorch's)."""
    if cfg["schedule"] == "cyclic":
        up = down = total / 2  # Fast AT passes lr_steps / 2 as a float; CyclicLR only uses the ratio and the sum
    else:
        up, down = 1, total
    return torch.optim.lr_scheduler.CyclicLR(
        optimizer,
        base_lr=cfg.get("lr_min", 0.0),
        max_lr=cfg["lr"],
        step_size_up=up,
        step_size_down=down,
        cycle_momentum=cfg.get("cycle_momentum", True),
        base_momentum=cfg.get("base_momentum", 0.8),
        max_momentum=cfg.get("max_momentum", 0.9),
    )


def build_scheduler(optimizer, cfg: dict, batches_per_epoch: int = 1):
    """The config's lr schedule. `train.schedule_step: epoch` (default): stepped once per epoch, after it, so epoch e
    trains at the lr the schedule gives e. `iteration`: stepped after every mini-batch, with the schedule's epochs
    (step_size, milestones, cosine_start, epochs) counted in iterations of `batches_per_epoch` each — the ℓ∞-dist
    references' cosine, and the references that step MultiStepLR per iteration at fractions of the run (see
    `multistep_milestones`) or a CyclicLR (`cyclic_scheduler`)."""
    sched = torch.optim.lr_scheduler
    kind = cfg["schedule"]
    unit = batches_per_epoch if cfg.get("schedule_step", "epoch") == "iteration" else 1
    if kind == "step":
        return sched.StepLR(optimizer, step_size=cfg["step_size"] * unit, gamma=cfg["gamma"])
    if kind == "multistep":
        return sched.MultiStepLR(optimizer, milestones=multistep_milestones(cfg, unit), gamma=cfg["gamma"])
    if kind in CYCLIC:
        return cyclic_scheduler(optimizer, cfg, cfg["epochs"] * unit)
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


def method_precision(method, hp, path: fast_train.FastPath, device: torch.device) -> fast_train.FastPath:
    """`path` with the autocast a method asks for itself (`precision(hp, device) -> (dtype or None, note)`: Fast AT's
    `amp`), so its train step runs under it (the path's FastModel: autocast around the forward, fp32 weights, fp32
    logits) and train_log.tsv, run.json and the tables record it; the note (a fallback) goes into run.json's notes.
    A run that also asks the fast path for another autocast dtype is refused."""
    if not hasattr(method, "precision"):
        return path
    dtype, note = method.precision(hp, device)
    notes = path.notes + ((note,) if note else ())
    if dtype is not None and path.autocast_dtype not in (None, dtype):
        raise ConfigError(f"config error at train.dtype: the method's own precision ({dtype}) and train.dtype "
                          f"({path.autocast_dtype}) disagree; drop one of them")  # fmt: skip
    return dataclasses.replace(path, autocast_dtype=dtype or path.autocast_dtype, notes=notes)


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
    path = method_precision(method, hp, path, device)  # a method's own autocast (Fast AT's amp), recorded as the path's
    fast_train.prepare_model(model, path)
    optimizer, optimizer_impl = path_optimizer(method, model, hp, spec["train"], path)
    step = getattr(method, "train_step", None) or (lambda *a: default_train_step(method, *a))
    return Training(model, fast_train.step_model(model, path, device), optimizer, optimizer_impl, path, step, hp)
