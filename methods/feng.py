"""Feng et al. 2020 — the ADRE regularizer, its adversarial variant, and T-CERTIFY (METHODS.md §4). [reconstructed]

No official code and no full text of the paper were available: this follows the paper's abstract and an
independent reimplementation, as specified in ../shared/METHODS.md §4. Every table row of a Feng run says so, and
says that there is no published reference to compare with.

ADRE, over k noisy copies x + δⱼ:
    loss = mean_j CE(f(x + δⱼ), y) + λ·log(Ĝ_{c*} + 1e-10),   Ĝ = mean_j softmax(f(x + δⱼ)) (differentiable),
where c* is the strongest class other than y under Ĝ. When G is right the second term pushes the runner-up down
(a larger two-sided margin, which T-CERTIFY turns into radius); when G is wrong it pushes the wrong winner down.
ADRE-ADV (`adversarial: true`) evaluates the same terms at SmoothAdv's attacked point x̂ with the attack's m = k
draws, trained with SmoothAdv's procedure (methods/salman.py). T-CERTIFY lives in methods/certify/smoothing.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import salman
from .core.interface import StepResult, descend, require_choice, require_non_negative, require_positive
from .core.noise import gaussian_copies, noisy_cross_entropy, noisy_logits, soft_smoothed

THREAT_MODEL = "l2-smoothing"
SOURCE = "reconstructed: no official code; the abstract and an independent reimplementation (METHODS.md §4)"


@dataclass(frozen=True)
class Hparams:
    """Defaults k = 8, λ = 0.1 [reimpl]; the attack fields matter only with adversarial = true (then m = k) and
    default to SmoothAdv's Salman-0.25 attack (PGD, 10 steps, ε = 255/256, warm-up 10) — our assumption."""

    sigma: float = 0.25  # noise level, pixel units
    k: int = 8  # noisy copies per example
    lam: float = 0.1  # λ, weight of the log-probability of the strongest wrong class
    adversarial: bool = False  # ADRE-ADV: evaluate the loss at SmoothAdv's attacked point
    attack: str = "pgd"
    steps: int = 10
    epsilon: float = 255 / 256
    warmup: int = 10

    def __post_init__(self):
        require_positive(self, "sigma", "k", "steps", "epsilon", "warmup")
        require_non_negative(self, "lam")
        require_choice(self, "attack", salman.ATTACKS)


def draw(x, hp: Hparams):
    return gaussian_copies(x, hp.k, hp.sigma)


def strongest_wrong_probability(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Ĝ_{c*} per example: the largest soft-smoothed probability among the classes other than y."""
    return probs.masked_fill(F.one_hot(y, probs.shape[1]).bool(), float("-inf")).amax(dim=1)


def objective(model, x, y, noise, hp: Hparams) -> StepResult:
    logits = noisy_logits(model, x, noise)  # (B, k, C)
    noisy_ce = noisy_cross_entropy(logits, y)
    probs = soft_smoothed(logits)
    regularizer = torch.log(strongest_wrong_probability(probs, y) + 1e-10).mean()
    return StepResult(noisy_ce + hp.lam * regularizer, (probs.argmax(1) == y).sum(), len(y))


def train_step(model, optimizer, x, y, hp: Hparams, epoch: float) -> StepResult:
    if hp.adversarial:
        return salman.adversarial_train_step(model, optimizer, x, y, hp, epoch, objective, hp.k)
    return descend(optimizer, objective(model, x, y, draw(x, hp), hp))


#: No published settings exist (METHODS.md §4): k and λ are the independent reimplementation's defaults [reimpl]; the
#: training recipe and the attack of ADRE-ADV are assumed (Cohen's recipe, Salman-0.25's attack).
PAPER = {"reimplementation": dict(hparams=dict(k=8, lam=0.1, adversarial=False))}
#: The PAPER setting whose hparams are Hparams' defaults.
DEFAULTS = "reimplementation"
