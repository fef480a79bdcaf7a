"""Feng et al.'s T-CERTIFY [reconstructed, METHODS.md §4]: bounds against scipy, the worked example, agreement with
CERTIFY, split validation, and a false-certificate simulation that has the power to catch broken rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import beta, norm

from methods.certify.smoothing import (
    Smooth,
    default_split_grid,
    lower_confidence_bound,
    t_certify_counts,
    t_certify_counts_grid,
    two_sided_radius,
    upper_confidence_bound,
)

ABSTAIN = Smooth.ABSTAIN


# ---------------------------------------------------------------------------------------------------------------------
# Independent references (scipy only, no code from methods.smoothing)


def cp_lower(k: int, n: int, alpha: float) -> float:
    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


def cp_upper(k: int, n: int, alpha: float) -> float:
    return 1.0 if k == n else float(beta.ppf(1 - alpha, k + 1, n - k))


def reference_t_certify(sel, est, sigma, alpha, split):
    """The METHODS.md §4 rule written out again, bounds straight from scipy's Beta quantiles."""
    order = sorted(range(len(sel)), key=lambda c: (-sel[c], c))
    a, b = order[0], order[1]
    n = sum(est)
    p_lower = cp_lower(est[a], n, alpha * split[0])
    p_upper = max(
        cp_upper(est[b], n, alpha * split[1]),
        0.0 if len(sel) == 2 else cp_upper(n - est[a] - est[b], n, alpha * split[2]),
    )
    if p_lower <= p_upper:
        return ABSTAIN, 0.0
    return a, sigma / 2 * (norm.ppf(p_lower) - norm.ppf(p_upper))


def same(got, expected, rel=1e-12):
    """Same class, radius equal up to float round-off."""
    return got[0] == expected[0] and got[1] == pytest.approx(expected[1], rel=rel, abs=1e-15)


# ---------------------------------------------------------------------------------------------------------------------
# Bounds and the radius formula


@pytest.mark.parametrize(
    "k,n,alpha",
    [
        (0, 100, 0.001),
        (1, 100, 0.001),
        (900, 100_000, 0.001 / 3),
        (100, 100_000, 0.001 / 3),
        (37, 50, 0.05),
        (999, 1000, 0.01),
        (51_234, 100_000, 0.001),
    ],
)
def test_upper_bound_equals_beta_quantile(k, n, alpha):
    assert upper_confidence_bound(k, n, alpha) == pytest.approx(beta.ppf(1 - alpha, k + 1, n - k), rel=1e-10)


def test_upper_bound_edges():
    assert upper_confidence_bound(100, 100, 0.001) == 1.0
    assert upper_confidence_bound(0, 100, 0.001) > 0
    # k = 0: the bound solves (1 − p)^n = α.
    assert upper_confidence_bound(0, 100, 0.001) == pytest.approx(1 - 0.001 ** (1 / 100), rel=1e-10)
    # It is an upper bound: above the point estimate, and above the lower bound at the same level.
    assert upper_confidence_bound(30, 100, 0.01) > 0.30 > lower_confidence_bound(30, 100, 0.01)


def test_upper_bound_coverage_by_simulation():
    """P[p̄ < p] ≤ α: Clopper–Pearson is nearly exact, so a factor-of-2 slip in the level would show here."""
    rng = np.random.default_rng(0)
    p, n, alpha, trials = 0.3, 200, 0.1, 4000
    ks = rng.binomial(n, p, size=trials)
    cache = {k: upper_confidence_bound(int(k), n, alpha) for k in np.unique(ks)}
    miss = np.mean([cache[k] < p for k in ks])
    assert miss <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)
    assert miss >= alpha / 2  # not trivially conservative (the exact miss rate here is ≈ 0.09)


