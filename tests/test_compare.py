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
        {
            "idx": range(len(radii)),
            "label": 0,
            "predict": [0 if c else -1 for c in correct],
            "radius": radii,
            "correct": correct,
            "time": 0.1,
        }  # fmt: skip
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
    attack_eps=None,
    n=100_000,
    start=0,
    skip=1,
    dtype="float32",
    train_dtype="float32",
) -> list[Path]:
    """Per-example TSVs, sidecars and train logs of `run` (one per seed), measured by the papers' protocol unless a
    keyword says otherwise (n0 = 100, n = 100,000, alpha = 0.001, float32)."""
    paths = []
    for seed, (radii, correct) in enumerate(seeds):
        d = root / dataset / run / f"seed{seed}" / "certify"
        d.mkdir(parents=True, exist_ok=True)
        frame = _frame(radii, correct).assign(idx=[start + k * skip for k in range(len(radii))])
        frame.to_csv(d / f"{certifier}.tsv", sep="\t", index=False)
        (d.parent / "train_log.tsv").write_text(
            f"epoch\ttrain_seconds\tloss\taccuracy\tdtype\n1\t1.0\t0.5\t0.9\t{train_dtype}\n"
        )
        sidecar = {"certifier": certifier, "norm": norm, "sigma": sigma, "eps_grid": eps_grid, "max_radius": 2.0,
                   "subset": {"start": start, "skip": skip, "count": None, "examples": len(radii)}, "dtype": dtype,
                   "model_info": {"method": method, "device": "cpu"}, "provenance": {"device_name": "cpu"}}  # fmt: skip
        if norm == "l2":
            sidecar.update(n0=100, n=n, alpha=0.001)
        if attack_eps is not None:
            sidecar.update(attack_eps=attack_eps, eps_grid=None)
        (d / f"{certifier}.json").write_text(json.dumps(sidecar))
        paths.append(d / f"{certifier}.tsv")
    return paths


def test_comparison_flags_a_published_value_outside_the_interval(tmp_path):
    published = load_published()
    # MACER's images 500–999, 490 certified up to 0.9: the interval at r = 0 (≈ [0.96, 0.99]) excludes MACER's
    # published 0.81 ...
    seeds = [([0.9] * 490 + [0.0] * 10, [1] * 490 + [0] * 10)]
    tsv = _results(tmp_path / "results", "macer-0.25", "macer", "cohen", seeds, start=500)
    refs = {"macer-0.25": [{"paper": "macer2020", "dataset": "cifar10", "setting": "MACER-0.25"}]}
    summary = summarize(tsv, [0.0], tmp_path / "summary.csv", published=refs)
    table = compare.comparison_table(summary, published).set_index(["metric", "radius"])
    at0 = table.loc[("certified_accuracy", 0.0)]
    assert at0["reproduced"] == pytest.approx(0.98) and at0["published"] == 0.81
    assert (at0["ci_low"], at0["ci_high"]) == pytest.approx(compare.clopper_pearson(490, 500))
    assert at0["protocol_match"] == "yes"
    assert (
        at0["published_protocol"]
        == at0["reproduced_protocol"]
        == ("cohen; n0=100, n=100000, alpha=0.001; images 500:1:500; single; float32")
    )
    assert at0["outside"] == "yes" and at0["difference"] == pytest.approx(0.98 - 0.81)
    # ... while at r = 1.00 both are 0 (published) vs 0 (radius 0.9 < 1): inside
    at1 = table.loc[("certified_accuracy", 1.0)]
    assert at1["reproduced"] == 0 and at1["published"] == 0 and at1["outside"] == ""
    acr = table.reset_index()
    acr = acr[acr["metric"] == "acr"].iloc[0]
    assert acr["reproduced"] == pytest.approx(0.9 * 490 / 500) and acr["published"] == 0.556
    assert acr["interval"] == "t over 500 images"
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


