"""What a config costs before it is submitted: expected GPU-hours per job of the DAG, and the total.

    python -m methods plan --configfile config/cifar10.yaml [--bench bench.csv] [--out plan.csv]

Rates come from measurements where a benchmark file gives them, else from the papers' own timings
(workflow/resources/published.csv), on the papers' hardware:
- training, sec/epoch: MACER's Table 3 for Cohen, MACER and SmoothAdv (Salman-0.25: PGD-10, m = 8 on CIFAR-10;
  PGD-1, m = 1 on ImageNet); other SmoothAdv models scaled by (T + 1)·m, the forward-backward passes per image
  relative to that model; Feng's ADRE at FENG_TO_COHEN × Cohen (k = 8 noisy copies; this harness's measured ratio);
  ℓ∞-dist nets from the v2 CIFAR-10 log (9.6 h for 1300 epochs). Backward smoothing publishes no timing: no rate.
- certification, sec/image at n = 100,000: Cohen's CERTIFY timing (ResNet-110 / ResNet-50), scaled by n / 100,000
  (the cost is the n + n0 forward passes); T-CERTIFY and its grid cost the same draws; the adaptive and sequential
  certifiers at most as much (listed as an upper bound). ℓ∞ evaluators: no rate.
A job without a rate is listed with its reason and left out of the totals, never guessed.

`--bench` reads a CSV with columns `workload, path, sec_per_epoch, sec_per_image` (extra columns ignored), as
`python -m methods bench` is to write: rows whose workload is `train:<dataset>:<method>` or
`certify:<dataset>:<certifier>` (path `fast` preferred over `reference`) replace the papers' rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .. import config as mc
from ..certify.step import subset_indices
from ..core.data import TEST_SIZES
from ..report.published import select

#: Feng's ADRE (k = 8) per epoch relative to Cohen's: measured with `python -m methods bench-train` at CIFAR-10 shape
#: (ResNet-110, CPU): 6.0×.
FENG_TO_COHEN = 6.0
#: The SmoothAdv model behind MACER's Table 3 timing on each dataset: (attack steps T, noise copies m).
SALMAN_TIMED = {"cifar10": (10, 8), "imagenet": (1, 1)}
SMOOTHING_CERTIFIERS = ("cohen", "t-certify", "t-certify-grid")
#: published.csv settings that carry the papers' CERTIFY timing.
CERTIFY_TIMING = {"cifar10": ("cohen2019", "certify ResNet-110"), "imagenet": ("cohen2019", "certify ResNet-50")}


@dataclass(frozen=True)
class Rate:
    seconds: float  # per epoch (train) or per image at n = 100,000 (certify)
    source: str
    gpus: int = 1  # GPUs the rate was measured on (MACER's ImageNet timings: 4 P100s)


def _gpus(hardware: str) -> int:
    """ "4 P100" → 4; "1 P100", "RTX 3090", "" → 1."""
    first = hardware.split()[0] if hardware.split() else ""
    return int(first) if first.isdigit() else 1


def _published_rate(published: pd.DataFrame, paper: str, dataset: str, setting: str, metric: str) -> float | None:
    try:
        rows = select(published, paper, dataset, setting)
    except KeyError:
        return None
    rows = rows[rows["metric"] == metric]
    return float(rows["value"].iloc[0]) if len(rows) else None


def paper_train_rate(published: pd.DataFrame, dataset: str, method: str, hparams: dict) -> Rate | None:
    """sec/epoch on the paper's hardware, per the module docstring (None: no published basis)."""
    table3 = {
        m: _published_rate(published, "macer2020", dataset, f"{name}-0.25", "sec_per_epoch")
        for m, name in (("cohen", "Cohen"), ("macer", "MACER"), ("salman", "Salman"))
    }
    hardware = published[
        (published["paper"] == "macer2020")
        & (published["dataset"] == dataset)
        & (published["metric"] == "sec_per_epoch")
    ]["hardware"]
    where = f"MACER Table 3 ({hardware.iloc[0]})" if len(hardware) else "MACER Table 3"
    gpus = _gpus(hardware.iloc[0]) if len(hardware) else 1
    if method in ("cohen", "macer") and table3[method]:
        return Rate(table3[method], where, gpus)
    if method == "salman" and table3["salman"] and dataset in SALMAN_TIMED:
        steps, copies = SALMAN_TIMED[dataset]
        scale = (hparams["steps"] + 1) * hparams["num_noise"] / ((steps + 1) * copies)
        return Rate(table3["salman"] * scale, f"{where}, Salman-0.25 × (T+1)·m / {(steps + 1) * copies}", gpus)
    if method == "feng" and table3["cohen"]:
        return Rate(table3["cohen"] * FENG_TO_COHEN, f"{where}, Cohen × {FENG_TO_COHEN:g} (harness ratio)", gpus)
    if method == "linf_dist" and dataset == "cifar10":
        hours = _published_rate(published, "zhang2022", "cifar10", "eps=8/255 shipped log", "total_hours")
        epochs = _published_rate(published, "zhang2022", "cifar10", "eps=8/255 shipped log", "epochs")
        if hours and epochs:
            return Rate(hours * 3600 / epochs, "l-inf-dist v2 CIFAR-10 log (RTX 3090)")
    return None


