"""Backward smoothing (Chen et al. 2020): fast TRADES with an output-noise initialisation (METHODS.md §5).

Per mini-batch, with logits F, S = softmax and KL(P‖Q) = Σ P (log P − log Q) (P the target):

1. eval mode, frozen parameters: z = F(x) without grad; ξ ~ U[−γ, γ] per example and class;
2. the **backward smoothing** init, one signed step from x itself *down* the KL towards the smoothed output:
   x₁ = proj(x − α·sign(∇ₓ′ KL(S(z + ξ) ‖ S(F(x′))) at x′ = x));
3. `steps` TRADES steps (1 in the paper): x ← proj(x + α·sign(∇ KL(S(z) ‖ S(F(x′))))), KL summed / B;
4. loss = CE(F(x), y) + β·KL(S(F(x)) ‖ S(F(x_adv))) / B, S(F(x)) not detached, clean and adversarial batches as two
   separate forwards (clean first, as the reference), so BatchNorm sees them as two batches.

proj = onto the ℓ∞ ε-ball around x, then into [0, 1]. The attack (1–3) runs under `salman.frozen_eval`: nothing of
it reaches the weights' gradients or BatchNorm statistics, and the model's mode comes back as it was.

**The draw ξ.** ξ has one entry per class, and the number of classes C cannot be read from x, which is all `draw`
sees. So `draw(x, hp)` returns a *seed*: a 0-dim int64 tensor drawn from torch's global RNG (which the training
loop seeds per epoch, so runs stay reproducible and resumable). `objective`, once it knows C from z = F(x),
expands the seed into ξ = γ·(2U − 1), U ~ U[0, 1)^(B×C), with a private CPU generator (`output_noise`), so the same
seed gives the same ξ on every device. `objective` also accepts ξ itself, a float tensor of shape (B, C) with
|ξ| ≤ γ, which it uses as given: it stays a pure function of (model, x, y, ξ, hp), and a test can fix ξ. γ = 0
means "init = x" explicitly (at x′ = x the init gradient is analytically zero; METHODS.md says not to rely on the
sign of round-off), and then an explicit ξ must be 0.

**Train mode.** The reference calls model.train() before the loss. Here the two loss forwards run in the mode the
caller left the model in: the training loop sets train mode, while `methods.train.loop.evaluate` calls `objective` in
eval mode (under no_grad) on the test set, where switching to train mode would move BatchNorm statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .core.adversary import frozen_eval, project_linf
from .core.interface import HparamError, StepResult, require_non_negative, require_positive
from .core.recipes import CIFAR10_NORMALIZATION

THREAT_MODEL = "linf-empirical"
SOURCE = "official code (jinghuichen/BackwardSmoothing)"


@dataclass(frozen=True)
class Hparams:
    """Defaults: the official `train_trades_backward.py` (β = 6; its README's example command uses β = 10)."""

    epsilon: float = 0.031  # ℓ∞ radius of the training attack, pixel units
    step_size: float = 0.031  # α, for the init and for every TRADES step
    gamma: float = 1.0  # γ, output noise ξ ~ U[−γ, γ] in logit units; 0 = init at x
    beta: float = 6.0  # β, TRADES weight of the KL term
    steps: int = 1  # TRADES steps after the init (0 = train on the init point)

    def __post_init__(self):
        require_positive(self, "epsilon", "step_size")
        require_non_negative(self, "gamma", "beta", "steps")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool):
            raise HparamError("steps", f"must be an integer, got {self.steps!r}")


