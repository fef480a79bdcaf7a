"""Sequential certification: one anytime-valid lower confidence sequence for p_A decides every configured radius.

The successor of the adaptive certifier (methods/certify/adaptive.py), specified in ../shared/SEQUENTIAL.md. The
adaptive certifier pays a Bonferroni union over its J pre-planned looks (Clopper–Pearson at α/J at each), in effect
Horváth et al. 2022's scheme. Here a *confidence sequence* (CS) L_t for p_A, valid at every t at once, decides every
radius: P(∃ t ≥ 1: L_t ≥ p_A) ≤ α (Ville's inequality), so any set of looks and any stopping rule keep CERTIFY's
1 − α guarantee, with no correction across looks or radii (SEQUENTIAL.md §2.1, §4, §5.3). Radius r_k is certified
at a look once L_t ≥ τ_k = Φ(r_k/σ), CERTIFY's own condition σ·Φ⁻¹(p̲_A) ≥ r_k; it abstains when r = 0 is not.

Bound families (`SequentialOptions.bound`):
- "kt" (default): the Krichevsky–Trofimov (Beta(½, ½)) mixture likelihood-ratio CS, one-sided at level α, as in
  Voráček's code [RS thresholds.py] (which tests each side at 2α as coded, SEQUENTIAL.md §2.3), with an optional
  point mass w at p = 1 ("KT+u", w = ½ by default; [own] construction of the specification, §2.4). Its value at a
  look is a function of (A_t, t) only, so counts-only requests are exact, and certifying τ is a closed-form
  inequality (`kt_certifies`), no root finding. w = 0 is plain KT.
- "wsr": the betting (hedged-capital) CS of Waudby-Smith & Ramdas, one-sided, with the authors' package's
  predictable plug-in bets truncated at c/m [confseq]. The sampler returns counts per request, not per draw, so the
  bets are held constant within a request (SEQUENTIAL.md §2.2 (i), [own]): the wealth is then exact from counts and
  a test martingale in the request filtration. The variance in the bet uses the counts-only form
  (¼ + Σ (X − μ̂)²)/(t + 1) with the current regularised mean μ̂ (not the per-draw running one) [own]. Its wealth is
  path-dependent: a TSV row's counts (those of one look) do not re-derive its decision.
- "ub": Voráček's union-bound CS [RS get_upper_threshold_ub]: a one-sided Clopper–Pearson bound at level
  α_j = 5α/((j + 4)(j + 5)) at the j-th look (Σ_j α_j = α, telescoping), here on this certifier's look grid (his
  code looks at every draw from t = 3 to 26 first, which spends 0.83α where nothing but r = 0 can be certified).

Looks (§5.1): first_look·growth^j (×1.1 by default) up to n, plus, for "kt", the unanimity points u_k (the least t
at which t unanimous votes certify r_k, §2.4), so a unanimous image stops exactly there. Futility (§5.2): radius k
is dropped at look t < n when the count the cap needs, a_k(n), is out of reach even at the rate U_t of an anytime
upper CS (plain KT at level δ_U, §2.5) for the n − t draws still to come. Futility can only turn a would-be
certificate into an abstention and spends no α. Unlike the specification's pseudo-code, a look checks every radius
that the cap could certify, including one futility has already dropped (a certificate the CS gives is valid whatever
the stopping rule), so the answer is always "the largest radius the CS certified at some look" and a row's counts
re-derive it exactly.

Options (§5.5): `hybrid` h > 0 spends α·h on a Clopper–Pearson test at the cap t = n and α·(1 − h) on the CS
(union bound; h = ½ is the specification's "hybrid", which recovers most certificates a CS loses just above a
threshold) [own]; `delta_u` the level of the futility bound (None = α; 0 = only the deterministic branch: drop a
radius only when even n − t further successes cannot reach a_k(n)); `estimate` reports the radius estimate
R̂ = σ·Φ⁻¹(max over looks of L_t) covered by the same event (§5.4) instead of the largest configured radius
certified (the "estimation mode" that keeps sampling for it is not implemented).

Numerics (§5.6): log space throughout, log(1 − τ) from `norm.logsf`, log Q from `betaln`, 0·log 0 dropped, roots
by bisection in s = −log(1 − m) (resolution near 1), never a uniform grid in m.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy.special import betaln
from scipy.stats import norm

from .adaptive import decision_radii, look_schedule
from .smoothing import ABSTAIN, Decision, lower_confidence_bound, selection_counts, top_two

BOUNDS = ("kt", "wsr", "ub")
LOG_PI = math.log(math.pi)


@dataclass(frozen=True)
class SequentialOptions:
    """The certifier's options (config `certify.sequential`, SEQUENTIAL.md §5.5)."""

    bound: str = "kt"  # "kt" (KT / KT+u mixture), "wsr" (betting, Waudby-Smith & Ramdas), "ub" (Voráček's union bound)
    w: float = 0.5  # KT+u: prior mass at p = 1 (0 = plain KT)
    hybrid: float = 0.0  # share of α for Clopper–Pearson at the cap (0 = off; ½ = the specification's hybrid)
    delta_u: float | None = None  # level of the futility upper CS (None = α; 0 = deterministic futility only)
    first_look: int = 100
    growth: float = 1.1
    unanimity_looks: bool = True  # "kt": add the unanimity points to the looks
    estimate: bool = False  # report σ·Φ⁻¹(max_t L_t) instead of the largest configured radius certified
    trunc_scale: float = 0.5  # "wsr": bets truncated at c/m (confseq's trunc_scale)
    futility: bool = True  # off only in tests (the "without futility" arm of SEQUENTIAL.md §6.4)

    def __post_init__(self):
        if self.bound not in BOUNDS:
            raise ValueError(f"bound must be one of {BOUNDS}, got {self.bound!r}")
        if not 0 <= self.w < 1:
            raise ValueError(f"w must be in [0, 1), got {self.w}")
        if not 0 <= self.hybrid < 1:
            raise ValueError(f"hybrid must be in [0, 1), got {self.hybrid}")
        if self.delta_u is not None and not 0 <= self.delta_u < 1:
            raise ValueError(f"delta_u must be in [0, 1) or None, got {self.delta_u}")
        if not 0 < self.trunc_scale < 1:
            raise ValueError(f"trunc_scale must be in (0, 1), got {self.trunc_scale}")

    @classmethod
    def from_config(cls, section: dict) -> SequentialOptions:
        """From config `certify.sequential` (its `radii` belong to the plan, not to the options)."""
        return cls(**{k: v for k, v in section.items() if k != "radii"})


