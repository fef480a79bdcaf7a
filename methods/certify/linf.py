"""The ℓ∞ evaluators, a batch of images at a time: ℓ∞-dist certificates and attacks' empirical radii.

Each builder takes (model, info, certify settings, seed) and returns `evaluate(xs, ys, idxs) -> (predictions,
radius)` for one batch, radius in pixel units: the margin certificate (exact, margin / 2 at p = ∞), interval bounds
over the ε-box clipped to [0, 1] on the ε grid (the ℓ∞-dist papers' certificate), or the largest grid ε an attack
fails at (empirical: an upper bound, never a certificate). Attacks' random starts are seeded per example from (run
seed, test index), so a sharded evaluation merges exactly into the unsharded one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from ..core.adversary import PGD, predict
from ..linf_dist import ScaledLogits, certify_batch, interval_certified
from . import attacks

#: evaluate(xs, ys, idxs) -> (predicted class per image, radius per image)
Evaluate = Callable[[torch.Tensor, torch.Tensor, list[int]], tuple[torch.Tensor, torch.Tensor]]


def margin_evaluator(model, info: dict, cfg: dict, seed: int) -> Evaluate:
    """margin / 2 of an ℓ∞-dist net at p = ∞ in eval mode (refuses finite p or train mode)."""

    def run(xs, ys, idxs):
        cert = certify_batch(model, xs, ys, cfg["eps_grid"][0])
        return cert.logits.argmax(1), cert.radius

    return run


def interval_evaluator(model, info: dict, cfg: dict, seed: int) -> Evaluate:
    """The largest grid ε at which interval bounds over the clipped ε-box certify the (correct) prediction."""

    def run(xs, ys, idxs):
        predictions = predict(model, xs)
        radius = torch.zeros(len(xs), dtype=torch.float64, device=xs.device)
        standing = predictions == ys
        for eps in cfg["eps_grid"]:  # the box grows with ε, so certification is monotone: keep the largest ε
            standing &= interval_certified(model, xs, ys, eps)
            radius[standing] = eps
        return predictions, radius

    return run


def at_eps(build_attack: Callable[[int], Callable], per_example: bool = True, scaled_logits: bool = False):
    """A builder of a standalone attack at exactly one ε (`cfg["attack_eps"]`, resolved per run by the config): the
    papers' protocol for a robust-accuracy number (one attack at the reported ε, not the ε grid's union of attacks).
    radius = ε where the clean prediction is right and the attack at ε fails, else 0; a PGD preset keeps its own step
    at its own ε and scales it with ε elsewhere."""

    def build(model, info: dict, cfg: dict, seed: int) -> Evaluate:
        if cfg.get("attack_eps") is None:
            raise ValueError("certify.attack_eps is not set for this evaluator (resolve the spec through the config)")
        eps = float(cfg["attack_eps"])
        attack = build_attack(info["num_classes"])
        target = ScaledLogits(model) if scaled_logits else model

        def run(xs, ys, idxs):
            predictions = predict(target, xs)
            if per_example:
                generators = [torch.Generator().manual_seed(seed * 2**32 + idx) for idx in idxs]
                x_adv = attack(target, xs, ys, eps, generator=generators)
            else:
                x_adv = attack(target, xs, ys, eps)
            robust = (predictions == ys) & (predict(target, x_adv) == ys)
            return predictions, robust.to(torch.float64) * eps

        return run

    return build


def pgd_preset(preset: PGD, loss: str = "ce", random_start: bool | str = False) -> Callable[[int], PGD]:
    """num_classes -> the preset with this loss and start (PGD does not depend on the number of classes)."""
    return lambda num_classes: replace(preset, loss=loss, random_start=random_start)


def autoattack_preset(num_classes: int):
    return lambda model, x, y, eps: attacks.autoattack(model, x, y, eps, num_classes=num_classes)


def attack_evaluator(build_attack: Callable[[int], Callable], per_example: bool = True, scaled_logits: bool = False):
    """A builder of the empirical-radius evaluator of an attack (num_classes -> attack(model, x, y, eps)).

    per_example: seed each example's random start from (seed, index) (PGD); AutoAttack draws from the global RNG,
    which the certify step seeds per batch. scaled_logits: attack s·z, what v2's cross-entropy sees (ℓ∞-dist PGD).
    """

    def build(model, info: dict, cfg: dict, seed: int) -> Evaluate:
        attack = build_attack(info["num_classes"])
        target = ScaledLogits(model) if scaled_logits else model

        def run(xs, ys, idxs):
            seeds = [seed * 2**32 + idx for idx in idxs] if per_example else None
            return predict(target, xs), attacks.empirical_radius(target, xs, ys, cfg["eps_grid"], attack, seeds)

        return run

    return build