def _linf_run(root: Path, run="v2", interval=None, margin=None, pgd_eps=8 / 255, grid=(2 / 255, 8 / 255)) -> list:
    """An ℓ∞-dist run on the full CIFAR-10 test set's protocol (4 images stand for it: the subset is checked apart)."""
    eps8 = 8 / 255
    interval = interval or ([eps8, 2 / 255, 0.0, eps8], [1, 1, 0, 1])
    margin = margin or ([eps8, 0.01, 0.0, 0.0], [1, 1, 0, 1])
    kw = dict(norm="linf", sigma=None)
    return (
        _results(root, run, "linf_dist", "linf-interval", [interval], eps_grid=list(grid), **kw)
        + _results(root, run, "linf_dist", "linf-margin", [margin], **kw)
        + _results(
            root,
            run,
            "linf_dist",
            "linf-dist-pgd100-at-eps",
            [([pgd_eps, 0.0, 0.0, pgd_eps], [1, 1, 0, 1])],
            attack_eps=pgd_eps,
            **kw,
        )  # fmt: skip
        + _results(
            root,
            run,
            "linf_dist",
            "linf-dist-pgd",
            [([eps8, eps8, 0.0, eps8], [1, 1, 0, 1])],
            eps_grid=list(grid),
            **kw,
        )  # fmt: skip
    )


def _linf_table(tmp_path, tsvs, published=None):
    refs = {"v2": [{"paper": "zhang2022", "dataset": "cifar10", "setting": "eps=8/255"}]}
    summary = summarize(tsvs, [0.0], tmp_path / "s.csv", linf_radii=[8 / 255], published=refs)
    return compare.comparison_table(summary, published if published is not None else load_published())


def test_linf_dist_certified_numbers_are_compared_by_interval_bounds_and_margin_is_secondary(tmp_path):
    table = _linf_table(tmp_path, _linf_run(tmp_path / "results"))
    certified = table[table["metric"] == "certified_accuracy"].set_index("certifier")
    assert set(certified.index) == {"linf-interval", "linf-margin"}
    assert certified.loc["linf-interval", "reproduced"] == pytest.approx(2 / 4)  # the interval pass: 2 at 8/255
    assert certified.loc["linf-margin", "reproduced"] == pytest.approx(1 / 4)
    assert certified["published"].tolist() == [pytest.approx(0.4006)] * 2
    assert "secondary" in load_published().query("certifier == 'linf-margin' and paper == 'zhang2022'")["note"].iloc[0]
    # an ε off the interval grid is not made up
    off = _linf_run(tmp_path / "off", grid=(2 / 255,), interval=([2 / 255, 0.0, 0.0, 0.0], [1, 1, 0, 1]))
    row = _linf_table(tmp_path, off).query("certifier == 'linf-interval'").iloc[0]
    assert math.isnan(row["reproduced"]) and "not on the" in row["note"]


def test_attack_numbers_are_one_attack_at_exactly_the_published_eps(tmp_path):
    """The published PGD accuracy is compared with the standalone attack at the published ε (match), never with the
    ε grid's union of attacks; an attack at another ε is shown but not flagged."""
    table = _linf_table(tmp_path, _linf_run(tmp_path / "results"))
    pgd = table[table["metric"] == "pgd_accuracy"].iloc[0]
    assert pgd["certifier"] == "linf-dist-pgd100-at-eps" and pgd["reproduced"] == pytest.approx(2 / 4)
    assert "eps=0.0313725" in pgd["reproduced_protocol"] and "eps=0.0313725" in pgd["published_protocol"]
    assert "best of an unstated number of seeds" in pgd["protocol_match"]  # the v2 README: best of several seeds
    other = _linf_table(tmp_path, _linf_run(tmp_path / "other", pgd_eps=0.03)).query("metric == 'pgd_accuracy'")
    assert "attacked at eps 0.03, published at 0.0313725" in other["protocol_match"].iloc[0]
    # a published attack number pointed at a grid evaluator: the union of attacks is named, no flag
    published = load_published()
    grid_row = (published["paper"] == "zhang2022") & (published["certifier"] == "linf-dist-pgd100-at-eps")
    published.loc[grid_row, "certifier"] = "linf-dist-pgd"
    published.loc[grid_row, "seeds"] = "single"
    row = _linf_table(tmp_path, _linf_run(tmp_path / "grid"), published).query("metric == 'pgd_accuracy'").iloc[0]
    assert "union of attacks" in row["protocol_match"] and row["outside"] == ""


