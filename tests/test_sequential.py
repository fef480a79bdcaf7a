"""The sequential certifier (methods/certify/sequential.py) against SEQUENTIAL.md §6's protocol.

1. Formulas, exactly: the unanimity points and cap rates of §2.4 / §5.5 (a level slip such as Voráček's coded
   log(1/(2α)) moves them), the per-radius inequality against a root found independently, log Q against Voráček's
   recursion, L_t monotone in the count.
2. The exact false-certificate probability on the threshold (dynamic programming over counts, α = 0.1): ≤ α for the
   certifier's looks and for a look at every draw, while Clopper–Pearson at α at every look (no correction) exceeds
   it. The DP is checked first on the harness's Bonferroni certifier, whose exact value §6 gives.
3. Monte Carlo through the plan itself at and just below the boundary: ≤ α; the uncorrected control exceeds it.
4. Futility never adds a certificate: on identical votes, with and without it.
5. Draws: the deterministic unanimous cost (5,722 and 429), and away from thresholds CERTIFY's answer with a
   fraction of its draws. And a TSV row's counts with its sidecar re-derive the stored decision exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.signal import fftconvolve
from scipy.special import gammaln
from scipy.stats import binom, norm

from methods.certify import sequential as seq
from methods.certify.adaptive import SequentialTest, adaptive_plan, decision_radii, look_schedule
from methods.certify.sampling import run_plan
from methods.certify.sequential import SequentialOptions, sequential_plan
from methods.certify.smoothing import certify_plan, lower_confidence_bound

KT_U = SequentialOptions()  # the default: KT+u, w = ½
KT = SequentialOptions(w=0.0)
RADII = [0.0, 0.25, 0.5, 0.75, 1.0]


def unanimous(num: int) -> np.ndarray:
    return np.array([num, 0])


def binomial_sampler(p_a: float, rng: np.random.Generator):
    """Votes of a two-class base classifier with P[f = 0] = p_a, as a sampling plan's counts."""

    def sample(num: int) -> np.ndarray:
        a = int(rng.binomial(num, p_a))
        return np.array([a, num - a])

    return sample


def replay_sampler(votes: np.ndarray):
    """Counts read off one fixed vote sequence (1 = class 0), so two plans see identical votes at identical t."""
    state = {"at": 0}

    def sample(num: int) -> np.ndarray:
        a = int(votes[state["at"] : state["at"] + num].sum())
        state["at"] += num
        return np.array([a, num - a])

    return sample


def steady_sampler(rate: float):
    """Unanimous selection, then estimation votes spread evenly at `rate`: A_t = ⌊rate·t⌋ at every request's end."""
    state = {"t": -1, "a": 0}

    def sample(num: int) -> np.ndarray:
        if state["t"] < 0:
            state["t"] = 0
            return np.array([num, 0])
        state["t"] += num
        a = math.floor(rate * state["t"]) - state["a"]
        state["a"] += a
        return np.array([a, num - a])

    return sample


# ------------------------------------------------------------------------------------------------ 1. formulas


def closed_form_unanimity_point(tau: float, w: float, alpha: float, n: int) -> int | None:
    """§2.4 written out with Γ: least t with t·log τ ≤ log(w + (1 − w)·Γ(t + ½)/(√π·Γ(t + 1))) + log α."""
    t = np.arange(1, n + 1, dtype=float)
    log_q = gammaln(t + 0.5) - gammaln(t + 1) - 0.5 * math.log(math.pi)
    rhs = np.log(w + (1 - w) * np.exp(log_q)) + math.log(alpha)
    ok = t * math.log(tau) <= rhs
    return int(np.argmax(ok)) + 1 if ok.any() else None