def paper_certify_rate(published: pd.DataFrame, dataset: str, certifier: str) -> Rate | None:
    if certifier not in SMOOTHING_CERTIFIERS + EARLY_STOPPING or dataset not in CERTIFY_TIMING:
        return None
    paper, setting = CERTIFY_TIMING[dataset]
    seconds = _published_rate(published, paper, dataset, setting, "certify_sec_per_image")
    return Rate(seconds, f"{paper} {setting}" + EARLY_STOP_BOUND * (certifier in EARLY_STOPPING)) if seconds else None


#: The adaptive and sequential certifiers draw at most CERTIFY's n0 + n samples, usually far fewer: CERTIFY's rate
#: bounds them.
EARLY_STOPPING = ("adaptive", "sequential")
EARLY_STOP_BOUND = " (stops early: an upper bound)"


def _measured_certify(measured: dict, dataset: str, certifier: str) -> Rate | None:
    """A benchmarked rate: the certifier's own, else (T-CERTIFY, its grid, adaptive, sequential: the same
    draws or fewer)
    CERTIFY's."""
    rate = measured.get(f"certify:{dataset}:{certifier}")
    cohen = measured.get(f"certify:{dataset}:cohen")
    if rate or not cohen or certifier not in SMOOTHING_CERTIFIERS + EARLY_STOPPING:
        return rate
    return Rate(cohen.seconds, cohen.source + EARLY_STOP_BOUND * (certifier in EARLY_STOPPING), cohen.gpus)


def bench_rates(bench: pd.DataFrame) -> dict[str, Rate]:
    """workload → measured rate, the fast path where a workload has both."""
    out = {}
    for row in bench.sort_values("path", key=lambda p: p.eq("fast")).itertuples(index=False):
        value = row.sec_per_epoch if str(row.workload).startswith("train:") else row.sec_per_image
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[row.workload] = Rate(float(value), f"bench ({row.path})")
    return out


def plan(config: dict, published: pd.DataFrame, bench: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per train and certify job of the config's DAG: expected hours (NaN where no rate) and the rate's
    source. A sharded certification is one row (its shards add up to it)."""
    measured = bench_rates(bench) if bench is not None else {}
    rows = []
    for dataset, run, seed in mc.runs_of(config):
        spec = mc.resolve_run(config, run, seed)
        method, epochs = spec["method"], spec["train"]["epochs"]
        rate = measured.get(f"train:{dataset}:{method}") or paper_train_rate(
            published, dataset, method, spec["hparams"]
        )
        hours = rate.seconds * epochs / 3600 if rate else math.nan
        rows.append(
            {
                "job": "train",
                "run": run,
                "seed": seed,
                "method": method,
                "certifier": "",
                "units": epochs,
                "unit": "epochs",
                "seconds_per_unit": rate.seconds if rate else math.nan,
                "hours": hours,
                "gpus": rate.gpus if rate else math.nan,
                "gpu_hours": hours * rate.gpus if rate else math.nan,
                "source": rate.source if rate else f"no published or measured rate for {method} training",
            }
        )
        cert = spec["certify"]
        images = len(subset_indices(TEST_SIZES[dataset], cert["start"], cert["skip"], cert["count"]))
        for certifier in cert["certifiers"]:
            rate = _measured_certify(measured, dataset, certifier) or paper_certify_rate(published, dataset, certifier)
            per_image = rate.seconds * (cert["n"] + cert["n0"]) / (100_000 + 100) if rate else math.nan
            checkpoints = 2 if spec["train"]["select_best"] else 1
            rows.append(
                {
                    "job": "certify",
                    "run": run,
                    "seed": seed,
                    "method": method,
                    "certifier": certifier,
                    "units": images * checkpoints,
                    "unit": "images",
                    "seconds_per_unit": per_image,
                    "hours": per_image * images * checkpoints / 3600 if rate else math.nan,
                    "gpus": 1 if rate else math.nan,
                    "gpu_hours": per_image * images * checkpoints / 3600 if rate else math.nan,
                    "source": rate.source if rate else f"no published or measured rate for {certifier}",
                }
            )
    return pd.DataFrame(rows)


def summary(jobs: pd.DataFrame) -> pd.DataFrame:
    """Wall hours (on the rate's hardware) and GPU-hours per job kind and method, and how many jobs have no rate
    (their group's hours stay empty rather than 0 when none has one)."""
    return (
        jobs.groupby(["job", "method"], sort=False)
        .agg(
            jobs=("hours", "size"),
            hours=("hours", lambda h: h.sum(min_count=1)),
            gpu_hours=("gpu_hours", lambda h: h.sum(min_count=1)),
            without_rate=("hours", lambda h: int(h.isna().sum())),
        )
        .reset_index()
    )
