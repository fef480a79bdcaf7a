"""Gaussian noise for randomized smoothing, drawn once here for every method and certifier."""
from __future__ import annotations

import torch


def gaussian(shape, sigma: float, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """σ·ε with ε ~ N(0, I) of `shape`, on `like`'s device and dtype (in pixel space)."""
    return torch.randn(shape, device=like.device, dtype=like.dtype, generator=generator).mul_(sigma)


def gaussian_copies(x: torch.Tensor, k: int, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """k independent noise draws per example: shape (B, k, *x.shape[1:]), already scaled by σ."""
    return gaussian((x.shape[0], k, *x.shape[1:]), sigma, x, generator)