@pytest.mark.parametrize(
    "sigma, w, expected",
    [
        (0.25, 0.5, [11, 44, 329, 5622, None]),  # SEQUENTIAL.md §2.4 (exact); r = 1.0 unreachable at n = 10^5
        (0.25, 0.0, [13, 55, 459, 8904, None]),
        (0.5, 0.5, [11, 21, 44, 110, 329]),
        (0.5, 0.0, [13, 25, 55, 145, 459]),
    ],
)
def test_unanimity_points_match_the_closed_form_and_are_where_the_plan_stops(sigma, w, expected):
    """Each radius's unanimity point from Γ functions equals §2.4's table, the module's (betaln) value, and the
    number of estimation draws after which the plan, fed unanimous votes, certifies it and stops."""
    alpha, n = 0.001, 100_000
    options = SequentialOptions(w=w)
    for k, r in enumerate(RADII):
        tau = float(norm.cdf(r / sigma))
        assert closed_form_unanimity_point(tau, w, alpha, n) == expected[k]
        assert seq.unanimity_point(seq.threshold(r, sigma), w, alpha, n) == expected[k]
        if expected[k] is None:
            continue
        decision, used = run_plan(sequential_plan(100, n, sigma, alpha, RADII[: k + 1], options), unanimous)
        assert (decision.prediction, decision.radius) == (0, r)
        assert used - 100 == expected[k] == decision.counts["n"] == decision.counts["nA"]
    # a level slip (Voráček's code tests each side at 2α) moves the points: the test above can see it
    assert seq.unanimity_point(seq.threshold(0.75, 0.25), 0.5, 2 * alpha, n) < 5622


def test_unanimous_votes_cost_the_unanimity_point_of_the_largest_reachable_radius():
    """§6.5: p_A = 1 is deterministic — n0 + 5,622 at σ = 0.25 (r = 1.0 refused up front), n0 + 329 at σ = 0.5;
    the adaptive certifier takes 12,900 and 900 (SEQUENTIAL.md §7)."""
    for sigma, draws, adaptive_draws in ((0.25, 5722, 12_900), (0.5, 429, 900)):
        decision, used = run_plan(sequential_plan(100, 100_000, sigma, 0.001, RADII), unanimous)
        assert used == draws and decision.radius == (0.75 if sigma == 0.25 else 1.0)
        assert run_plan(adaptive_plan(100, 100_000, sigma, 0.001, RADII), unanimous)[1] == adaptive_draws
    assert seq.max_radius(0.25, 100_000, 0.001, RADII) == 0.75


@pytest.mark.parametrize(
    "sigma, options, rates",
    [  # SEQUENTIAL.md §5.5 (exact): the least success rate a_k(n)/n at the cap that certifies each radius
        (0.25, KT, [0.50803, 0.84719, 0.97961, 0.99920]),
        (0.25, KT_U, [0.50825, 0.84734, 0.97967, 0.99921]),
        (0.25, SequentialOptions(hybrid=0.5), [0.50521, 0.84515, 0.97880, 0.99903]),
        (0.5, KT_U, [None, None, None, None, 0.97967]),  # r = 1.0 at σ = 0.5 (τ = Φ(2))
    ],
)
def test_cap_rates_match_the_specification(sigma, options, rates):
    plan = seq.schedule(100_000, sigma, 0.001, decision_radii(RADII), options)
    for k, rate in enumerate(rates):
        if rate is not None:
            assert plan.cap_counts[k] / 100_000 == pytest.approx(rate, abs=5e-6)
    assert plan.cap_counts[-1] == (math.inf if sigma == 0.25 else plan.cap_counts[-1])


def independent_lower_bound(a: int, t: int, w: float, alpha: float) -> float:
    """L_t by Brent's method on m itself, from log Q written with Γ functions."""
    log_q = gammaln(a + 0.5) + gammaln(t - a + 0.5) - gammaln(t + 1) - math.log(math.pi)
    log_qw = np.logaddexp(math.log(w), math.log1p(-w) + log_q) if (a == t and w > 0) else math.log1p(-w) + log_q
    if a == t:
        return math.exp((log_qw + math.log(alpha)) / t)

    def g(m):
        return a * math.log(m) + (t - a) * math.log1p(-m) - log_qw - math.log(alpha)

    return brentq(g, 1e-300, a / t, xtol=1e-15, rtol=1e-14)