@pytest.mark.parametrize("p_lower", [0.5000001, 0.6, 0.9, 0.99, 0.999_9, 1 - 1e-9])
@pytest.mark.parametrize("sigma", [0.12, 0.5, 1.0])
def test_two_sided_radius_with_complement_is_cohens(p_lower, sigma):
    assert two_sided_radius(p_lower, 1 - p_lower, sigma) == pytest.approx(
        sigma * norm.ppf(p_lower), rel=1e-12, abs=1e-12
    )


def test_two_sided_radius_formula():
    assert two_sided_radius(0.7, 0.2, 0.5) == pytest.approx(0.25 * (norm.ppf(0.7) - norm.ppf(0.2)), rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# The worked example of METHODS.md §4: n = 10⁵, n_A = 99,000, n_B = 900, rest 100, α = 0.001

N, N_A, N_B, ALPHA = 100_000, 99_000, 900, 0.001
EST3 = [N_A, N_B, N - N_A - N_B]
SEL3 = [97, 2, 1]


class CountsSmooth(Smooth):
    """A Smooth whose draws are given counts, so the Smooth methods can be checked on exact count vectors."""

    def __init__(self, queue, num_classes):
        super().__init__(torch.nn.Identity(), num_classes, 1.0)
        self.queue = list(queue)

    def sample_counts(self, x, num, batch_size, generator=None):
        counts = torch.tensor(self.queue.pop(0), dtype=torch.long)
        assert int(counts.sum()) == num
        return counts


def test_worked_example_certify():
    expected = norm.ppf(beta.ppf(ALPHA, N_A, N - N_A + 1))
    assert expected == pytest.approx(2.2900, abs=1e-4)
    _, radius = CountsSmooth([SEL3, EST3], 3).certify(torch.zeros(1), 100, N, ALPHA, 1000)
    assert radius == pytest.approx(expected, rel=1e-10)
    # T-CERTIFY with all of α on A and p̄ = 1 − p̲A is CERTIFY exactly.
    assert t_certify_counts(SEL3, EST3, 1.0, ALPHA, (1, 0, 0), others="complement") == (
        0,
        pytest.approx(radius, rel=1e-12),
    )


def test_worked_example_complement_rule_never_beats_certify():
    """The "1 − p̲A" rule with α split between A and B: 2.2877σ, below CERTIFY's 2.2900σ."""
    expected = norm.ppf(beta.ppf(ALPHA / 2, N_A, N - N_A + 1))
    assert expected == pytest.approx(2.2877, abs=1e-4)
    prediction, radius = t_certify_counts(SEL3, EST3, 1.0, ALPHA, (0.5, 0.5, 0.0), others="complement")
    assert prediction == 0
    assert radius == pytest.approx(expected, rel=1e-10)
    assert radius < norm.ppf(beta.ppf(ALPHA, N_A, N - N_A + 1))


def test_worked_example_three_way_split():
    p_lower = beta.ppf(ALPHA / 3, N_A, N - N_A + 1)
    p_upper = max(beta.ppf(1 - ALPHA / 3, N_B + 1, N - N_B), beta.ppf(1 - ALPHA / 3, 101, N - 100))
    expected = (norm.ppf(p_lower) - norm.ppf(p_upper)) / 2
    assert expected == pytest.approx(2.3052, abs=1e-4)
    for sigma in (0.25, 1.0):
        prediction, radius = t_certify_counts(SEL3, EST3, sigma, ALPHA)
        assert prediction == 0
        assert radius == pytest.approx(sigma * expected, rel=1e-10)
        assert radius == pytest.approx(sigma * 2.3052, rel=1e-3)
    # Through the Smooth method, on the same counts.
    assert CountsSmooth([SEL3, EST3], 3).t_certify(torch.zeros(1), 100, N, ALPHA, 1000) == (
        0,
        pytest.approx(expected, rel=1e-10),
    )
    # The rest is pooled: spreading its 100 draws over 8 classes gives the same certificate.
    est10 = [N_A, N_B] + [13] * 4 + [12] * 4
    sel10 = [97, 2, 1] + [0] * 7
    assert sum(est10) == N
    assert t_certify_counts(sel10, est10, 1.0, ALPHA) == (0, pytest.approx(expected, rel=1e-10))


# ---------------------------------------------------------------------------------------------------------------------
# Agreement with CERTIFY and with the sampled counts


class Recording(Smooth):
    def __init__(self, *args):
        super().__init__(*args)
        self.drawn = []

    def sample_counts(self, x, num, batch_size, generator=None):
        counts = super().sample_counts(x, num, batch_size, generator)
        self.drawn.append(counts.tolist())
        return counts


def tiny_model():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]]))
        model[1].bias.zero_()
    return model


