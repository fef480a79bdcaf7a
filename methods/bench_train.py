"""Training cost per method, measured side by side: seconds per optimizer batch and the sec/epoch they imply.

    python -m methods bench-train --configfile config/cifar10.yaml --dataset synthetic-cifar10 \\
        --run cohen-0.25 --run salman-pgd10-m8-eps1.00-0.25 --run macer-0.25 --run feng-0.25 --steps 5

Each run's own train_step (attack, k noisy copies, mini-batches) is timed on random batches of the run's batch size
after `warmup` untimed steps, with the device synchronised around the timed region. sec/epoch = sec/batch ×
batches per epoch of the real dataset (50,000 CIFAR-10 images, 1,281,167 ImageNet). The first run is the baseline
of the ratio column, measured in the same process, so the ratios hold on a shared, noisy machine.
"""
from __future__ import annotations

import math
import time

import torch

from . import data, models
from .io import device_name, select_device, synchronize
from .registry import get_method
from .train import default_train_step, method_optimizer

#: Training-set sizes the sec/epoch extrapolation uses (synthetic datasets stand for the real ones).
TRAIN_SIZES = {"digits": 1297, "mnist": 60_000, "cifar10": 50_000, "imagenet": 1_281_167,
               "synthetic-cifar10": 50_000, "synthetic-imagenet": 1_281_167}


def time_train_steps(spec: dict, dataset: str, steps: int, warmup: int, device: str) -> dict:
    """sec/batch of `spec`'s training step on random [0, 1] batches shaped like `dataset`."""
    dev = select_device(device)
    info = data.info(dataset)
    method = get_method(spec["method"])
    hp = method.Hparams(**spec["hparams"])
    torch.manual_seed(0)
    model = models.for_method(method, hp, spec["model"], dataset).to(dev).train()
    optimizer = method_optimizer(method, model, hp, spec["train"])
    step = getattr(method, "train_step", None) or (lambda *a: default_train_step(method, *a))
    batch = spec["train"]["batch_size"]
    x = torch.rand(batch, *info.shape, device=dev)
    y = torch.randint(0, info.num_classes, (batch,), device=dev)
    epoch = 10**6  # past any warm-up: the attack runs at its full ε
    for _ in range(warmup):
        step(model, optimizer, x, y, hp, epoch)
    synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(model, optimizer, x, y, hp, epoch)
    synchronize(dev)
    sec_per_batch = (time.perf_counter() - t0) / steps
    batches = math.ceil(TRAIN_SIZES[dataset] / batch)
    return {"run": spec["run"], "method": spec["method"], "batch_size": batch, "sec_per_batch": sec_per_batch,
            "images_per_sec": batch / sec_per_batch, "sec_per_epoch": sec_per_batch * batches,
            "device": device_name(dev)}


def bench(specs: list[dict], dataset: str, steps: int = 3, warmup: int = 1, device: str = "auto") -> list[dict]:
    rows = [time_train_steps(spec, dataset, steps, warmup, device) for spec in specs]
    for row in rows:
        row["ratio_to_first"] = row["sec_per_batch"] / rows[0]["sec_per_batch"]
    return rows


def format_rows(rows: list[dict]) -> str:
    header = f"{'run':<34} {'method':<7} {'batch':>5} {'s/batch':>9} {'img/s':>9} {'s/epoch':>10} {'×first':>7}"
    lines = [header, "-" * len(header)]
    lines += [f"{r['run']:<34} {r['method']:<7} {r['batch_size']:>5} {r['sec_per_batch']:>9.4f} "
              f"{r['images_per_sec']:>9.1f} {r['sec_per_epoch']:>10.1f} {r['ratio_to_first']:>7.2f}" for r in rows]
    return "\n".join(lines + [f"device: {rows[0]['device']}"])
