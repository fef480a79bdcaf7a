"""Metrics by hand, summary.csv columns, tables and figure files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from methods.report.build import report
from methods.report.figures import curves
from methods.report.summary import average_certified_radius, certified_accuracy, summarize
from methods.report.tables import cost_table

ROWS = pd.DataFrame(
    {  # correct, radius: two certified, one wrong (radius zeroed), one abstain, one correct at r=0.2
        "idx": [0, 1, 2, 3, 4],
        "label": [1, 2, 3, 4, 5],
        "predict": [1, 2, 0, -1, 5],
        "radius": [0.5, 1.0, 0.0, 0.0, 0.2],
        "correct": [1, 1, 0, 0, 1],
        "time": [0.1] * 5,
    }
)


def test_acr_and_certified_accuracy_by_hand():
    assert average_certified_radius(ROWS) == pytest.approx((0.5 + 1.0 + 0.2) / 5)
    assert certified_accuracy(ROWS, 0.0) == pytest.approx(3 / 5)
    assert certified_accuracy(ROWS, 0.2) == pytest.approx(3 / 5)  # radius ≥ r counts
    assert certified_accuracy(ROWS, 0.21) == pytest.approx(2 / 5)
    assert certified_accuracy(ROWS, 1.0) == pytest.approx(1 / 5)
    assert certified_accuracy(ROWS, 1.01) == 0.0


def test_acr_ignores_radii_of_wrong_predictions():
    """Cohen's own files keep a radius on wrong predictions: ACR multiplies by `correct`."""
    frame = ROWS.assign(radius=[0.5, 1.0, 0.9, 0.0, 0.2])
    assert average_certified_radius(frame) == pytest.approx((0.5 + 1.0 + 0.2) / 5)
    assert certified_accuracy(frame, 0.8) == pytest.approx(1 / 5)


def _fake_results(
    root: Path, runs: dict[str, tuple[float, list[list[float]]]], method: str = "cohen", certifier: str = "cohen"
) -> list[Path]:
    """results/<dataset>/<run>/seed<s>/certify/cohen.{tsv,json} + train_log.tsv, one radius list per seed."""
    tsvs = []
    for run, (sigma, seeds) in runs.items():
        for seed, radii in enumerate(seeds):
            d = root / "digits" / run / f"seed{seed}"
            (d / "certify").mkdir(parents=True, exist_ok=True)
            frame = pd.DataFrame(
                {
                    "idx": range(len(radii)),
                    "label": 0,
                    "predict": [0 if r > 0 else -1 for r in radii],
                    "radius": radii,
                    "correct": [int(r > 0) for r in radii],
                    "time": 0.5,
                }
            )
            frame.to_csv(d / "certify" / f"{certifier}.tsv", sep="\t", index=False)
            (d / "certify" / f"{certifier}.json").write_text(
                json.dumps(
                    {
                        "sigma": sigma,
                        "n0": 100,
                        "n": 1000,
                        "alpha": 0.001,
                        "max_radius": 2.0,
                        "subset": {"start": 0, "skip": 1, "count": None, "examples": len(radii)},
                        "model_info": {"method": method, "device": "cpu"},
                        "provenance": {"device_name": "cpu (test)"},
                    }
                )
            )
            pd.DataFrame({"epoch": [1, 2], "train_seconds": [1.0, 3.0], "eval_seconds": [0.5, 0.5]}).to_csv(
                d / "train_log.tsv", sep="\t", index=False
            )
            tsvs.append(d / "certify" / f"{certifier}.tsv")
    return tsvs


