"""Gaussian noise for randomized smoothing, and the soft smoothed classifier estimated from k noisy copies.

Drawn and evaluated here once for every method (Cohen, SmoothAdv, MACER, Feng) and certifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian(shape, sigma: float, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """σ·ε with ε ~ N(0, I) of `shape`, on `like`'s device and dtype (in pixel space)."""
    return torch.randn(shape, device=like.device, dtype=like.dtype, generator=generator).mul_(sigma)


def gaussian_copies(x: torch.Tensor, k: int, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """k independent noise draws per example: shape (B, k, *x.shape[1:]), already scaled by σ."""
    return gaussian((x.shape[0], k, *x.shape[1:]), sigma, x, generator)


def noisy_logits(model: torch.nn.Module, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """f(x + δⱼ) for every example and each of its k draws, in one forward pass of B·k images: shape (B, k, C)."""
    batch, k = noise.shape[:2]
    logits = model((x.unsqueeze(1) + noise).flatten(0, 1))
    return logits.view(batch, k, -1)


def soft_smoothed(logits: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Monte-Carlo soft smoothed classifier G(x) = mean over the k draws of softmax(β·f(x + δ)): (B, k, C) → (B, C)."""
    return torch.softmax(beta * logits, dim=-1).mean(dim=1)


def noisy_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of every noisy copy against its example's label: (B, k, C) logits → scalar."""
    return F.cross_entropy(logits.flatten(0, 1), y.repeat_interleave(logits.shape[1]))
