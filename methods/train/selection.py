"""The "best" checkpoint of a run with `train.select_best`: the epoch with the highest PGD accuracy on the first test
images, the backward-smoothing code's rule (PGD-20, ε 0.031, step 0.0078, the first 2,560 CIFAR-10 test images).

The selection is made on test images, which overlap the evaluated ones: the tables say so beside every [best] row.
"""

from __future__ import annotations

import torch

from ..core import data
from ..core.adversary import pgd_linf, predict


def selection_subset(dataset: str, select: dict, spec: dict):
    """The first `select.images` test images: the images that pick the "best" epoch (the backward-smoothing code's
    first 20 test batches of 128)."""
    test_set = data.load(dataset, "test", spec["data_root"], spec["download"])
    if select["images"] > len(test_set):
        raise ValueError(
            f"train.select_best.images = {select['images']} but the {dataset} test set has only {len(test_set)} images"
        )
    return torch.utils.data.Subset(test_set, range(select["images"]))


def selection_accuracy(model, loader, select: dict, device) -> float:
    """Robust accuracy under PGD (select's eps, step_size, steps, loss; no random start) in eval mode: the score that
    picks the "best" checkpoint. An attack's accuracy, an upper bound on robust accuracy."""
    correct, count = 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        x_adv = pgd_linf(model, x, y, select["eps"], select["step_size"], select["steps"], select.get("loss", "ce"))
        correct += int((predict(model, x_adv) == y).sum())
        count += len(y)
    return correct / count


def selection_description(select: dict) -> str:
    return (
        f"PGD-{select['steps']} ({select.get('loss', 'ce').upper()}, eps {select['eps']:g}, step "
        f"{select['step_size']:g}, no random start) accuracy on test images 0-{select['images'] - 1}, after "
        f"every epoch"
    )
