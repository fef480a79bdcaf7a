"""Salman et al. 2019 — SmoothAdv: adversarial training of the *soft* smoothed classifier (METHODS.md §2).

Each step attacks G(x) = E_δ[softmax(f(x + δ))] — estimated with m noise draws δᵢ that are drawn once per
mini-batch and kept fixed through the attack — by maximising J(x′) = −log((1/m) Σᵢ softmax(f(x′ + δᵢ))_y) over the
ℓ2 ball ‖x′ − x‖ ≤ ε, then trains on the attacked point x̂ with those same m noisy copies. Two attacks, as in the
official code (Hadisalman/smoothing-adversarial): PGD-ℓ2 (T steps of 2ε/T, no random start) and DDN (decoupled
direction and norm). ε warms up linearly over the first `warmup` epochs. The attack runs with the model in eval
mode and its parameters frozen: nothing of it reaches the weights' gradients.

`adversarial_train_step` is also the training procedure of Feng et al.'s ADRE-ADV (methods/feng.py), which swaps
in its own objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .core import collectives
from .core.adversary import frozen_eval
from .core.interface import StepResult, descend, require_choice, require_positive
from .core.noise import gaussian_copies, noisy_cross_entropy, noisy_logits, soft_smoothed

THREAT_MODEL = "l2-smoothing"
SOURCE = "official code (Hadisalman/smoothing-adversarial)"
ATTACKS = ("pgd", "ddn")
DDN_NORM_FACTOR = 0.05  # DDN's γ: ρ shrinks by 5% after an adversarial iterate and grows by 5% otherwise
QUANTIZATION_LEVELS = 256


@dataclass(frozen=True)
class Hparams:
    """Defaults: MACER's "Salman-0.25" comparison model (PGD, 10 steps, m = 8, ε = 255/256, warm-up 10)."""

    sigma: float = 0.25  # training noise level, pixel units
    attack: str = "pgd"  # pgd | ddn
    steps: int = 10  # T, attack iterations
    epsilon: float = 255 / 256  # ℓ2 radius of the attack, pixel units (the paper's values are k/256)
    num_noise: int = 8  # m, noise draws per input (1 = single-noise training)
    warmup: int = 10  # epochs over which ε rises linearly to its final value (1 = no warm-up)

    def __post_init__(self):
        require_positive(self, "sigma", "steps", "epsilon", "num_noise", "warmup")
        require_choice(self, "attack", ATTACKS)


def warmed_up_epsilon(epsilon: float, warmup: int, epoch: float) -> float:
    """εₑ = min(ε, (e + 1)·ε / warmup) for epoch e counted from 0 (the README's --warmup 10); constant within an
    epoch, as the reference sets it once per epoch (`epoch` may be fractional progress)."""
    return min(epsilon, (math.floor(epoch) + 1) * epsilon / warmup)


def soft_smoothed_nll_from_logits(logits, y) -> torch.Tensor:
    """J per example from the (B, m, C) noisy logits. m = 1: the cross-entropy, as the reference's single-noise
    attack computes it (log-softmax: its gradient never vanishes); m > 1: −log of the mean softmax with the
    probability clamped at 1e-20, as the reference's multi-noise attack (its gradient vanishes below the clamp)."""
    if logits.shape[1] == 1:
        return torch.nn.functional.cross_entropy(logits[:, 0], y, reduction="none")
    return -torch.log(soft_smoothed(logits).gather(1, y[:, None]).squeeze(1).clamp_min(1e-20))


def soft_smoothed_nll(model, x, y, noise) -> torch.Tensor:
    """J per example: −log of the soft smoothed classifier's probability of the true class, over the given draws."""
    return soft_smoothed_nll_from_logits(noisy_logits(model, x, noise), y)


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(p=2, dim=1)


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _unit_ascent_direction(grad: torch.Tensor) -> torch.Tensor:
    """Per-example ℓ2-normalised gradient; a random direction where the gradient vanishes (as the reference)."""
    norms = _per_example_norm(grad)
    direction = grad / _expand(norms.clamp_min(1e-12), grad)
    zero = norms == 0
    if zero.any():
        direction[zero] = torch.randn_like(direction[zero])
    return direction


def _quantize(t: torch.Tensor) -> torch.Tensor:
    return t.mul(QUANTIZATION_LEVELS - 1).round().div(QUANTIZATION_LEVELS - 1)