def test_the_per_radius_inequality_agrees_with_the_lower_bound_found_by_root_finding():
    """§6.1(b): "τ certified" ⟺ L_t ≥ τ, for random (A, t) and thresholds near L_t; the module's own bisection agrees
    with an independent root."""
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(600):
        t = int(rng.integers(1, 50_000))
        a = int(rng.integers(1, t + 1)) if rng.random() < 0.8 else t
        w = float(rng.choice([0.0, 0.5, 0.9]))
        alpha = float(rng.choice([0.001, 0.1]))
        bound = independent_lower_bound(a, t, w, alpha)
        assert seq.kt_lower_bound(a, t, w, alpha) == pytest.approx(bound, rel=1e-9, abs=1e-12)
        for tau in (bound * (1 - 1e-6), bound * (1 + 1e-6), float(rng.uniform(0.5, 1.0))):
            if not 0 < tau < 1:
                continue
            z = float(norm.ppf(tau))
            th = seq.Threshold(tau, float(norm.logcdf(z)), float(norm.logsf(z)))
            assert seq.kt_certifies(a, t, th, w, alpha) == (bound >= tau), (a, t, w, alpha, tau, bound)
            checked += 1
    assert checked > 1600


def test_log_q_is_the_running_sum_of_kt_predictive_probabilities():
    """§6.1(c): log Q_t from betaln equals Σ log q_i(X_i), q_i(1) = (A_{i−1} + ½)/i (Voráček's recursion)."""
    rng = np.random.default_rng(1)
    for p in (0.1, 0.5, 0.97, 1.0):
        votes = rng.random(3000) < p
        total, a = 0.0, 0
        for i, x in enumerate(votes, start=1):
            q1 = (a + 0.5) / i
            total += math.log(q1 if x else 1 - q1)
            a += int(x)
            if i in (1, 2, 10, 999, 3000):
                assert seq.log_kt(a, i) == pytest.approx(total, rel=1e-12, abs=1e-12)


def test_lower_bound_rises_with_a_success_and_falls_with_a_failure():
    """§6.1(d): L_t nondecreasing in A_t at fixed t; L(A, t + 1) ≤ L(A, t) ≤ L(A + 1, t + 1)."""
    for w in (0.0, 0.5):
        for t in (20, 700, 20_000):
            counts = np.unique(np.linspace(0, t, 60).astype(int))
            bounds = [seq.kt_lower_bound(int(a), t, w, 0.001) for a in counts]
            assert all(x <= y for x, y in zip(bounds, bounds[1:]))
            for a in counts[1:-1]:
                a = int(a)
                here = seq.kt_lower_bound(a, t, w, 0.001)
                assert seq.kt_lower_bound(a, t + 1, w, 0.001) <= here <= seq.kt_lower_bound(a + 1, t + 1, w, 0.001)


def test_the_futility_test_matches_the_upper_confidence_bound():
    """U_t < x without root finding (§2.5) agrees with the root of the upper side, found independently."""
    rng = np.random.default_rng(2)
    for _ in range(300):
        t = int(rng.integers(5, 20_000))
        a = int(rng.integers(0, t))
        log_q = gammaln(a + 0.5) + gammaln(t - a + 0.5) - gammaln(t + 1) - math.log(math.pi)

        def g(m):
            return (a * math.log(m) if a else 0.0) + (t - a) * math.log1p(-m) - log_q - math.log(0.01)

        upper = brentq(g, a / t if a else 1e-300, 1 - 1e-16, xtol=1e-15, rtol=1e-14)
        for x in (upper * (1 - 1e-7), upper * (1 + 1e-7)):
            assert seq.kt_upper_below(a, t, x, 0.01) == (upper < x)
        assert not seq.kt_upper_below(a, t, a / t, 0.01) and seq.kt_upper_below(a, t, 1.0001, 0.0)


