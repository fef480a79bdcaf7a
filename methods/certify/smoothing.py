"""Randomized smoothing: Cohen et al.'s PREDICT and CERTIFY (../shared/METHODS.md §0), Feng et al.'s T-CERTIFY (§4).

g(x) = argmax_c P[f(x + δ) = c], δ ~ N(0, σ²I) in pixel space. CERTIFY picks the top class from n0 selection draws,
counts it in n *fresh* draws, lower-bounds its probability with a one-sided Clopper–Pearson bound at level α and
certifies the ℓ2 radius σ·Φ⁻¹(p̲A), or abstains when p̲A < ½. With probability ≥ 1 − α over the draws the returned
class is g's prediction and g is constant within the radius.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from scipy.stats import binomtest, norm
from statsmodels.stats.proportion import proportion_confint

from .sampling import plain_counts, run_plan


def lower_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 − α) Clopper–Pearson lower bound on a binomial proportion (0 when there are no successes)."""
    if successes == 0:
        return 0.0
    return float(proportion_confint(successes, trials, alpha=2 * alpha, method="beta")[0])


def upper_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 − α) Clopper–Pearson upper bound on a binomial proportion (1 when every trial succeeded)."""
    if successes == trials:
        return 1.0
    return float(proportion_confint(successes, trials, alpha=2 * alpha, method="beta")[1])


def max_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return: all n draws agree, p̲A = α^(1/n). The cliff in the curves."""
    return sigma * float(norm.ppf(alpha ** (1.0 / n)))


Split = tuple[float, float, float]
T_CERTIFY_DEFAULT_SPLIT: Split = (1 / 3, 1 / 3, 1 / 3)
ABSTAIN = -1  # == Smooth.ABSTAIN


def two_sided_radius(p_lower: float, p_upper: float, sigma: float) -> float:
    """σ/2·(Φ⁻¹(p̲A) − Φ⁻¹(p̄B)): g is constant within this ℓ2 radius when p̲A ≥ p̄B (METHODS.md §0).

    With p̄B = 1 − p̲A it is Cohen's σ·Φ⁻¹(p̲A).
    """
    return 0.5 * sigma * (float(norm.ppf(p_lower)) - float(norm.ppf(p_upper)))


def top_two(counts: Sequence[int]) -> tuple[int, int]:
    """Indices of the largest and second-largest counts; ties → lowest index (as Cohen's argmax)."""
    order = sorted(range(len(counts)), key=lambda c: (-int(counts[c]), c))
    return order[0], order[1]


def _validate_split(split: Sequence[float], num_classes: int, others: str) -> Split:
    if others not in ("pooled", "complement"):
        raise ValueError(f"others must be 'pooled' or 'complement', got {others!r}")
    parts = tuple(float(v) for v in split)
    if len(parts) != 3:
        raise ValueError(f"split must have three parts (alpha_A, alpha_B, alpha_rest), got {split!r}")
    if any(not math.isfinite(v) or v < 0 for v in parts):
        raise ValueError(f"split parts must be finite and non-negative, got {split!r}")
    if abs(sum(parts) - 1.0) > 1e-9:
        raise ValueError(f"split parts must sum to 1 (they share alpha under a union bound), got sum {sum(parts)!r}")
    if parts[0] <= 0:
        raise ValueError(f"split[0] (the share of alpha for the lower bound on A) must be > 0, got {split!r}")
    if others == "pooled":
        if parts[1] <= 0:
            raise ValueError(f"split[1] (the share of alpha for the upper bound on B) must be > 0, got {split!r}")
        if parts[2] <= 0 and num_classes > 2:
            raise ValueError(
                f"split[2] (the share of alpha for the upper bound on the pooled rest) must be > 0 "
                f"with {num_classes} classes; it may be 0 only with exactly 2 classes, got {split!r}"
            )
    elif parts[2] != 0:
        raise ValueError(
            f"others='complement' bounds the rest by 1 - p_A and spends no alpha on it: split[2] must "
            f"be 0, got {split!r}"
        )
    return parts  # type: ignore[return-value]


