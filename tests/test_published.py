"""workflow/resources/published.csv against hand-copied METHODS.md values, and the loader's validation."""

from __future__ import annotations

import csv
import math

import pytest

from methods.registry import METHODS
from methods.report import published as pub


@pytest.fixture(scope="module")
def frame():
    return pub.load()


def one(frame, paper, dataset, setting, metric, radius=None, certifier=None):
    """The single row of a published number (radius None = a row without radius; certifier None = any)."""
    rows = frame[
        (frame["paper"] == paper)
        & (frame["dataset"] == dataset)
        & (frame["setting"] == setting)
        & (frame["metric"] == metric)
        & ((frame["certifier"] == certifier) if certifier is not None else True)
    ]
    if radius is None:
        rows = rows[rows["radius"].isna()]
    else:
        rows = rows[(rows["radius"] - radius).abs() < 1e-12]
    assert len(rows) == 1, (paper, dataset, setting, metric, radius, len(rows))
    return rows.iloc[0]


# --- the shipped file ---------------------------------------------------------------------------------------------


def test_shipped_csv_loads_with_exact_columns(frame):
    assert tuple(frame.columns) == pub.COLUMNS
    assert pub.COLUMNS == (
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
    with open(pub.PUBLISHED_CSV, newline="", encoding="utf-8") as fh:
        lines = list(csv.reader(fh))
    assert tuple(lines[0]) == pub.COLUMNS
    assert all(len(line) == len(pub.COLUMNS) for line in lines)
    assert len(lines) - 1 == len(frame)
    for column in pub.FLOAT_COLUMNS:
        assert frame[column].dtype == float
    for column in set(pub.COLUMNS) - set(pub.FLOAT_COLUMNS):
        assert all(isinstance(v, str) for v in frame[column])


def test_rows_per_paper(frame):
    """Counted from METHODS.md's tables by hand."""
    expected = {
        "cohen2019": 4 * 7 + 3 * 7 + 4 + 3,  # CIFAR-10 App. Table 3, ImageNet App. Table 2, repo files r=0.25, timing
        "salman2019": 9 + 7,  # envelopes
        "macer2020": 9 * 11 + 9 * 8 + 6 * 3 + 1,  # Table 1, Table 2, Table 3 timing, full-test-set ACR (issue)
        "chen2020": 2 * 2,
        "zhang2021": 3 * 2,  # certified accuracy by interval bounds and, secondary, by margin / 2
        "zhang2022": 5 * 4 + 4 + 2 + 2,  # README, shipped 8/255 log + its time, 800-epoch timing; certified twice
        "zhang2019": 3,  # TRADES's README leaderboard: clean, its own PGD-20, AutoAttack (METHODS.md §7.5)
        "wong2020": 3 + 2,  # Fast AT: PGD-50x10 (README), AutoAttack and clean (RobustBench); epochs, total time
    }
    assert frame["paper"].value_counts().to_dict() == expected


def test_no_feng_rows_and_every_other_method_present(frame):
    assert "feng" not in set(frame["method"])
    assert not frame["paper"].str.contains("feng").any()
    # fast_at_bs: the BS paper's Fast AT numbers are in its tables, a source not read (METHODS.md §7.5)
    assert set(frame["method"]) == set(METHODS) - {"feng", "fast_at_bs"}


def test_macer_table1(frame):
    row = one(frame, "macer2020", "cifar10", "MACER-0.50", "acr")
    assert row["value"] == 0.726 and row["sigma"] == 0.5 and row["method"] == "macer"
    assert row["certifier"] == "cohen" and row["status"] == "verified" and "500-999" in row["note"]
    assert one(frame, "macer2020", "cifar10", "MACER-0.50", "certified_accuracy", 1.75)["value"] == 0.12
    assert one(frame, "macer2020", "cifar10", "MACER-0.50", "certified_accuracy", 2.0)["value"] == 0.0
    assert one(frame, "macer2020", "cifar10", "Salman-1.00", "certified_accuracy", 2.25)["value"] == 0.17
    assert one(frame, "macer2020", "cifar10", "Salman-1.00", "acr")["method"] == "salman"
    cohen = one(frame, "macer2020", "cifar10", "Cohen-0.25", "certified_accuracy", 0.0)
    assert (cohen["value"], cohen["method"], cohen["sigma"]) == (0.75, "cohen", 0.25)
    table1 = frame[(frame["paper"] == "macer2020") & (frame["source"] == "Table 1")]
    assert len(table1) == 99 and set(table1["status"]) == {"verified"}


def test_cohen_tables(frame):
    row = one(frame, "cohen2019", "imagenet", "sigma=1.00", "certified_accuracy", 3.0)
    assert (row["value"], row["sigma"], row["source"], row["status"]) == (0.12, 1.0, "App. Table 2", "verified")
    assert one(frame, "cohen2019", "cifar10", "sigma=0.50", "certified_accuracy", 1.5)["value"] == 0.08
    assert one(frame, "cohen2019", "cifar10", "sigma=0.12", "certified_accuracy", 0.0)["value"] == 0.83
    table3 = frame[frame["source"] == "App. Table 3"]
    assert len(table3) == 28 and set(table3["status"]) == {"approximate"}
    assert set(table3["sigma"]) == {0.12, 0.25, 0.5, 1.0}
    assert sorted(set(table3["radius"])) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    assert one(frame, "cohen2019", "cifar10", "sigma=1.00 repo files", "certified_accuracy", 0.25)["value"] == 0.39


def test_salman_envelopes(frame):
    c10 = frame[(frame["paper"] == "salman2019") & (frame["dataset"] == "cifar10")].sort_values("radius")
    assert list(c10["value"]) == [0.73, 0.58, 0.48, 0.38, 0.33, 0.29, 0.24, 0.18, 0.16]
    assert list(c10["radius"]) == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25]
    assert one(frame, "salman2019", "cifar10", "envelope", "certified_accuracy", 2.25)["value"] == 0.16
    imagenet = frame[(frame["paper"] == "salman2019") & (frame["dataset"] == "imagenet")].sort_values("radius")
    assert list(imagenet["value"]) == [0.56, 0.45, 0.38, 0.28, 0.26, 0.20, 0.17]
    assert list(imagenet["radius"]) == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    salman = frame[frame["paper"] == "salman2019"]
    assert set(salman["setting"]) == {pub.ENVELOPE_SETTING} and salman["sigma"].isna().all()