def test_summary_tables_and_figure(tmp_path):
    tsvs = _fake_results(
        tmp_path / "results",
        {
            "cohen-0.25": (0.25, [[0.3, 0.6, 0.0, 0.9], [0.3, 0.0, 0.0, 0.9]]),
            "cohen-0.50": (0.5, [[1.2, 0.1, 0.0, 0.0]]),
        },
    )
    summary = summarize(tsvs, [0.0, 0.5], tmp_path / "summary.csv")
    for column in (
        "dataset",
        "run",
        "method",
        "seed",
        "certifier",
        "norm",
        "sigma",
        "clean_acc",
        "acr",
        "certified_acc@0.00",
        "certified_acc@0.50",
        "train_sec_per_epoch",
        "epochs",
        "train_hours",
        "certify_sec_per_example",
        "device",
    ):
        assert column in summary.columns, column
    row = summary[(summary["run"] == "cohen-0.25") & (summary["seed"] == 0)].iloc[0]
    assert row["clean_acc"] == 0.75 and row["certified_acc@0.50"] == 0.5
    assert row["acr"] == pytest.approx(1.8 / 4)
    assert row["train_sec_per_epoch"] == 2.0 and row["epochs"] == 2 and row["train_hours"] == pytest.approx(4 / 3600)
    assert row["train_eval_sec_per_epoch"] == 2.5

    written = report(tmp_path / "summary.csv", tmp_path / "figures", tmp_path / "tables", radius_max=1.5)
    assert {p.name for p in written} == {
        "certified_accuracy.png",
        "certified_accuracy.pdf",
        "certified_accuracy.csv",
        "certified_accuracy.md",
        "certified_accuracy.tex",
        "timing.csv",
        "timing.md",
        "timing.tex",
        "envelope.csv",
        "envelope.md",
        "envelope.tex",
        "certification_cost.csv",
        "certification_cost.md",
        "certification_cost.tex",
    }
    assert all(p.stat().st_size > 0 for p in written)
    table = pd.read_csv(tmp_path / "tables" / "certified_accuracy.csv")
    seeds_mean = table.set_index("model").loc["cohen-0.25"]
    assert seeds_mean["0.00"] == pytest.approx((0.75 + 0.5) / 2)  # averaged over the two seeds
    assert seeds_mean["seeds"] == 2
    tex = (tmp_path / "tables" / "certified_accuracy.tex").read_text()
    assert r"\textbf{0.62}" in tex  # best clean accuracy in bold: cohen-0.25's mean 0.625
    # r = 0.5: cohen-0.25 has 0.5 and 0.25 over its seeds (mean 0.375, best); cohen-0.50 has 0.25 (plain).
    assert r"\textbf{0.38}" in tex and "cohen-0.50 & cohen & 0.50 & 0.50 & 0.25 &" in tex
    assert r"\textbf{0.375}" in tex  # best ACR, 3 decimals: (1.8/4 + 1.2/4) / 2
    assert "4 test images" in (tmp_path / "tables" / "certified_accuracy.md").read_text()


def test_cost_table_sets_each_certifier_beside_certify(tmp_path):
    """Samples and seconds per image from the TSVs' columns; the share of CERTIFY's samples and the largest accuracy
    gap over the radii are computed against the cohen rows of the same run (mean over seeds)."""
    root = tmp_path / "results"
    tsvs = _fake_results(root, {"cohen-0.25": (0.25, [[0.3, 0.6, 0.0, 0.9]])})
    tsvs += _fake_results(root, {"cohen-0.25": (0.25, [[0.25, 0.5, 0.0, 0.0]])}, certifier="adaptive")
    for tsv, samples in zip(tsvs, ([1100] * 4, [200, 400, 100, 100])):
        frame = pd.read_csv(tsv, sep="\t").assign(path="fast", dtype="bfloat16", samples=samples)
        frame.to_csv(tsv, sep="\t", index=False)
    summary = summarize(tsvs, [0.0, 0.25, 0.5], tmp_path / "summary.csv")
    table = cost_table(summary).set_index("certifier")
    assert table.loc["cohen", "samples_per_example"] == 1100
    assert table.loc["adaptive", "samples_per_example"] == 200
    assert table.loc["adaptive", "samples_vs_cohen"] == pytest.approx(200 / 1100)
    # cohen: acc 0.75 / 0.75 / 0.5 at 0 / 0.25 / 0.5; adaptive: 0.5 / 0.5 / 0.25 → largest gap 0.25
    assert table.loc["adaptive", "max_acc_gap_vs_cohen"] == pytest.approx(0.25)
    assert table.loc["cohen", "samples_vs_cohen"] == 1.0 and table.loc["cohen", "max_acc_gap_vs_cohen"] == 0.0
    assert table.loc["adaptive", "path"] == "fast" and table.loc["adaptive", "dtype"] == "bfloat16"


