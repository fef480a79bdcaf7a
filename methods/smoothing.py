"""Randomized smoothing: Cohen et al.'s PREDICT and CERTIFY (../shared/METHODS.md §0).

g(x) = argmax_c P[f(x + δ) = c], δ ~ N(0, σ²I) in pixel space. CERTIFY picks the top class from n0 selection draws,
counts it in n *fresh* draws, lower-bounds its probability with a one-sided Clopper–Pearson bound at level α and
certifies the ℓ2 radius σ·Φ⁻¹(p̲A), or abstains when p̲A < ½. With probability ≥ 1 − α over the draws the returned
class is g's prediction and g is constant within the radius.
"""
from __future__ import annotations

import torch
from scipy.stats import binomtest, norm
from statsmodels.stats.proportion import proportion_confint


def lower_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 − α) Clopper–Pearson lower bound on a binomial proportion (0 when there are no successes)."""
    if successes == 0:
        return 0.0
    return float(proportion_confint(successes, trials, alpha=2 * alpha, method="beta")[0])


def max_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return: all n draws agree, p̲A = α^(1/n). The cliff in the curves."""
    return sigma * float(norm.ppf(alpha ** (1.0 / n)))


class Smooth:
    """The smoothed classifier g around `base_classifier` (a batch of [0, 1] images → logits)."""

    ABSTAIN = -1

    def __init__(self, base_classifier: torch.nn.Module, num_classes: int, sigma: float):
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma = sigma

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
                generator: torch.Generator | None = None) -> tuple[int, float]:
        """(class, certified ℓ2 radius) of g at x, or (ABSTAIN, 0.0). x: one example (C, H, W) on the model's device."""
        counts_selection = self.sample_counts(x, n0, batch_size, generator)
        top = int(counts_selection.argmax())  # ties → lowest index
        counts_estimation = self.sample_counts(x, n, batch_size, generator)
        p_lower = lower_confidence_bound(int(counts_estimation[top]), n, alpha)
        if p_lower < 0.5:
            return Smooth.ABSTAIN, 0.0
        return top, self.sigma * float(norm.ppf(p_lower))

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int,
                generator: torch.Generator | None = None) -> int:
        """g(x), or ABSTAIN when a two-sided binomial test cannot tell the top two classes apart at level α."""
        counts = self.sample_counts(x, n, batch_size, generator)
        order = sorted(range(self.num_classes), key=lambda c: (-int(counts[c]), c))
        n1, n2 = int(counts[order[0]]), int(counts[order[1]])
        if binomtest(n1, n1 + n2, 0.5).pvalue > alpha:
            return Smooth.ABSTAIN
        return order[0]

    def sample_counts(self, x: torch.Tensor, num: int, batch_size: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """How often f predicts each class on `num` noisy copies of x, drawn in chunks of `batch_size`.

        Counts stay on the device until the end (one host sync per call); the last chunk holds the remainder.
        """
        self.base_classifier.eval()
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=x.device)
        with torch.inference_mode():
            remaining = num
            while remaining > 0:
                size = min(batch_size, remaining)
                batch = x.unsqueeze(0).expand(size, *x.shape)
                noise = torch.randn(batch.shape, device=x.device, dtype=x.dtype, generator=generator)
                predictions = self.base_classifier(batch + noise * self.sigma).argmax(1)
                counts += torch.bincount(predictions, minlength=self.num_classes)
                remaining -= size
        return counts.cpu()