@pytest.mark.parametrize(
    "pixels,seed,certifies",
    [((0.9, 0.5, 0.2, 0.0), 0, True), ((0.6, 0.5, 0.4, 0.0), 1, False), ((0.2, 0.3, 0.8, 0.0), 2, True)],
)
def test_smooth_t_certify_sees_certifys_counts(pixels, seed, certifies):
    """Same generator seed → t_certify and certify draw identical selection and estimation counts; on them,
    T-CERTIFY with α_A = α and p̄ = 1 − p̲A is CERTIFY exactly."""
    x = torch.tensor(pixels).reshape(1, 2, 2)
    sigma, n0, n, alpha, batch = 0.5, 50, 2000, 0.001, 300
    smooth = Recording(tiny_model(), 3, sigma)
    certified = smooth.certify(x, n0, n, alpha, batch, generator=torch.Generator().manual_seed(seed))
    t_result = smooth.t_certify(x, n0, n, alpha, batch, generator=torch.Generator().manual_seed(seed))
    grid_result = smooth.t_certify_grid(
        x, n0, n, alpha, batch, default_split_grid(4), generator=torch.Generator().manual_seed(seed)
    )
    assert len(smooth.drawn) == 6
    sel, est = smooth.drawn[0], smooth.drawn[1]
    assert smooth.drawn[2:4] == [sel, est] and smooth.drawn[4:6] == [sel, est]
    assert sum(sel) == n0 and sum(est) == n and 0 < max(est) < n  # a non-degenerate case

    assert same(t_result, reference_t_certify(sel, est, sigma, alpha, (1 / 3, 1 / 3, 1 / 3)))
    assert t_result == t_certify_counts(sel, est, sigma, alpha)
    assert grid_result == t_certify_counts_grid(sel, est, sigma, alpha, default_split_grid(4))
    prediction, radius = t_certify_counts(sel, est, sigma, alpha, (1, 0, 0), others="complement")
    assert (certified[0] != ABSTAIN) == certifies  # (0.6, 0.5, 0.4) is too close to call at n = 2000
    assert prediction == certified[0] == (int(np.argmax(sel)) if certifies else ABSTAIN)
    assert radius == pytest.approx(certified[1], rel=1e-12, abs=1e-15)


def test_complement_rule_equals_certify_on_random_counts():
    rng = np.random.default_rng(3)
    for _ in range(200):
        k = int(rng.integers(2, 6))
        p = rng.dirichlet(np.ones(k) * 0.5)
        sel = rng.multinomial(30, p).tolist()
        est = rng.multinomial(int(rng.integers(50, 5000)), p).tolist()
        alpha = float(rng.choice([0.001, 0.01, 0.1]))
        top = int(np.argmax(sel))
        p_lower = cp_lower(est[top], sum(est), alpha)
        expected = (top, 0.7 * norm.ppf(p_lower)) if p_lower > 0.5 else (ABSTAIN, 0.0)
        got = t_certify_counts(sel, est, 0.7, alpha, (1, 0, 0), others="complement")
        assert got[0] == expected[0]
        assert got[1] == pytest.approx(expected[1], rel=1e-12, abs=1e-15)


