"""TRADES (Zhang et al. 2019), the multi-step baseline backward smoothing is measured against (METHODS.md §7.1, §7.2).

Per mini-batch, with logits F, S = softmax and KL(P‖Q) = Σ P (log P − log Q) (P the target):

1. eval mode, frozen parameters: x′₀ = x + δ₀, **not** clipped to [0, 1] before the first forward (both references),
   δ₀ = 0.001·N(0, I) (`init: gaussian_0.001`, the official `trades.py`) or U(−ε, ε) per pixel (`uniform_eps`, the
   backward-smoothing repository's `trades_fast.py`);
2. K steps x′ ← proj(x′ + α·sign(∇ₓ′ KL(S(F(x)) ‖ S(F(x′))))), proj = onto the ℓ∞ ε-ball around x, then into
   [0, 1]. The target S(F(x)) is recomputed in every step (`attack_target: per_step`, the official code: the same
   values in eval mode, one more forward per step) or computed once before the loop (`once`, trades_fast.py);
3. the BS repository's trades_fast.py computes the KL at the final x′ once more, only to log it
   (`logged_forward: true`): no effect on training, one eval forward of cost, kept so the timing is the reference's;
4. the model's current mode (train, in the loop): loss = CE(F(x), y) + β·KL(S(F(x)) ‖ S(F(x′))) / B ("batchmean"),
   the target S(F(x)) **not** detached. The official code makes a third forward F(x) for the KL target
   (`recompute_clean_target: true`: clean, adversarial, clean again, in that order); it gives the same loss and
   gradients as reusing the first clean forward (`false`, trades_fast.py) — only BatchNorm's running statistics
   see one more batch. Clean and adversarial batches are always separate forwards (never concatenated).

The official recipe is `Hparams()`'s defaults; the BS repository's K-step variant (`train_trades_fast.py
--num-steps 10 --alpha 0.007`) is `init: uniform_eps, attack_target: once, recompute_clean_target: false,
logged_forward: true`; its "Fast TRADES" (§7.4 row c) the same with K = 1, α = ε. Which of these produced the BS
paper's TRADES rows is unverified (METHODS.md §7.2): the configs say which they run.

`draw(x, hp)` returns δ₀ (x's shape, on x's device, from torch's global RNG, which the loop seeds per epoch), so
`objective(model, x, y, δ₀, hp)` is a pure function and a test can fix the start. The attack runs under
`frozen_eval`: nothing of it reaches the weights' gradients or BatchNorm statistics, and the caller's mode comes back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .core.adversary import frozen_eval, project_linf
from .core.interface import HparamError, StepResult, require_choice, require_non_negative, require_positive
from .core.recipes import BACKWARD_SMOOTHING_RECIPE, CIFAR10_NORMALIZATION

THREAT_MODEL = "linf-empirical"
SOURCE = (
    "official code (yaodongyu/TRADES trades.py; the backward-smoothing repository's trades_fast.py variant as "
    "options); which variant and init the BS paper's TRADES rows used is unverified"
)
INITS = ("gaussian_0.001", "uniform_eps")
ATTACK_TARGETS = ("per_step", "once")
#: The official init's scale: x′₀ = x + 0.001·N(0, I).
GAUSSIAN_INIT_STD = 0.001


@dataclass(frozen=True)
class Hparams:
    """Defaults: the official TRADES CIFAR-10 recipe (`train_trades_cifar10.py` + `trades.py`, β = 6 since e20f7b9)."""

    epsilon: float = 0.031  # ℓ∞ radius of the training attack, pixel units
    step_size: float = 0.007  # α
    steps: int = 10  # K
    beta: float = 6.0  # β, weight of the KL term
    init: str = "gaussian_0.001"  # gaussian_0.001 (official) | uniform_eps (trades_fast.py)
    attack_target: str = "per_step"  # per_step: F(x) recomputed in every attack step (official) | once (trades_fast)
    recompute_clean_target: bool = True  # a third train-mode forward F(x) for the KL target (official)
    logged_forward: bool = False  # trades_fast.py's extra eval forward at the final x′ (its KL is only logged)

    def __post_init__(self):
        require_positive(self, "epsilon", "step_size")
        require_non_negative(self, "beta", "steps")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool):
            raise HparamError("steps", f"must be an integer, got {self.steps!r}")
        require_choice(self, "init", INITS)
        require_choice(self, "attack_target", ATTACK_TARGETS)
        for name in ("recompute_clean_target", "logged_forward"):
            if not isinstance(getattr(self, name), bool):
                raise HparamError(name, f"must be true or false, got {getattr(self, name)!r}")


def kl_batchmean(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Σ over the batch and classes of KL(S(target) ‖ S(logits)), divided by B ("batchmean"), gradients through both
    arguments (the references' nn.KLDivLoss(size_average=False)(log S(logits), S(target)) / B)."""
    return F.kl_div(F.log_softmax(logits, dim=1), F.softmax(target_logits, dim=1), reduction="sum") / len(logits)


def draw(x: torch.Tensor, hp: Hparams) -> torch.Tensor:
    """δ₀: 0.001·N(0, I) (gaussian_0.001) or U(−ε, ε) per pixel (uniform_eps), x's shape, on x's device."""
    if hp.init == "gaussian_0.001":
        return torch.randn_like(x) * GAUSSIAN_INIT_STD
    return (2 * torch.rand_like(x) - 1) * hp.epsilon


