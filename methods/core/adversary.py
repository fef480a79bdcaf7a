"""Attack machinery shared by training and evaluation: the frozen-eval context, ℓ∞ projection and ℓ∞ PGD.

Conventions (METHODS.md §5, §6): the model maps [0, 1] pixels to logits (normalisation is its first layer), so ε,
step sizes and radii are pixel-space ℓ∞ distances. Every attack runs with the model in eval mode and its parameters
frozen (`frozen_eval`, restored afterwards): nothing reaches the weights' .grad, BatchNorm running statistics do
not move, and the caller's train/eval mode and requires_grad flags come back unchanged.

Training uses these (backward smoothing's projection, best-epoch selection by PGD-20, SmoothAdv's frozen attack);
evaluation builds its empirical radius and AutoAttack on them (methods/certify/attacks.py). An attack can only show
that a point is NOT robust: its accuracy is an upper bound on robust accuracy, never a certificate.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .collectives import no_sync

LOSSES = ("ce", "cw")


@contextlib.contextmanager
def frozen_eval(model: torch.nn.Module):
    """Eval mode with every parameter's requires_grad off, restored afterwards: the attack touches only its δ."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with no_sync(model):  # DDP: no gradient reduction for the attack's input-only backward passes
            yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


@torch.no_grad()
def predict(model, x: torch.Tensor) -> torch.Tensor:
    """Clean eval-mode predictions (mode restored)."""
    with frozen_eval(model):
        return model(x).argmax(1)


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example CW margin max_{j≠y} z_j − z_y (> 0 iff misclassified), the true class masked with −∞.

    The backward-smoothing repository's `cw_loss` instead zeroes the true class's logit before the max (so when every
    other logit is negative the "runner-up" is the true class at 0) and clamps the margin at 0; we mask and do not
    clamp, the usual CW-margin PGD (METHODS.md §5).
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.amax(dim=1) - true


def _attack_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Summed over the batch, so each example's gradient is its own (the sign step makes the scale irrelevant)."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="sum")
    return cw_margin(logits, y).sum()


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Onto the ℓ∞ ball of radius eps around x, then into the pixel box [0, 1] (the reference's order)."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)


def _start_noise(draw, shape, dtype, generator) -> torch.Tensor:
    """Random-start noise on the CPU: from one generator for the batch, or from one generator per example (a list),
    so that an example's start does not depend on which batch or shard it is attacked in."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([draw(tuple(shape[1:]), generator=g, dtype=dtype) for g in generator])
    return draw(tuple(shape), generator=generator, dtype=dtype)


def _pgd_run(model, x, y, eps, step_size, steps, loss, random_start, generator):
    if random_start == "gaussian":  # the ℓ∞-dist nets' evaluation: N(0, (ε/4)²) clipped to ±ε/2
        noise = _start_noise(torch.randn, x.shape, x.dtype, generator).to(x.device)
        x_adv = project_linf(x + (noise * eps / 4).clamp(-eps / 2, eps / 2), x, eps)
    elif random_start:
        noise = _start_noise(torch.rand, x.shape, x.dtype, generator).to(x.device)
        x_adv = project_linf(x + (2 * noise - 1) * eps, x, eps)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(_attack_loss(model(x_adv), y, loss), x_adv)
        with torch.no_grad():
            x_adv = project_linf(x_adv + step_size * grad.sign(), x, eps)
    return x_adv.detach()


def _check_eps(eps: float, step_size: float, steps: int) -> None:
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps!r}")


def pgd_linf(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    loss: str = "ce",
    random_start: bool | str = False,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ℓ∞ PGD: `steps` ascent steps x ← proj(x + step_size·sign(∇ loss)), each projected onto the ε-ball around x
    and the [0, 1] box; loss "ce" (cross-entropy) or "cw" (the margin of `cw_margin`). No random start by default
    (the backward-smoothing evaluation); random_start="gaussian" starts at x + clip(N(0, (ε/4)²), ±ε/2) (the
    ℓ∞-dist nets' evaluation); any other true random_start at x + U[−ε, ε] (projected), both drawn from
    `generator` (a CPU generator; the global RNG if None; or a list of one CPU generator per example, which makes
    each example's start independent of its batch). The returned point is the last iterate, as in the
    reference. With restarts > 1 (random_start required) each example keeps the first restart's point that is
    misclassified, else the last restart's; restarts only re-attack the examples not yet fooled.

    Eval mode, frozen parameters (restored). Returns x_adv, detached, same shape/dtype/device as x.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    _check_eps(eps, step_size, steps)
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts!r}")
    if restarts > 1 and not random_start:
        raise ValueError("restarts > 1 repeat the same deterministic attack without random_start")
    x, y = x.detach(), y.detach()
    with frozen_eval(model), torch.enable_grad():
        best = _pgd_run(model, x, y, eps, step_size, steps, loss, random_start, generator)
        if restarts == 1:
            return best
        with torch.no_grad():
            todo = (model(best).argmax(1) == y).nonzero().squeeze(1)
        for _ in range(restarts - 1):
            if len(todo) == 0:
                break
            sub = [generator[i] for i in todo.tolist()] if isinstance(generator, (list, tuple)) else generator
            trial = _pgd_run(model, x[todo], y[todo], eps, step_size, steps, loss, random_start, sub)
            with torch.no_grad():
                fooled = model(trial).argmax(1) != y[todo]
            best[todo] = trial  # the last restart's point where none succeeds; successes are kept below
            todo = todo[~fooled]
        return best


@dataclass(frozen=True)
class PGD:
    """A named PGD setting; `attack(model, x, y)` runs it at its ε, `attack(model, x, y, eps)` at another ε with the
    step kept at the same fraction of ε (PGD-20 at 8/255, step 2/255 → step ε/4 at every ε of a radius grid)."""

    eps: float
    step_size: float
    steps: int
    loss: str = "ce"
    random_start: bool | str = False  # True / "uniform": U[−ε, ε]; "gaussian": clip(N(0, (ε/4)²), ±ε/2)
    restarts: int = 1

    def at(self, eps: float) -> PGD:
        """The same attack at another ε, its step the same fraction of ε (itself, exactly, at its own ε)."""
        if eps == self.eps:
            return self
        return replace(self, eps=eps, step_size=self.step_size * eps / self.eps)

    def __call__(self, model, x, y, eps: float | None = None, generator: torch.Generator | None = None):
        s = self if eps is None else self.at(eps)
        return pgd_linf(model, x, y, s.eps, s.step_size, s.steps, s.loss, s.random_start, s.restarts, generator)