def t_certify_counts(
    counts_selection: Sequence[int],
    counts_estimation: Sequence[int],
    sigma: float,
    alpha: float,
    split: Sequence[float] = T_CERTIFY_DEFAULT_SPLIT,
    others: str = "pooled",
) -> tuple[int, float]:
    """T-CERTIFY [reconstructed, METHODS.md §4] on per-class counts: (class, ℓ2 radius) or (ABSTAIN = -1, 0.0).

    A and B are the top two classes of the *selection* counts (ties → lowest index). From the *estimation* counts
    (n = their sum), under a union bound α·split[0] + α·split[1] + α·split[2] = α:
    p̲A = lower bound on n_A at α·split[0], p̄B = upper bound on n_B at α·split[1], p̄R = upper bound on the pooled
    rest n − n_A − n_B at α·split[2] (it bounds every class other than A and B; 0 with exactly 2 classes, where the
    rest is empty). p̄ = max(p̄B, p̄R); certify (A, σ/2·(Φ⁻¹(p̲A) − Φ⁻¹(p̄))) when p̲A > p̄, else abstain.
    With probability ≥ 1 − α the returned class is g's and g is constant within the radius.

    The split must be fixed before the estimation counts are seen (optimising it on them breaks the guarantee; see
    `t_certify_counts_grid` for a corrected maximisation). Each part must be > 0, except split[2] = 0 with 2 classes.

    others="complement" is the safe-but-weak rule that bounds the rest by 1 − p̲A instead of p̄R (split[2] must be 0,
    split[1] may be 0 and then B is bounded by 1 − p̲A too): p̄ = max(p̄B, 1 − p̲A). With split (1, 0, 0) it is
    CERTIFY's radius σ·Φ⁻¹(p̲A) on the same counts (except that it abstains, rather than certifying radius 0, at
    p̲A = ½ exactly); it can never beat CERTIFY, which is why "pooled" is the default.
    """
    num_classes = len(counts_selection)
    if len(counts_estimation) != num_classes:
        raise ValueError(
            f"selection and estimation counts have different lengths: {num_classes} vs {len(counts_estimation)}"
        )
    if num_classes < 2:
        raise ValueError(f"T-CERTIFY needs at least 2 classes, got {num_classes}")
    alpha_a, alpha_b, alpha_r = _validate_split(split, num_classes, others)
    top, runner_up = top_two([int(c) for c in counts_selection])
    n = int(sum(int(c) for c in counts_estimation))
    n_a, n_b = int(counts_estimation[top]), int(counts_estimation[runner_up])
    p_lower = lower_confidence_bound(n_a, n, alpha * alpha_a)
    if others == "complement":
        p_upper = 1.0 - p_lower
        if alpha_b > 0:
            p_upper = max(p_upper, upper_confidence_bound(n_b, n, alpha * alpha_b))
    else:
        p_upper_b = upper_confidence_bound(n_b, n, alpha * alpha_b)
        p_upper_rest = 0.0 if num_classes == 2 else upper_confidence_bound(n - n_a - n_b, n, alpha * alpha_r)
        p_upper = max(p_upper_b, p_upper_rest)
    if not p_lower > p_upper:
        return ABSTAIN, 0.0
    return top, two_sided_radius(p_lower, p_upper, sigma)


def default_split_grid(size: int = 5) -> list[Split]:
    """Splits (i, j, k)/size with i, j, k ≥ 1 (every part > 0): the (size−1)(size−2)/2 points of a simplex lattice.

    size = 3 gives only (⅓, ⅓, ⅓); size = 5 gives 6 splits. For `t_certify_counts_grid`.
    """
    if size < 3:
        raise ValueError(f"size must be >= 3 so that every part is > 0, got {size}")
    return [(i / size, j / size, (size - i - j) / size) for i in range(1, size - 1) for j in range(1, size - i)]


def t_certify_counts_grid(
    counts_selection: Sequence[int],
    counts_estimation: Sequence[int],
    sigma: float,
    alpha: float,
    grid: Sequence[Sequence[float]],
    others: str = "pooled",
) -> tuple[int, float]:
    """ "Paper-style" T-CERTIFY [reconstructed, METHODS.md §4]: the largest radius over a grid of splits.

    A secondary summary says the paper maximises the radius over significance levels; maximising over splits on the
    estimation counts at the full α each breaks the 1 − α guarantee. This is the corrected version: every split runs
    at total level α/len(grid), so a union (Bonferroni) bound over the grid keeps 1 − α. A and B come from the
    selection counts and are the same for every split, so the class is A when any split certifies.
    """
    if len(grid) == 0:
        raise ValueError("grid must hold at least one split")
    level = alpha / len(grid)
    best: tuple[int, float] = (ABSTAIN, 0.0)
    for split in grid:
        prediction, radius = t_certify_counts(counts_selection, counts_estimation, sigma, level, split, others)
        if prediction != ABSTAIN and (best[0] == ABSTAIN or radius > best[1]):
            best = (prediction, radius)
    return best


def certify_counts(
    counts_selection: Sequence[int], counts_estimation: Sequence[int], sigma: float, alpha: float
) -> tuple[int, float]:
    """CERTIFY on per-class counts: the top selection class A (ties → lowest index), p̲A from the estimation counts,
    (A, σ·Φ⁻¹(p̲A)) or (ABSTAIN, 0.0) when p̲A < ½."""
    top = top_two([int(c) for c in counts_selection])[0] if len(counts_selection) > 1 else 0
    n = int(sum(int(c) for c in counts_estimation))
    p_lower = lower_confidence_bound(int(counts_estimation[top]), n, alpha)
    if p_lower < 0.5:
        return ABSTAIN, 0.0
    return top, sigma * float(norm.ppf(p_lower))


class Decision(NamedTuple):
    """A smoothing certifier's answer for one image, with the counts it was decided on (the TSV's `n0 nA0 n nA nB`
    columns), so that any α can be re-derived offline and the distribution of p̲A shown.

    counts: n0 = selection draws, nA0 = selection votes of the class A it selected, n = estimation draws it used,
    nA = estimation votes for A, and nB = estimation votes for the runner-up B of the selection where the certifier
    bounds B (T-CERTIFY)."""

    prediction: int
    radius: float
    counts: dict


