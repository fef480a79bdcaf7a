"""Reproduced vs published: the interval arithmetic against scipy directly, seed aggregation, flags, and the config's
published references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config
from scipy import stats

from methods import config as mc
from methods.report import compare
from methods.report.published import load as load_published
from methods.report.summary import summarize


def test_clopper_pearson_is_the_beta_quantiles():
    for k, n in [(0, 20), (7, 20), (20, 20), (412, 500)]:
        low, high = compare.clopper_pearson(k, n, 0.95)
        expected_low = 0.0 if k == 0 else stats.beta.ppf(0.025, k, n - k + 1)
        expected_high = 1.0 if k == n else stats.beta.ppf(0.975, k + 1, n - k)
        assert low == pytest.approx(expected_low, abs=1e-12) and high == pytest.approx(expected_high, abs=1e-12)
        assert low <= k / n <= high


def test_t_interval_by_hand():
    values = [0.61, 0.58, 0.64, 0.60]
    mean, std, low, high = compare.t_interval(values, 0.95)
    s = np.std(values, ddof=1)
    half = stats.t.ppf(0.975, 3) * s / 2
    assert (mean, std) == (pytest.approx(np.mean(values)), pytest.approx(s))
    assert (low, high) == (pytest.approx(np.mean(values) - half), pytest.approx(np.mean(values) + half))
    assert all(math.isnan(v) for v in compare.t_interval([0.5])[1:])


def _frame(radii, correct):
    return pd.DataFrame(
        {"idx": range(len(radii)), "label": 0, "predict": 0, "radius": radii, "correct": correct, "time": 0.1}
    )


def test_estimate_one_seed_and_several():
    a = _frame([0.3, 0.6, 0.0, 0.9, 0.2], [1, 1, 0, 1, 1])
    one = compare.estimate([a], "certified_accuracy", 0.25)
    assert one.value == pytest.approx(3 / 5) and one.seeds == 1
    assert (one.low, one.high) == pytest.approx(compare.clopper_pearson(3, 5))
    acr = compare.estimate([a], "acr")
    mean, _, low, high = compare.t_interval([0.3, 0.6, 0.0, 0.9, 0.2])
    assert (acr.value, acr.low, acr.high) == pytest.approx((mean, low, high)) and "t over 5 images" == acr.interval
    b = _frame([0.0, 0.6, 0.0, 0.0, 0.2], [0, 1, 0, 1, 1])
    two = compare.estimate([a, b], "certified_accuracy", 0.25)
    mean, std, low, high = compare.t_interval([3 / 5, 1 / 5])
    assert (two.value, two.std, two.low, two.high, two.seeds) == pytest.approx((0.4, std, low, high, 2))
    clean = compare.estimate([b], "clean_accuracy")
    assert clean.value == pytest.approx(3 / 5)  # correct regardless of radius


def _results(
    root: Path,
    run: str,
    method: str,
    certifier: str,
    seeds: list[tuple[list, list]],
    dataset="cifar10",
    norm="l2",
    sigma=0.25,
    eps_grid=None,
) -> list[Path]:
    paths = []
    for seed, (radii, correct) in enumerate(seeds):
        d = root / dataset / run / f"seed{seed}" / "certify"
        d.mkdir(parents=True, exist_ok=True)
        _frame(radii, correct).to_csv(d / f"{certifier}.tsv", sep="\t", index=False)
        (d / f"{certifier}.json").write_text(
            json.dumps(
                {
                    "certifier": certifier,
                    "norm": norm,
                    "sigma": sigma,
                    "n0": 100,
                    "n": 1000,
                    "alpha": 0.001,
                    "eps_grid": eps_grid,
                    "max_radius": 2.0,
                    "subset": {"start": 0, "skip": 1, "count": None, "examples": len(radii)},
                    "model_info": {"method": method, "device": "cpu"},
                    "provenance": {"device_name": "cpu"},
                }
            )
        )
        paths.append(d / f"{certifier}.tsv")
    return paths


def test_comparison_flags_a_published_value_outside_the_interval(tmp_path):
    published = load_published()
    # 50 images, 49 certified up to 0.9: the interval at r = 0 (≈ [0.89, 1.00]) excludes MACER's published 0.81 ...
    tsv = _results(tmp_path / "results", "macer-0.25", "macer", "cohen", [([0.9] * 49 + [0.0], [1] * 49 + [0])])
    refs = {"macer-0.25": [{"paper": "macer2020", "dataset": "cifar10", "setting": "MACER-0.25"}]}
    summary = summarize(tsv, [0.0], tmp_path / "summary.csv", published=refs)
    table = compare.comparison_table(summary, published).set_index(["metric", "radius"])
    at0 = table.loc[("certified_accuracy", 0.0)]
    assert at0["reproduced"] == pytest.approx(0.98) and at0["published"] == 0.81
    assert (at0["ci_low"], at0["ci_high"]) == pytest.approx(compare.clopper_pearson(49, 50))
    assert at0["outside"] == "yes" and at0["difference"] == pytest.approx(0.98 - 0.81)
    # ... while at r = 1.00 both are 0 (published) vs 0 (radius 0.9 < 1): inside
    at1 = table.loc[("certified_accuracy", 1.0)]
    assert at1["reproduced"] == 0 and at1["published"] == 0 and at1["outside"] == ""
    acr = table.reset_index()
    acr = acr[acr["metric"] == "acr"].iloc[0]
    assert acr["reproduced"] == pytest.approx(0.9 * 49 / 50) and acr["published"] == 0.556
    assert acr["interval"] == "t over 50 images"
    # the interval must be able to contain the published value: at r = 0.75 (0.43 published) it does not either,
    # at r = 1.0 both are 0
    assert table.loc[("certified_accuracy", 0.75)]["outside"] == "yes"


def test_several_seeds_aggregate_with_a_t_interval(tmp_path):
    published = load_published()
    seeds = [
        ([0.3] * 8 + [0.0] * 2, [1] * 8 + [0] * 2),
        ([0.3] * 6 + [0.0] * 4, [1] * 6 + [0] * 4),
        ([0.3] * 7 + [0.0] * 3, [1] * 7 + [0] * 3),
    ]
    tsvs = _results(tmp_path / "results", "cohen-0.25", "cohen", "cohen", seeds)
    refs = {"cohen-0.25": [{"paper": "cohen2019", "dataset": "cifar10", "setting": "sigma=0.25"}]}
    summary = summarize(tsvs, [0.0], tmp_path / "summary.csv", published=refs)
    row = compare.comparison_table(summary, published).set_index("radius").loc[0.25]
    mean, std, low, high = compare.t_interval([0.8, 0.6, 0.7])
    assert (row["reproduced"], row["std"], row["ci_low"], row["ci_high"]) == pytest.approx((mean, std, low, high))
    assert row["seeds"] == 3 and row["interval"] == "t over 3 seeds"
    assert row["status"] == "approximate"  # Cohen's App. Table 3 was not re-read cell by cell


def test_another_datasets_published_value_is_for_orientation_only(tmp_path):
    published = load_published()
    tsv = _results(tmp_path / "results", "cohen-0.25", "cohen", "cohen", [([0.5, 0.0], [1, 0])], dataset="digits")
    refs = {"cohen-0.25": [{"paper": "cohen2019", "dataset": "cifar10", "setting": "sigma=0.25"}]}
    table = compare.comparison_table(summarize(tsv, [0.0], tmp_path / "s.csv", published=refs), published)
    assert len(table) == 7 and table["difference"].isna().all() and (table["outside"] == "").all()
    assert table["note"].str.contains("orientation only").all()
    assert "digits: no published numbers exist" in compare.caption(table, "digits")


def test_linf_numbers_need_their_epsilon_on_the_attack_grid(tmp_path):
    published = load_published()
    eps8 = 8 / 255
    grid = [2 / 255, eps8]
    root = tmp_path / "results"
    tsvs = _results(
        root, "v2", "linf_dist", "linf-margin", [([0.05, 0.01, 0.0, 0.04], [1, 1, 0, 1])], norm="linf", sigma=None
    ) + _results(
        root,
        "v2",
        "linf_dist",
        "linf-dist-pgd",
        [([eps8, 2 / 255, 0.0, eps8], [1, 1, 0, 1])],
        norm="linf",
        sigma=None,
        eps_grid=grid,
    )
    refs = {"v2": [{"paper": "zhang2022", "dataset": "cifar10", "setting": "eps=8/255"}]}
    table = compare.comparison_table(
        summarize(tsvs, [0.0], tmp_path / "s.csv", linf_radii=[eps8], published=refs), published
    ).set_index("metric")
    assert table.loc["certified_accuracy", "reproduced"] == pytest.approx(2 / 4)  # 0.05 and 0.04 ≥ 8/255
    assert table.loc["certified_accuracy", "certifier"] == "linf-margin"
    assert table.loc["pgd_accuracy", "reproduced"] == pytest.approx(2 / 4)
    assert table.loc["clean_accuracy", "reproduced"] == pytest.approx(3 / 4)
    assert table.loc["certified_accuracy", "published"] == pytest.approx(0.4006)
    # an ε off the attack grid is not made up
    off = _results(
        tmp_path / "off",
        "v2",
        "linf_dist",
        "linf-dist-pgd",
        [([2 / 255, 0.0], [1, 0])],
        norm="linf",
        sigma=None,
        eps_grid=[2 / 255],
    )
    table = compare.comparison_table(
        summarize(off, [0.0], tmp_path / "o.csv", linf_radii=[eps8], published=refs), published
    ).set_index("metric")
    assert math.isnan(table.loc["pgd_accuracy", "reproduced"]) and "not on the" in table.loc["pgd_accuracy", "note"]
    assert "no linf-margin evaluation" in table.loc["certified_accuracy", "note"]


def test_the_published_envelope_is_compared_with_the_best_run_at_each_radius(tmp_path):
    published = load_published()
    root = tmp_path / "results"
    tsvs = _results(root, "salman-a", "salman", "cohen", [([0.3, 0.3, 0.0, 0.0], [1, 1, 1, 0])]) + _results(
        root, "salman-b", "salman", "cohen", [([1.2, 0.0, 0.0, 0.0], [1, 0, 0, 0])], sigma=0.5
    )
    table = compare.comparison_table(summarize(tsvs, [0.0], tmp_path / "s.csv"), published)
    assert len(table) == 9  # Salman's CIFAR-10 envelope, r = 0.25 … 2.25
    rows = table.set_index("radius")
    assert rows.loc[0.25, "reproduced"] == pytest.approx(0.5) and "best: salman-a" in rows.loc[0.25, "run"]
    assert rows.loc[1.0, "reproduced"] == pytest.approx(0.25) and "best: salman-b" in rows.loc[1.0, "run"]
    assert rows.loc[0.25, "published"] == pytest.approx(0.73)


def test_config_published_references_are_checked_and_never_retrain():
    raw = tiny_config()
    plain = mc.resolve_run(raw, "cohen-0.25", 0)
    cfg = mc.validate(
        {**_raw(), "published": {"cohen-0.25": [{"paper": "cohen2019", "dataset": "cifar10", "setting": "sigma=0.25"}]}}
    )
    assert mc.published_of(cfg) == {
        "cohen-0.25": [{"paper": "cohen2019", "dataset": "cifar10", "setting": "sigma=0.25"}]
    }
    assert mc.resolve_run(cfg, "cohen-0.25", 0) == plain  # not part of the spec
    with pytest.raises(mc.ConfigError, match=r"runs.cohen-0.25.published.0: .*sigma=0.25"):
        mc.validate(
            {
                **_raw(),
                "published": {"cohen-0.25": [{"paper": "cohen2019", "dataset": "cifar10", "setting": "sigma=0.2"}]},
            }
        )
    with pytest.raises(mc.ConfigError, match="published.nope: no run named 'nope'"):
        mc.validate({**_raw(), "published": {"nope": []}})


def _raw() -> dict:
    return {
        "dataset": "digits",
        "device": "cpu",
        "seeds": [0],
        "train": {"epochs": 3, "batch_size": 128, "lr": 0.05, "step_size": 2, "augment": False},
        "certify": {"n0": 20, "n": 200, "batch_size": 100, "skip": 25, "count": 8},
        "runs": {"cohen-0.25": {"method": "cohen", "hparams": {"sigma": 0.25}}},
    }
