"""The papers' published numbers as data, read by the reproduced-vs-published tables.

Every number that ../shared/METHODS.md transcribes from a paper, its README, its committed result files or a public
leaderboard is one row of ``workflow/resources/published.csv`` (one number per row), so a table never hard-codes a
reference value and a wrong transcription is fixed in one place. Each row says where it comes from (``source``),
which of this repo's evaluators reproduces it (``certifier``) and how far to trust it (``status``: ``verified``;
``approximate`` = within 0.01 but not re-read cell by cell; ``unverified`` = recalled, to be checked before use).

Units: accuracies are fractions in [0, 1]; ``sigma`` is the ℓ2 noise level; ``epsilon`` and the radius of ℓ∞ rows
are in pixel units ([0, 1] images); timings are as printed (seconds, hours, epochs). A row's ``setting`` is the
label a config points at, unique within (paper, dataset, method).

The protocol that produced each number, so that a reproduction is compared like with like (methods/report/compare.py):
``certifier`` (the evaluator: for an attack, one standalone attack at exactly ``epsilon`` where the paper reports
one), ``protocol`` (the evaluator's settings as ``key=value;...``: n0, n and alpha of smoothing), ``subset`` (the test
images, ``start:skip:count``; empty where the source does not say), ``seeds`` (``single``, ``best of N`` or ``mean of
N``, N = ``?`` where not stated; empty for timings). Every paper here trained and certified in float32.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path

import pandas as pd

from ..certify.registry import CERTIFIERS
from ..core.paths import PUBLISHED_CSV
from ..registry import METHODS

COLUMNS = (
    "paper",
    "source",
    "dataset",
    "method",
    "setting",
    "sigma",
    "epsilon",
    "metric",
    "radius",
    "value",
    "certifier",
    "protocol",
    "subset",
    "seeds",
    "hardware",
    "status",
    "note",
)
FLOAT_COLUMNS = ("sigma", "epsilon", "radius", "value")
ACCURACY_METRICS = ("certified_accuracy", "clean_accuracy", "pgd_accuracy", "autoattack_accuracy")
TIMING_METRICS = ("sec_per_epoch", "epochs", "total_hours", "certify_sec_per_image")
METRICS = ACCURACY_METRICS + ("acr",) + TIMING_METRICS
STATUSES = ("verified", "approximate", "unverified")
DATASETS = ("cifar10", "cifar100", "imagenet", "mnist")
#: Salman's headline tables: at each radius the best model of a whole training grid, so no single σ.
ENVELOPE_SETTING = "envelope"
#: A row is identified by these; two rows with the same key are a transcription error (a number may be compared by
#: two evaluators, e.g. the ℓ∞-dist papers' certified accuracy by interval bounds and by margin / 2).
KEY = ("paper", "dataset", "method", "setting", "metric", "radius", "certifier")
#: The precision every paper here trained and certified in.
PUBLISHED_DTYPE = "float32"
#: The keys a `protocol` cell may set, and their types.
PROTOCOL_KEYS = {"n0": int, "n": int, "alpha": float}
_SEEDS = re.compile(r"^(single|(best|mean) of ([0-9]+|\?))$")
_SUBSET = re.compile(r"^[0-9]+:[0-9]+:[0-9]+$")
#: Columns that no row may leave empty.
REQUIRED = ("paper", "source", "dataset", "method", "setting", "metric", "value", "status")


def _where(path: Path, row: int, column: str) -> str:
    return f"{path.name}: data row {row}, column {column!r}"


def load(path: Path | str = PUBLISHED_CSV) -> pd.DataFrame:
    """The published numbers, validated: float columns as float (NaN where empty), the rest as str ("" if empty).

    Raises ValueError naming the data row (1-based, header not counted) and the column of the first problem.
    """
    path = Path(path)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    if tuple(raw.columns) != COLUMNS:
        missing = [c for c in COLUMNS if c not in raw.columns]
        extra = [c for c in raw.columns if c not in COLUMNS]
        raise ValueError(
            f"{path.name}: columns must be exactly {', '.join(COLUMNS)} in this order; "
            f"missing {missing}, unexpected {extra}, got {list(raw.columns)}"
        )
    frame = raw.copy()
    for column in FLOAT_COLUMNS:
        values = []
        for row, text in enumerate(raw[column], start=1):
            if text.strip() == "":
                values.append(math.nan)
                continue
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{_where(path, row, column)}: not a number: {text!r}") from None
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{_where(path, row, column)}: must be a finite number >= 0, got {text!r}")
            values.append(value)
        frame[column] = pd.Series(values, index=raw.index, dtype=float)

    seen: dict[tuple, int] = {}
    for row, rec in enumerate(frame.to_dict("records"), start=1):
        for column in REQUIRED:
            if rec[column] == "" or (column in FLOAT_COLUMNS and math.isnan(rec[column])):
                raise ValueError(f"{_where(path, row, column)}: must not be empty")
        checks = (("metric", METRICS), ("status", STATUSES), ("method", tuple(METHODS)), ("dataset", DATASETS))
        for column, known in checks:
            if rec[column] not in known:
                raise ValueError(
                    f"{_where(path, row, column)}: unknown {column} {rec[column]!r} (known: {', '.join(known)})"
                )
        if rec["seeds"] and not _SEEDS.match(rec["seeds"]):
            raise ValueError(f"{_where(path, row, 'seeds')}: {rec['seeds']!r} is not single, best of N or mean of N")
        if rec["subset"] and not _SUBSET.match(rec["subset"]):
            raise ValueError(f"{_where(path, row, 'subset')}: {rec['subset']!r} is not start:skip:count")
        try:
            parse_protocol(rec["protocol"])
        except ValueError as err:
            raise ValueError(f"{_where(path, row, 'protocol')}: {err}") from None
        if rec["certifier"] and rec["certifier"] not in CERTIFIERS:
            raise ValueError(
                f"{_where(path, row, 'certifier')}: unknown certifier {rec['certifier']!r} "
                f"(known: {', '.join(CERTIFIERS)})"
            )
        metric = rec["metric"]
        if metric in ACCURACY_METRICS and not 0.0 <= rec["value"] <= 1.0:
            raise ValueError(
                f"{_where(path, row, 'value')}: {metric} is a fraction in [0, 1], got {rec['value']!r} (a percentage?)"
            )
        if metric in ("certified_accuracy", "pgd_accuracy", "autoattack_accuracy", "acr") and not rec["certifier"]:
            raise ValueError(f"{_where(path, row, 'certifier')}: {metric} needs the evaluator that reproduces it")
        if (
            metric == "certified_accuracy"
            and CERTIFIERS.get(rec["certifier"]) is not None
            and CERTIFIERS[rec["certifier"]].norm == "l2"
        ):
            if math.isnan(rec["radius"]):
                raise ValueError(f"{_where(path, row, 'radius')}: an l2 certified_accuracy needs its radius")
            if math.isnan(rec["sigma"]) and rec["setting"] != ENVELOPE_SETTING:
                raise ValueError(
                    f"{_where(path, row, 'sigma')}: an l2 certified_accuracy needs its sigma "
                    f"(only the {ENVELOPE_SETTING!r} setting spans several)"
                )
        key = tuple(
            None if k == "radius" and math.isnan(rec[k]) else round(rec[k], 12) if k == "radius" else rec[k]
            for k in KEY
        )
        if key in seen:
            raise ValueError(
                f"{_where(path, row, 'radius')}: duplicate of data row {seen[key]} (same {', '.join(KEY)})"
            )
        seen[key] = row
    return frame


def settings_of(frame: pd.DataFrame) -> set[tuple[str, str, str]]:
    """The published settings, as (paper, dataset, setting) triples."""
    return set(zip(frame["paper"], frame["dataset"], frame["setting"]))


def select(frame: pd.DataFrame, paper: str, dataset: str, setting: str) -> pd.DataFrame:
    """The rows of one published setting; KeyError naming the closest existing settings when there is none."""
    rows = frame[(frame["paper"] == paper) & (frame["dataset"] == dataset) & (frame["setting"] == setting)]
    if rows.empty:
        known = sorted("/".join(triple) for triple in settings_of(frame))
        close = difflib.get_close_matches(f"{paper}/{dataset}/{setting}", known, n=5, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else "no close match"
        raise KeyError(f"no published setting {paper}/{dataset}/{setting} ({hint})")
    return rows.reset_index(drop=True)


def parse_protocol(cell: str) -> dict:
    """A `protocol` cell ("n0=100;n=100000;alpha=0.001") as a dict of typed values ({} for an empty cell)."""
    out = {}
    for item in filter(None, (part.strip() for part in (cell or "").split(";"))):
        key, sep, value = item.partition("=")
        if not sep or key not in PROTOCOL_KEYS:
            raise ValueError(f"{item!r} is not one of {', '.join(f'{k}=...' for k in PROTOCOL_KEYS)}")
        out[key] = PROTOCOL_KEYS[key](value)
    return out


def parse_subset(cell: str) -> tuple[int, int, int] | None:
    """A `subset` cell "start:skip:count" as integers (None where the source does not say)."""
    return tuple(int(v) for v in cell.split(":")) if cell else None


def parse_seeds(cell: str) -> tuple[str, int | None] | None:
    """A `seeds` cell as ("single", 1), ("best", N) or ("mean", N); N None where not stated; None for an empty cell."""
    if not cell:
        return None
    if cell == "single":
        return "single", 1
    kind, _, count = cell.split(" ")
    return kind, None if count == "?" else int(count)