def test_pooled_rule_matches_reference_on_random_counts():
    rng = np.random.default_rng(4)
    seen_certified = seen_abstained = 0
    for _ in range(200):
        k = int(rng.integers(2, 7))
        p = rng.dirichlet(np.ones(k))
        sel = rng.multinomial(int(rng.integers(5, 100)), p).tolist()
        est = rng.multinomial(int(rng.integers(50, 20_000)), p).tolist()
        split = tuple(rng.dirichlet(np.ones(3)))
        split = (split[0], split[1] + split[2], 0.0) if k == 2 and rng.random() < 0.5 else split
        expected = reference_t_certify(sel, est, 0.5, 0.01, split)
        got = t_certify_counts(sel, est, 0.5, 0.01, split)
        assert got[0] == expected[0]
        assert got[1] == pytest.approx(expected[1], rel=1e-12, abs=1e-15)
        seen_certified += got[0] != ABSTAIN
        seen_abstained += got[0] == ABSTAIN
    assert seen_certified > 20 and seen_abstained > 20


# ---------------------------------------------------------------------------------------------------------------------
# Abstention and the returned class


def test_abstains_when_a_and_b_are_indistinguishable():
    assert t_certify_counts([50, 50, 0], [5000, 5000, 0], 0.5, 0.001) == (ABSTAIN, 0.0)
    assert t_certify_counts([50, 49, 1], [5050, 4900, 50], 0.5, 0.001) == (ABSTAIN, 0.0)


def test_returns_the_selections_top_class():
    prediction, radius = t_certify_counts([1, 60, 39], [100, 9000, 900], 0.5, 0.001)
    assert prediction == 1 and radius > 0
    # Ties in the selection go to the lowest index, as Cohen's argmax: A = 0, B = 1.
    prediction, _ = t_certify_counts([40, 40, 20], [9000, 500, 500], 0.5, 0.001)
    assert prediction == 0
    # B is the selection's runner-up, chosen on the selection counts only (ties → lowest index): A = 2, B = 0.
    sel, est = [10, 10, 80], [1000, 3000, 6000]
    assert same(t_certify_counts(sel, est, 1.0, 0.01), reference_t_certify(sel, est, 1.0, 0.01, (1 / 3,) * 3))


def test_pooled_rest_blocks_a_wrong_selection():
    """The selection picked A = 0, B = 1, but class 2 dominates the estimation draws: the rest's bound catches it."""
    assert t_certify_counts([60, 40, 0], [3000, 100, 6900], 0.5, 0.001) == (ABSTAIN, 0.0)