def test_linf_dist_v2_and_v1(frame):
    """The papers' certified accuracies come from the interval pass (the official code's certified_test); margin / 2 is
    kept as a secondary row; PGD numbers are one attack at exactly ε_test."""
    row = one(frame, "zhang2022", "cifar10", "eps=8/255", "certified_accuracy", 8 / 255, "linf-interval")
    assert row["value"] == 0.4006 and row["epsilon"] == 8 / 255 and row["source"] == "v2 repo README"
    margin = one(frame, "zhang2022", "cifar10", "eps=8/255", "certified_accuracy", 8 / 255, "linf-margin")
    assert margin["value"] == 0.4006 and margin["note"].startswith("secondary")
    for paper in ("zhang2021", "zhang2022"):
        certified = frame[(frame["paper"] == paper) & (frame["metric"] == "certified_accuracy")]
        assert (certified["certifier"] == "linf-interval").sum() == (certified["certifier"] == "linf-margin").sum()
    pgd = one(frame, "zhang2022", "cifar10", "eps=8/255", "pgd_accuracy", 8 / 255)
    assert (pgd["value"], pgd["certifier"]) == (0.4184, "linf-dist-pgd100-at-eps")
    assert (row["subset"], row["seeds"]) == ("0:1:10000", "best of ?")
    log = one(frame, "zhang2022", "cifar10", "eps=8/255 shipped log", "pgd_accuracy", 8 / 255)
    assert log["seeds"] == "single"
    clean = one(frame, "zhang2022", "cifar10", "eps=8/255", "clean_accuracy", 0.0)
    assert (clean["value"], clean["certifier"]) == (0.543, "")
    assert one(frame, "zhang2022", "mnist", "eps=0.3", "certified_accuracy", 0.3, "linf-interval")["value"] == 0.932
    assert one(frame, "zhang2022", "cifar10", "eps=16/255", "pgd_accuracy", 16 / 255)["value"] == 0.3273
    assert one(frame, "zhang2022", "cifar10", "eps=2/255", "clean_accuracy", 0.0)["epsilon"] == 2 / 255
    v1 = one(frame, "zhang2021", "cifar10", "net eps=8/255", "certified_accuracy", 8 / 255, "linf-interval")
    assert v1["value"] == 0.333
    head = one(frame, "zhang2021", "cifar10", "net+MLP head eps=8/255", "certified_accuracy", 8 / 255, "linf-interval")
    assert head["value"] == 0.3542
    mnist = one(frame, "zhang2021", "mnist", "eps=0.3", "certified_accuracy", 0.3, "linf-margin")
    assert (mnist["value"], mnist["status"]) == (0.9309, "unverified")
    linf = frame[frame["method"] == "linf_dist"]
    attacked = linf[linf["metric"].isin(["certified_accuracy", "pgd_accuracy"])]
    assert (attacked["radius"] == attacked["epsilon"]).all()


