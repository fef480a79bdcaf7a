"""Reproduced vs published: every reproduced number beside the paper's, with an interval that says how sure we are.

A run names the published settings it reproduces in the config (`published: [{paper, dataset, setting}]`, the
keys of workflow/resources/published.csv); summarize copies them into summary.csv's `published` column, so this
module needs nothing but summary.csv, the per-example TSVs and the CSV of published numbers.

Uncertainty (95 %):
- one seed, an accuracy (certified / clean / PGD / AutoAttack): Clopper–Pearson over the evaluated images
  (statsmodels `proportion_confint(..., method="beta")`);
- one seed, ACR: a t-interval over images of radius·correct (a mean, not a proportion);
- several seeds: mean ± std over seeds and a t-interval over seeds (the seed-to-seed spread, which contains the
  image sampling noise of each seed).
- a published best of N seeds: the best of ours, with that seed's interval.
`outside` flags a published value outside the interval, and only where the two numbers were measured by the same
protocol: the same evaluator and settings (n0, n, α of smoothing; for an attack, one standalone attack at exactly the
published ε, not the ε grid's union of attacks), the same test images, the same kind of seed aggregate (a single
model, the mean, or the best of as many seeds) and float32 (every paper here trained and certified in float32).
Each row shows both protocols and, where they differ, why (`protocol_match`). A published value from another dataset
than the run's (the digits runs point at the CIFAR-10 setting they scale down) is shown for orientation only: no
difference, no flag.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from ..certify.registry import CERTIFIERS
from ..core.tsv import read_tsv
from .imported import image_by_image
from .published import PUBLISHED_DTYPE, parse_protocol, parse_seeds, parse_subset, select

LEVEL = 0.95
#: Metrics compared image by image from the per-example TSVs (timing lives in the timing table).
COMPARED = ("certified_accuracy", "acr", "clean_accuracy", "pgd_accuracy", "autoattack_accuracy")
#: Grid evaluators only know the accuracy at the ε of their grid.
_GRID_TOLERANCE = 1e-9


def clopper_pearson(successes: int, trials: int, level: float = LEVEL) -> tuple[float, float]:
    """Two-sided exact binomial interval for successes / trials."""
    low, high = proportion_confint(successes, trials, alpha=1 - level, method="beta")
    return float(low), float(high)


def t_interval(values, level: float = LEVEL) -> tuple[float, float, float, float]:
    """(mean, std, low, high): Student-t interval for the mean of `values` (NaN spread for fewer than two)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(values.std(ddof=1))
    if std == 0:
        return mean, 0.0, mean, mean
    low, high = stats.t.interval(level, len(values) - 1, loc=mean, scale=std / math.sqrt(len(values)))
    return mean, std, float(low), float(high)


@dataclass(frozen=True)
class Estimate:
    value: float
    std: float  # over seeds (NaN with one seed)
    low: float
    high: float
    seeds: int
    interval: str  # how (low, high) was computed


def _hits(frame: pd.DataFrame, radius: float) -> np.ndarray:
    return ((frame["correct"] == 1) & (frame["radius"] >= radius - _GRID_TOLERANCE)).to_numpy()


def estimate(
    frames: list[pd.DataFrame], metric: str, radius: float = 0.0, level: float = LEVEL, aggregate: str = "mean"
) -> Estimate:
    """The metric over per-example frames, one frame per seed, with its interval (see the module docstring).
    aggregate "best": the best seed's value and that seed's own interval (to set beside a published best-of-N)."""
    if aggregate == "best" and len(frames) > 1:
        scores = [estimate([f], metric, radius, level) for f in frames]
        best = max(scores, key=lambda e: e.value)
        return Estimate(best.value, math.nan, best.low, best.high, len(frames),
                        f"best of {len(frames)} seeds; {best.interval} of that seed")  # fmt: skip
    if metric == "acr":
        per_image = [(f["radius"] * f["correct"]).to_numpy(dtype=float) for f in frames]
    else:
        per_image = [_hits(f, 0.0 if metric == "clean_accuracy" else radius).astype(float) for f in frames]
    if len(frames) == 1:
        values = per_image[0]
        if metric == "acr":
            mean, _, low, high = t_interval(values, level)
            return Estimate(mean, math.nan, low, high, 1, f"t over {len(values)} images")
        low, high = clopper_pearson(int(values.sum()), len(values), level)
        return Estimate(float(values.mean()), math.nan, low, high, 1, f"Clopper-Pearson over {len(values)} images")
    mean, std, low, high = t_interval([v.mean() for v in per_image], level)
    return Estimate(mean, std, low, high, len(frames), f"t over {len(frames)} seeds")


