"""Every committed record (records/<name>/ with a record.json) rebuilds: `snakemake figures` on a copy of its
results/ alone redraws every figure and table it holds, and the tables equal the committed ones."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
RECORDS = sorted(p.parent for p in (REPO / "records").glob("*/record.json"))


def test_there_is_a_record_to_rebuild():
    assert RECORDS, "no records/<name>/record.json: the Fashion-MNIST record is part of the repository"


@pytest.mark.slow
@pytest.mark.parametrize("record", RECORDS, ids=[r.name for r in RECORDS])
def test_a_record_rebuilds_its_tables_and_figures(record, tmp_path):
    meta = json.loads((record / "record.json").read_text())
    dataset, config = meta["dataset"], record / meta["config"]
    assert config.is_file() and (record / "results" / dataset / "summary.csv").is_file()
    copy = tmp_path / "rebuild"
    source = record / "results"
    for src in source.rglob("*"):  # the per-example files, sidecars, run.json and train logs; no tables
        if src.is_file() and "tables" not in src.relative_to(source).parts and src.name != "summary.csv":
            (copy / "results" / src.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, copy / "results" / src.relative_to(source))
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "figures", "--cores", "1", "--nolock", "--snakefile",
         str(REPO / "Snakefile"), "--directory", str(copy), "--configfile", str(config)],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    committed_figures = {p.relative_to(record).as_posix() for p in (record / "figures").rglob("*.png")}
    rebuilt_figures = {p.relative_to(copy).as_posix() for p in (copy / "figures").rglob("*.png")}
    assert committed_figures and rebuilt_figures == committed_figures
    tables = sorted((record / "results" / dataset / "tables").glob("*.csv"))
    assert {t.name for t in tables} >= {"claims.csv", "certified_accuracy.csv", "cost_robustness.csv"}
    for table in [record / "results" / dataset / "summary.csv", *tables]:
        rebuilt = copy / table.relative_to(record)
        assert rebuilt.is_file(), rebuilt
        pd.testing.assert_frame_equal(pd.read_csv(table), pd.read_csv(rebuilt), check_exact=False, obj=table.name)
    for markdown in (record / "results" / dataset / "tables").glob("*.md"):
        assert (copy / markdown.relative_to(record)).read_text() == markdown.read_text(), markdown.name