def test_curve_is_a_step_function_on_a_0_01_grid(tmp_path):
    tsvs = _fake_results(tmp_path / "results", {"cohen-0.25": (0.25, [[0.3, 0.6, 0.0, 0.9]])})
    summary = summarize(tsvs, [0.0], tmp_path / "summary.csv")
    curve = curves(summary, radius_max=1.0).set_index("radius")["certified_accuracy"]
    assert len(curve) == 101
    assert curve[0.0] == 0.75 and curve[0.3] == 0.75 and curve[0.31] == 0.5 and curve[0.9] == 0.25
    assert curve[0.91] == 0.0


def test_summarize_rejects_paths_outside_the_layout(tmp_path):
    stray = tmp_path / "cohen.tsv"
    ROWS.to_csv(stray, sep="\t", index=False)
    with pytest.raises(ValueError, match="not a results/"):
        summarize([stray], [0.0], tmp_path / "summary.csv")


def test_tables_keep_runs_without_a_sigma(tmp_path):
    """ℓ∞ methods have no σ: pandas drops NaN group keys unless told not to."""
    tsvs = _fake_results(tmp_path / "results", {"cohen-0.25": (0.25, [[0.3, 0.0]]), "linf": (None, [[0.1, 0.2]])})
    summary = summarize(tsvs, [0.0], tmp_path / "summary.csv")
    from methods.report.tables import accuracy_table

    assert set(accuracy_table(summary)["model"]) == {"cohen-0.25", "linf"}


def test_tables_footnote_reconstructed_methods_certifiers_and_run_notes(tmp_path):
    root = tmp_path / "results"
    tsvs = (
        _fake_results(root, {"cohen-0.25": (0.25, [[0.3, 0.0]])})
        + _fake_results(root, {"feng-0.25": (0.25, [[0.4, 0.1]])}, method="feng")
        + _fake_results(root, {"feng-0.25": (0.25, [[0.5, 0.1]])}, method="feng", certifier="t-certify")
    )
    summary = summarize(tsvs, [0.0], tmp_path / "summary.csv", notes={"cohen-0.25": "lambda_x unverified & 50%"})
    assert summary.set_index(["run", "certifier"]).loc[("feng-0.25", "t-certify"), "source"].startswith("reconstructed")
    report(tmp_path / "summary.csv", tmp_path / "figures", tmp_path / "tables", radius_max=1.0)
    markdown = (tmp_path / "tables" / "certified_accuracy.md").read_text()
    models = list(pd.read_csv(tmp_path / "tables" / "certified_accuracy.csv")["model"])
    assert models == ["cohen-0.25 [1]", "feng-0.25 (cohen) [2]", "feng-0.25 (t-certify) [2,3]"]
    assert "[1] cohen-0.25: lambda_x unverified & 50%" in markdown
    assert "[2] feng: reconstructed: no official code" in markdown
    assert "[3] t-certify: Feng et al.'s T-CERTIFY, reconstructed" in markdown
    tex = (tmp_path / "tables" / "certified_accuracy.tex").read_text()
    assert r"lambda\_x unverified \& 50\%" in tex  # escaped for LaTeX


def test_envelope_takes_the_best_run_at_each_radius(tmp_path):
    tsvs = _fake_results(
        tmp_path / "results",
        {
            "cohen-0.25": (0.25, [[0.3, 0.6, 0.0, 0.9], [0.3, 0.0, 0.0, 0.9]]),
            "cohen-0.50": (0.5, [[1.2, 0.1, 0.0, 0.0]]),
        },
    )
    summary = summarize(tsvs, [0.0, 0.5, 1.0], tmp_path / "summary.csv")
    from methods.report.tables import envelope_table

    row = envelope_table(summary).iloc[0]
    assert (row["method"], row["certifier"], row["runs"]) == ("cohen", "cohen", 2)
    # r = 0: cohen-0.25 (seed mean 0.625) beats 0.5; r = 0.5: 0.375 beats 0.25; r = 1.0: only cohen-0.50 (0.25)
    assert (row["0.00"], row["0.50"], row["1.00"]) == (0.625, 0.375, 0.25)
    assert row["best"] == "0.00: cohen-0.25; 0.50: cohen-0.25; 1.00: cohen-0.50"


