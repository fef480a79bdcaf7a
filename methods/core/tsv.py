"""The per-example file format every evaluator writes and every report reads.

A superset of Cohen's certify.py output: ``idx label predict radius correct time`` (tab-separated, idx = dataset
index, predict = -1 on abstain, radius 0 when wrong or abstaining, time in seconds, radius at full precision), then
``path dtype samples``: which path computed the row (fast / plain for smoothing, batch for the ℓ∞ evaluators), the
dtype of the base classifier's forward pass, and the noisy samples drawn for it (0 for ℓ∞).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

#: The first six are Cohen's; read_tsv accepts files with only those (written before the fast path existed).
TSV_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "path", "dtype", "samples")
COHEN_COLUMNS = TSV_COLUMNS[:6]


def parse_rows(lines: list[str]) -> list[dict]:
    """The complete rows of a TSV's lines: a torn last line and comment lines (a partial file's fingerprint) are
    dropped."""
    complete = [line for line in lines if line.count("\t") == len(TSV_COLUMNS) - 1 and not line.startswith("#")]
    return list(csv.DictReader(complete, delimiter="\t")) if complete else []


def read_rows(path: str | Path) -> list[dict]:
    return parse_rows(Path(path).read_text().splitlines())


def format_row(row: dict) -> str:
    return "\t".join(str(row[c]) for c in TSV_COLUMNS) + "\n"


def tsv_text(rows: list[dict]) -> str:
    """Header + rows: the per-example file (also the body of a partial file)."""
    return "\t".join(TSV_COLUMNS) + "\n" + "".join(format_row(r) for r in rows)


def read_tsv(path: str | Path) -> pd.DataFrame:
    """A per-example TSV as a DataFrame, with the format checked."""
    frame = pd.read_csv(path, sep="\t")
    if tuple(frame.columns[: len(COHEN_COLUMNS)]) != COHEN_COLUMNS:
        raise ValueError(f"{path}: expected columns {TSV_COLUMNS}, found {tuple(frame.columns)}")
    return frame