def test_voraceks_spending_sequence_sums_to_at_most_alpha():
    assert sum(seq.ub_level(0.001, j) for j in range(1, 10_000)) == pytest.approx(0.001 * (1 - 5 / 10_004))
    plan = seq.schedule(100_000, 0.25, 0.001, decision_radii(RADII), SequentialOptions(bound="ub"))
    assert sum(seq.ub_level(plan.level, j) for j in range(1, len(plan.looks) + 1)) < 0.001


# ------------------------------------------------------------------------------------------------ 2. exact DP

DP_SIGMA, DP_ALPHA, DP_RADII = 0.25, 0.1, [0.0, 0.25, 0.5]
TAU_1 = float(norm.cdf(1.0))  # Φ(0.25 / 0.25): r_1's threshold, and p_A in the DP


def absorbed_probability(looks, thresholds, p: float) -> float:
    """P(A_t ≥ c(t) at some look t) for A_t ~ Bin(t, p): the count distribution is carried from look to look and
    the mass at or above each look's threshold is absorbed (a certificate is final)."""
    mass, done, absorbed = np.array([1.0]), 0, 0.0
    for t, c in zip(looks, thresholds):
        if t - done == 1:  # one draw: shift-and-add is exact and fast
            mass = np.append(mass * (1 - p), 0.0) + np.insert(mass * p, 0, 0.0)
        else:
            step = binom.pmf(np.arange(t - done + 1), t - done, p)
            mass = np.clip(fftconvolve(mass, step) if len(mass) > 1 else step * mass[0], 0, None)
        done = t
        if c < len(mass):
            absorbed += float(mass[int(c) :].sum())
            mass[int(c) :] = 0
    return absorbed


def kt_thresholds(looks, options: SequentialOptions) -> list[float]:
    th = seq.threshold(0.25, DP_SIGMA)
    return [seq.least_count(lambda a: seq.kt_certifies(a, t, th, options.w, DP_ALPHA), t) for t in looks]


def cp_thresholds(looks, level: float) -> list[float]:
    return [seq.least_count(lambda a: lower_confidence_bound(a, t, level) >= TAU_1, t) for t in looks]


def test_the_dp_reproduces_the_specifications_exact_values_for_the_harness():
    """The DP is right before it judges the new certifier: the harness's Bonferroni CP (α/J at ×2 looks) and the
    uncorrected control (CP at α at the same looks) give SEQUENTIAL.md §6.2's exact 0.05825 and 0.36825."""
    looks = look_schedule(20_000, 100, 2.0)
    harness = SequentialTest(DP_SIGMA, decision_radii(DP_RADII), 20_000, DP_ALPHA, tuple(looks))
    assert absorbed_probability(looks, cp_thresholds(looks, harness.level), TAU_1) == pytest.approx(0.05825, abs=5e-6)
    assert absorbed_probability(looks, cp_thresholds(looks, DP_ALPHA), TAU_1) == pytest.approx(0.36825, abs=5e-6)


@pytest.mark.parametrize(
    "options, spec_value",
    [  # SEQUENTIAL.md §6.2 (exact): KT at 100·1.1^j (its value is without the unanimity looks), KT+u with them
        (dataclasses.replace(KT, unanimity_looks=False), 0.00641),
        (KT_U, 0.05584),
        (KT, None),  # KT with its unanimity looks (6 and 27 draws at α = 0.1): 0.0154
    ],
)
def test_exact_false_certificate_probability_on_the_threshold_is_below_alpha(options, spec_value):
    """§6.2: α = 0.1, p_A = τ_1, n = 20,000, the certifier's own looks, futility off (the worst case): every
    certificate of r_1 is false, and its exact probability is ≤ α (the control exceeds α: the test above)."""
    plan = seq.schedule(20_000, DP_SIGMA, DP_ALPHA, decision_radii(DP_RADII), options)
    exact = absorbed_probability(plan.looks, kt_thresholds(plan.looks, options), TAU_1)
    print(f"w = {options.w}, looks {plan.looks[:4]}...: exact false-certificate probability {exact:.5f}")
    assert exact <= DP_ALPHA
    if spec_value is not None:
        assert exact == pytest.approx(spec_value, abs=5e-6)