def _outside(est: Estimate, value: float) -> str:
    """ "yes" where the published value lies outside the reproduced interval (float slack 1e-12)."""
    return "yes" if not est.low - 1e-12 <= value <= est.high + 1e-12 else ""


def published_refs(cell) -> list[dict]:
    """summary.csv's `published` cell (JSON list of {paper, dataset, setting}; empty → [])."""
    if not isinstance(cell, str) or not cell:
        return []
    return json.loads(cell)


def ref_label(ref: dict) -> str:
    return f"{ref['paper']} {ref['dataset']} {ref['setting']}"


def _eps_grid(certify_file: str) -> list[float] | None:
    meta = json.loads(Path(certify_file).with_suffix(".json").read_text())
    return meta.get("eps_grid") if meta.get("norm") == "linf" and meta.get("certifier") != "linf-margin" else None


def _pick_certifier(rows: pd.DataFrame, wanted: str, metric: str) -> str | None:
    """The run's evaluator for a published number: the one the CSV names, else (clean accuracy) any ℓ∞ one."""
    available = list(dict.fromkeys(rows["certifier"]))
    if isinstance(wanted, str) and wanted:
        return wanted if wanted in available else None
    linf = [c for c, n in zip(rows["certifier"], rows["norm"]) if n == "linf"]
    return linf[0] if metric == "clean_accuracy" and linf else None


@dataclass(frozen=True)
class Protocol:
    """What produced a number: the evaluator and its settings, the test images, the seeds, the precision."""

    certifier: str
    settings: str  # "n0=100, n=100000, alpha=0.001" / "eps=0.031" / "eps grid 0.031, 0.0314" / ""
    subset: str  # "start:skip:count" ("not stated" where a source does not say)
    seeds: str  # "single", "best of N", "mean of N"
    dtype: str  # "float32", or what differed ("certify bfloat16, train float32")

    def describe(self) -> str:
        parts = [self.certifier or "?", self.settings, f"images {self.subset}", self.seeds, self.dtype]
        return "; ".join(p for p in parts if p)


def _sidecar(certify_file) -> dict:
    return json.loads(Path(certify_file).with_suffix(".json").read_text())


def _train_dtype(certify_file) -> str:
    """The dtype the run trained in, from its train log (the fast path's bf16 autocast says bfloat16)."""
    log = Path(certify_file).parent.parent / "train_log.tsv"
    if not log.exists():
        return "unknown"
    dtypes = pd.read_csv(log, sep="\t").get("dtype", pd.Series(["float32"])).dropna().astype(str)
    return "/".join(sorted(set(dtypes))) or "float32"


def _settings(meta: dict) -> str:
    if meta.get("attack_eps") is not None:
        return f"eps={meta['attack_eps']:.6g}"
    if meta.get("norm") == "linf" and meta.get("eps_grid"):
        return "eps grid " + ", ".join(f"{e:.6g}" for e in meta["eps_grid"])
    if meta.get("n") is not None:
        return f"n0={meta['n0']}, n={meta['n']}, alpha={meta['alpha']}"
    return ""


def _published_protocol(pub) -> Protocol:
    settings = parse_protocol(pub.protocol)
    if settings:
        text = ", ".join(f"{k}={v}" for k, v in settings.items())
    elif pub.certifier and CERTIFIERS.get(pub.certifier) is not None and pub.certifier.endswith("-at-eps"):
        text = f"eps={pub.epsilon:.6g}"
    else:
        text = ""
    return Protocol(pub.certifier, text, pub.subset or "not stated", pub.seeds or "not stated", PUBLISHED_DTYPE)