def _published_row(**fields) -> pd.DataFrame:
    """The real published table with one extra setting `test` of MACER on CIFAR-10 (certified accuracy 0.5 at 0)."""
    published = load_published()
    base = published[(published["paper"] == "macer2020") & (published["setting"] == "MACER-0.25")].iloc[[0]].copy()
    base = base.assign(setting="test", radius=0.0, value=0.5, **fields)
    return pd.concat([published, base], ignore_index=True)


def _macer(tmp_path, seeds, **kw):
    tsvs = _results(tmp_path / "results", "m", "macer", "cohen", seeds, **kw)
    refs = {"m": [{"paper": "macer2020", "dataset": "cifar10", "setting": "test"}]}
    return summarize(tsvs, [0.0], tmp_path / "s.csv", published=refs)


def test_only_the_same_subset_takes_a_flag(tmp_path):
    right = [([0.9] * 400 + [0.0] * 100, [1] * 400 + [0] * 100)]  # 0.8 at r = 0 vs published 0.5: far outside
    ok = compare.comparison_table(_macer(tmp_path / "a", right, start=500), _published_row(subset="500:1:500"))
    assert ok["protocol_match"].iloc[0] == "yes" and ok["outside"].iloc[0] == "yes"
    moved = compare.comparison_table(_macer(tmp_path / "b", right, start=0), _published_row(subset="500:1:500"))
    assert moved["protocol_match"].iloc[0] == "no: subset differs: 0:1:500 vs published 500:1:500"
    assert moved["outside"].iloc[0] == "" and moved["reproduced"].iloc[0] == pytest.approx(0.8)
    unknown = compare.comparison_table(_macer(tmp_path / "c", right, start=500), _published_row(subset=""))
    assert unknown["protocol_match"].iloc[0] == "no: published subset not stated"


def test_best_of_n_is_compared_with_the_best_of_as_many_seeds(tmp_path):
    seeds = [([0.3] * n + [0.0] * (500 - n), [1] * n + [0] * (500 - n)) for n in (300, 350, 320)]  # 0.6, 0.7, 0.64
    three = compare.comparison_table(_macer(tmp_path / "a", seeds, start=500),
                                     _published_row(subset="500:1:500", seeds="best of 3"))  # fmt: skip
    row = three.iloc[0]
    assert row["reproduced"] == pytest.approx(0.7) and row["protocol_match"] == "yes"
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(compare.clopper_pearson(350, 500))
    assert row["interval"].startswith("best of 3 seeds") and row["outside"] == "yes"  # 0.5 is outside [0.66, 0.74]
    two = compare.comparison_table(_macer(tmp_path / "b", seeds[:2], start=500),
                                   _published_row(subset="500:1:500", seeds="best of 3"))  # fmt: skip
    assert (
        two.iloc[0]["protocol_match"] == "no: published best of 3 seeds, ours best of 2"
        and two.iloc[0]["outside"] == ""
    )
    mean = compare.comparison_table(_macer(tmp_path / "c", seeds, start=500),
                                    _published_row(subset="500:1:500", seeds="mean of 8"))  # fmt: skip
    assert (
        mean.iloc[0]["reproduced"] == pytest.approx((0.6 + 0.7 + 0.64) / 3) and mean.iloc[0]["protocol_match"] == "yes"
    )


def test_smoothing_settings_and_precision_must_match(tmp_path):
    right = [([0.9] * 400 + [0.0] * 100, [1] * 400 + [0] * 100)]
    published = _published_row(subset="500:1:500")
    fewer = compare.comparison_table(_macer(tmp_path / "a", right, start=500, n=10_000), published).iloc[0]
    assert fewer["protocol_match"] == "no: n 10000 vs published 100000" and fewer["outside"] == ""
    bf16 = compare.comparison_table(_macer(tmp_path / "b", right, start=500, dtype="bfloat16"), published).iloc[0]
    assert bf16["protocol_match"] == "no: certify bfloat16, train float32 (the papers: float32)"
    assert "certify bfloat16" in bf16["reproduced_protocol"] and bf16["outside"] == ""


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