def kl_logits(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Σ over the batch of KL(S(target) ‖ S(logits)), gradients through both arguments (the reference's
    nn.KLDivLoss(sum) on (log_softmax(logits), softmax(target)))."""
    return F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(target_logits, dim=1), reduction="sum", log_target=True)


def output_noise(seed: torch.Tensor | int, shape, gamma: float, like: torch.Tensor) -> torch.Tensor:
    """ξ = γ·(2U − 1), U ~ U[0, 1)^shape from a CPU generator seeded with `seed`, on `like`'s device and dtype."""
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(tuple(shape), generator=g, dtype=like.dtype)
    return ((2 * u - 1) * gamma).to(like.device)


def resolve_output_noise(xi, z: torch.Tensor, gamma: float) -> torch.Tensor:
    """ξ of z's shape from what `draw` returned (a seed) or from an explicit ξ (checked: shape, |ξ| ≤ γ)."""
    if isinstance(xi, int) or (isinstance(xi, torch.Tensor) and xi.dim() == 0 and not xi.is_floating_point()):
        return output_noise(xi, z.shape, gamma, z)
    if not isinstance(xi, torch.Tensor) or not xi.is_floating_point() or xi.shape != z.shape:
        raise ValueError(
            f"ξ must be a seed (0-dim integer tensor) or a float tensor of the logits' shape "
            f"{tuple(z.shape)}, got {xi!r:.80}"
        )
    if (xi.abs() > gamma).any():
        raise ValueError(f"explicit ξ exceeds γ = {gamma} in magnitude (max |ξ| = {float(xi.abs().max()):.4g})")
    return xi.to(device=z.device, dtype=z.dtype)


def draw(x: torch.Tensor, hp: Hparams) -> torch.Tensor:
    """A seed for the output noise ξ (see the module docstring): a 0-dim int64 tensor from torch's global RNG."""
    return torch.randint(0, 2**62, (), dtype=torch.int64)


def _sign_step(model, x, x_cur, target_logits, step: float, eps: float) -> torch.Tensor:
    """proj(x_cur + step·sign(∇ KL(S(target) ‖ S(F(x′))) at x′ = x_cur)); step < 0 descends."""
    x_cur = x_cur.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(kl_logits(target_logits, model(x_cur)) / len(x), x_cur)
    with torch.no_grad():
        return project_linf(x_cur + step * grad.sign(), x, eps)


def backward_smoothing_init(model, x: torch.Tensor, xi, hp: Hparams, z: torch.Tensor | None = None) -> torch.Tensor:
    """x₁ = proj(x − α·sign(∇ₓ′ KL(S(z + ξ) ‖ S(F(x′))) at x′ = x)), z = F(x) in eval mode (computed unless given).
    ξ: a seed or an explicit (B, C) tensor (module docstring). γ = 0 returns x. Frozen eval; returns x₁ detached."""
    x = x.detach()
    if hp.gamma == 0:
        if isinstance(xi, torch.Tensor) and xi.is_floating_point() and xi.any():
            raise ValueError("γ = 0 but the explicit ξ is not zero")
        return x.clone()
    with frozen_eval(model), torch.enable_grad():
        if z is None:
            with torch.no_grad():
                z = model(x)
        xi = resolve_output_noise(xi, z, hp.gamma)
        return _sign_step(model, x, x, z + xi, -hp.step_size, hp.epsilon).detach()


def trades_step(model, x: torch.Tensor, x_cur: torch.Tensor, z: torch.Tensor, hp: Hparams) -> torch.Tensor:
    """One TRADES ascent step: proj(x_cur + α·sign(∇ KL(S(z) ‖ S(F(x′))) at x′ = x_cur)), KL summed / B (the scale
    does not matter to sign()). Frozen eval; returns the new point detached."""
    with frozen_eval(model), torch.enable_grad():
        return _sign_step(model, x.detach(), x_cur, z.detach(), hp.step_size, hp.epsilon).detach()


def adversarial_point(model, x: torch.Tensor, xi, hp: Hparams) -> torch.Tensor:
    """Steps 1–3: z = F(x) in eval mode, the backward-smoothing init, then `hp.steps` TRADES steps. Detached."""
    x = x.detach()
    with frozen_eval(model), torch.enable_grad():
        with torch.no_grad():
            z = model(x)
        x_adv = backward_smoothing_init(model, x, xi, hp, z=z)
        for _ in range(hp.steps):
            x_adv = trades_step(model, x, x_adv, z, hp)
    return x_adv


def trades_loss(model, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, beta: float):
    """CE(F(x), y) + β·KL(S(F(x)) ‖ S(F(x_adv))) / B, with two forwards (clean, then adversarial) in the model's
    current mode; S(F(x)) is not detached. Returns (loss, clean logits)."""
    logits = model(x)
    logits_adv = model(x_adv.detach())
    return F.cross_entropy(logits, y) + beta * kl_logits(logits, logits_adv) / len(x), logits


def objective(model, x: torch.Tensor, y: torch.Tensor, xi, hp: Hparams) -> StepResult:
    """The backward-smoothing TRADES loss at x with output noise ξ (a seed from `draw`, or the (B, C) tensor itself).
    `correct` counts clean predictions."""
    x_adv = adversarial_point(model, x, xi, hp)
    loss, logits = trades_loss(model, x, y, x_adv, hp.beta)
    return StepResult(loss, (logits.argmax(1) == y).sum(), len(x))


#: The paper's settings (METHODS.md §5). `train` uses the keys of this project's config `train:` block. The
#: reference steps its MultiStepLR every iteration at milestones 50% and 75% of epochs·len(loader); with 391 batches
#: of 128 per CIFAR epoch those are iterations 19,550 and 29,325, i.e. the first iterations of epochs 50 and 75
#: (counted from 0), so per-epoch milestones [50, 75] give the same schedule. ResNet-18 / WRN-34-10 are
#: methods/core/models.py's resnet18 / wrn34_10. "best" = highest PGD-20 (ε 0.031, step 0.0078) on the first 2,560
#: test images (20 batches of 128), evaluated every epoch; PGD-100 on all 10,000 with that checkpoint; AutoAttack
#: standard at exactly 8/255 on the first 10,000.
_TRAIN = dict(
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    weight_decay=5e-4,
    batch_size=128,
    epochs=100,
    schedule="multistep",
    milestones=[50, 75],
    gamma=0.1,
    augment=True,
)  # gamma here: the lr factor
_EVALUATION = dict(
    pgd20=dict(eps=0.031, step_size=0.0078, steps=20, loss="ce", random_start=False),
    best_checkpoint_images=2560,
    pgd100=dict(eps=0.031, step_size=0.0078, steps=100, loss="ce", random_start=False),
    autoattack=dict(version="standard", eps=8 / 255, images=10000),
)
_COMMON = dict(
    archs=("resnet18", "wrn34_10"),
    train=_TRAIN,
    augment="RandomCrop(32, padding 4) + horizontal flip",
    hparams=dict(epsilon=0.031, step_size=0.031, gamma=1.0, beta=6.0, steps=1),
    evaluation=_EVALUATION,
)
#: The PAPER setting whose hparams are Hparams' defaults.
DEFAULTS = "cifar10"
PAPER = {
    # WideResNet-34-10, AutoAttack (standard, ε = 8/255), public leaderboard entries of the paper's models (%).
    "cifar10": dict(
        _COMMON,
        normalization=CIFAR10_NORMALIZATION,
        published=dict(arch="wrn34_10", clean=85.32, autoattack=51.12),
    ),
    "cifar100": dict(
        _COMMON,
        normalization=dict(mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761)),
        published=dict(arch="wrn34_10", clean=62.15, autoattack=26.94),
    ),
}