# ------------------------------------------------------------------------------------------------ the KT mixture


class Threshold(NamedTuple):
    """τ = Φ(r/σ) with log τ and log(1 − τ) computed without cancellation (1 − Φ(4) = 3.2e-5)."""

    tau: float
    log_tau: float
    log_1m_tau: float


def threshold(radius: float, sigma: float) -> Threshold:
    z = radius / sigma
    return Threshold(float(norm.cdf(z)), float(norm.logcdf(z)), float(norm.logsf(z)))


def log_kt(successes: int, trials: int) -> float:
    """log Q_t: the log Beta(½, ½)-mixture probability of any sequence with these counts, B(A + ½, t − A + ½)/π."""
    if trials == 0:
        return 0.0
    return float(betaln(successes + 0.5, trials - successes + 0.5)) - LOG_PI


def log_mixture(successes: int, trials: int, w: float) -> float:
    """log Q^w_t = log(w·1{A = t} + (1 − w)·Q_t): KT+u, the KT mixture plus a point mass w at p = 1 (§2.4)."""
    log_q = log_kt(successes, trials)
    if w == 0:
        return log_q
    if successes == trials:
        return float(np.logaddexp(math.log(w), math.log1p(-w) + log_q))
    return math.log1p(-w) + log_q


def log_likelihood(successes: int, trials: int, log_m: float, log_1m: float) -> float:
    """A·log m + (t − A)·log(1 − m), with 0·log 0 = 0."""
    out = successes * log_m if successes else 0.0
    failures = trials - successes
    return out + failures * log_1m if failures else out


