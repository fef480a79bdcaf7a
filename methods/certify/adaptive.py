"""Adaptive certification: answer "is g certified at radius r?" for each configured r with as few samples as it can.

The tables ask one question per configured radius r: is p_A > Φ(r/σ)? CERTIFY answers all of them with a fixed
n = 100,000 draws, although most images are decided after a few thousand (p_A ≈ 1 far above every threshold, or
p_A clearly below the next one). This certifier selects the top class A from n0 draws as CERTIFY does, then draws
in rounds and stops as soon as every radius is decided [beyond the references; anchors: Voráček 2024, "Treatment
of statistical estimation problems in randomized smoothing" (confidence sequences for this decision task), and
Chen et al. 2022 (input-specific sampling)].

Validity. The estimation draws are taken in J pre-planned looks n_1 < n_2 < … < n_J = n (geometric: first_look,
first_look·growth, …, then n). At look j the one-sided Clopper–Pearson lower bound L_j on p_A is taken at level
α/J. By the union bound, P(∃ j: L_j > p_A) ≤ α, so (L_j) is an anytime-valid lower confidence sequence over the
looks: with probability ≥ 1 − α every bound ever computed is below p_A, whatever rule decides when to stop. A
radius r is certified once some L_j ≥ Φ(r/σ), exactly CERTIFY's condition σ·Φ⁻¹(p̲_A) ≥ r; it abstains when r = 0
is not certified. This Bonferroni sequence is simple and provably valid but conservative (the last look pays α/J
instead of α; Voráček's betting sequences are tighter) — the price is a slightly smaller largest certifiable
radius, σ·Φ⁻¹((α/J)^(1/n)) instead of σ·Φ⁻¹(α^(1/n)).

Stopping. A radius is decided when certified; when it cannot be reached within n even if every remaining draw came
at the rate of the upper confidence bound (level α) on p_A (futility); or up front, when even n unanimous draws
could not certify it. Stopping decisions never affect validity, only how many certificates CERTIFY would have
given that this certifier gives up on. The radius written is the largest configured radius certified.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import norm

from .smoothing import ABSTAIN, Decision, lower_confidence_bound, selection_counts, top_two, upper_confidence_bound


def look_schedule(n: int, first_look: int, growth: float) -> list[int]:
    """Cumulative estimation sample sizes at which the test looks: first_look·growth^j below n, then n."""
    if first_look < 1 or growth <= 1:
        raise ValueError(f"need first_look >= 1 and growth > 1, got {first_look}, {growth}")
    looks, size = [], float(first_look)
    while size < n:
        looks.append(int(round(size)))
        size *= growth
    looks.append(n)
    return sorted(set(looks))


@dataclass
class SequentialTest:
    """The decision state of one image: which configured radii are certified, refuted or still open."""

    sigma: float
    radii: tuple[float, ...]  # increasing, starting at 0
    n: int
    alpha: float
    looks: tuple[int, ...]

    def __post_init__(self):
        self.level = self.alpha / len(self.looks)  # each look's share of α (union bound over the J looks)
        self.thresholds = [float(norm.cdf(r / self.sigma)) for r in self.radii]
        best_possible = self.level ** (1.0 / self.n)  # all n draws for A
        self.certified = -1  # index of the largest certified radius (-1: none)
        # Radii no outcome could certify within n are refuted before any draw.
        self.reachable = sum(1 for t in self.thresholds if t <= best_possible)
        self.lower = 0.0
        self.evidence = (0, 0)  # (successes, trials) of the look whose bound certified the largest radius so far

    def update(self, successes: int, trials: int) -> None:
        """Fold in a look: `successes` draws for A out of `trials` estimation draws so far."""
        self.lower = max(self.lower, lower_confidence_bound(successes, trials, self.level))
        certified = self.certified
        while self.certified + 1 < self.reachable and self.thresholds[self.certified + 1] <= self.lower:
            self.certified += 1
        if self.certified > certified:
            self.evidence = (successes, trials)
        if trials >= self.n:
            self.reachable = self.certified + 1
            return
        # Futility: even at the upper confidence rate for the draws still to come, the last look's bound stays
        # below the next threshold, so every radius from it on is refuted.
        optimistic_rate = upper_confidence_bound(successes, trials, self.alpha)
        final = successes + optimistic_rate * (self.n - trials)
        best_final = lower_confidence_bound(int(math.floor(final)), self.n, self.level)
        while self.reachable > self.certified + 1 and self.thresholds[self.reachable - 1] > best_final:
            self.reachable -= 1

    @property
    def decided(self) -> bool:
        return self.certified + 1 >= self.reachable

    def answer(self, top: int) -> tuple[int, float]:
        if self.certified < 0:
            return ABSTAIN, 0.0
        return top, self.radii[self.certified]


def decision_radii(radii: Sequence[float]) -> tuple[float, ...]:
    """The configured radii, sorted and deduplicated, with r = 0 (is g's prediction certified at all?) added."""
    if any(r < 0 for r in radii):
        raise ValueError(f"radii must be >= 0, got {list(radii)}")
    return tuple(sorted({0.0, *(float(r) for r in radii)}))


def adaptive_plan(
    n0: int, n: int, sigma: float, alpha: float, radii: Sequence[float], first_look: int = 100, growth: float = 2.0
):
    """The adaptive certifier as a sampling plan (methods/certify/sampling.py): (class, largest certified radius)."""
    looks = look_schedule(n, first_look, growth)
    test = SequentialTest(sigma, decision_radii(radii), n, alpha, tuple(looks))
    selection = yield n0
    top = top_two([int(c) for c in selection])[0]
    successes = trials = 0
    for look in looks:
        if test.decided:
            break
        counts = yield look - trials
        successes += int(counts[top])
        trials = look
        test.update(successes, trials)
    # the counts that decided the answer: the look that certified its radius (the last look when none was)
    successes, trials = test.evidence if test.certified >= 0 else (successes, trials)
    return Decision(*test.answer(top), {**selection_counts(n0, selection, top), "n": trials, "nA": successes})


def max_radius(
    sigma: float, n: int, alpha: float, radii: Sequence[float], first_look: int = 100, growth: float = 2.0
) -> float:
    """The largest radius the adaptive certifier can return: the largest configured radius that n unanimous draws
    certify at level α/J."""
    looks = look_schedule(n, first_look, growth)
    test = SequentialTest(sigma, decision_radii(radii), n, alpha, tuple(looks))
    return test.radii[test.reachable - 1] if test.reachable else 0.0