def selection_counts(n0: int, selection, top: int) -> dict:
    return {"n0": int(n0), "nA0": int(selection[top])}


def certify_plan(n0: int, n: int, sigma: float, alpha: float):
    """CERTIFY as a sampling plan (methods/certify/sampling.py): n0 selection draws, then n fresh ones."""
    selection = yield n0
    estimation = yield n
    top = top_two([int(c) for c in selection])[0] if len(selection) > 1 else 0
    counts = {**selection_counts(n0, selection, top), "n": int(n), "nA": int(estimation[top])}
    return Decision(*certify_counts(selection, estimation, sigma, alpha), counts)


def _two_sided_counts(n0: int, n: int, selection, estimation) -> dict:
    top, runner_up = top_two([int(c) for c in selection])
    return {**selection_counts(n0, selection, top), "n": int(n), "nA": int(estimation[top]),
            "nB": int(estimation[runner_up])}  # fmt: skip


def t_certify_plan(n0: int, n: int, sigma: float, alpha: float, split: Sequence[float] = T_CERTIFY_DEFAULT_SPLIT):
    """T-CERTIFY on the same draws as `certify_plan` (same order and sizes), so the two compare image by image."""
    selection = yield n0
    estimation = yield n
    decided = t_certify_counts(selection.tolist(), estimation.tolist(), sigma, alpha, split)
    return Decision(*decided, _two_sided_counts(n0, n, selection, estimation))


def t_certify_grid_plan(n0: int, n: int, sigma: float, alpha: float, grid: Sequence[Sequence[float]]):
    """Paper-style T-CERTIFY (Bonferroni over the grid) on the same draws as `certify_plan`."""
    selection = yield n0
    estimation = yield n
    decided = t_certify_counts_grid(selection.tolist(), estimation.tolist(), sigma, alpha, grid)
    return Decision(*decided, _two_sided_counts(n0, n, selection, estimation))


def predict_plan(n: int, alpha: float, num_classes: int):
    """PREDICT: g(x), or ABSTAIN when a two-sided binomial test cannot tell the top two classes apart at level α."""
    counts = yield n
    order = sorted(range(num_classes), key=lambda c: (-int(counts[c]), c))
    n1, n2 = int(counts[order[0]]), int(counts[order[1]])
    if binomtest(n1, n1 + n2, 0.5).pvalue > alpha:
        return ABSTAIN
    return order[0]


class Smooth:
    """The smoothed classifier g around `base_classifier` (a batch of [0, 1] images → logits), on the plain path:
    one image at a time, `batch_size` draws per forward pass (the fast path is methods/certify/sampling.FastSampler)."""

    ABSTAIN = -1

    def __init__(self, base_classifier: torch.nn.Module, num_classes: int, sigma: float):
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma = sigma

    def run(self, plan, x: torch.Tensor, batch_size: int, generator: torch.Generator | None = None):
        """A sampling plan's answer at x (C, H, W), its draws made by `sample_counts`; a certifier's Decision comes
        back as Cohen's (class, radius)."""
        answer = run_plan(plan, lambda num: self.sample_counts(x, num, batch_size, generator))[0]
        return (answer.prediction, answer.radius) if isinstance(answer, Decision) else answer

    def certify(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[int, float]:
        """(class, certified ℓ2 radius) of g at x, or (ABSTAIN, 0.0). x: one example (C, H, W) on the model's device."""
        return self.run(certify_plan(n0, n, self.sigma, alpha), x, batch_size, generator)

    def t_certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        split: Sequence[float] = T_CERTIFY_DEFAULT_SPLIT,
        generator: torch.Generator | None = None,
    ) -> tuple[int, float]:
        """T-CERTIFY [reconstructed, METHODS.md §4] at x: `t_certify_counts` on n0 selection then n fresh draws.

        The draws are made exactly as `certify` makes them (same order and sizes), so with the same generator state
        both see the same counts and the two certifiers can be compared image by image.
        """
        return self.run(t_certify_plan(n0, n, self.sigma, alpha, split), x, batch_size, generator)

    def t_certify_grid(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        grid: Sequence[Sequence[float]],
        generator: torch.Generator | None = None,
    ) -> tuple[int, float]:
        """Paper-style T-CERTIFY: `t_certify_counts_grid` (Bonferroni over the grid) on the same draws as `certify`."""
        return self.run(t_certify_grid_plan(n0, n, self.sigma, alpha, grid), x, batch_size, generator)

    def predict(
        self, x: torch.Tensor, n: int, alpha: float, batch_size: int, generator: torch.Generator | None = None
    ) -> int:
        """g(x), or ABSTAIN when a two-sided binomial test cannot tell the top two classes apart at level α."""
        return self.run(predict_plan(n, alpha, self.num_classes), x, batch_size, generator)

    def sample_counts(
        self, x: torch.Tensor, num: int, batch_size: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """How often f predicts each class on `num` noisy copies of x, drawn in chunks of `batch_size`."""
        return plain_counts(self.base_classifier, x, num, self.sigma, self.num_classes, batch_size, generator)
