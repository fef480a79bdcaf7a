"""The papers' headline claims, checked on our own runs: one comparison per claim, a paired interval, a verdict.

Each row of workflow/resources/claims.csv states a claim as a comparison between two (method, certifier) sides of one
dataset's summary — e.g. "MACER's ACR exceeds Cohen's at σ = 0.25". Where both sides were run, the claims table
gives each side's value, their difference on the same test images (per image, averaged over the seeds both sides
have) with a 95 % bootstrap interval over images, and a verdict computed from that interval, never written by hand:

- `greater`: holds when the interval lies above 0, does not hold when it lies below 0, else inconclusive (too few
  images to tell);
- `non_inferior` (margin m): holds when the interval lies above −m, does not hold when it lies below −m;
- `ratio` (timings: left / right of the measured sec/epoch): holds when the ratio reaches the threshold; a timing is
  one measurement per run, so there is no interval and the row says so.
A claim whose sides are not both in the summary is listed as "not measured", naming what is missing. Several runs on
a side (a grid) give one row per pair of runs: no run is picked for looking best.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.paths import REPO_ROOT
from ..core.tsv import read_tsv
from .labels import ours

CLAIMS_CSV = REPO_ROOT / "workflow" / "resources" / "claims.csv"
KINDS = ("greater", "non_inferior", "ratio")
LEVEL = 0.95
BOOTSTRAP = 2000
_TOLERANCE = 1e-9
COLUMNS = ["claim", "dataset", "statement", "left", "right", "left_value", "right_value", "difference", "ci_low",
           "ci_high", "images", "verdict", "note", "paper", "source"]  # fmt: skip


def load(path: str | Path = CLAIMS_CSV) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    bad = sorted(set(frame["kind"]) - set(KINDS))
    if bad:
        raise ValueError(f"{Path(path).name}: unknown claim kind {bad[0]!r} (known: {', '.join(KINDS)})")
    return frame


def _side(summary: pd.DataFrame, method: str, certifier: str, sigma: str) -> pd.DataFrame:
    """The summary rows of one side: method (with ":v1"/":v2" for the ℓ∞-dist loss), certifier, σ; last epoch."""
    name, _, variant = method.partition(":")
    rows = ours(summary)
    rows = rows[(rows["method"] == name) & (rows.get("checkpoint", "last") == "last")]
    if certifier:
        rows = rows[rows["certifier"] == certifier]
    if sigma:
        rows = rows[(rows["sigma"] - float(sigma)).abs() < _TOLERANCE]
    if variant:
        rows = rows[[_hparams(f).get("loss") == variant for f in rows["certify_file"]]]
    return rows


def _sidecar(certify_file) -> dict:
    return json.loads(Path(certify_file).with_suffix(".json").read_text())


def _hparams(certify_file) -> dict:
    return _sidecar(certify_file).get("model_info", {}).get("hparams", {})


def _radius(claim, certify_file) -> float:
    """The claim's radius: a number, or "eps" = the run's own (its single-ε attack's ε, else its test ε)."""
    if claim.radius != "eps":
        return float(claim.radius) if claim.radius else 0.0
    meta = _sidecar(certify_file)
    if meta.get("attack_eps") is not None:
        return float(meta["attack_eps"])
    hparams = meta.get("model_info", {}).get("hparams", {})
    return float(hparams.get("eps_test") or hparams.get("epsilon") or 0.0)


def per_image(frame: pd.DataFrame, metric: str, radius: float) -> pd.Series:
    """The metric's value per test image (indexed by idx): certified/robust at the radius (0/1), or radius·correct."""
    if metric == "acr":
        values = frame["radius"] * frame["correct"]
    else:
        values = ((frame["correct"] == 1) & (frame["radius"] >= radius - _TOLERANCE)).astype(float)
    return pd.Series(values.to_numpy(dtype=float), index=frame["idx"].to_numpy())


def _run_values(rows: pd.DataFrame, claim, seeds: list[int]) -> tuple[pd.DataFrame, float]:
    """images × seeds values of one run (its rows, one per seed), and the radius used."""
    radius = _radius(claim, rows["certify_file"].iloc[0])
    columns = {seed: per_image(read_tsv(f), claim.metric, radius)
               for seed, f in zip(rows["seed"], rows["certify_file"]) if seed in seeds}  # fmt: skip
    return pd.DataFrame(columns), radius


def paired_interval(differences: np.ndarray, level: float = LEVEL, resamples: int = BOOTSTRAP, seed: int = 0):
    """Percentile bootstrap interval of the mean difference, resampling images (a fixed seed: reproducible)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(differences), size=(resamples, len(differences)))
    means = differences[picks].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def verdict(kind: str, low: float, high: float, margin: float = 0.0) -> str:
    floor = -margin if kind == "non_inferior" else 0.0
    if low > floor:
        return "holds"
    if high < floor:
        return "does not hold"
    return "inconclusive"


def _compare(claim, dataset: str, left: pd.DataFrame, right: pd.DataFrame) -> dict:
    base = {"claim": claim.claim, "dataset": dataset, "statement": claim.statement, "paper": claim.paper,
            "source": claim.source, "left": left["run"].iloc[0], "right": right["run"].iloc[0]}  # fmt: skip
    if claim.kind == "ratio":
        a, b = left[claim.metric].mean(), right[claim.metric].mean()
        ratio = a / b if b else math.nan
        threshold = float(claim.margin)
        decided = ("holds" if ratio >= threshold else "does not hold") if math.isfinite(ratio) else "not measured"
        note = f"ratio left/right, threshold {threshold:g}; timings are one measurement per run (no interval)"
        return {**base, "left_value": a, "right_value": b, "difference": ratio, "images": 0, "verdict": decided,
                "note": note}  # fmt: skip
    seeds = sorted(set(left["seed"]) & set(right["seed"]))
    if not seeds:
        return {**base, "verdict": "not measured", "note": "the two runs share no seed"}
    a, radius_a = _run_values(left, claim, seeds)
    b, radius_b = _run_values(right, claim, seeds)
    if abs(radius_a - radius_b) > _TOLERANCE:
        return {**base, "verdict": "not measured", "note": f"the runs were evaluated at different radii "
                f"({radius_a:g} vs {radius_b:g})"}  # fmt: skip
    shared = a.index.intersection(b.index)
    if len(shared) == 0:
        return {**base, "verdict": "not measured", "note": "the runs share no test image"}
    left_mean, right_mean = a.loc[shared].mean(axis=1), b.loc[shared].mean(axis=1)  # per image, over the seeds
    differences = (left_mean - right_mean).to_numpy()
    low, high = paired_interval(differences)
    margin = float(claim.margin) if claim.margin else 0.0
    note = f"{len(shared)} shared test images, {len(seeds)} seed(s); radius {radius_a:g}"
    if claim.kind == "non_inferior":
        note += f"; non-inferiority margin {margin:g}"
    return {**base, "left_value": float(left_mean.mean()), "right_value": float(right_mean.mean()),
            "difference": float(differences.mean()), "ci_low": low, "ci_high": high, "images": len(shared),
            "verdict": verdict(claim.kind, low, high, margin), "note": note}  # fmt: skip


def _unhealthy(rows: pd.DataFrame) -> list[str]:
    """'<run> collapsed in training: …' for a side whose training health check flagged it (summary `train_health`)."""
    if "train_health" not in rows:
        return []
    flags = rows["train_health"].dropna().astype(str)
    flags = flags[flags.str.strip() != ""]
    return [f"{rows['run'].iloc[0]} {text}" for text in dict.fromkeys(flags)]


def claims_table(summary: pd.DataFrame, claims: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per claim and pair of runs of the summary's dataset (see the module docstring)."""
    claims = load() if claims is None else claims
    dataset = summary["dataset"].iloc[0] if len(summary) else ""
    rows = []
    for claim in claims[claims["status"] == "active"].itertuples(index=False):
        left = _side(summary, claim.left_method, claim.left_certifier, claim.sigma)
        right = _side(summary, claim.right_method, claim.right_certifier, claim.sigma)
        if left.empty or right.empty:
            missing = " and ".join(f"{m} ({c or 'any'})" for m, c, rows_ in
                                   ((claim.left_method, claim.left_certifier, left),
                                    (claim.right_method, claim.right_certifier, right)) if rows_.empty)  # fmt: skip
            rows.append({"claim": claim.claim, "dataset": dataset, "statement": claim.statement, "paper": claim.paper,
                         "source": claim.source, "verdict": "not measured",
                         "note": f"no run of {missing} in this summary"})  # fmt: skip
            continue
        pairs = itertools.product(left.groupby("run", sort=False), right.groupby("run", sort=False))
        for (_, l_rows), (_, r_rows) in pairs:
            row = _compare(claim, dataset, l_rows, r_rows)
            unhealthy = _unhealthy(l_rows) + _unhealthy(r_rows)
            if unhealthy:  # the verdict stays the data's; the reader learns why it may say little about the method
                row["note"] = "; ".join([row.get("note") or "", *unhealthy]).strip("; ")
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def caption(table: pd.DataFrame, dataset: str) -> str:
    counts = table["verdict"].value_counts().to_dict() if len(table) else {}
    tally = ", ".join(f"{v} {k}" for k, v in counts.items())
    return (f"The papers' claims on {dataset} (workflow/resources/claims.csv): each side's value, their paired "
            f"difference on the same test images with a {LEVEL:.0%} bootstrap interval over images ({BOOTSTRAP} "
            f"resamples), and the verdict the interval gives (holds / does not hold / inconclusive; computed, not "
            f"written by hand). {tally}.")  # fmt: skip