def test_two_classes_rest_is_empty():
    sel, est = [70, 30], [8000, 2000]
    split = (0.5, 0.5, 0.0)
    p_lower, p_upper = cp_lower(8000, 10_000, 0.0005), cp_upper(2000, 10_000, 0.0005)
    assert t_certify_counts(sel, est, 1.0, 0.001, split) == (
        0,
        pytest.approx((norm.ppf(p_lower) - norm.ppf(p_upper)) / 2, rel=1e-12),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Split validation


@pytest.mark.parametrize(
    "split,num_classes,match",
    [
        ((0.5, 0.5, 0.5), 3, "sum to 1"),
        ((0.3, 0.3, 0.3), 3, "sum to 1"),
        ((1.2, -0.1, -0.1), 3, "non-negative"),
        ((0.0, 0.5, 0.5), 3, r"split\[0\]"),
        ((0.5, 0.0, 0.5), 3, r"split\[1\]"),
        ((0.5, 0.5, 0.0), 3, r"split\[2\]"),
        ((0.5, 0.5, 0.0), 10, r"split\[2\]"),
        ((0.5, 0.5), 3, "three parts"),
        ((0.25, 0.25, 0.25, 0.25), 3, "three parts"),
        ((float("nan"), 0.5, 0.5), 3, "finite"),
    ],
)
def test_invalid_splits_are_rejected(split, num_classes, match):
    sel, est = [10] * num_classes, [100] * num_classes
    with pytest.raises(ValueError, match=match):
        t_certify_counts(sel, est, 0.5, 0.001, split)


def test_valid_edge_splits_are_accepted():
    t_certify_counts([70, 30], [8000, 2000], 0.5, 0.001, (0.5, 0.5, 0.0))  # 2 classes: the rest is empty
    t_certify_counts([70, 30], [8000, 2000], 0.5, 0.001, (0.5, 0.5 - 1e-10, 1e-10 / 2))  # sum within 1e-9
    t_certify_counts([70, 20, 10], [8000, 1000, 1000], 0.5, 0.001, (1, 0, 0), others="complement")


def test_other_invalid_arguments():
    with pytest.raises(ValueError, match="complement"):
        t_certify_counts([70, 20, 10], [80, 10, 10], 0.5, 0.001, (0.5, 0.25, 0.25), others="complement")
    with pytest.raises(ValueError, match="others"):
        t_certify_counts([70, 20, 10], [80, 10, 10], 0.5, 0.001, others="ignore")
    with pytest.raises(ValueError, match="lengths"):
        t_certify_counts([70, 30], [80, 10, 10], 0.5, 0.001)
    with pytest.raises(ValueError, match="2 classes"):
        t_certify_counts([70], [80], 0.5, 0.001)
    with pytest.raises(ValueError, match="grid"):
        t_certify_counts_grid([70, 20, 10], [80, 10, 10], 0.5, 0.001, [])
    with pytest.raises(ValueError, match="sum to 1"):
        t_certify_counts_grid([70, 20, 10], [80, 10, 10], 0.5, 0.001, [(1 / 3,) * 3, (0.5, 0.5, 0.5)])
    with pytest.raises(ValueError, match="size"):
        default_split_grid(2)


# ---------------------------------------------------------------------------------------------------------------------
# The paper-style grid


@pytest.mark.parametrize("size", [3, 4, 5, 7])
def test_default_split_grid_is_a_simplex_lattice(size):
    grid = default_split_grid(size)
    assert len(grid) == (size - 1) * (size - 2) // 2 == len(set(grid))
    for split in grid:
        assert len(split) == 3 and min(split) > 0 and sum(split) == pytest.approx(1, abs=1e-12)
        assert all(abs(v * size - round(v * size)) < 1e-9 for v in split)
    assert default_split_grid(3) == [pytest.approx((1 / 3, 1 / 3, 1 / 3))]


@pytest.mark.parametrize("split", [(1 / 3, 1 / 3, 1 / 3), (0.6, 0.2, 0.2), (0.8, 0.15, 0.05)])
def test_one_element_grid_is_t_certify(split):
    assert t_certify_counts_grid(SEL3, EST3, 0.5, ALPHA, [split]) == t_certify_counts(SEL3, EST3, 0.5, ALPHA, split)


@pytest.mark.parametrize("size", [4, 5, 6])
def test_grid_runs_each_split_at_alpha_over_grid_size(size):
    grid = default_split_grid(size)
    cases = [(SEL3, EST3), ([60, 30, 10, 0], [6000, 3000, 700, 300]), ([50, 45, 5], [5000, 4400, 600])]
    for sel, est in cases:
        results = [reference_t_certify(sel, est, 1.0, ALPHA / len(grid), split) for split in grid]
        certified = [r for r in results if r[0] != ABSTAIN]
        expected = max(certified, key=lambda r: r[1]) if certified else (ABSTAIN, 0.0)
        got = t_certify_counts_grid(sel, est, 1.0, ALPHA, grid)
        assert got[0] == expected[0]
        assert got[1] == pytest.approx(expected[1], rel=1e-12)
    # The Bonferroni correction costs radius on the worked example: the (⅓, ⅓, ⅓) split alone at the full α beats
    # the grid's value at that split, and the grid ≥ every split at α/len(grid).
    third = t_certify_counts(SEL3, EST3, 1.0, ALPHA)[1]
    assert t_certify_counts(SEL3, EST3, 1.0, ALPHA / len(grid))[1] < third
    assert t_certify_counts_grid(SEL3, EST3, 1.0, ALPHA, grid)[1] >= max(
        t_certify_counts(SEL3, EST3, 1.0, ALPHA / len(grid), s)[1] for s in grid
    )


# ---------------------------------------------------------------------------------------------------------------------
# False-certificate simulation: a "classifier" with known class probabilities


def false_certificate_rate(rule, p, n0, n, alpha, trials, seed):
    """Fraction of trials whose certificate is false: wrong class, or a radius above the true one (σ = 1)."""
    rng = np.random.default_rng(seed)
    p = np.asarray(p)
    order = np.argsort(-p, kind="stable")
    true_class = int(order[0])
    true_radius = (norm.ppf(p[order[0]]) - norm.ppf(p[order[1]])) / 2
    false = certified = 0
    for _ in range(trials):
        sel = rng.multinomial(n0, p).tolist()
        est = rng.multinomial(n, p).tolist()
        prediction, radius = rule(sel, est, alpha)
        if prediction != ABSTAIN:
            certified += 1
            false += prediction != true_class or radius > true_radius
    return false / trials, certified / trials


def point_estimate_rule(sel, est, alpha):
    """BROKEN: p̂A = n_A/n and p̂B = n_B/n in place of confidence bounds."""
    order = sorted(range(len(sel)), key=lambda c: (-sel[c], c))
    n = sum(est)
    p_a, p_b = est[order[0]] / n, est[order[1]] / n
    return (order[0], two_sided_radius(p_a, p_b, 1.0)) if p_a > p_b > 0 else (ABSTAIN, 0.0)


def ignore_rest_rule(sel, est, alpha):
    """BROKEN: bounds A and B (α/2 each) but forgets the classes the selection did not rank in its top two."""
    order = sorted(range(len(sel)), key=lambda c: (-sel[c], c))
    n = sum(est)
    p_lower = lower_confidence_bound(est[order[0]], n, alpha / 2)
    p_upper = upper_confidence_bound(est[order[1]], n, alpha / 2)
    return (order[0], two_sided_radius(p_lower, p_upper, 1.0)) if p_lower > p_upper else (ABSTAIN, 0.0)


# (p, n0, n): a clear case and a near tie, where a small selection often ranks the classes wrongly.
SCENARIOS = [((0.5, 0.3, 0.2), 20, 1000), ((0.40, 0.36, 0.24), 10, 5000)]
SIM_ALPHA = 0.1


def allowed(trials, alpha=SIM_ALPHA):
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


@pytest.mark.parametrize("p,n0,n", SCENARIOS)
def test_t_certify_false_certificate_rate_is_at_most_alpha(p, n0, n):
    trials = 2000
    rate, certified = false_certificate_rate(
        lambda s, e, a: t_certify_counts(s, e, 1.0, a), p, n0, n, SIM_ALPHA, trials, seed=10
    )
    assert certified > 0.3  # the certifier is not vacuous: it certifies often, and is still sound
    assert rate <= allowed(trials)


@pytest.mark.parametrize("p,n0,n", SCENARIOS)
def test_grid_false_certificate_rate_is_at_most_alpha(p, n0, n):
    trials, grid = 800, default_split_grid(4)
    rate, certified = false_certificate_rate(
        lambda s, e, a: t_certify_counts_grid(s, e, 1.0, a, grid), p, n0, n, SIM_ALPHA, trials, seed=11
    )
    assert certified > 0.3
    assert rate <= allowed(trials)


@pytest.mark.parametrize("p,n0,n", SCENARIOS)
@pytest.mark.parametrize("rule", [point_estimate_rule, ignore_rest_rule])
def test_simulation_catches_broken_rules(p, n0, n, rule):
    """The same simulation flags a rule without confidence bounds (false ≈ 50%) and one that drops the pooled rest
    (false ≈ 20%: when the selection ranks the true runner-up third, nothing bounds it)."""
    trials = 1000
    rate, _ = false_certificate_rate(rule, p, n0, n, SIM_ALPHA, trials, seed=12)
    assert rate > allowed(trials) + 0.05
