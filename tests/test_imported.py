"""The papers' own per-example files: what they really contain (both time formats, radii kept on wrong predictions,
3-digit radii, truncated subsets, no counts), imported beside our runs, drawn, and compared image by image. The files
are written here; nothing fetched is committed."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from methods.core.errors import InputError
from methods.core.tsv import read_tsv
from methods.report.build import report
from methods.report.compare import comparison_table
from methods.report.imported import import_tsv, seconds
from methods.report.published import load as load_published
from methods.report.summary import summarize

COHEN_STYLE = """idx\tlabel\tpredict\tradius\tcorrect\ttime
0\t3\t3\t0.524\t1\t0:00:15.123456
20\t8\t8\t0.953\t1\t0:00:14.980000
40\t8\t1\t0.233\t0\t0:00:15.010000
60\t0\t-1\t0.0\t0\t1 day, 0:00:01.500000
"""
SECONDS_STYLE = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.5\t1\t15.5\n20\t8\t8\t0.25\t1\t14.9\n"


def test_time_cells_in_both_formats():
    assert seconds("15.5") == 15.5 and seconds(3) == 3.0
    assert seconds("0:00:15.123456") == pytest.approx(15.123456)
    assert seconds("1:02:03") == 3723.0 and seconds("2 days, 0:00:01.5") == pytest.approx(172801.5)
    with pytest.raises(ValueError):
        seconds("15 s")


def test_a_cohen_style_file_is_imported_with_its_quirks_said(tmp_path):
    source = tmp_path / "sigma_0.25"
    source.write_text(COHEN_STYLE)
    out = import_tsv(source, tmp_path / "results", "cifar10", "cohen-0.25-published", "cohen", "cohen", 0.25,
                     100_000, 0.001, "locuslab/smoothing data/certify/...", start=0, skip=20, count=6)  # fmt: skip
    frame = read_tsv(out)
    assert frame["idx"].tolist() == [0, 20, 40, 60]
    assert frame["radius"].tolist() == [0.524, 0.953, 0.0, 0.0]  # the wrong prediction's 0.233 zeroed
    assert frame["time"].tolist() == pytest.approx([15.123456, 14.98, 15.01, 86401.5])
    assert frame["nA"].isna().all() and (frame["path"] == "published").all()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["published"] and meta["missing_rows"] == 2 and meta["radii_zeroed_where_wrong"] == 1
    assert "2 of the subset's 6 images missing" in meta["note"] and meta["subset"]["examples"] == 4
    summary = summarize([out], [0.0, 0.5], tmp_path / "summary.csv")
    assert summary["origin"].tolist() == ["published"] and summary["certified_acc@0.50"].iloc[0] == 0.5


def test_files_that_are_not_per_example_files_are_refused_naming_them(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t2\t0.5\t1\t1.0\n")
    with pytest.raises(InputError, match="bad.tsv: data row 1: correct = 1 but predict 2, label 3"):
        import_tsv(bad, tmp_path / "r", "cifar10", "x", "cohen", "cohen", 0.25, 1000, 0.001, "test")
    gap = tmp_path / "gap.tsv"
    gap.write_text(SECONDS_STYLE.replace("20\t8", "40\t8"))
    with pytest.raises(InputError, match="not start 0, every 20"):
        import_tsv(gap, tmp_path / "r", "cifar10", "x", "cohen", "cohen", 0.25, 1000, 0.001, "test", skip=20)


def _our_run(root, radii, predict):
    d = root / "cifar10" / "cohen-0.25" / "seed0" / "certify"
    d.mkdir(parents=True)
    correct = [int(p == 3) for p in predict]
    pd.DataFrame({"idx": [0, 20, 40, 60], "label": 3, "predict": predict, "radius": radii, "correct": correct,
                  "time": 1.0}).to_csv(d / "cohen.tsv", sep="\t", index=False)  # fmt: skip
    (d / "cohen.json").write_text(json.dumps({
        "certifier": "cohen", "norm": "l2", "sigma": 0.25, "n0": 100, "n": 100_000, "alpha": 0.001, "max_radius": 0.95,
        "subset": {"start": 0, "skip": 20, "count": 4, "examples": 4}, "dtype": "float32",
        "model_info": {"method": "cohen", "device": "cpu", "hparams": {"sigma": 0.25}},
        "provenance": {"device_name": "cpu"}}))  # fmt: skip
    return d / "cohen.tsv"


def test_a_run_is_compared_with_the_published_file_image_by_image_and_drawn_beside_it(tmp_path):
    root = tmp_path / "results"
    source = tmp_path / "published.tsv"
    source.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.6\t1\t1\n20\t3\t3\t0.3\t1\t1\n"
                      "40\t3\t3\t0.2\t1\t1\n")  # fmt: skip
    imported = import_tsv(source, root, "cifar10", "cohen-0.25-published", "cohen", "cohen", 0.25, 100_000, 0.001,
                          "test", skip=20, count=4, compare_with=["cohen-0.25"])  # fmt: skip
    ours = _our_run(root, [0.5, 0.4, 0.0, 0.1], [3, 3, 1, 3])
    summary = summarize([ours, imported], [0.0, 0.25], tmp_path / "summary.csv")
    table = comparison_table(summary, load_published())
    rows = table[table["setting"] == "per-example file"]
    at25 = rows[(rows["metric"] == "certified_accuracy") & (rows["radius"] == 0.25)].iloc[0]
    # shared images 0, 20, 40: ours certified at 0.25 on 0 and 20 (2/3), theirs on 0 and 20 (2/3)
    assert (at25["reproduced"], at25["published"], at25["difference"]) == pytest.approx((2 / 3, 2 / 3, 0.0))
    assert "3 shared images" in at25["interval"] and "agree on 66.7%" in at25["note"]
    acr = table[(table["setting"] == "per-example file") & (table["metric"] == "acr")].iloc[0]
    assert acr["reproduced"] == pytest.approx((0.5 + 0.4) / 3) and acr["published"] == pytest.approx(1.1 / 3)
    paths = report(tmp_path / "summary.csv", tmp_path / "figures", tmp_path / "tables", 1.0, what=("l2", "sigma"))
    assert (tmp_path / "figures" / "certified_accuracy_sigma0.25.png") in paths
    accuracy = (tmp_path / "tables" / "certified_accuracy.md").read_text()
    assert "cohen-0.25-published (published, per example)" in accuracy


def test_the_cli_imports_a_file(tmp_path):
    source = tmp_path / "f.tsv"
    source.write_text(SECONDS_STYLE)
    out = subprocess.run([sys.executable, "-m", "methods", "import-tsv", str(source), "--dataset", "cifar10",
                          "--method", "cohen", "--sigma", "0.25", "--n", "100000", "--alpha", "0.001", "--source",
                          "test", "--run", "p", "--skip", "20", "--results", str(tmp_path / "results")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert read_tsv(tmp_path / "results" / "cifar10" / "p" / "seed0" / "certify" / "cohen.tsv")["time"].tolist() == [
        15.5,
        14.9,
    ]
