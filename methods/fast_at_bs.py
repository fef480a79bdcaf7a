"""Fast AT as the backward-smoothing repository trains it (`train_pgdat_fast.py` + `pgd_fast.py`; METHODS.md §7.4
row a): the single-step baseline of the BS paper's comparison, not Wong et al.'s own recipe (methods/fast_at.py).

Per mini-batch:

1. eval mode, frozen parameters: x′ = x + δ₀, δ₀ ~ U(−ε, ε) per pixel, **not** clipped to [0, 1] before the first
   forward (as the reference);
2. K sign steps on the mean CE (K = 1, α = ε = 0.031 by default): x′ ← proj(x′ + α·sign(∇ₓ′ CE(F(x′), y))), proj =
   onto the ℓ∞ ε-ball around x, then into [0, 1];
3. the reference computes CE(F(x′), y) once more in eval mode, only to log it (`logged_forward`): one forward of cost,
   kept so the timing is the reference's;
4. the model's current mode (train, in the loop): loss = CE(F(x′), y).

What differs from Wong et al.'s FGSM-RS: the attack runs in eval mode (BN running statistics untouched), α = ε not
1.25ε, the start is not clipped to the pixel box, the parameter gradients of the attack's backward are not computed,
fp32 (no AMP anywhere in the BS repository), and the recipe (100 epochs, lr ×0.1 at 50 % / 75 % of the iterations,
ResNet-18 or WRN-34-10, the §7.0 best-epoch selection instead of the PGD-5 early stop).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .core.adversary import frozen_eval, project_linf
from .core.interface import HparamError, StepResult, require_non_negative, require_positive
from .core.recipes import BACKWARD_SMOOTHING_RECIPE, CIFAR10_NORMALIZATION

THREAT_MODEL = "linf-empirical"
SOURCE = "official code (jinghuichen/BackwardSmoothing train_pgdat_fast.py + pgd_fast.py)"


@dataclass(frozen=True)
class Hparams:
    """Defaults: `train_pgdat_fast.py`'s (ε = α = 0.031, one step)."""

    epsilon: float = 0.031  # ℓ∞ radius, pixel units
    step_size: float = 0.031  # α (= ε)
    steps: int = 1  # K (--num-steps)
    logged_forward: bool = True  # the reference's extra eval forward at the final x′ (its CE is only logged)

    def __post_init__(self):
        require_positive(self, "epsilon", "step_size")
        require_non_negative(self, "steps")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool):
            raise HparamError("steps", f"must be an integer, got {self.steps!r}")
        if not isinstance(self.logged_forward, bool):
            raise HparamError("logged_forward", f"must be true or false, got {self.logged_forward!r}")


def draw(x: torch.Tensor, hp: Hparams) -> torch.Tensor:
    """δ₀ ~ U(−ε, ε) per pixel, x's shape, on x's device."""
    return (2 * torch.rand_like(x) - 1) * hp.epsilon


def adversarial_point(model, x: torch.Tensor, y: torch.Tensor, delta0: torch.Tensor, hp: Hparams) -> torch.Tensor:
    """Steps 1–3 in eval mode with frozen parameters; detached, in the ε-ball and in [0, 1]."""
    if delta0.shape != x.shape:
        raise ValueError(f"δ₀ must have x's shape {tuple(x.shape)}, got {tuple(delta0.shape)}")
    x = x.detach()
    with frozen_eval(model), torch.enable_grad():
        x_adv = x + delta0.to(x.dtype)
        for _ in range(hp.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
            with torch.no_grad():
                x_adv = project_linf(x_adv + hp.step_size * grad.sign(), x, hp.epsilon)
        x_adv = project_linf(x_adv.detach(), x, hp.epsilon)
        if hp.logged_forward:
            with torch.no_grad():
                F.cross_entropy(model(x_adv), y)  # the reference logs this value; only its cost matters here
    return x_adv


def objective(model, x: torch.Tensor, y: torch.Tensor, delta0: torch.Tensor, hp: Hparams) -> StepResult:
    """CE at the attacked point, in the model's current mode. `correct` counts the adversarial predictions."""
    logits = model(adversarial_point(model, x, y, delta0, hp))
    return StepResult(F.cross_entropy(logits, y), (logits.argmax(1) == y).sum(), len(x))


#: The PAPER setting whose hparams are Hparams' defaults.
DEFAULTS = "cifar10"
PAPER = {
    # No published number: the BS paper's Fast AT rows were not readable (METHODS.md §7.5, "source not read").
    "cifar10": dict(
        archs=("resnet18", "wrn34_10"),
        normalization=CIFAR10_NORMALIZATION,
        train=BACKWARD_SMOOTHING_RECIPE,
        hparams=dict(epsilon=0.031, step_size=0.031, steps=1, logged_forward=True),
    ),
}