def pgd_attack(model, x, y, noise, epsilon: float, steps: int) -> torch.Tensor:
    """PGD-ℓ2 on J from δ = 0: T steps of 2ε/T along the normalised gradient, each followed by clamping x + δ to
    [0, 1] and projecting δ onto the ε-ball. Returns x̂ (detached)."""
    step_size = 2 * epsilon / steps
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = soft_smoothed_nll(model, x + delta, y, noise).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = delta + step_size * _unit_ascent_direction(grad)
            delta = (x + delta).clamp(0, 1) - x
            delta = delta.renorm(p=2, dim=0, maxnorm=epsilon)
    return (x + delta).detach()


def ddn_learning_rate(step: int, steps: int) -> float:
    """η_t for t = 1…T: cosine annealing from 1 to 0.01 whose scheduler steps before each update (reference)."""
    return 0.01 + 0.99 * (1 + math.cos(math.pi * step / steps)) / 2


def _hard_prediction(logits: torch.Tensor) -> torch.Tensor:
    """The mode of the m hard predictions (B, m, C) → (B,); with m = 1 the plain argmax."""
    return logits.argmax(-1).mode(dim=1).values


def ddn_attack(model, x, y, noise, epsilon: float, steps: int) -> torch.Tensor:
    """DDN on J (Rony et al. 2019 as in Salman's code): ascent steps of size η_t, a per-example norm ρ from εₑ that
    shrinks after adversarial iterates and grows otherwise (capped at ‖max(x, 1 − x)‖, not at ε), δ rescaled to ρ
    and x + δ quantised every step; returns x plus the smallest adversarial δ seen (0 if none), projected onto the
    ε-ball and quantised. Returns x̂ (detached)."""
    rho = torch.full((len(x),), float(epsilon), device=x.device, dtype=x.dtype)
    rho_cap = _per_example_norm(torch.maximum(x, 1 - x))
    best_norm = torch.full_like(rho, float("inf"))
    best_delta = torch.zeros_like(x)
    delta = torch.zeros_like(x)
    for t in range(1, steps + 1):
        delta.requires_grad_(True)
        logits = noisy_logits(model, x + delta, noise)
        loss = soft_smoothed_nll_from_logits(logits, y).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            is_adv = _hard_prediction(logits) != y
            norms = _per_example_norm(delta)
            improved = is_adv & (norms < best_norm)
            best_norm = torch.where(improved, norms, best_norm)
            best_delta[improved] = delta[improved]

            delta = delta + ddn_learning_rate(t, steps) * _unit_ascent_direction(grad)
            rho = torch.minimum(rho * (1 - (2 * is_adv.to(x.dtype) - 1) * DDN_NORM_FACTOR), rho_cap)
            delta = delta * _expand(rho / _per_example_norm(delta).clamp_min(1e-12), delta)
            delta = _quantize(x + delta).clamp(0, 1) - x
    best_delta = _quantize(best_delta.renorm(p=2, dim=0, maxnorm=epsilon))
    # The reference quantises δ itself, which stays in the box only for inputs on the 256-level lattice (real
    # images); clamping keeps other inputs (digits: k/16) in [0, 1] and can only shrink ‖δ‖.
    return (x + best_delta).clamp(0, 1).detach()


def attack(model, x, y, noise, epsilon: float, hp) -> torch.Tensor:
    """x̂ = the `hp.attack` attack on the soft smoothed classifier at x with the fixed draws `noise` (B, m, …).

    Runs in eval mode with frozen parameters (restored afterwards), so it neither updates BatchNorm statistics nor
    leaves anything in the weights' .grad.
    """
    run = pgd_attack if hp.attack == "pgd" else ddn_attack
    with frozen_eval(model), torch.enable_grad():
        return run(model, x.detach(), y, noise, epsilon, hp.steps)


def draw(x, hp: Hparams):
    return gaussian_copies(x, hp.num_noise, hp.sigma)


def objective(model, x, y, noise, hp: Hparams) -> StepResult:
    """Mean cross-entropy over the m noisy copies of (attacked) x: with m = 1 Cohen's loss at x̂."""
    logits = noisy_logits(model, x, noise)
    return StepResult(noisy_cross_entropy(logits, y), (logits.argmax(-1) == y[:, None]).sum(), logits.shape[:2].numel())