def _reproduced_protocol(files: list, aggregate: str) -> Protocol:
    metas = [_sidecar(f) for f in files]
    meta, sub = metas[0], metas[0]["subset"]
    dtypes = {"certify": sorted({m.get("dtype", "float32") for m in metas}),
              "train": sorted({_train_dtype(f) for f in files})}  # fmt: skip
    if all(d == [PUBLISHED_DTYPE] for d in dtypes.values()):
        dtype = PUBLISHED_DTYPE
    else:
        dtype = ", ".join(f"{k} {'/'.join(v)}" for k, v in dtypes.items())
    seeds = "single" if len(files) == 1 else f"{aggregate} of {len(files)}"
    return Protocol(meta["certifier"], _settings(meta), f"{sub['start']}:{sub['skip']}:{sub['examples']}", seeds, dtype)


def protocol_mismatches(pub, ours: Protocol, metas: list[dict]) -> list[str]:
    """Why the reproduced number was not measured the way the published one was (empty: like with like). A clean
    accuracy is any evaluator's clean pass: only its images, seeds and precision must match."""
    reasons = [] if pub.metric == "clean_accuracy" else _evaluator_mismatches(pub, metas[0])
    return reasons + _sample_mismatches(pub, ours, metas)


def _evaluator_mismatches(pub, meta: dict) -> list[str]:
    reasons = []
    wanted = parse_protocol(pub.protocol)
    for key, value in wanted.items():
        if meta.get(key) != value:
            reasons.append(f"{key} {meta.get(key)} vs published {value}")
    entry = CERTIFIERS.get(meta["certifier"])
    if pub.metric in ("pgd_accuracy", "autoattack_accuracy"):
        if meta.get("attack_eps") is None:
            reasons.append(f"{meta['certifier']} walks an eps grid (robust = survived every grid eps' <= eps: a union "
                           f"of attacks), the paper attacks once at eps")  # fmt: skip
        elif abs(float(meta["attack_eps"]) - float(pub.epsilon)) > _GRID_TOLERANCE:
            reasons.append(f"attacked at eps {meta['attack_eps']:.6g}, published at {pub.epsilon:.6g}")
    elif entry is not None and getattr(entry, "single_eps", False) and pd.notna(pub.epsilon):
        if abs(float(meta["attack_eps"]) - float(pub.epsilon)) > _GRID_TOLERANCE:
            reasons.append(f"attacked at eps {meta['attack_eps']:.6g}, published at {pub.epsilon:.6g}")
    return reasons


def _sample_mismatches(pub, ours: Protocol, metas: list[dict]) -> list[str]:
    reasons, meta = [], metas[0]
    subset = parse_subset(pub.subset)
    ours_subset = (meta["subset"]["start"], meta["subset"]["skip"], meta["subset"]["examples"])
    if subset is None:
        reasons.append("published subset not stated")
    elif subset != ours_subset:
        reasons.append(f"subset differs: {ours.subset} vs published {pub.subset}")
    seeds = parse_seeds(pub.seeds)
    if seeds is None:
        reasons.append("published seeds not stated")
    elif seeds[0] == "best":
        if seeds[1] is None:
            reasons.append(f"published best of an unstated number of seeds, ours {ours.seeds}")
        elif seeds[1] != len(metas):
            reasons.append(f"published best of {seeds[1]} seeds, ours {ours.seeds}")
    elif seeds[0] == "mean" and len(metas) < 2:
        reasons.append("published mean over seeds, ours a single seed")
    if ours.dtype != PUBLISHED_DTYPE:
        reasons.append(f"{ours.dtype} (the papers: {PUBLISHED_DTYPE})")
    return reasons