def test_linf_dist_published_matches_method_module(frame):
    """methods.linf_dist.PAPER carries the README's percentages too: the two transcriptions must agree."""
    from methods import linf_dist

    names = {
        "v2-mnist-0.1": ("zhang2022", "mnist", "eps=0.1"),
        "v2-mnist-0.3": ("zhang2022", "mnist", "eps=0.3"),
        "v2-cifar10-2/255": ("zhang2022", "cifar10", "eps=2/255"),
        "v2-cifar10-8/255": ("zhang2022", "cifar10", "eps=8/255"),
        "v2-cifar10-16/255": ("zhang2022", "cifar10", "eps=16/255"),
        "v1-cifar10-8/255": ("zhang2021", "cifar10", "net eps=8/255"),
    }
    checked = 0
    for name, entry in linf_dist.PAPER.items():
        if name not in names or entry.get("published") is None:
            continue
        rows = pub.select(frame, *names[name])
        eps = entry["hparams"]["eps_test"]
        for metric, percent in zip(("clean_accuracy", "pgd_accuracy", "certified_accuracy"), entry["published"]):
            if percent is None:
                continue
            radius = 0.0 if metric == "clean_accuracy" else eps
            row = rows[(rows["metric"] == metric) & ((rows["radius"] - radius).abs() < 1e-12)]
            row = row[row["certifier"] != "linf-margin"]  # the secondary certificate repeats the number
            assert list(row["value"]) == [pytest.approx(percent / 100, abs=1e-12)], (name, metric)
            checked += 1
    assert checked > 0


def test_timing_rows(frame):
    row = one(frame, "macer2020", "cifar10", "MACER-0.25", "sec_per_epoch")
    assert (row["value"], row["hardware"], row["sigma"], row["source"]) == (504.0, "1 P100", 0.25, "Table 3")
    assert "test pass" in row["note"]
    assert one(frame, "macer2020", "imagenet", "Salman-0.25", "total_hours")["hardware"] == "4 P100"
    timing = frame[frame["source"] == "Table 3"]
    assert len(timing) == 18 and set(timing["metric"]) == {"sec_per_epoch", "epochs", "total_hours"}
    assert (timing["sigma"] == 0.25).all() and set(timing["certifier"]) == {""}
    for (_dataset, setting), group in timing.groupby(["dataset", "setting"]):
        by = dict(zip(group["metric"], group["value"]))
        assert by["total_hours"] == pytest.approx(by["sec_per_epoch"] * by["epochs"] / 3600, abs=0.006), setting
    # Table 3's ACR column duplicates Tables 1/2: stored once, as Table 1/2 rows.
    assert not ((frame["source"] == "Table 3") & (frame["metric"] == "acr")).any()
    assert one(frame, "macer2020", "imagenet", "MACER-0.25", "acr")["value"] == 0.544
    assert one(frame, "macer2020", "cifar10", "Cohen-0.25", "acr")["value"] == 0.416
    v2 = one(frame, "zhang2022", "cifar10", "800 epochs", "total_hours")
    assert (v2["value"], v2["hardware"]) == (3.7, "RTX 3090")
    assert one(frame, "zhang2022", "cifar10", "800 epochs", "epochs")["value"] == 800
    assert one(frame, "zhang2022", "cifar10", "eps=8/255 shipped log", "total_hours")["value"] == 9.6
    assert one(frame, "zhang2022", "cifar10", "eps=8/255 shipped log", "epochs")["value"] == 1300
    paper = one(frame, "cohen2019", "imagenet", "certify ResNet-50", "certify_sec_per_image")
    readme = one(frame, "cohen2019", "imagenet", "certify ResNet-50 README", "certify_sec_per_image")
    assert (paper["value"], paper["source"], readme["value"], readme["source"]) == (110, "paper", 150, "README")
    assert one(frame, "cohen2019", "cifar10", "certify ResNet-110", "certify_sec_per_image")["value"] == 15


