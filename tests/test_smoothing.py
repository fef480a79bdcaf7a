"""Cohen's CERTIFY / PREDICT against closed forms: constant classifiers, linear classifiers, remainder chunks."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import beta, norm

from methods.certify.smoothing import Smooth, lower_confidence_bound, max_radius


class Constant(torch.nn.Module):
    """Always predicts `cls`; records the batch sizes it was called with."""

    def __init__(self, cls: int, num_classes: int = 10):
        super().__init__()
        self.cls, self.num_classes, self.batches = cls, num_classes, []

    def forward(self, x):
        self.batches.append(len(x))
        logits = torch.zeros(len(x), self.num_classes)
        logits[:, self.cls] = 1.0
        return logits


class HalfSpace(torch.nn.Module):
    """Class 1 iff the first pixel exceeds `threshold`: g's exact radius at x is |x0 - threshold| (w has norm 1)."""

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        self.threshold = threshold

    def forward(self, x):
        z = x.flatten(1)[:, 0] - self.threshold
        return torch.stack([-z, z], dim=1)


@pytest.mark.parametrize("sigma,n,alpha", [(0.25, 1000, 0.001), (0.5, 100_000, 0.001), (1.0, 500, 0.01)])
def test_constant_classifier_radius_is_closed_form(sigma, n, alpha):
    """All n draws agree, so p̲A = α^(1/n) and the radius is exactly σ·Φ⁻¹(α^(1/n))."""
    smooth = Smooth(Constant(3), 10, sigma)
    prediction, radius = smooth.certify(torch.rand(1, 4, 4), n0=10, n=n, alpha=alpha, batch_size=4096)
    assert prediction == 3
    assert radius == pytest.approx(sigma * norm.ppf(alpha ** (1 / n)), rel=1e-9)
    assert radius == pytest.approx(max_radius(sigma, n, alpha), rel=1e-12)


def test_max_radius_matches_methods_md():
    """METHODS.md §0: n = 100,000, α = 0.001 gives 3.8115σ (the cliffs at 0.457 / 0.953 / 1.906 / 3.811)."""
    assert max_radius(1.0, 100_000, 0.001) == pytest.approx(3.8115, abs=1e-4)
    for sigma, cliff in [(0.12, 0.457), (0.25, 0.953), (0.5, 1.906), (1.0, 3.811)]:
        assert max_radius(sigma, 100_000, 0.001) == pytest.approx(cliff, abs=6e-4)


@pytest.mark.parametrize(
    "successes,trials,alpha",
    [(0, 100, 0.001), (1, 100, 0.001), (990, 1000, 0.05), (100_000, 100_000, 0.001), (51_234, 100_000, 0.001)],
)
def test_clopper_pearson_lower_bound_equals_beta_quantile(successes, trials, alpha):
    expected = 0.0 if successes == 0 else beta.ppf(alpha, successes, trials - successes + 1)
    assert lower_confidence_bound(successes, trials, alpha) == pytest.approx(expected, rel=1e-10, abs=1e-15)


def test_noise_is_drawn_in_chunks_with_a_remainder():
    model = Constant(0)
    counts = Smooth(model, 10, 0.5).sample_counts(torch.rand(1, 2, 2), num=1050, batch_size=400)
    assert model.batches == [400, 400, 250]
    assert int(counts.sum()) == 1050 and int(counts[0]) == 1050


def test_abstains_on_the_decision_boundary():
    """At x0 = threshold the two classes are equally likely under noise: CERTIFY and PREDICT must abstain."""
    smooth = Smooth(HalfSpace(0.5), 2, 0.25)
    x = torch.full((1, 3, 3), 0.5)
    gen = torch.Generator().manual_seed(0)
    assert smooth.certify(x, n0=100, n=20_000, alpha=0.001, batch_size=5000, generator=gen) == (Smooth.ABSTAIN, 0.0)
    assert smooth.predict(x, n=20_000, alpha=0.001, batch_size=5000, generator=gen) == Smooth.ABSTAIN


@pytest.mark.parametrize("distance", [0.05, 0.2, 0.4])
def test_linear_classifier_certificate_is_sound_and_tight(distance):
    """For a half-space, pA = Φ(d/σ) and g's exact robust radius is d: the certificate must be ≤ d (soundness,
    here with the attack being the exact projection onto the boundary) and close to it at n = 100,000."""
    sigma, n, alpha = 0.25, 100_000, 0.001
    x = torch.full((1, 3, 3), 0.5)
    x[0, 0, 0] += distance
    smooth = Smooth(HalfSpace(0.5), 2, sigma)
    prediction, radius = smooth.certify(
        x, n0=100, n=n, alpha=alpha, batch_size=25_000, generator=torch.Generator().manual_seed(1)
    )
    assert prediction == 1
    assert radius <= distance
    # p̂A is within a few standard errors of Φ(d/σ); the bound costs ≈ 3.1 standard errors at α = 0.001.
    p = norm.cdf(distance / sigma)
    p_low = p - 5 * math.sqrt(p * (1 - p) / n)
    assert radius >= sigma * norm.ppf(p_low)
    # The optimal attack (projection onto the boundary, then a step past it) flips g: the radius is tight at d.
    x_adv = x.clone()
    x_adv[0, 0, 0] = 0.5 - 0.1
    assert torch.linalg.vector_norm(x_adv - x) == pytest.approx(distance + 0.1)
    assert (
        smooth.predict(x_adv, n=20_000, alpha=0.001, batch_size=20_000, generator=torch.Generator().manual_seed(2)) == 0
    )


def test_predict_returns_top_class_when_clear():
    smooth = Smooth(HalfSpace(0.5), 2, 0.1)
    x = torch.full((1, 2, 2), 0.9)
    assert smooth.predict(x, n=1000, alpha=0.001, batch_size=1000) == 1


def test_certify_puts_the_base_classifier_in_eval_mode():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).train()
    Smooth(model, 3, 0.25).certify(torch.rand(1, 2, 2), n0=5, n=50, alpha=0.001, batch_size=10)
    assert not model.training


def test_rejects_non_positive_sigma():
    with pytest.raises(ValueError, match="sigma"):
        Smooth(Constant(0), 10, 0.0)