def comparison_table(summary: pd.DataFrame, published: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """One row per (run, checkpoint, published number) of the runs that name a published setting, plus one row per
    radius of each published upper envelope (Salman et al.) whose method this summary has. Each row carries the
    protocol of both sides; only a row whose protocols match is flagged `outside`."""
    checkpoint = summary.get("checkpoint", pd.Series("last", index=summary.index)).fillna("last")
    summary = summary.assign(checkpoint=checkpoint)
    rows = []
    for (run, ckpt), group in summary.groupby(["run", "checkpoint"], sort=False):
        refs = published_refs(group["published"].iloc[0]) if "published" in group else []
        dataset = group["dataset"].iloc[0]
        for ref in refs:
            for pub in select(published, ref["paper"], ref["dataset"], ref["setting"]).itertuples(index=False):
                if pub.metric not in COMPARED:
                    continue
                row = {"run": run, "checkpoint": ckpt, "paper": pub.paper, "source": pub.source,
                       "setting": pub.setting, "published_dataset": pub.dataset, "status": pub.status,
                       "metric": pub.metric, "radius": pub.radius, "published": pub.value,
                       "published_protocol": _published_protocol(pub).describe()}  # fmt: skip
                certifier = _pick_certifier(group, pub.certifier, pub.metric)
                row["certifier"] = certifier or (pub.certifier or "")
                rows.append(_fill(row, group, certifier, pub, comparable=pub.dataset == dataset, level=level))
    rows += _envelope_rows(summary, published, level)
    rows += _per_example_rows(summary, level)
    return pd.DataFrame(rows, columns=COLUMNS)


def _per_example_rows(summary: pd.DataFrame, level: float) -> list[dict]:
    """Our runs against the papers' own per-example files linked to them (import-tsv --compare-with), image by image
    on the shared test images; ci_low / ci_high are then the paired difference's interval (ours − published)."""
    radii = sorted({float(c.split("@")[1]) for c in summary.columns if c.startswith("certified_acc@")
                    and summary.loc[summary.get("norm", "l2") == "l2", c].notna().any()})  # fmt: skip
    table = image_by_image(summary, radii, level)
    out = []
    for r in table.itertuples(index=False):
        out.append({"run": r.run, "checkpoint": "last", "certifier": r.certifier, "paper": r.published_file,
                    "source": r.source, "setting": "per-example file", "published_dataset": summary["dataset"].iloc[0],
                    "status": "published file", "metric": r.metric, "radius": r.radius, "seeds": 1,
                    "reproduced": r.reproduced, "std": math.nan, "ci_low": r.ci_low, "ci_high": r.ci_high,
                    "interval": f"paired difference (ours - published), bootstrap over {r.images} shared images",
                    "published": r.published, "difference": r.difference, "outside": r.outside,
                    "protocol_match": "same images", "reproduced_protocol": "", "published_protocol": r.note,
                    "note": f"predictions agree on {r.prediction_agreement:.1%} of the shared images; outside = the "
                            f"paired interval excludes 0"})  # fmt: skip
    return out


#: The reproduced-vs-published table's columns.
COLUMNS = ["run", "checkpoint", "certifier", "paper", "source", "setting", "published_dataset", "status", "metric",
           "radius", "seeds", "reproduced", "std", "ci_low", "ci_high", "interval", "published", "difference",
           "outside", "protocol_match", "reproduced_protocol", "published_protocol", "note"]  # fmt: skip


def _aggregate(pub) -> str:
    seeds = parse_seeds(pub.seeds)
    return seeds[0] if seeds is not None and seeds[0] in ("best", "mean") else "mean"


def _fill(row: dict, group: pd.DataFrame, certifier: str | None, pub, comparable: bool, level: float) -> dict:
    """The reproduced estimate of one published number, both protocols, its difference and flag."""
    empty = {"seeds": 0, "reproduced": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan,
             "interval": "", "difference": math.nan, "outside": "", "protocol_match": "",
             "reproduced_protocol": ""}  # fmt: skip
    if certifier is None:
        return {**row, **empty, "note": f"this run has no {pub.certifier or 'l-inf'} evaluation"}
    files = list(group[group["certifier"] == certifier]["certify_file"])
    radius = 0.0 if pd.isna(pub.radius) else float(pub.radius)
    grid = _eps_grid(files[0])
    if (
        grid is not None
        and pub.metric != "clean_accuracy"
        and not any(abs(radius - g) <= _GRID_TOLERANCE for g in grid)
    ):
        return {**row, **empty, "note": f"eps {radius:.6g} is not on the {certifier} grid"}
    aggregate = _aggregate(pub)
    est = estimate([read_tsv(f) for f in files], pub.metric, radius, level, aggregate=aggregate)
    ours = _reproduced_protocol(files, aggregate)
    reasons = protocol_mismatches(pub, ours, [_sidecar(f) for f in files])
    note = "" if comparable else f"published on {pub.dataset}: orientation only, not comparable"
    out = {**row, "seeds": est.seeds, "reproduced": est.value, "std": est.std, "ci_low": est.low, "ci_high": est.high,
           "interval": est.interval, "note": note, "reproduced_protocol": ours.describe(),
           "protocol_match": "yes" if not reasons else "no: " + "; ".join(reasons)}  # fmt: skip
    out["difference"] = est.value - pub.value if comparable else math.nan
    out["outside"] = _outside(est, pub.value) if comparable and not reasons else ""
    return out


def _envelope_rows(summary: pd.DataFrame, published: pd.DataFrame, level: float) -> list[dict]:
    """Published envelopes (setting "envelope") against ours: at each radius the best run of the method (mean over
    seeds, ties → higher clean accuracy), with that run's interval. The max over runs is optimistic: say so."""
    rows = []
    envelopes = published[(published["setting"] == "envelope") & (published["metric"] == "certified_accuracy")]
    for pub in envelopes.itertuples(index=False):
        part = summary[
            (summary["dataset"] == pub.dataset)
            & (summary["method"] == pub.method)
            & (summary["certifier"] == pub.certifier)
            & (summary["checkpoint"] == "last")
        ]
        if part.empty:
            continue
        files = {run: list(g["certify_file"]) for run, g in part.groupby("run", sort=False)}
        frames = {run: [read_tsv(f) for f in fs] for run, fs in files.items()}
        scored = sorted(
            frames,
            key=lambda run: (
                np.mean([_hits(f, pub.radius).mean() for f in frames[run]]),
                np.mean([_hits(f, 0.0).mean() for f in frames[run]]),
            ),
            reverse=True,
        )
        best = scored[0]
        est = estimate(frames[best], "certified_accuracy", float(pub.radius), level)
        ours = _reproduced_protocol(files[best], "mean")
        reasons = protocol_mismatches(pub, ours, [_sidecar(f) for f in files[best]])
        rows.append({"run": f"envelope of {len(frames)} {pub.method} runs (best: {best})", "checkpoint": "last",
                     "certifier": pub.certifier, "paper": pub.paper, "source": pub.source, "setting": pub.setting,
                     "published_dataset": pub.dataset, "status": pub.status, "metric": pub.metric,
                     "radius": pub.radius, "seeds": est.seeds, "reproduced": est.value, "std": est.std,
                     "ci_low": est.low, "ci_high": est.high, "interval": est.interval, "published": pub.value,
                     "difference": est.value - pub.value, "outside": _outside(est, pub.value) if not reasons else "",
                     "protocol_match": "yes" if not reasons else "no: " + "; ".join(reasons),
                     "reproduced_protocol": ours.describe(), "published_protocol": _published_protocol(pub).describe(),
                     "note": "max over runs: optimistic; interval of the best run only"})  # fmt: skip
    return rows


def caption(table: pd.DataFrame, dataset: str, level: float = LEVEL) -> str:
    head = (
        f"Reproduced vs published, {dataset}. Interval: {level:.0%} Clopper-Pearson over the evaluated images "
        "(one seed; ACR: t over images), or t over seeds with the std over seeds (several seeds). outside = the "
        "published value lies outside the interval. status as METHODS.md: verified, approximate or "
        "unverified. Published accuracies are fractions."
    )
    if table.empty:
        return (
            head + f" No {dataset} run names a published setting (config `published:`), so there is nothing to compare."
        )
    if not (table["published_dataset"] == dataset).any():
        return head + (
            f" {dataset}: no published numbers exist; the published column shows the "
            f"{', '.join(sorted(set(table['published_dataset'])))} value of the paper setting each run "
            "scales down, for orientation only (no difference, no flag)."
        )
    return head
