"""The per-example file format every evaluator writes and every report reads.

A superset of Cohen's certify.py output: ``idx label predict radius correct time`` (tab-separated, idx = dataset
index, predict = -1 on abstain, radius 0 when wrong or abstaining, time in seconds, radius at full precision), then
``path dtype samples``: which path computed the row (fast / plain for smoothing, batch for the ℓ∞ evaluators), the
dtype of the base classifier's forward pass, and the noisy samples drawn for it (0 for ℓ∞); then, for smoothing
certifiers, the counts the decision was made on: ``n0 nA0 n nA nB`` (selection draws, selection votes of the selected
class A, estimation draws, estimation votes for A, and for the two-sided certifiers those for the runner-up B; empty
where they do not apply), so that p̲A, the radius and any other α can be re-derived offline. Files written before a
column existed still read: their rows simply lack it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

#: The first six are Cohen's; read_tsv accepts files with only those (written before the fast path existed).
TSV_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "path", "dtype", "samples",
               "n0", "nA0", "n", "nA", "nB")  # fmt: skip
COHEN_COLUMNS = TSV_COLUMNS[:6]
#: The counts behind a smoothing certificate (empty for the ℓ∞ evaluators).
COUNT_COLUMNS = TSV_COLUMNS[9:]


def parse_rows(lines: list[str]) -> list[dict]:
    """The complete rows of a TSV's lines, as dicts keyed by the file's own header: a torn last line and comment lines
    (a partial file's fingerprint) are dropped; a file of an older format keeps the columns it has."""
    lines = [line for line in lines if not line.startswith("#")]
    if not lines:
        return []
    width = lines[0].count("\t")
    complete = [line for line in lines if line.count("\t") == width]
    return list(csv.DictReader(complete, delimiter="\t"))


def read_rows(path: str | Path) -> list[dict]:
    return parse_rows(Path(path).read_text().splitlines())


def format_row(row: dict) -> str:
    """One line in the current format; a column the row lacks (a count of an ℓ∞ row, an older file's row) is empty."""
    return "\t".join(str(row.get(c, "")) for c in TSV_COLUMNS) + "\n"


def tsv_text(rows: list[dict]) -> str:
    """Header + rows: the per-example file (also the body of a partial file)."""
    return "\t".join(TSV_COLUMNS) + "\n" + "".join(format_row(r) for r in rows)


def read_tsv(path: str | Path) -> pd.DataFrame:
    """A per-example TSV as a DataFrame, with the format checked."""
    frame = pd.read_csv(path, sep="\t")
    if tuple(frame.columns[: len(COHEN_COLUMNS)]) != COHEN_COLUMNS:
        raise ValueError(f"{path}: expected columns {TSV_COLUMNS}, found {tuple(frame.columns)}")
    return frame
