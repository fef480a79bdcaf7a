"""Fast AT / FGSM-RS (Wong et al. 2020), the official `train_fgsm.py` (METHODS.md §7.3).

Per mini-batch, the model in the mode the loop left it in — **train mode throughout**, so BatchNorm uses batch
statistics and the attack's forward moves its running statistics too, as in the reference:

1. δ = δ₀ ~ U(−ε, ε) per pixel (`init: random`; `zero`: δ₀ = 0), then clipped so that x + δ ∈ [0, 1];
2. g = ∇_δ CE(F(x + δ), y) (mean CE), by a **full** backward: the reference's apex backward also fills the parameter
   gradients, which its `opt.zero_grad()` then discards; here they are computed and discarded the same way
   (`torch.autograd.grad` over δ and the parameters), so the step costs what the reference's does;
3. δ ← clip(δ + α·sign(g), −ε, ε), clipped again so that x + δ ∈ [0, 1]; detached;
4. loss = CE(F(x + δ), y); the loop takes the SGD step and steps the cyclic schedule every iteration.

Pixel space: the reference normalises in the data loader and divides ε and α by the per-channel std, with the pixel
box mapped to ((0 − μ)/σ, (1 − μ)/σ); with the normalisation as the model's first layer (this harness) the same
attack is pixel-space ε and α, equal up to float rounding (tests/test_fast_at.py checks it to 1e-5).

**Precision** (`amp`). The reference trains under apex amp O2 with a static loss scale 1.0 and *without* fp32
master weights (fp16 weights updated directly). apex is unmaintained; here `amp: float16` runs every training forward
under `torch.autocast` (fp16) with fp32 weights (fp32 master weights: a deviation from O2, recorded in run.json and
the log's dtype column), and no gradient scaling (the static scale 1.0). On a CPU it trains in float32 instead
(fp16 autocast on a CPU is emulated and not the GPU's numerics), and says so (run.json's train_path notes).
`bfloat16` asks for bf16 autocast; `off` is fp32. The autocast is the training loop's (methods/train/build.py
applies `precision` to the path the train step calls); evaluation passes run in fp32, as the reference evaluates an
fp32 copy.

**Early stop** (`early_stop`, off by default as `--early-stop`): after each epoch, PGD-5 (α = ε/4 = 2/255 at 8/255,
one restart, random start, examples stop moving once misclassified; `fast_pgd`) on the first mini-batch of that epoch
with the model still in train mode; when the robust accuracy falls below the previous epoch's − 0.2, training stops
and the previous epoch's weights are the run's model (methods/train/early_stop.py keeps the rule and the state).

`fast_pgd` is also the reference's final evaluation (PGD-50 × 10 restarts, α = 2/255, ε = 8/255, per-example
highest-CE restart kept): the `fast-pgd50x10-at-eps` evaluator (methods/certify/attacks.py). `--delta-init previous`
(reuse the last batch's δ) is not implemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .core.collectives import no_sync
from .core.interface import HparamError, StepResult, require_choice, require_positive
from .core.recipes import CIFAR10_NORMALIZATION

THREAT_MODEL = "linf-empirical"
SOURCE = (
    "official code (locuslab/fast_adversarial CIFAR10/train_fgsm.py); apex amp O2 without master weights replaced "
    "by torch.autocast with fp32 weights (amp: float16; float32 on a CPU)"
)
INITS = ("random", "zero")
AMP = ("float16", "bfloat16", "off")
#: The early stop's check (train_fgsm.py --early-stop): PGD-5 with one restart, α = 2/255 at ε = 8/255.
EARLY_STOP_STEPS = 5
EARLY_STOP_STEP_FRACTION = 0.25


@dataclass(frozen=True)
class Hparams:
    """Defaults: the official CIFAR-10 run (`train_fgsm.py` defaults: ε 8/255, α 10/255, random init, apex O2)."""

    epsilon: float = 8 / 255  # ℓ∞ radius, pixel units
    step_size: float = 10 / 255  # α = 1.25ε
    init: str = "random"  # random: U(−ε, ε) clipped to the pixel box | zero
    amp: str = "float16"  # float16 (apex O2 in the reference; here autocast, fp32 weights) | bfloat16 | off
    early_stop: bool = False  # PGD-5 on each epoch's first batch; stop and restore on a drop of more than 0.2

    def __post_init__(self):
        require_positive(self, "epsilon", "step_size")
        require_choice(self, "init", INITS)
        require_choice(self, "amp", AMP)
        if not isinstance(self.early_stop, bool):
            raise HparamError("early_stop", f"must be true or false, got {self.early_stop!r}")


def precision(hp: Hparams, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype the training forwards run in on `device` (None: float32), and a note where it is not the
    one asked for. float16 on CUDA; on a CPU float32 (fp16 autocast is emulated there). bfloat16 where asked."""
    if hp.amp == "off":
        return None, ""
    if hp.amp == "bfloat16":
        return torch.bfloat16, ""
    if device.type == "cuda":
        return torch.float16, ""
    return None, f"amp: float16 asked, trained in float32 on the {device.type} (fp16 autocast is a GPU feature here)"