def test_best_and_last_checkpoints_are_told_apart_and_the_best_is_marked_test_selected(tmp_path):
    last = _fake_results(
        tmp_path / "results", {"bs": (None, [[0.1, 0.0, 0.2]])}, method="backward_smoothing", certifier="pgd20"
    )[0]
    best_dir = last.parent.parent / "certify-best"
    best_dir.mkdir()
    pd.DataFrame(
        {
            "idx": [0, 1, 2],
            "label": 0,
            "predict": [0, 0, -1],
            "radius": [0.2, 0.2, 0.0],
            "correct": [1, 1, 0],
            "time": 0.5,
        }
    ).to_csv(best_dir / "pgd20.tsv", sep="\t", index=False)
    meta = json.loads(last.with_suffix(".json").read_text())
    meta["model_info"].update(checkpoint="best", best_epoch=7, selected_by="PGD-20 accuracy on test images 0-2559")
    (best_dir / "pgd20.json").write_text(json.dumps(meta))

    summary = summarize([last, best_dir / "pgd20.tsv"], [0.0], tmp_path / "summary.csv", linf_radii=[0.0, 0.2])
    rows = summary.set_index("checkpoint")
    assert rows.loc["best", "best_epoch"] == 7 and pd.isna(rows.loc["last", "best_epoch"])
    assert rows.loc["best", "certified_acc@0.20"] == pytest.approx(2 / 3)
    assert rows.loc["last", "certified_acc@0.20"] == pytest.approx(1 / 3)
    report(tmp_path / "summary.csv", tmp_path / "figures", tmp_path / "tables", radius_max=0.3, what=("linf", "timing"))
    table = pd.read_csv(tmp_path / "tables" / "linf_accuracy.csv")
    assert sorted(table["model"]) == ["bs [best] [1,2]", "bs [last] [1]"]
    markdown = (tmp_path / "tables" / "linf_accuracy.md").read_text()
    assert "[2] bs [best]: the epoch with the highest PGD-20 accuracy on test images 0-2559" in markdown
    assert len(pd.read_csv(tmp_path / "tables" / "timing.csv")) == 1  # one training, timed once


def _linf_results(root: Path, run: str, certifier: str, radii: list[float], correct: list[int], kind: str,
                  grid: list[float] | None) -> Path:  # fmt: skip
    d = root / "digits" / run / "seed0" / "certify"
    d.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"idx": range(len(radii)), "label": 0, "predict": [0 if c else -1 for c in correct],
                          "radius": radii, "correct": correct, "time": 0.1})  # fmt: skip
    frame.to_csv(d / f"{certifier}.tsv", sep="\t", index=False)
    meta = {"certifier": certifier, "norm": "linf", "kind": kind, "sigma": None, "eps_grid": grid,
            "max_radius": max(grid) if grid else None,
            "subset": {"start": 0, "skip": 1, "count": None, "examples": len(radii)},
            "model_info": {"method": "linf_dist", "device": "cpu"}, "provenance": {"device_name": "cpu"}}  # fmt: skip
    (d / f"{certifier}.json").write_text(json.dumps(meta))
    return d / f"{certifier}.tsv"