def kt_certifies(successes: int, trials: int, th: Threshold, w: float, level: float) -> bool:
    """τ lies in the rejected set (0, L_t] of the one-sided KT(+u) CS at `level` (§2.3): τ·t ≤ A and
    A·log τ + (t − A)·log(1 − τ) ≤ log Q^w_t + log(level), i.e. the mixture's wealth against τ reached 1/level."""
    if th.tau * trials > successes:
        return False
    return log_likelihood(successes, trials, th.log_tau, th.log_1m_tau) <= log_mixture(successes, trials, w) + math.log(
        level
    )


def kt_lower_bound(successes: int, trials: int, w: float, level: float) -> float:
    """L_t: the root in (0, Â_t) of A·log m + (t − A)·log(1 − m) = log Q^w_t + log(level) (0 when A = 0).

    Closed form on unanimous votes, else bisection in s = −log(1 − m); the value returned is on the rejected side of
    the root (never above the true L_t)."""
    if successes == 0:
        return 0.0
    target = log_mixture(successes, trials, w) + math.log(level)
    if successes == trials:
        return math.exp(target / trials)
    lo, hi = 0.0, -math.log1p(-successes / trials)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        m = -math.expm1(-mid)
        if log_likelihood(successes, trials, math.log(m), -mid) <= target:
            lo = mid
        else:
            hi = mid
    return -math.expm1(-lo)


def kt_upper_below(successes: int, trials: int, x: float, level: float) -> bool:
    """U_t < x for the plain KT upper CS at `level` (§2.5), without root finding: x > 1, or x > Â_t and
    A·log x + (t − A)·log(1 − x) ≤ log Q_t + log(level). level = 0: never (only x > 1)."""
    if x > 1:
        return True
    if level <= 0 or x * trials <= successes:
        return False
    if x == 1:
        return True  # A < t here: the likelihood at 1 is 0
    return log_likelihood(successes, trials, math.log(x), math.log1p(-x)) <= log_kt(successes, trials) + math.log(level)


def unanimity_point(th: Threshold, w: float, level: float, n: int) -> int | None:
    """The least t ≤ n at which t unanimous votes certify τ: t·log τ ≤ log Q^w(t, t) + log(level) (§2.4); None when
    not even n do."""
    t = np.arange(1, n + 1, dtype=np.float64)
    log_q = betaln(t + 0.5, 0.5) - LOG_PI
    log_qw = log_q if w == 0 else np.logaddexp(math.log(w), math.log1p(-w) + log_q)
    ok = t * th.log_tau <= log_qw + math.log(level)
    return int(np.argmax(ok)) + 1 if ok.any() else None


def least_count(certifies, trials: int) -> float:
    """The least count a ≤ trials with certifies(a) (monotone: false, then true), or inf when none."""
    if not certifies(trials):
        return math.inf
    lo, hi = -1, trials  # certifies(hi) holds; lo is below every certifying count
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if certifies(mid):
            hi = mid
        else:
            lo = mid
    return hi


def ub_level(alpha: float, j: int) -> float:
    """Voráček's spending sequence: α_j = 5α/((j + 4)(j + 5)) at the j-th look (j ≥ 1), Σ_j α_j = α."""
    return 5.0 * alpha / ((j + 4) * (j + 5))


# ------------------------------------------------------------------------------------------------ betting (WSR)


def wsr_bet(successes: int, trials: int, size: int, level: float) -> float:
    """The request-constant predictable plug-in bet λ̇ for the next `size` draws, from the counts so far [confseq
    lambda_predmix_eb, with the counts-only variance and the request's midpoint as the draw index; own]."""
    mean = min((0.5 + successes) / (trials + 1), 1.0)
    var = (0.25 + successes * (1 - mean) ** 2 + (trials - successes) * mean**2) / (trials + 1)
    i = trials + (size + 1) // 2
    return math.sqrt(2 * math.log(1 / level) / (var * i * math.log1p(i)))