def test_exact_false_certificate_probability_with_a_look_at_every_draw_is_below_alpha():
    """A CS holds at every t at once: KT checked after every single draw up to 20,000 stays ≤ α (SEQUENTIAL.md
    §6.2: 0.02338, exact)."""
    looks = list(range(1, 20_001))
    exact = absorbed_probability(looks, kt_thresholds(looks, KT), TAU_1)
    assert exact == pytest.approx(0.02338, abs=5e-6) and exact <= DP_ALPHA


def test_exact_false_certificate_probability_of_the_union_bound_family_is_below_alpha():
    plan = seq.schedule(20_000, DP_SIGMA, DP_ALPHA, decision_radii(DP_RADII), SequentialOptions(bound="ub"))
    thresholds = [cp_thresholds([t], seq.ub_level(DP_ALPHA, j))[0] for j, t in enumerate(plan.looks, start=1)]
    assert absorbed_probability(plan.looks, thresholds, TAU_1) <= DP_ALPHA


# ------------------------------------------------------------------------------------------------ 3. Monte Carlo


def certification_rate(p_a: float, runs: int, options: SequentialOptions, seed: int = 0) -> float:
    """Share of runs of the plan (two classes, selection included) that certify r_1 = 0.25 for class 0."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(runs):
        decision, _ = run_plan(
            sequential_plan(100, 20_000, DP_SIGMA, DP_ALPHA, DP_RADII, options), binomial_sampler(p_a, rng)
        )
        hits += decision.prediction == 0 and decision.radius >= 0.25
    return hits / runs


def control_rate(p_a: float, runs: int, seed: int = 0) -> float:
    """The uncorrected control: CP at the full α at every harness look (×2), stop at the first certificate."""
    looks = look_schedule(20_000, 100, 2.0)
    thresholds = cp_thresholds(looks, DP_ALPHA)
    rng = np.random.default_rng(seed)
    steps = np.diff([0, *looks])
    counts = np.cumsum(rng.binomial(steps[None, :], p_a, size=(runs, len(looks))), axis=1)
    return float((counts >= np.array(thresholds)[None, :]).any(axis=1).mean())


@pytest.mark.parametrize("options, runs", [(KT_U, 2000), (KT, 2000), (SequentialOptions(bound="wsr"), 600)])
def test_monte_carlo_rate_through_the_plan_is_below_alpha_at_and_just_below_the_boundary(options, runs):
    """§6.3: p_A = τ_1 − 0.002 and τ_1 (every r_1 certificate false): rate ≤ α = 0.1, with room (KT+u ≈ 0.057
    from its unanimity atom, KT ≈ 0.005, SEQUENTIAL.md's simulation; √(α(1 − α)/2000) ≈ 0.0067); the uncorrected
    control exceeds α; above the boundary the plan has power."""
    below = certification_rate(TAU_1 - 0.002, runs, options)
    at = certification_rate(TAU_1, runs, options, seed=1)
    above = certification_rate(TAU_1 + 0.01, runs // 4, options, seed=2)
    control = control_rate(TAU_1, 4000)
    print(f"{options.bound} w={options.w}: below {below:.4f}, at {at:.4f}, above {above:.3f}, control {control:.3f}")
    assert below <= DP_ALPHA and at <= DP_ALPHA
    assert control > DP_ALPHA
    assert above > 0.3


# ------------------------------------------------------------------------------------------------ 4. futility


@pytest.mark.parametrize("options", [KT_U, SequentialOptions(bound="wsr"), SequentialOptions(hybrid=0.5)])
def test_futility_never_adds_a_certificate(options):
    """§6.4: on identical votes, the plan with a very aggressive futility bound (δ_U = 0.5) certifies a subset of
    what the plan without futility certifies, and never draws more."""
    aggressive = dataclasses.replace(options, delta_u=0.5)
    off = dataclasses.replace(options, futility=False)
    rng = np.random.default_rng(3)
    stopped_earlier = 0
    for p_a in (0.5, 0.83, 0.845, 0.97, 0.978, 0.9985, 0.9995):
        for _ in range(15):
            votes = rng.random(100 + 20_000) < p_a
            with_futility, used = run_plan(sequential_plan(100, 20_000, 0.25, 0.001, RADII, aggressive),
                                           replay_sampler(votes))  # fmt: skip
            without, used_without = run_plan(sequential_plan(100, 20_000, 0.25, 0.001, RADII, off),
                                             replay_sampler(votes))  # fmt: skip
            assert with_futility.radius <= without.radius and used <= used_without
            if with_futility.prediction != -1:
                assert with_futility.prediction == without.prediction
            stopped_earlier += used < used_without
    assert stopped_earlier > 20  # futility did act


# ------------------------------------------------------------------------------------------------ 5. draws


@pytest.mark.parametrize("p_a", [0.6, 0.9, 0.99])
def test_away_from_thresholds_it_answers_as_certify_with_a_fraction_of_its_draws(p_a):
    """§6.5: σ = 0.25, n = 10^5, 20 runs: CERTIFY's answer (the largest configured radius within its radius) and
    mean draws ≤ 100,100 / 20 (SEQUENTIAL.md §7 simulates 672, 902, 2,762)."""
    sigma, n, alpha = 0.25, 100_000, 0.001
    rng = np.random.default_rng(4)
    used_all = []
    for _ in range(20):
        votes = rng.random(2 * (100 + n)) < p_a  # both see the same selection draws (an error at p_A = 0.6 is ≈ 2 %)
        decision, used = run_plan(sequential_plan(100, n, sigma, alpha, RADII), replay_sampler(votes))
        cohen, _ = run_plan(certify_plan(100, n, sigma, alpha), replay_sampler(votes))
        expected = max([r for r in RADII if cohen.prediction == 0 and cohen.radius >= r], default=None)
        assert (decision.prediction, decision.radius) == ((0, expected) if expected is not None else (-1, 0.0))
        used_all.append(used)
    assert np.mean(used_all) <= (100 + n) / 20


def test_the_hybrid_certifies_at_the_cap_what_only_clopper_pearson_reaches():
    """Votes at a rate between the hybrid's cap rate (CP at α/2) and the KT+u rate for r_1: the sequence never
    certifies r_1, the hybrid does at t = n, and says so with the cap's counts."""
    n, sigma, alpha = 20_000, 0.25, 0.001
    hybrid = SequentialOptions(hybrid=0.5)
    plain = seq.schedule(n, sigma, alpha, decision_radii(RADII), KT_U).cap_counts[1]
    cap = seq.schedule(n, sigma, alpha, decision_radii(RADII), hybrid).cap_counts[1]
    assert cap < plain
    decision, used = run_plan(sequential_plan(100, n, sigma, alpha, [0.25], hybrid), steady_sampler((cap + 1) / n))
    assert decision.radius == 0.25 and decision.counts["n"] == n and used == 100 + n
    assert seq.rederive(decision.counts["nA"], n, seq.schedule(n, sigma, alpha, (0.0, 0.25), hybrid)) == (0, 0.25)
    assert seq.rederive(decision.counts["nA"], n, seq.schedule(n, sigma, alpha, (0.0, 0.25), KT_U)) == (0, 0.0)


@pytest.mark.parametrize("options", [KT_U, SequentialOptions(bound="wsr"), SequentialOptions(bound="ub")])
def test_the_radius_estimate_is_covered_by_the_same_bound(options):
    """With `estimate`, the radius is σ·Φ⁻¹(max_t L_t): at least the configured radius certified (same votes),
    at most the cliff; on unanimous votes (KT+u) it is the closed form of L at the stopping look."""
    estimate = dataclasses.replace(options, estimate=True)
    rng = np.random.default_rng(5)
    for p_a in (0.7, 0.95, 0.999, 1.0):
        votes = rng.random(100 + 100_000) < p_a
        configured, _ = run_plan(sequential_plan(100, 100_000, 0.25, 0.001, RADII, options), replay_sampler(votes))
        estimated, _ = run_plan(sequential_plan(100, 100_000, 0.25, 0.001, RADII, estimate), replay_sampler(votes))
        assert estimated.prediction == configured.prediction
        assert configured.radius <= estimated.radius <= seq.max_radius(0.25, 100_000, 0.001, RADII, estimate)
    if options.bound == "kt":
        decision, _ = run_plan(sequential_plan(100, 100_000, 0.25, 0.001, RADII, estimate), unanimous)
        bound = math.exp((seq.log_mixture(5622, 5622, 0.5) + math.log(0.001)) / 5622)
        assert decision.radius == pytest.approx(0.25 * norm.ppf(bound), rel=1e-12)


def test_betting_wealth_is_nonincreasing_in_m():
    """§2.2: with bets min(λ̇, c/m), every factor is nonincreasing in m, so one L_t serves every radius."""
    rng = np.random.default_rng(6)
    m = np.linspace(0.01, 0.999, 400)
    for _ in range(50):
        sizes = rng.integers(1, 500, size=8)
        history = np.array([(rng.uniform(0, 5), rng.integers(0, s + 1), s) for s in sizes], dtype=float)
        wealth = seq.wsr_log_wealth(history, m, 0.5)
        assert (np.diff(wealth, axis=1) <= 1e-12).all()


# ------------------------------------------------------------------------------------------------ the certify step


@pytest.fixture
def one_thread():
    """Train and certify the tiny model on one thread: on a shared 2-core machine torch's default threads contend
    (8 digits epochs measured 102 s with the default, 18 s with one thread, under the same load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_rows_counts_and_its_sidecar_re_derive_every_decision(tmp_path, one_thread):
    """The TSV's n0 nA0 n nA and the sidecar's settings reproduce each stored answer exactly (KT+u, the hybrid and
    the union bound), and the config fills the radii from report.radii."""
    from conftest import tiny_config

    from methods import config as mc
    from methods.certify.registry import certifier_spec
    from methods.certify.step import certify_run
    from methods.core.tsv import read_tsv
    from methods.train.loop import train

    config = tiny_config(epochs=8, lr=0.1, step_size=6, batch_size=64)  # as tests/test_adaptive.py's
    spec = mc.resolve_run(config, "cohen-0.25", seed=0)
    assert spec["certify"]["sequential"]["radii"] == config["report"]["radii"]
    assert "sequential" not in certifier_spec(spec, "cohen")["certify"]  # its settings re-run no other certifier
    model = train(spec, tmp_path / "run", device="cpu", progress=False)
    for name, overrides in {"kt": {}, "hybrid": {"hybrid": 0.5}, "ub": {"bound": "ub"}}.items():
        section = {**spec["certify"]["sequential"], "radii": [0.25, 0.5, 0.75, 1.0], **overrides}
        cfg = {**spec["certify"], "n": 2000, "count": 10, "skip": 17, "compile": False, "max_batch": 512,
               "sequential": section}  # fmt: skip
        out = certify_run(model, {**spec, "certify": cfg}, tmp_path / f"{name}.tsv", "sequential", device="cpu",
                          progress=False)  # fmt: skip
        frame, meta = read_tsv(out), json.loads(out.with_suffix(".json").read_text())
        options = SequentialOptions(**{f.name: meta[f.name] for f in dataclasses.fields(SequentialOptions)})
        plan = seq.schedule(meta["n"], meta["sigma"], meta["alpha"], tuple(meta["radii"]), options)
        assert list(plan.looks) == meta["looks"] and meta["radii"] == [0.0, 0.25, 0.5, 0.75, 1.0]
        assert ((frame["samples"] >= frame["n0"] + frame["n"]) & (frame["samples"] <= cfg["n0"] + 2000)).all()
        assert set(frame["radius"]) <= set(meta["radii"])
        for row in frame.itertuples(index=False):
            prediction, radius = seq.rederive(int(row.nA), int(row.n), plan)
            assert (prediction == -1) == (row.predict == -1), row
            if row.correct:
                assert radius == row.radius, row
        assert (frame["radius"] > 0).any()  # the check saw certificates, not only abstentions


def test_it_plans_like_the_other_certifiers_on_torch_counts():
    """The samplers send CPU int64 tensors: the plan reads them as it reads numpy counts."""
    decision, used = run_plan(sequential_plan(10, 2000, 0.5, 0.001, [0.25]), lambda num: torch.tensor([0, num, 0]))
    assert decision.prediction == 1 and decision.radius == 0.25 and used == 10 + decision.counts["n"]


def test_cost_table_compares_every_smoothing_certifier_with_certify_on_the_same_images(tmp_path):
    """The certification-cost table: draws per image (mean, median, 90th percentile), the share of CERTIFY's, the
    accuracy gap at each radius and the largest; no comparison against CERTIFY rows of other images."""
    import pandas as pd
    from test_report import _fake_results

    from methods.report.summary import summarize
    from methods.report.tables import cost_table

    root = tmp_path / "results"
    tsvs = _fake_results(root, {"cohen-0.25": (0.25, [[0.3, 0.6, 0.0, 0.9]])})
    tsvs += _fake_results(root, {"cohen-0.25": (0.25, [[0.25, 0.5, 0.0, 0.0]])}, certifier="adaptive")
    tsvs += _fake_results(root, {"cohen-0.25": (0.25, [[0.25, 0.5, 0.0, 0.75]])}, certifier="sequential")
    tsvs += _fake_results(root, {"cohen-0.50": (0.5, [[0.5, 0.5]])}, certifier="sequential")
    samples = ([1100] * 4, [200, 400, 100, 100], [100, 300, 100, 1000], [100, 100])
    for tsv, used in zip(tsvs, samples):
        pd.read_csv(tsv, sep="\t").assign(path="fast", dtype="float32", samples=used).to_csv(tsv, sep="\t", index=False)
    table = cost_table(summarize(tsvs, [0.0, 0.25, 0.5], tmp_path / "summary.csv")).set_index(["run", "certifier"])
    row = table.loc[("cohen-0.25", "sequential")]
    assert (row["samples_per_example"], row["samples_median"]) == (375, 200)
    assert row["samples_p90"] == pytest.approx(790)  # linear interpolation at 2.7 of the sorted 100, 100, 300, 1000
    assert row["samples_vs_cohen"] == pytest.approx(375 / 1100)
    # cohen: 0.75 / 0.75 / 0.5 at 0 / 0.25 / 0.5; sequential: 0.75 / 0.75 / 0.5; adaptive: 0.5 / 0.5 / 0.25
    assert (row["gap@0.00"], row["gap@0.25"], row["gap@0.50"], row["max_acc_gap_vs_cohen"]) == (0, 0, 0, 0)
    adaptive = table.loc[("cohen-0.25", "adaptive")]
    assert adaptive["gap@0.25"] == pytest.approx(-0.25) and adaptive["max_acc_gap_vs_cohen"] == pytest.approx(0.25)
    assert math.isnan(table.loc[("cohen-0.50", "sequential"), "samples_vs_cohen"])  # no CERTIFY rows there
    # CERTIFY on other images is no baseline
    other = summarize(tsvs[:1] + tsvs[2:3], [0.0, 0.25], tmp_path / "other.csv")
    other.loc[other["certifier"] == "cohen", "subset"] = "start 0, skip 2, count None"
    assert math.isnan(cost_table(other).set_index("certifier").loc["sequential", "max_acc_gap_vs_cohen"])