def test_no_empirical_curve_is_drawn_below_a_certificate_of_the_same_model(tmp_path):
    """The issue's defect: between grid points an attack curve drawn at the next grid point's value sat below the
    margin certificate. Drawn as the data say (an attack's upper bound held from the grid point to its left, a grid
    certificate taken from the one to its right), the empirical curve is at or above every certified curve of the
    same model at every radius, while the data themselves (the values at the grid points) are unchanged."""
    grid = [0.1, 0.125, 0.15]
    n = 8
    margin = [0.12, 0.124, 0.11, 0.13, 0.05, 0.2, 0.0, 0.14]  # exact radii (margin / 2)
    correct = [1] * 6 + [0, 1]
    attack = [max([g for g in grid if g <= r + 0.02], default=0.0) for r in margin]  # robust at least as far
    interval = [max([g for g in grid if g <= r], default=0.0) for r in margin]
    root = tmp_path / "results"
    tsvs = [_linf_results(root, "net", "linf-margin", margin, correct, "certified", None),
            _linf_results(root, "net", "linf-interval", interval, correct, "certified", grid),
            _linf_results(root, "net", "pgd20", attack, correct, "empirical", grid)]  # fmt: skip
    summary = summarize(tsvs, [0.0], tmp_path / "s.csv", linf_radii=[0.1])
    data = curves(summary[summary["norm"] == "linf"], 0.2, step=0.001)
    wide = data.pivot_table(index="radius", columns="certifier", values="certified_accuracy", aggfunc="first")
    both = wide.dropna()
    assert len(both) > 20
    for certified in ("linf-margin", "linf-interval"):
        assert (both["pgd20"] >= both[certified] - 1e-12).all(), certified
    at_grid = data[data["evaluated"] & (data["certifier"] == "pgd20")].set_index("radius")["certified_accuracy"]
    assert list(at_grid.round(6)) == [sum(a >= g and c for a, c in zip(attack, correct)) / n for g in grid]
    assert wide.loc[wide.index > 0.15 + 1e-9, "pgd20"].isna().all()  # past the grid: unknown, not 0


def test_every_footnote_marker_points_at_a_note_about_its_row(tmp_path):
    """The issue's defect: timing.md's markers pointed at other rows' notes (the footnotes were numbered over rows the
    table did not show). Every marker of every table must name a note that speaks of that row's run, method or
    certifier."""
    import re

    tsvs = _fake_results(tmp_path / "results", {"cohen-0.25": (0.25, [[0.5, 0.0, 0.3]])})
    tsvs += _fake_results(tmp_path / "results", {"feng-0.25": (0.25, [[0.4, 0.2, 0.0]])}, method="feng",
                          certifier="t-certify")  # fmt: skip
    best = tmp_path / "results" / "digits" / "bs" / "seed0"
    for folder in ("certify", "certify-best"):
        tsv = _linf_results(tmp_path / "results", "bs", "pgd20", [0.1, 0.0, 0.05], [1, 0, 1], "empirical",
                            [0.05, 0.1])  # fmt: skip
        if folder == "certify-best":
            (best / folder).mkdir(parents=True, exist_ok=True)
            for ext in ("tsv", "json"):
                (best / folder / f"pgd20.{ext}").write_text(tsv.with_suffix(f".{ext}").read_text())
            meta = json.loads((best / folder / "pgd20.json").read_text())
            meta["model_info"].update(method="backward_smoothing", best_epoch=3, selected_by="PGD-20 accuracy")
            (best / folder / "pgd20.json").write_text(json.dumps(meta))
            tsv = best / folder / "pgd20.tsv"
        tsvs.append(tsv)
    summary = summarize(tsvs, [0.0, 0.25], tmp_path / "summary.csv", linf_radii=[0.05],
                        notes={"cohen-0.25": "a caveat of cohen-0.25's own"})  # fmt: skip
    paths = report(tmp_path / "summary.csv", tmp_path / "figures", tmp_path / "tables", 1.0,
                   what=("l2", "timing"))  # fmt: skip
    checked = 0
    for table in [p for p in paths if p.suffix == ".md"]:
        text = table.read_text()
        notes = dict(re.findall(r"^\[(\d+)\] (.*)$", text, flags=re.M))
        for line in text.splitlines():
            if not line.startswith("| ") or line.startswith("| model") or line.startswith("| run"):
                continue
            label = line.split("|")[1].strip()
            marks = re.search(r"\[([\d,]+)\]$", label)
            if not marks:
                continue
            row = summary[[label.startswith(r) for r in summary["run"]]].iloc[0]
            for number in marks.group(1).split(","):
                note = notes[number]
                assert any(word in note for word in (row["run"], row["method"], row["certifier"])), (table, label, note)
                checked += 1
    assert checked >= 3