def wsr_log_wealth(history: np.ndarray, m: np.ndarray, c: float) -> np.ndarray:
    """log K⁺_t(m) after each request of `history` (rows: bet λ̇, successes, size) for each m: one row per request,
    one column per m; bets min(λ̇, c/m) held constant within a request."""
    bet, a, size = history[:, :1], history[:, 1:2], history[:, 2:3]
    lam = np.minimum(bet, c / m[None, :])
    steps = a * np.log1p(lam * (1 - m[None, :])) + (size - a) * np.log1p(-lam * m[None, :])
    return np.cumsum(steps, axis=0)


# ------------------------------------------------------------------------------------------------ the schedule


@dataclass(frozen=True)
class Schedule:
    """What the certifier precomputes once per (n, σ, α, radii, options) (§5.1): thresholds, looks, the least count
    at the cap a_k(n) that certifies each radius (inf: refused up front) and the levels of the α split."""

    n: int
    sigma: float
    alpha: float
    radii: tuple[float, ...]
    options: SequentialOptions
    thresholds: tuple[Threshold, ...] = field(init=False)
    level: float = field(init=False)  # the lower CS's share of α
    cap_level: float = field(init=False)  # the cap's Clopper–Pearson share (hybrid), 0 when off
    delta_u: float = field(init=False)
    looks: tuple[int, ...] = field(init=False)
    cap_counts: tuple[float, ...] = field(init=False)

    def __post_init__(self):
        o = self.options
        put = object.__setattr__
        put(self, "thresholds", tuple(threshold(r, self.sigma) for r in self.radii))
        put(self, "level", self.alpha * (1 - o.hybrid))
        put(self, "cap_level", self.alpha * o.hybrid)
        put(self, "delta_u", self.alpha if o.delta_u is None else o.delta_u)
        looks = set(look_schedule(self.n, o.first_look, o.growth))
        if o.bound == "kt" and o.unanimity_looks:
            points = (unanimity_point(th, o.w, self.level, self.n) for th in self.thresholds)
            looks |= {u for u in points if u is not None}
        put(self, "looks", tuple(sorted(looks)))
        put(self, "cap_counts", tuple(self._cap_count(k) for k in range(len(self.radii))))

    @property
    def reach(self) -> int:
        """How many radii (a prefix) the cap can certify at all; the others are refused before any draw."""
        return sum(1 for a in self.cap_counts if a < math.inf)

    def cap_certifies(self, successes: int, k: int) -> bool:
        """The hybrid's Clopper–Pearson test at the cap, at level α·hybrid."""
        return (
            self.cap_level > 0 and lower_confidence_bound(successes, self.n, self.cap_level) >= self.thresholds[k].tau
        )

    def _cap_count(self, k: int) -> float:
        th, n, o = self.thresholds[k], self.n, self.options
        cap = least_count(lambda a: self.cap_certifies(a, k), n) if self.cap_level > 0 else math.inf
        if o.bound == "kt":
            own = least_count(lambda a: kt_certifies(a, n, th, o.w, self.level), n)
        elif o.bound == "ub":
            last = ub_level(self.level, len(self.looks))
            own = least_count(lambda a: lower_confidence_bound(a, n, last) >= th.tau, n)
        else:
            own = self._wsr_cap_count(k)
        return min(own, cap)

    def _wsr_cap_count(self, k: int) -> float:
        """ "wsr": a count is not enough to decide at the cap (the wealth depends on the path); futility uses ⌈p*·n⌉,
        p* the least rate whose evenly spread path (A_t = ⌊p·t⌋ at every look) certifies r_k by the cap [own]."""
        tau = np.array([self.thresholds[k].tau])

        def certifies_by_cap(rate: float) -> bool:
            history, done = [], 0
            for look in self.looks:
                a_done = math.floor(rate * done)
                history.append((wsr_bet(a_done, done, look - done, self.level), math.floor(rate * look) - a_done,
                                look - done))  # fmt: skip
                done = look
            return bool((wsr_log_wealth(np.array(history, dtype=float), tau, self.options.trunc_scale)
                         >= math.log(1 / self.level)).any())  # fmt: skip

        if not certifies_by_cap(1.0):
            return math.inf
        lo, hi = self.thresholds[k].tau, 1.0
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if certifies_by_cap(mid) else (mid, hi)
        return math.ceil(hi * self.n)


