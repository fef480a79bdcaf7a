"""Every certifier and evaluator by name: what it serves, what its radii mean, the settings it reads, how it runs.

Two kinds of entries, one per way of running:
- `SmoothingCertifier` (ℓ2, randomized smoothing): `plan(cfg)` is a fresh *sampling plan* for one image
  (methods/certify/sampling.py), driven by the plain or the fast sampler; CERTIFY, T-CERTIFY (and its grid), the
  adaptive certifier.
- `BatchEvaluator` (ℓ∞): `build(model, info, cfg, seed)` returns `evaluate(xs, ys, idxs) -> (predictions, radius)`
  for a batch of images (methods/certify/linf.py); the ℓ∞-dist certificates and the attacks' empirical radii.
Every entry also says which threat models it can evaluate (a model of another is refused, naming both), its norm and
kind (`certified`: a guarantee; `empirical`: an attack's upper bound — the report never mixes them), the caveat the
tables print beside its rows, its largest possible radius (the curves' cliff) and what its sidecar records of its
own settings. Adding a certifier is one entry here; tests/test_certifier_registry.py generates its tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from ..core.errors import ConfigError
from . import adaptive, attacks, linf, sequential
from .sampling import Plan
from .smoothing import (
    certify_plan,
    default_split_grid,
    max_radius,
    t_certify_counts,
    t_certify_counts_grid,
    t_certify_grid_plan,
    t_certify_plan,
)

#: The certify settings each norm's evaluators read; a certify job's spec keeps only these, so changing n re-runs
#: no ℓ∞ evaluation, changing the ε grid no smoothing certificate, and adding a certifier re-runs nothing else.
SETTINGS = {
    "l2": ("sigma", "n0", "n", "alpha", "batch_size", "start", "skip", "count", "t_certify_split",
           "t_certify_grid_size", "fast", "dtype", "compile", "max_batch", "adaptive", "tf32"),
    "linf": ("eps_grid", "batch_size", "start", "skip", "count", "tf32"),
}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Certifier:
    """What an evaluator applies to and what its radii mean."""

    threat_models: tuple[str, ...]  # the models it can evaluate
    norm: str  # "l2" or "linf"
    kind: str  # "certified" (a guarantee) or "empirical" (an attack's upper bound on the robust radius)
    note: str = ""  # a caveat the report prints beside its rows
    own_settings: tuple[str, ...] = ()  # certify settings only this certifier reads, beyond its norm's

    @property
    def settings(self) -> tuple[str, ...]:
        """The certify settings it reads (the keys its certify job's spec keeps)."""
        return SETTINGS[self.norm] + self.own_settings

    def record(self, cfg: dict) -> dict:
        """What the sidecar records of its own settings."""
        raise NotImplementedError

    def max_radius(self, cfg: dict, num_classes: int) -> float | None:
        """The largest radius it can return with these settings: the curves' cliff (None: unbounded)."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class SmoothingCertifier(Certifier):
    """ℓ2 randomized smoothing: one sampling plan per image."""

    plan: Callable[[dict], Plan]  # certify settings -> a fresh plan for one image
    cliff: Callable[[dict, int], float]  # (certify settings, num_classes) -> the largest radius
    extra: Callable[[dict], dict] = lambda cfg: {}  # its own settings beyond n0, n, alpha, batch_size
    norm: str = "l2"
    kind: str = "certified"
    threat_models: tuple[str, ...] = ("l2-smoothing",)

    def record(self, cfg: dict) -> dict:
        return {"n0": cfg["n0"], "n": cfg["n"], "alpha": cfg["alpha"], "batch_size": cfg["batch_size"],
                **self.extra(cfg)}  # fmt: skip

    def max_radius(self, cfg: dict, num_classes: int) -> float:
        return self.cliff(cfg, num_classes)


@dataclass(frozen=True, kw_only=True)
class BatchEvaluator(Certifier):
    """ℓ∞: a batch of images at a time, on the config's ε grid."""

    build: Callable  # (model, info, cfg, seed) -> evaluate(xs, ys, idxs) -> (predictions, radius)
    unbounded: bool = False  # an exact radius (the margin), not capped by the ε grid
    norm: str = "linf"

    def record(self, cfg: dict) -> dict:
        if self.single_eps:
            return {"attack_eps": cfg["attack_eps"], "batch_size": cfg["batch_size"]}
        return {"eps_grid": cfg["eps_grid"], "batch_size": cfg["batch_size"]}

    def max_radius(self, cfg: dict, num_classes: int) -> float | None:
        if self.single_eps:
            return float(cfg["attack_eps"])
        return None if self.unbounded else max(cfg["eps_grid"])

    @property
    def single_eps(self) -> bool:
        """A standalone attack at one ε (`certify.attack_eps`), not an ε grid."""
        return "attack_eps" in self.own_settings


# ------------------------------------------------------------------------------------------------ ℓ2 smoothing


def _args(cfg: dict) -> tuple:
    return cfg["n0"], cfg["n"], cfg["sigma"], cfg["alpha"]


def _unanimous(cfg: dict, num_classes: int) -> tuple[list[int], list[int]]:
    """Selection and estimation counts where every draw votes for class 0: the best a certifier can see."""
    return [cfg["n0"]] + [0] * (num_classes - 1), [cfg["n"]] + [0] * (num_classes - 1)


def _adaptive_plan(cfg: dict) -> Plan:
    a = cfg["adaptive"]
    return adaptive.adaptive_plan(*_args(cfg), radii=a["radii"], first_look=a["first_look"], growth=a["growth"])


def _adaptive_cliff(cfg: dict, num_classes: int) -> float:
    a = cfg["adaptive"]
    return adaptive.max_radius(cfg["sigma"], cfg["n"], cfg["alpha"], a["radii"], a["first_look"], a["growth"])


def _adaptive_extra(cfg: dict) -> dict:
    a = cfg["adaptive"]
    return {"radii": list(adaptive.decision_radii(a["radii"])),
            "looks": adaptive.look_schedule(cfg["n"], a["first_look"], a["growth"])}  # fmt: skip


def _sequential(cfg: dict) -> tuple[list, sequential.SequentialOptions]:
    section = cfg["sequential"]
    return section["radii"], sequential.SequentialOptions.from_config(section)


def _sequential_plan(cfg: dict) -> Plan:
    radii, options = _sequential(cfg)
    return sequential.sequential_plan(*_args(cfg), radii=radii, options=options)


def _sequential_cliff(cfg: dict, num_classes: int) -> float:
    radii, options = _sequential(cfg)
    return sequential.max_radius(cfg["sigma"], cfg["n"], cfg["alpha"], radii, options)


def _sequential_extra(cfg: dict) -> dict:
    """The sidecar's record: with a row's (n, nA), enough to re-check a "kt" / "ub" decision offline
    (sequential.rederive)."""
    radii, options = _sequential(cfg)
    plan = sequential.schedule(cfg["n"], float(cfg["sigma"]), cfg["alpha"], adaptive.decision_radii(radii), options)
    cap_counts = [a if a < float("inf") else None for a in plan.cap_counts]  # None: refused up front
    return {"radii": list(plan.radii), "looks": list(plan.looks), **dataclasses.asdict(options),
            "delta_u": plan.delta_u, "cap_counts": cap_counts}  # fmt: skip


def _split_grid(cfg: dict) -> list:
    return default_split_grid(cfg["t_certify_grid_size"])


COHEN = SmoothingCertifier(
    plan=lambda cfg: certify_plan(*_args(cfg)),
    cliff=lambda cfg, num_classes: max_radius(cfg["sigma"], cfg["n"], cfg["alpha"]),
)
T_CERTIFY = SmoothingCertifier(
    plan=lambda cfg: t_certify_plan(*_args(cfg), split=cfg["t_certify_split"]),
    cliff=lambda cfg, k: t_certify_counts(*_unanimous(cfg, k), cfg["sigma"], cfg["alpha"], cfg["t_certify_split"])[1],
    extra=lambda cfg: {"t_certify_split": cfg["t_certify_split"]},
    note="Feng et al.'s T-CERTIFY, reconstructed (METHODS.md §4): top and runner-up bounded separately, alpha split "
    "fixed in advance (t_certify_split)",
)
T_CERTIFY_GRID = SmoothingCertifier(
    plan=lambda cfg: t_certify_grid_plan(*_args(cfg), grid=_split_grid(cfg)),
    cliff=lambda cfg, k: t_certify_counts_grid(*_unanimous(cfg, k), cfg["sigma"], cfg["alpha"], _split_grid(cfg))[1],
    extra=lambda cfg: {"t_certify_grid": _split_grid(cfg)},
    note="paper-style T-CERTIFY, reconstructed (METHODS.md §4): the largest radius over a grid of alpha splits, each "
    "at alpha / (grid length), Bonferroni-corrected",
)
ADAPTIVE = SmoothingCertifier(
    plan=_adaptive_plan,
    cliff=_adaptive_cliff,
    extra=_adaptive_extra,
    note="adaptive: a sequential test per configured radius (Clopper-Pearson at alpha / J over J pre-planned looks, "
    "anytime-valid); its radius is the largest configured radius it certified, so its ACR is a lower bound and not "
    "comparable with CERTIFY's",
)
SEQUENTIAL = SmoothingCertifier(
    plan=_sequential_plan,
    cliff=_sequential_cliff,
    extra=_sequential_extra,
    own_settings=("sequential",),
    note="sequential: one anytime-valid lower confidence sequence for p_A (KT+u mixture by default, SEQUENTIAL.md) "
    "decides every configured radius with no correction over looks or radii; its radius is the largest configured "
    "radius it certified (unless certify.sequential.estimate), so its ACR is a lower bound and not comparable with "
    "CERTIFY's",
)

# ------------------------------------------------------------------------------------------------ ℓ∞ evaluators

_EMPIRICAL = "empirical radius (the largest eps of the grid the attack fails at): an upper bound on robustness, not a certificate"  # noqa: E501


def _at_eps(build_attack, per_example: bool = True, **kw) -> BatchEvaluator:
    """A standalone attack at exactly the run's `certify.attack_eps` (default its own test ε): the protocol of a
    published robust accuracy (one attack at the reported ε and the reference's step)."""
    return BatchEvaluator(
        build=linf.at_eps(build_attack, per_example, kw.pop("scaled_logits", False)),
        kind="empirical",
        own_settings=("attack_eps",),
        threat_models=kw.pop("threat_models", ("linf-certified", "linf-empirical")),
        note=kw.pop("note"),
    )


def _attack(build_attack, per_example: bool = True, **kw) -> BatchEvaluator:
    """An attack's empirical radius on the ε grid (PGD steps ε/4 at every grid ε, no random start unless said)."""
    return BatchEvaluator(
        build=linf.attack_evaluator(build_attack, per_example, kw.pop("scaled_logits", False)),
        kind="empirical",
        threat_models=kw.pop("threat_models", ("linf-certified", "linf-empirical")),
        note=kw.pop("note", _EMPIRICAL),
    )


#: certifier name (as written in configs, and the TSV's file name) -> entry
CERTIFIERS: dict[str, Certifier] = {
    "cohen": COHEN,
    "t-certify": T_CERTIFY,
    "t-certify-grid": T_CERTIFY_GRID,
    "adaptive": ADAPTIVE,
    "sequential": SEQUENTIAL,
    "linf-margin": BatchEvaluator(
        build=linf.margin_evaluator, unbounded=True, kind="certified", threat_models=("linf-certified",)
    ),
    "linf-interval": BatchEvaluator(
        build=linf.interval_evaluator,
        kind="certified",
        threat_models=("linf-certified",),
        note="interval bounds over the eps-box clipped to [0, 1], on the eps grid",
    ),
    "pgd20": _attack(linf.pgd_preset(attacks.PGD20)),
    "pgd100": _attack(linf.pgd_preset(attacks.PGD100)),
    "cw-pgd100": _attack(linf.pgd_preset(attacks.PGD100, "cw")),
    "autoattack": _attack(linf.autoattack_preset, per_example=False),
    "linf-dist-pgd": _attack(
        linf.pgd_preset(attacks.PGD100, random_start="gaussian"),
        scaled_logits=True,
        threat_models=("linf-certified",),
        note="the l-inf-dist papers' PGD: 100 steps of eps/4 from x + clip(N(0, (eps/4)^2), +-eps/2), CE on s*z; "
        "empirical (an upper bound), not a certificate",
    ),
    "pgd20-at-eps": _at_eps(
        linf.pgd_preset(attacks.BACKWARD_SMOOTHING_PGD20),
        note="PGD-20 at exactly attack_eps, the backward-smoothing evaluation: CE, step 0.0078 at eps 0.031 (the same "
        "fraction of eps elsewhere), no random start; empirical (an upper bound), not a certificate",
    ),
    "pgd100-at-eps": _at_eps(
        linf.pgd_preset(attacks.BACKWARD_SMOOTHING_PGD100),
        note="PGD-100 at exactly attack_eps, the backward-smoothing evaluation: CE, step 0.0078 at eps 0.031 (the same "
        "fraction of eps elsewhere), no random start; empirical (an upper bound), not a certificate",
    ),
    "autoattack-at-eps": _at_eps(
        linf.autoattack_preset,
        per_example=False,
        note="AutoAttack standard at exactly attack_eps; empirical (an upper bound), not a certificate",
    ),
    "trades-pgd20-at-eps": _at_eps(
        linf.pgd_preset(attacks.TRADES_PGD20, random_start=True),
        note="PGD-20 at exactly attack_eps, TRADES's own evaluation: CE, step 0.003 at eps 0.031 (the same fraction of "
        "eps elsewhere), random start U(-eps, eps) (clipped to [0, 1] here, not in the reference); empirical (an upper "
        "bound), not a certificate",
    ),
    "fast-pgd50x10-at-eps": _at_eps(
        lambda num_classes: attacks.FAST_PGD50X10,
        note="PGD-50 with 10 restarts at exactly attack_eps, Fast AT's evaluation: step 2/255 at eps 8/255 (the same "
        "fraction of eps elsewhere), random start clipped to [0, 1], an example stops moving once misclassified, the "
        "highest-CE restart kept; empirical (an upper bound), not a certificate",
    ),
    "linf-dist-pgd100-at-eps": _at_eps(
        linf.pgd_preset(attacks.PGD100, random_start="gaussian"),
        scaled_logits=True,
        threat_models=("linf-certified",),
        note="the l-inf-dist v2 evaluation at exactly attack_eps (the run's eps_test): PGD-100, steps of eps/4 from "
        "x + clip(N(0, (eps/4)^2), +-eps/2), CE on s*z; empirical (an upper bound), not a certificate",
    ),
    "linf-dist-pgd20-at-eps": _at_eps(
        linf.pgd_preset(attacks.PGD20, random_start="gaussian"),
        scaled_logits=True,
        threat_models=("linf-certified",),
        note="the l-inf-dist v1 evaluation at exactly attack_eps (the run's eps_test): PGD-20, steps of eps/4 from "
        "x + clip(N(0, (eps/4)^2), +-eps/2); empirical (an upper bound), not a certificate",
    ),
}

#: What a run certifies with when its config names no certifier: its threat model's own evaluator.
DEFAULT_CERTIFIERS = {"l2-smoothing": ["cohen"], "linf-certified": ["linf-interval"], "linf-empirical": ["pgd20"]}

#: Caveats the report prints beside a certifier's rows.
CERTIFIER_NOTES = {name: c.note for name, c in CERTIFIERS.items() if c.note}


def get_certifier(name: str) -> Certifier:
    if name not in CERTIFIERS:
        raise ConfigError(f"unknown certifier {name!r} (known: {', '.join(CERTIFIERS)})")
    return CERTIFIERS[name]


def certifier_spec(spec: dict, certifier: str) -> dict:
    """`spec` with its certify section cut to what `certifier` reads (a single-ε attack: its own ε of the run's
    `attack_eps` mapping, so changing another evaluator's ε reruns nothing here)."""
    keep = get_certifier(certifier).settings
    cfg = {k: v for k, v in spec["certify"].items() if k in keep}
    if "attack_eps" in cfg:
        eps = cfg["attack_eps"]
        cfg["attack_eps"] = eps.get(certifier) if isinstance(eps, dict) else eps
    return {**spec, "certify": cfg}


def check_serves(certifier: str, threat_model: str, what: str) -> None:
    """Refuse a model of a threat model the certifier cannot evaluate (a ValueError naming both)."""
    entry = get_certifier(certifier)
    if threat_model not in entry.threat_models:
        raise ValueError(f"certifier {certifier} needs a {' or '.join(entry.threat_models)} model; {what} is "
                         f"{threat_model}")  # fmt: skip
