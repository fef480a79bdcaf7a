"""The adaptive certifier: its confidence sequence keeps the false-certificate rate ≤ α in simulation (a peeking
test that skips the correction does not), it uses fewer samples than CERTIFY, and it answers as CERTIFY does away
from the thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import norm

from methods.certify import adaptive
from methods.certify.adaptive import SequentialTest, adaptive_plan, decision_radii, look_schedule
from methods.certify.sampling import run_plan
from methods.certify.smoothing import certify_plan


def binomial_sampler(p_a: float, rng: np.random.Generator):
    """Votes of a two-class base classifier with P[f = 0] = p_a, as a sampling plan's counts."""

    def sample(num: int) -> torch.Tensor:
        a = int(rng.binomial(num, p_a))
        return torch.tensor([a, num - a])

    return sample


def test_look_schedule_is_geometric_and_ends_at_n():
    assert look_schedule(100_000, 100, 2.0) == [100, 200, 400, 800, 1600, 3200, 6400, 12_800, 25_600, 51_200, 100_000]
    assert look_schedule(1000, 1000, 2.0) == [1000]
    assert look_schedule(350, 100, 1.5) == [100, 150, 225, 338, 350]
    with pytest.raises(ValueError):
        look_schedule(1000, 100, 1.0)


def test_decision_radii_add_zero_and_sort():
    assert decision_radii([0.5, 0.25, 0.5]) == (0.0, 0.25, 0.5)
    with pytest.raises(ValueError):
        decision_radii([-0.1])


def _false_certificate_rate(p_a, sigma, radii, n, alpha, trials, test_class=SequentialTest):
    """Share of runs certifying a radius r with Φ(r/σ) > p_a (g is then *not* robust at r): a false certificate."""
    rng = np.random.default_rng(0)
    original = adaptive.SequentialTest
    adaptive.SequentialTest = test_class
    try:
        false, samples = 0, []
        for _ in range(trials):
            (prediction, radius, _), used = run_plan(
                adaptive_plan(100, n, sigma, alpha, radii), binomial_sampler(p_a, rng)
            )
            samples.append(used)
            false += prediction == 0 and norm.cdf(radius / sigma) > p_a
        return false / trials, float(np.mean(samples))
    finally:
        adaptive.SequentialTest = original


class PeekingTest(SequentialTest):
    """The invalid shortcut: a Clopper–Pearson bound at the full α at every look (no correction for peeking)."""

    def __post_init__(self):
        super().__post_init__()
        self.level = self.alpha


def test_false_certificate_rate_stays_below_alpha_while_peeking_without_correction_does_not():
    """p_A just below the threshold of r = 0.25 (Φ(1) = 0.8413): every certificate at r ≥ 0.25 is false. At α = 0.1
    the corrected sequence stays ≤ α; taking CP at α at each of the looks exceeds it — the simulation can fail."""
    sigma, radii, n, alpha, trials = 0.25, [0.0, 0.25, 0.5], 20_000, 0.1, 600
    p_a = 0.8405
    rate, mean_samples = _false_certificate_rate(p_a, sigma, radii, n, alpha, trials)
    peeking, _ = _false_certificate_rate(p_a, sigma, radii, n, alpha, trials, PeekingTest)
    print(
        f"false-certificate rate at alpha {alpha}: adaptive {rate:.3f}, uncorrected peeking {peeking:.3f}; "
        f"mean samples {mean_samples:.0f} of {100 + n}"
    )
    assert rate <= alpha
    assert peeking > alpha