@lru_cache(maxsize=64)
def schedule(n: int, sigma: float, alpha: float, radii: tuple[float, ...], options: SequentialOptions) -> Schedule:
    """The precomputation, cached: the fast sampler asks for a fresh plan per image."""
    return Schedule(n, sigma, alpha, radii, options)


# ------------------------------------------------------------------------------------------------ one image


class _Bound:
    """The lower CS of one image at its current look: does it certify τ_k, and L_t (for the estimate)."""

    def __init__(self, plan: Schedule):
        self.s = plan
        self.successes = self.trials = self.look = 0

    def observe(self, successes: int, trials: int) -> None:
        """Fold in one request: `successes` votes for A among `trials - self.trials` new draws."""
        self.successes, self.trials, self.look = successes, trials, self.look + 1

    def certifies(self, k: int) -> bool:
        raise NotImplementedError

    def lower(self) -> float:
        raise NotImplementedError


class _KT(_Bound):
    def certifies(self, k: int) -> bool:
        return kt_certifies(self.successes, self.trials, self.s.thresholds[k], self.s.options.w, self.s.level)

    def lower(self) -> float:
        return kt_lower_bound(self.successes, self.trials, self.s.options.w, self.s.level)


class _UnionBound(_Bound):
    def observe(self, successes: int, trials: int) -> None:
        super().observe(successes, trials)
        self.bound = lower_confidence_bound(successes, trials, ub_level(self.s.level, self.look))

    def certifies(self, k: int) -> bool:
        return self.bound >= self.s.thresholds[k].tau

    def lower(self) -> float:
        return self.bound


class _Betting(_Bound):
    """Wealth against each τ_k (log K⁺), one request-constant bet per request; the history serves the estimate."""

    def __init__(self, plan: Schedule):
        super().__init__(plan)
        self.taus = np.array([th.tau for th in plan.thresholds])
        self.history: list[tuple[float, int, int]] = []
        self.wealth = np.zeros(len(self.taus))

    def observe(self, successes: int, trials: int) -> None:
        size, new = trials - self.trials, successes - self.successes
        bet = wsr_bet(self.successes, self.trials, size, self.s.level)
        self.history.append((bet, new, size))
        self.wealth = self.wealth + wsr_log_wealth(np.array([self.history[-1]], float), self.taus,
                                                   self.s.options.trunc_scale)[0]  # fmt: skip
        super().observe(successes, trials)

    def certifies(self, k: int) -> bool:
        return bool(self.wealth[k] >= math.log(1 / self.s.level))

    def lower(self) -> float:
        """inf{m : K⁺_t(m) < 1/α} at this look (bisection in s = −log(1 − m); K⁺ is nonincreasing in m, §2.2)."""
        history, goal = np.array(self.history, float), math.log(1 / self.s.level)
        lo, hi = 0.0, 60.0
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            if wsr_log_wealth(history, np.array([-math.expm1(-mid)]), self.s.options.trunc_scale)[-1, 0] >= goal:
                lo = mid
            else:
                hi = mid
        return -math.expm1(-lo)


BOUND_CLASSES = {"kt": _KT, "ub": _UnionBound, "wsr": _Betting}


def futile(plan: Schedule, successes: int, trials: int, k: int) -> bool:
    """Radius k is out of reach at look t < n (§5.2): x = (a_k(n) − A)/(n − t) > 1 (deterministic), or x > Â_t and
    the anytime upper CS at level δ_U lies below x."""
    x = (plan.cap_counts[k] - successes) / (plan.n - trials)
    return kt_upper_below(successes, trials, x, plan.delta_u)