def test_backward_smoothing(frame):
    aa = one(frame, "chen2020", "cifar100", "WRN-34-10", "autoattack_accuracy", 8 / 255)
    assert (aa["value"], aa["certifier"], aa["epsilon"]) == (0.2694, "autoattack-at-eps", 8 / 255)
    assert aa["method"] == "backward_smoothing"
    assert one(frame, "chen2020", "cifar10", "WRN-34-10", "clean_accuracy", 0.0)["value"] == 0.8532
    assert one(frame, "chen2020", "cifar10", "WRN-34-10", "autoattack_accuracy", 8 / 255)["value"] == 0.5112


def test_macer_imagenet_status(frame):
    """Table 2: only the σ = 0.25 ACRs and the Cohen rows are verified (METHODS.md §3)."""
    table2 = frame[(frame["paper"] == "macer2020") & (frame["source"] == "Table 2")]
    assert len(table2) == 72
    for row in table2.itertuples():
        verified = row.method == "cohen" or (row.metric == "acr" and row.sigma == 0.25)
        assert row.status == ("verified" if verified else "unverified"), (row.setting, row.metric, row.radius)
    assert (table2["status"] == "verified").sum() == 3 * 8 + 2


def test_certifiers_by_metric(frame):
    l2 = frame[frame["method"].isin(["cohen", "salman", "macer"]) & frame["metric"].isin(["certified_accuracy", "acr"])]
    assert set(l2["certifier"]) == {"cohen"} and l2["epsilon"].isna().all()
    assert set(frame[frame["metric"] == "clean_accuracy"]["certifier"]) == {""}
    assert (frame[frame["metric"] == "clean_accuracy"]["radius"] == 0).all()
    assert frame[frame["metric"] == "acr"]["radius"].isna().all()
    assert set(frame[frame["metric"] == "autoattack_accuracy"]["certifier"]) == {"autoattack-at-eps"}


def test_every_accuracy_row_says_its_protocol(frame):
    """Subset, seeds and (for smoothing) n0 / n / alpha are recorded for every compared number (issue: apples to
    apples): MACER's Table 1 on its images 500-999, Cohen's files on every 20th image, the papers' CERTIFY settings."""
    accuracy = frame[frame["metric"].isin(pub.ACCURACY_METRICS + ("acr",))]
    unstated = accuracy[accuracy["seeds"] == ""]
    assert set(unstated["paper"]) == {"zhang2021"}  # the v1 numbers: how many seeds is not stated where they were read
    smoothing = accuracy[accuracy["certifier"] == "cohen"]
    assert set(smoothing["protocol"]) == {"n0=100;n=100000;alpha=0.001"}
    assert pub.parse_protocol(smoothing["protocol"].iloc[0]) == {"n0": 100, "n": 100_000, "alpha": 0.001}
    table1 = frame[(frame["paper"] == "macer2020") & (frame["source"] == "Table 1")]
    assert set(table1["subset"]) == {"500:1:500"} and pub.parse_subset("500:1:500") == (500, 1, 500)
    files = frame[(frame["paper"] == "cohen2019") & (frame["source"] == "repo result files")]
    assert set(files["subset"]) == {"0:20:500"}
    assert pub.parse_seeds("best of 8") == ("best", 8) and pub.parse_seeds("best of ?") == ("best", None)


# --- select / settings_of -----------------------------------------------------------------------------------------