def minibatches(x: torch.Tensor, y: torch.Tensor, num_noise: int) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """The loader batch's mini-batches, one optimizer step each, with this rank's share of each step's mean. One
    process: ⌊B/m⌋ images each plus a remainder mini-batch, so no image is dropped (METHODS.md §2: the reference
    crashes on a remainder). Under DDP every rank must take the same number of steps (each ends in an all-reduce),
    though the ranks' slices of a batch may differ by one image: the count is the one the whole global batch would
    have, at most the smallest slice; each rank cuts its slice into that many near-equal pieces, and piece j's
    gradient is weighted by its share of the ranks' piece j together, so every step is the exact mean of its
    images."""
    slices = collectives.rank_sizes(len(x), x.device)
    if len(slices) == 1:
        size = max(1, len(x) // num_noise)
        return [(a, b, 1.0) for a, b in zip(x.split(size), y.split(size))]
    whole = sum(slices)
    count = min(math.ceil(whole / max(1, whole // num_noise)), min(slices))
    pieces = [collectives.near_equal(n, count) for n in slices]
    mine = pieces[dist.get_rank()]
    shares = [mine[j] / sum(p[j] for p in pieces) for j in range(count)]
    return list(zip(x.split(mine), y.split(mine), shares))


def adversarial_train_step(model, optimizer, x, y, hp, epoch: float, objective, num_noise: int) -> StepResult:
    """SmoothAdv's training procedure around any objective(model, x̂, y, noise, hp).

    With m = num_noise > 1 the loader batch is split into mini-batches of ⌊B/m⌋ images (plus a remainder
    mini-batch, so no image is dropped; see `minibatches` for DDP), each attacked with its own m draws and followed
    by one optimizer step on its B-ish noisy copies; with m = 1 the whole batch is one mini-batch. `hp` needs the
    fields sigma, attack, steps, epsilon and warmup.
    """
    epsilon = warmed_up_epsilon(hp.epsilon, hp.warmup, epoch)
    loss_sum, correct, count = x.new_zeros(()), 0, 0
    for xs, ys, share in minibatches(x, y, num_noise):
        noise = gaussian_copies(xs, num_noise, hp.sigma)
        x_adv = attack(model, xs, ys, noise, epsilon, hp)
        with collectives.gradient_share(model, share):
            result = descend(optimizer, objective(model, x_adv, ys, noise, hp))
        loss_sum = loss_sum + result.loss.detach() * result.count
        correct = correct + result.correct
        count += result.count
    return StepResult(loss_sum / count, correct, count)


def train_step(model, optimizer, x, y, hp: Hparams, epoch: float) -> StepResult:
    return adversarial_train_step(model, optimizer, x, y, hp, epoch, objective, hp.num_noise)


def paper_grid(dataset: str) -> list[dict]:
    """The (attack, steps, num_noise, epsilon, sigma) of every model in the paper's committed result directories
    (METHODS.md §2); config/{cifar10,imagenet}.yaml expand their grids to exactly these (a test checks)."""
    import itertools

    def product(attacks, steps, noises, eps256, sigmas):
        return [
            dict(attack=a, steps=t, num_noise=m, epsilon=k / 256, sigma=s)
            for a, t, m, k, s in itertools.product(attacks, steps, noises, eps256, sigmas)
        ]

    sigmas = (0.12, 0.25, 0.5, 1.0)
    if dataset == "cifar10":
        eps = (64, 127, 255, 512)
        return (
            product(ATTACKS, (2, 4, 6, 8, 10), (1,), eps, sigmas)
            + product(("pgd",), (2, 4, 10), (2, 4, 8), eps, sigmas)
            + product(("ddn",), (4, 10), (2, 4, 8, 16), eps + (1024,), sigmas)
        )
    if dataset == "imagenet":
        return product(("pgd",), (1,), (1,), (127, 255, 512, 1024, 2048), sigmas) + product(
            ("ddn",), (2,), (1,), (127, 255, 512, 1024), sigmas
        )
    raise ValueError(f"no SmoothAdv paper grid for {dataset!r}")


#: The paper's training settings (METHODS.md §2), mirrored by the salman runs of config/{cifar10,imagenet}.yaml.
#: `hparams` of CIFAR-10: MACER's Salman-0.25 model (PGD-10, m = 8, ε = 255/256); every model warms up over 10 epochs.
PAPER = {
    "cifar10": dict(
        hparams=dict(sigma=0.25, attack="pgd", steps=10, epsilon=255 / 256, num_noise=8, warmup=10),
        arch="cifar_resnet110",
        epochs=150,
        batch_size=256,
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="step",
        step_size=50,
        gamma=0.1,
    ),
    # METHODS.md gives only the model and 90 epochs for ImageNet; the rest is assumed as Cohen's ImageNet recipe.
    "imagenet": dict(hparams=dict(warmup=10), arch="resnet50", epochs=90),
}
#: The PAPER setting whose hparams are Hparams' defaults.
DEFAULTS = "cifar10"
