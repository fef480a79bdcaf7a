"""Cohen, Rosenfeld & Kolter 2019 — Gaussian data augmentation, certified by randomized smoothing.

Loss: mean cross-entropy of f(x + σε) with one fresh ε ~ N(0, I) per image per step, added in pixel space after
the crop/flip augmentation and before normalization (the model's first layer). Certification is Cohen's CERTIFY in
`methods.certify.smoothing`. Paper settings (../shared/METHODS.md §1) are in `PAPER` and in
config/{cifar10,imagenet}.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from .core.interface import StepResult, require_positive
from .core.noise import gaussian

THREAT_MODEL = "l2-smoothing"
SOURCE = "official code (locuslab/smoothing)"


@dataclass(frozen=True)
class Hparams:
    sigma: float = 0.25  # noise level, pixel units; the paper trains σ ∈ {0.12, 0.25, 0.5, 1.0}

    def __post_init__(self):
        require_positive(self, "sigma")


def draw(x, hp: Hparams):
    return gaussian(x.shape, hp.sigma, x)


def objective(model, x, y, noise, hp: Hparams) -> StepResult:
    logits = model(x + noise)
    return StepResult(F.cross_entropy(logits, y), (logits.argmax(1) == y).sum(), len(y))


#: The paper's training settings per dataset (Cohen's code defaults and experiment commands), mirrored by the
#: cohen runs of config/cifar10.yaml and config/imagenet.yaml; a test keeps the two in step. `hparams`: the σ of
#: MACER's Cohen-0.25 comparison model, one of `sigmas`.
PAPER = {
    "cifar10": dict(
        hparams=dict(sigma=0.25),
        arch="cifar_resnet110",
        sigmas=(0.12, 0.25, 0.5, 1.0),
        epochs=90,
        batch_size=400,
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="step",
        step_size=30,
        gamma=0.1,
    ),
    "imagenet": dict(
        hparams=dict(sigma=0.25),
        arch="resnet50",
        sigmas=(0.25, 0.5, 1.0),
        epochs=90,
        batch_size=400,
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="step",
        step_size=30,
        gamma=0.1,
    ),
}
#: The PAPER setting whose hparams are Hparams' defaults.
DEFAULTS = "cifar10"