@pytest.mark.parametrize("p_a", [0.6, 0.9, 0.99, 0.9999, 1.0])
def test_uses_far_fewer_samples_than_certify_and_agrees_with_it_away_from_thresholds(p_a):
    """At n = 100,000 and the report's radii: the same certified radius as CERTIFY (in every run) for p_A values
    whose certifiable radius is not near a configured radius, with a fraction of CERTIFY's 100,100 samples."""
    sigma, radii, n, alpha = 0.25, [0.0, 0.25, 0.5, 0.75, 1.0], 100_000, 0.001
    rng = np.random.default_rng(1)
    used_all = []
    for _ in range(20):
        (prediction, radius, _), used = run_plan(adaptive_plan(100, n, sigma, alpha, radii), binomial_sampler(p_a, rng))
        (cohen_prediction, cohen_radius, _), _ = run_plan(
            certify_plan(100, n, sigma, alpha), binomial_sampler(p_a, rng)
        )
        expected = max([r for r in radii if cohen_prediction == 0 and cohen_radius >= r], default=None)
        assert (prediction, radius) == ((0, expected) if expected is not None else (-1, 0.0))
        used_all.append(used)
    assert np.mean(used_all) <= (100 + n) / 5


def test_unreachable_radii_are_refused_up_front():
    """With n = 1000 unanimous draws no radius beyond σ·Φ⁻¹((α/J)^(1/n)) can be certified: it never samples for it."""
    sigma, n, alpha = 0.25, 1000, 0.001
    looks = look_schedule(n, 100, 2.0)
    reachable_limit = sigma * norm.ppf((alpha / len(looks)) ** (1 / n))
    test = SequentialTest(sigma, decision_radii([0.25, 0.5, 0.75]), n, alpha, tuple(looks))
    assert [r for r in test.radii[: test.reachable]] == [r for r in test.radii if r <= reachable_limit]
    assert adaptive.max_radius(sigma, n, alpha, [0.25, 0.5, 0.75]) == max(r for r in test.radii if r <= reachable_limit)
    # a constant classifier: all draws agree, so it stops at the first look whose bound passes the last reachable r
    (prediction, radius, counts), used = run_plan(
        adaptive_plan(10, n, sigma, alpha, [0.25, 0.5, 0.75]), lambda num: torch.tensor([num, 0])
    )
    assert prediction == 0 and radius == test.radii[test.reachable - 1]
    assert used < 10 + n and counts["n"] == counts["nA"] <= used - 10 and (counts["n0"], counts["nA0"]) == (10, 10)


def test_abstains_when_no_radius_is_certified():
    rng = np.random.default_rng(2)
    (prediction, radius, _), used = run_plan(
        adaptive_plan(100, 10_000, 0.25, 0.001, [0.25]), binomial_sampler(0.5, rng)
    )
    assert (prediction, radius) == (-1, 0.0)


def test_certify_run_writes_samples_and_the_decided_radii(tmp_path):
    from conftest import tiny_config

    from methods import config as mc
    from methods.certify.step import certify_run
    from methods.core.tsv import read_tsv
    from methods.train.loop import train

    config = tiny_config(epochs=8, lr=0.1, step_size=6, batch_size=64)
    spec = mc.resolve_run(config, "cohen-0.25", seed=0)
    assert spec["certify"]["adaptive"]["radii"] == config["report"]["radii"]  # by default the tables' radii
    spec["certify"]["adaptive"]["radii"] = [0.25, 0.5, 0.75, 1.0]
    model = train(spec, tmp_path / "run", device="cpu", progress=False)
    cfg = {**spec["certify"], "n": 5000, "count": 6}
    out = certify_run(
        model, {**spec, "certify": cfg}, tmp_path / "adaptive.tsv", certifier="adaptive", device="cpu", progress=False
    )
    frame = read_tsv(out)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["radii"] == [0.0, 0.25, 0.5, 0.75, 1.0] and meta["looks"][-1] == 5000
    assert set(frame["radius"]) <= set(meta["radii"])
    assert ((frame["samples"] > cfg["n0"]) & (frame["samples"] <= cfg["n0"] + cfg["n"])).all()
    assert meta["max_radius"] == adaptive.max_radius(0.25, 5000, 0.001, meta["radii"])