def test_select_and_settings(frame):
    assert ("macer2020", "cifar10", "MACER-0.50") in pub.settings_of(frame)
    rows = pub.select(frame, "macer2020", "cifar10", "MACER-0.50")
    assert len(rows) == 11 and list(rows.index) == list(range(11))
    with pytest.raises(KeyError, match="MACER-0.50"):
        pub.select(frame, "macer2020", "cifar10", "MACER-0.5")
    with pytest.raises(KeyError, match="no close match"):
        pub.select(frame, "nobody", "svhn", "zzz")


# --- validation ---------------------------------------------------------------------------------------------------

GOOD = [
    dict(
        paper="p",
        source="Table 1",
        dataset="cifar10",
        method="cohen",
        setting="sigma=0.25",
        sigma="0.25",
        metric="certified_accuracy",
        radius="0.5",
        value="0.6",
        certifier="cohen",
        status="verified",
    ),
    dict(
        paper="p",
        source="Table 1",
        dataset="cifar10",
        method="cohen",
        setting="sigma=0.25",
        sigma="0.25",
        metric="acr",
        value="0.42",
        certifier="cohen",
        status="verified",
        note="a, with comma",
    ),
    dict(
        paper="q",
        source="README",
        dataset="mnist",
        method="linf_dist",
        setting="eps=0.3",
        epsilon="0.3",
        metric="certified_accuracy",
        radius="0.3",
        value="0.93",
        certifier="linf-margin",
        status="unverified",
    ),
]


def write(tmp_path, rows, columns=pub.COLUMNS):
    path = tmp_path / "published.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{c: r.get(c, "") for c in columns} for r in rows])
    return path


def test_small_good_csv_loads(tmp_path):
    frame = pub.load(write(tmp_path, GOOD))
    assert len(frame) == 3 and frame.loc[1, "note"] == "a, with comma"
    assert math.isnan(frame.loc[1, "radius"]) and math.isnan(frame.loc[0, "epsilon"])
    assert frame.loc[0, "hardware"] == ""


@pytest.mark.parametrize(
    "row, change, column, message",
    [
        (2, dict(metric="accuracy"), "metric", "unknown metric"),
        (3, dict(status="checked"), "status", "unknown status"),
        (1, dict(method="randomized"), "method", "unknown method"),
        (1, dict(value="1.5"), "value", r"\[0, 1\]"),
        (3, dict(value="93.09"), "value", r"\[0, 1\]"),
        (1, dict(sigma=""), "sigma", "sigma"),
        (1, dict(radius=""), "radius", "radius"),
        (2, dict(value="x"), "value", "not a number"),
        (3, dict(certifier="margin"), "certifier", "unknown certifier"),
    ],
)
def test_validation_errors_name_row_and_column(tmp_path, row, change, column, message):
    rows = [dict(r) for r in GOOD]
    rows[row - 1].update(change)
    with pytest.raises(ValueError, match=message) as info:
        pub.load(write(tmp_path, rows))
    assert f"data row {row}," in str(info.value) and repr(column) in str(info.value)


def test_duplicate_row(tmp_path):
    rows = GOOD + [dict(GOOD[0], value="0.61", source="Table 9")]
    with pytest.raises(ValueError, match="duplicate of data row 1") as info:
        pub.load(write(tmp_path, rows))
    assert "data row 4," in str(info.value)
    # The same radius written differently is still the same number.
    with pytest.raises(ValueError, match="duplicate"):
        pub.load(write(tmp_path, GOOD + [dict(GOOD[0], radius="0.50")]))
    # Two ACRs (no radius) of one setting are duplicates too.
    with pytest.raises(ValueError, match="duplicate of data row 2"):
        pub.load(write(tmp_path, GOOD + [dict(GOOD[1])]))


def test_missing_or_reordered_column(tmp_path):
    with pytest.raises(ValueError, match=r"missing \['note'\]"):
        pub.load(write(tmp_path, GOOD, columns=pub.COLUMNS[:-1]))
    swapped = ("source", "paper") + pub.COLUMNS[2:]
    with pytest.raises(ValueError, match="in this order"):
        pub.load(write(tmp_path, GOOD, columns=swapped))


def test_envelope_needs_no_sigma(tmp_path):
    rows = GOOD + [dict(GOOD[0], setting=pub.ENVELOPE_SETTING, sigma="")]
    assert len(pub.load(write(tmp_path, rows))) == 4