def draw(x: torch.Tensor, hp: Hparams) -> torch.Tensor:
    """δ₀ ~ U(−ε, ε) per pixel (init random) or zeros (init zero), x's shape, on x's device."""
    if hp.init == "zero":
        return torch.zeros_like(x)
    return (2 * torch.rand_like(x) - 1) * hp.epsilon


def clip_to_box(delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """δ clipped so that x + δ ∈ [0, 1] (the reference's clamp(δ, lower_limit − X, upper_limit − X))."""
    return torch.max(torch.min(delta, 1 - x), -x)


def fgsm_rs_point(model, x: torch.Tensor, y: torch.Tensor, delta0: torch.Tensor, hp: Hparams) -> torch.Tensor:
    """Steps 1–3: x + δ after one FGSM step of α from the clipped random start, in the model's current mode (BN
    statistics move, as in the reference), with the reference's full backward (parameter gradients computed and
    discarded; no DDP reduction). Detached; ‖δ‖∞ ≤ ε and x + δ ∈ [0, 1]."""
    if delta0.shape != x.shape:
        raise ValueError(f"δ₀ must have x's shape {tuple(x.shape)}, got {tuple(delta0.shape)}")
    x = x.detach()
    delta = clip_to_box(delta0.to(x.dtype), x).requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.enable_grad(), no_sync(model):
        loss = F.cross_entropy(model(x + delta), y)
        grad = torch.autograd.grad(loss, [delta, *params], allow_unused=True)[0]
    with torch.no_grad():
        delta = clip_to_box((delta + hp.step_size * grad.sign()).clamp(-hp.epsilon, hp.epsilon), x)
    return (x + delta).detach()


def objective(model, x: torch.Tensor, y: torch.Tensor, delta0: torch.Tensor, hp: Hparams) -> StepResult:
    """CE at the FGSM-RS point. `correct` counts the adversarial predictions (the reference's training accuracy)."""
    logits = model(fgsm_rs_point(model, x, y, delta0, hp))
    return StepResult(F.cross_entropy(logits, y), (logits.argmax(1) == y).sum(), len(x))


def _uniform(shape, eps: float, x: torch.Tensor, generator) -> torch.Tensor:
    """U(−ε, ε) of `shape` on the CPU from one generator, a list of one per example, or the global RNG (None)."""
    if isinstance(generator, (list, tuple)):
        u = torch.stack([torch.rand(tuple(shape[1:]), generator=g, dtype=x.dtype) for g in generator])
    elif generator is not None:
        u = torch.rand(tuple(shape), generator=generator, dtype=x.dtype)
    else:
        return (2 * torch.rand_like(x) - 1) * eps
    return ((2 * u - 1) * eps).to(x.device)


def fast_pgd(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    restarts: int = 1,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """The reference's `attack_pgd` in pixel space, in the model's current mode (the caller's: train mode for the
    early stop, frozen eval for the final evaluation). Each restart starts at δ ~ U(−ε, ε) clipped to the pixel box;
    each step computes the mean CE of the whole batch and moves only the examples still classified correctly
    (δ ← clip(δ + α·sign(g), ±ε), clipped to the box), stopping when none is; after each restart every example keeps
    the restart with the highest CE so far (ties: the later). `generator`: a CPU generator, one per example (a list:
    an example's start then does not depend on its batch), or None (the global RNG). Returns x + δ, detached."""
    if steps < 0 or restarts < 1 or not eps >= 0 or not step_size > 0:
        raise ValueError(f"need steps >= 0, restarts >= 1, eps >= 0, step_size > 0; got {steps}, {restarts}, "
                         f"{eps}, {step_size}")  # fmt: skip
    x, y = x.detach(), y.detach()
    best = torch.zeros_like(x)
    best_loss = torch.zeros(len(x), device=x.device)
    with torch.enable_grad():
        for _ in range(restarts):
            delta = clip_to_box(_uniform(x.shape, eps, x, generator), x)
            for _ in range(steps):
                delta.requires_grad_(True)
                logits = model(x + delta)
                active = logits.argmax(1) == y
                if not active.any():
                    break
                (grad,) = torch.autograd.grad(F.cross_entropy(logits, y), delta)
                with torch.no_grad():
                    moved = clip_to_box((delta + step_size * grad.sign()).clamp(-eps, eps), x)
                    delta = torch.where(active.view(-1, *[1] * (x.dim() - 1)), moved, delta).detach()
            delta = delta.detach()
            with torch.no_grad():
                loss = F.cross_entropy(model(x + delta), y, reduction="none").float()
            keep = loss >= best_loss
            best[keep] = delta[keep]
            best_loss = torch.max(best_loss, loss)
    return (x + best).detach()


def early_stop_accuracy(model, x: torch.Tensor, y: torch.Tensor, hp: Hparams) -> tuple[int, int]:
    """The early stop's check on one batch (the epoch's first): PGD-5, α = ε/4, one restart, in the model's current
    mode (train mode in the loop, as the reference), then the adversarial forward in that mode. (correct, count)."""
    x_adv = fast_pgd(model, x, y, hp.epsilon, hp.epsilon * EARLY_STOP_STEP_FRACTION, EARLY_STOP_STEPS)
    with torch.no_grad():
        return int((model(x_adv).argmax(1) == y).sum()), len(y)


#: The paper settings (METHODS.md §7.3). `train` uses the keys of this project's config `train:` block: the cyclic
#: triangle 0 → 0.2 → 0 over all iterations, momentum cycling 0.9 → 0.8 → 0.9 (CyclicLR's default, left on).
_TRAIN = dict(
    optimizer="sgd",
    lr=0.2,
    lr_min=0.0,
    momentum=0.9,
    weight_decay=5e-4,
    batch_size=128,
    epochs=15,
    schedule="cyclic",
    schedule_step="iteration",
    cycle_momentum=True,
    augment=True,
)
#: The PAPER setting whose hparams are Hparams' defaults.
DEFAULTS = "cifar10"
PAPER = {
    # PreActResNet-18, ε = 8/255, normalisation (BS/FAST constants) in the loader (here: the model's first layer).
    # README: 86.06 % clean / 46.06 % PGD-50×10, 12 min; RobustBench Wong2020Fast: 83.34 clean, 43.21 AutoAttack.
    "cifar10": dict(
        arch="preact_resnet18",
        normalization=CIFAR10_NORMALIZATION,
        train=_TRAIN,
        hparams=dict(epsilon=8 / 255, step_size=10 / 255, init="random", amp="float16", early_stop=False),
        evaluation=dict(
            pgd=dict(eps=8 / 255, step_size=2 / 255, steps=50, restarts=10, random_start=True),
            autoattack=dict(version="standard", eps=8 / 255),
        ),  # fmt: skip
        published=dict(pgd50x10=0.4606, autoattack=0.4321, clean_robustbench=0.8334),
    ),
    # The same with --early-stop (METHODS.md §7.6 names it as a second run).
    "cifar10-early-stop": dict(
        arch="preact_resnet18",
        normalization=CIFAR10_NORMALIZATION,
        train=_TRAIN,
        hparams=dict(epsilon=8 / 255, step_size=10 / 255, init="random", amp="float16", early_stop=True),
    ),
}