def _kl_sign_step(model, x, x_cur, target_logits, hp: Hparams) -> torch.Tensor:
    """proj(x_cur + α·sign(∇ KL(S(target) ‖ S(F(x′))) at x′ = x_cur)) (the KL's scale does not matter to sign())."""
    x_cur = x_cur.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(kl_batchmean(target_logits, model(x_cur)), x_cur)
    with torch.no_grad():
        return project_linf(x_cur + hp.step_size * grad.sign(), x, hp.epsilon)


def adversarial_point(model, x: torch.Tensor, delta0: torch.Tensor, hp: Hparams) -> torch.Tensor:
    """Steps 1–3: x′ from x + δ₀ after K KL sign steps, in eval mode with frozen parameters; detached, in the ε-ball
    and in [0, 1] (with K = 0, x + δ₀ projected)."""
    if delta0.shape != x.shape:
        raise ValueError(f"δ₀ must have x's shape {tuple(x.shape)}, got {tuple(delta0.shape)}")
    x = x.detach()
    with frozen_eval(model), torch.enable_grad():
        z = None
        if hp.attack_target == "once":
            with torch.no_grad():
                z = model(x)
        x_adv, target = x + delta0.to(x.dtype), z  # not clipped before the first forward, as both references
        for _ in range(hp.steps):
            if hp.attack_target == "per_step":
                with torch.no_grad():
                    target = model(x)  # eval mode: the same values every step; the reference pays for it
            x_adv = _kl_sign_step(model, x, x_adv, target, hp)
        x_adv = project_linf(x_adv, x, hp.epsilon).detach()
        if hp.logged_forward:
            with torch.no_grad():
                logits_adv = model(x_adv)  # trades_fast.py logs the KL here; only the forward's cost matters
                if target is not None:
                    kl_batchmean(target, logits_adv)
    return x_adv


def trades_loss(model, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, hp: Hparams):
    """CE(F(x), y) + β·KL(S(F(x)) ‖ S(F(x′))) / B in the model's current mode, S(F(x)) not detached; forwards in the
    official order (clean, adversarial, then clean again for the target where recompute_clean_target).
    Returns (loss, clean logits)."""
    logits = model(x)
    logits_adv = model(x_adv.detach())
    target = model(x) if hp.recompute_clean_target else logits
    return F.cross_entropy(logits, y) + hp.beta * kl_batchmean(target, logits_adv), logits


def objective(model, x: torch.Tensor, y: torch.Tensor, delta0: torch.Tensor, hp: Hparams) -> StepResult:
    """The TRADES loss at x with the attack started at x + δ₀. `correct` counts clean predictions."""
    x_adv = adversarial_point(model, x, delta0, hp)
    loss, logits = trades_loss(model, x, y, x_adv, hp)
    return StepResult(loss, (logits.argmax(1) == y).sum(), len(x))


#: The paper settings (METHODS.md §7.1, §7.2, §7.4). `train` uses the keys of this project's config `train:` block.
_OFFICIAL_TRAIN = dict(
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    weight_decay=2e-4,
    batch_size=128,
    epochs=76,
    schedule="multistep",
    milestones=[74],  # lr 0.1 for (1-indexed) epochs 1–74, 0.01 for 75–76: the 90/100 drops never fire in 76
    gamma=0.1,
    augment=True,
)
_OFFICIAL = dict(epsilon=0.031, step_size=0.007, steps=10, beta=6.0, init="gaussian_0.001", attack_target="per_step",
                 recompute_clean_target=True, logged_forward=False)  # fmt: skip
#: The PAPER setting whose hparams are Hparams' defaults.
DEFAULTS = "cifar10-official"
PAPER = {
    # §7.1: WRN-34-10 on [0, 1] pixels (no normalisation), evaluated by TRADES's own PGD-20 (step 0.003, random start)
    # and AutoAttack, both at ε = 0.031; the released model_cifar_wrn.pt (README, RobustBench), fractions.
    "cifar10-official": dict(
        arch="wrn34_10",
        normalization=None,
        train=_OFFICIAL_TRAIN,
        hparams=_OFFICIAL,
        evaluation=dict(
            pgd20=dict(eps=0.031, step_size=0.003, steps=20, random_start=True),
            autoattack=dict(version="standard", eps=0.031),
        ),  # fmt: skip
        published=dict(clean=0.8492, pgd20=0.5661, autoattack=0.5308),
    ),
    # §7.2: the BS comparison row, TRADES's attack (K = 10, α = 0.007, β = 6) on the BS recipe; the init is a choice.
    "cifar10-bs-trades10": dict(
        archs=("resnet18", "wrn34_10"),
        normalization=CIFAR10_NORMALIZATION,
        train=BACKWARD_SMOOTHING_RECIPE,
        hparams=_OFFICIAL,
    ),
    # §7.4 row c: Fast TRADES, the BS repository's trades_fast.py at its defaults.
    "cifar10-bs-fast-trades": dict(
        archs=("resnet18", "wrn34_10"),
        normalization=CIFAR10_NORMALIZATION,
        train=BACKWARD_SMOOTHING_RECIPE,
        hparams=dict(
            epsilon=0.031,
            step_size=0.031,
            steps=1,
            beta=6.0,
            init="uniform_eps",
            attack_target="once",
            recompute_clean_target=False,
            logged_forward=True,
        ),  # fmt: skip
    ),
}