def sequential_plan(n0: int, n: int, sigma: float, alpha: float, radii: Sequence[float],
                    options: SequentialOptions = SequentialOptions()):  # fmt: skip
    """The sequential certifier as a sampling plan (methods/certify/sampling.py), SEQUENTIAL.md §5.2.

    Selection from n0 draws as CERTIFY (ties → lowest index), then one request per look until every radius is
    decided. Returns Decision(class, radius, counts) with the counts (n, nA) of the look that decided the answer:
    where the largest certified radius was first certified (with `estimate`, where L_t was largest), else the last
    look."""
    plan = schedule(int(n), float(sigma), float(alpha), decision_radii(radii), options)
    selection = yield n0
    top = top_two([int(c) for c in selection])[0]
    bound = BOUND_CLASSES[options.bound](plan)
    reach0 = reach = plan.reach
    certified, successes, trials = -1, 0, 0
    evidence, best_lower = (0, 0), -1.0
    for look in plan.looks:
        if certified + 1 >= reach:
            break
        counts = yield look - trials
        successes += int(counts[top])
        trials = look
        bound.observe(successes, trials)
        at_cap = trials >= n and plan.cap_level > 0
        before = certified
        while certified + 1 < reach0 and (
            bound.certifies(certified + 1) or (at_cap and plan.cap_certifies(successes, certified + 1))
        ):
            certified += 1
        if options.estimate:
            lower = bound.lower()
            if at_cap:
                lower = max(lower, lower_confidence_bound(successes, n, plan.cap_level))
            if lower > best_lower:
                best_lower, evidence = lower, (successes, trials)
        elif certified > before:
            evidence = (successes, trials)
        if trials >= n:
            break
        while options.futility and reach > certified + 1 and futile(plan, successes, trials, reach - 1):
            reach -= 1
    if certified < 0:  # the last look's counts: not even r = 0 was certified there (nor at any look)
        return Decision(ABSTAIN, 0.0, {**selection_counts(n0, selection, top), "n": trials, "nA": successes})
    radius = plan.radii[certified]
    if options.estimate:  # ≥ the largest configured radius certified in exact arithmetic; max() guards the rounding
        radius = max(radius, sigma * float(norm.ppf(min(best_lower, 1.0))))
    return Decision(top, radius, {**selection_counts(n0, selection, top), "n": evidence[1], "nA": evidence[0]})


def max_radius(sigma: float, n: int, alpha: float, radii: Sequence[float],
               options: SequentialOptions = SequentialOptions()) -> float:  # fmt: skip
    """The largest radius the certifier can return (the curves' cliff): the largest configured radius the cap can
    certify, or with `estimate` σ·Φ⁻¹ of the largest L_t unanimous votes reach at any look."""
    plan = schedule(int(n), float(sigma), float(alpha), decision_radii(radii), options)
    largest = plan.radii[plan.reach - 1] if plan.reach else 0.0
    if not options.estimate:
        return largest
    bound, best = BOUND_CLASSES[options.bound](plan), 0.0
    for look in plan.looks:
        bound.observe(look, look)
        best = max(best, bound.lower())
    if plan.cap_level > 0:
        best = max(best, lower_confidence_bound(n, n, plan.cap_level))
    return max(largest, sigma * float(norm.ppf(best))) if best >= 0.5 else largest


def rederive(successes: int, trials: int, plan: Schedule) -> tuple[int, float]:
    """The answer a TSV row's counts (the deciding look's n, nA) imply, for "kt" and "ub" without `estimate`:
    (0, the largest radius certified) or (ABSTAIN, 0.0). With the sidecar's settings this re-checks a row offline."""
    if plan.options.bound == "wsr":
        raise ValueError("the betting CS's wealth depends on every look's counts, not on one look's")
    bound = BOUND_CLASSES[plan.options.bound](plan)
    if plan.options.bound == "ub":
        bound.look = plan.looks.index(trials)
    bound.observe(successes, trials)
    at_cap = trials >= plan.n and plan.cap_level > 0
    ok = [k for k in range(plan.reach) if bound.certifies(k) or (at_cap and plan.cap_certifies(successes, k))]
    return (0, plan.radii[max(ok)]) if ok else (ABSTAIN, 0.0)
