"""The claims table: verdicts computed from paired data (holds, does not hold, inconclusive), intervals checked against
a direct bootstrap, and the cost-of-robustness table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from methods.report import claims as claims_module
from methods.report.cost import cost_robustness_table
from methods.report.summary import summarize

CLAIM = pd.DataFrame([{"claim": "m-over-c", "paper": "p", "statement": "MACER's ACR exceeds Cohen's", "kind": "greater",
                       "metric": "acr", "radius": "", "left_method": "macer", "left_certifier": "cohen",
                       "right_method": "cohen", "right_certifier": "cohen", "sigma": "0.25", "margin": "",
                       "status": "active", "source": "test"}])  # fmt: skip


def _run(root: Path, run: str, method: str, radii: list[float], seeds=(0,), hours=1.0, certifier="cohen") -> list:
    out = []
    for seed in seeds:
        d = root / "digits" / run / f"seed{seed}" / "certify"
        d.mkdir(parents=True, exist_ok=True)
        correct = [int(r > 0) for r in radii]
        pd.DataFrame({"idx": range(len(radii)), "label": 0, "predict": [0 if c else -1 for c in correct],
                      "radius": radii, "correct": correct, "time": 0.1}).to_csv(d / f"{certifier}.tsv", sep="\t",
                                                                                  index=False)  # fmt: skip
        (d / f"{certifier}.json").write_text(json.dumps({
            "certifier": certifier, "norm": "l2", "sigma": 0.25, "n0": 100, "n": 1000, "alpha": 0.001,
            "max_radius": 2.0, "subset": {"start": 0, "skip": 1, "count": None, "examples": len(radii)},
            "model_info": {"method": method, "device": "cpu", "hparams": {"sigma": 0.25}},
            "provenance": {"device_name": "cpu"}}))  # fmt: skip
        pd.DataFrame({"epoch": [1], "train_seconds": [hours * 3600]}).to_csv(d.parent / "train_log.tsv", sep="\t",
                                                                              index=False)  # fmt: skip
        out.append(d / f"{certifier}.tsv")
    return out


def _table(tmp_path, left, right, claims=CLAIM):
    root = tmp_path / "results"
    tsvs = _run(root, "macer-0.25", "macer", left) + _run(root, "cohen-0.25", "cohen", right)
    summary = summarize(tsvs, [0.0, 0.5], tmp_path / "summary.csv")
    return claims_module.claims_table(summary, claims), summary


def test_a_claim_that_holds_one_that_does_not_and_one_too_close_to_call(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.uniform(0.0, 1.0, 400)
    holds, _ = _table(tmp_path / "a", list(base + 0.2), list(base))  # every image 0.2 larger
    assert holds["verdict"].tolist() == ["holds"] and holds["difference"].iloc[0] == pytest.approx(0.2)
    reversed_, _ = _table(tmp_path / "b", list(base), list(base + 0.2))
    assert reversed_["verdict"].tolist() == ["does not hold"]
    noise = rng.normal(0, 0.3, 400)
    close, _ = _table(tmp_path / "c", list(np.clip(base + noise, 0, None)), list(np.clip(base - noise, 0, None)))
    row = close.iloc[0]
    assert row["ci_low"] < 0 < row["ci_high"], "this pair must straddle 0 to test the inconclusive verdict"
    assert row["verdict"] == "inconclusive"


def test_the_paired_interval_is_the_direct_bootstrap_over_images(tmp_path):
    rng = np.random.default_rng(2)
    left, right = rng.uniform(0, 1, 200), rng.uniform(0, 1, 200)
    table, _ = _table(tmp_path, list(left), list(right))
    row = table.iloc[0]
    differences = left * (left > 0) - right * (right > 0)  # ACR per image: radius · correct
    direct = np.random.default_rng(0)
    means = [differences[direct.integers(0, 200, 200)].mean() for _ in range(claims_module.BOOTSTRAP)]
    assert row["difference"] == pytest.approx(differences.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((np.quantile(means, 0.025), np.quantile(means, 0.975)))
    assert (row["left_value"], row["right_value"]) == pytest.approx((left.mean(), right.mean()))


def test_non_inferiority_ratio_and_missing_sides(tmp_path):
    rng = np.random.default_rng(3)
    base = rng.uniform(0.1, 1.0, 300)
    claims = pd.concat([CLAIM.assign(claim="ni", kind="non_inferior", margin="0.05"),
                        CLAIM.assign(claim="ratio", kind="ratio", metric="train_sec_per_epoch", margin="2.0"),
                        CLAIM.assign(claim="missing", left_method="trades")], ignore_index=True)  # fmt: skip
    root = tmp_path / "results"
    tsvs = _run(root, "macer-0.25", "macer", list(base - 0.01), hours=3.0) + _run(root, "cohen-0.25", "cohen",
                                                                                   list(base), hours=1.0)  # fmt: skip
    table = claims_module.claims_table(summarize(tsvs, [0.0], tmp_path / "s.csv"), claims).set_index("claim")
    assert table.loc["ni", "verdict"] == "holds"  # 0.01 worse, within the 0.05 margin
    assert table.loc["ratio", "difference"] == pytest.approx(3.0) and table.loc["ratio", "verdict"] == "holds"
    assert table.loc["missing", "verdict"] == "not measured" and "no run of trades" in table.loc["missing", "note"]


def test_the_shipped_claims_load_and_every_side_names_a_registered_method():
    from methods.certify.registry import CERTIFIERS
    from methods.registry import METHODS

    claims = claims_module.load()
    assert {"macer-acr-over-cohen", "bs-third-of-trades-time", "tcertify-over-certify"} <= set(claims["claim"])
    for row in claims.itertuples(index=False):
        for method, certifier in ((row.left_method, row.left_certifier), (row.right_method, row.right_certifier)):
            assert method.partition(":")[0] in METHODS, method
            assert not certifier or certifier in CERTIFIERS, certifier


def test_cost_table_puts_robustness_beside_training_hours(tmp_path):
    root = tmp_path / "results"
    tsvs = _run(root, "macer-0.25", "macer", [0.5, 0.5, 0.0, 0.3], hours=4.0) + _run(
        root, "cohen-0.25", "cohen", [0.2, 0.0, 0.0, 0.2], hours=1.0
    )
    table = cost_robustness_table(summarize(tsvs, [0.0], tmp_path / "s.csv")).set_index("method")
    assert table.loc["macer", "robustness"] == pytest.approx(1.3 / 4) and table.loc["macer", "train_hours"] == 4.0
    assert table.loc["cohen", "hours_per_unit"] == pytest.approx(1.0 / 0.1)
    assert set(table["kind"]) == {"l2"}


def test_a_collapsed_side_keeps_its_verdict_and_says_so(tmp_path):
    """A run the training health check flagged (summary `train_health`) still gets the data's verdict, and the note
    names it, so a "does not hold" is not read as the method's failure."""
    rng = np.random.default_rng(2)
    base = rng.uniform(0.0, 1.0, 200)
    table, summary = _table(tmp_path, list(base), list(base + 0.2))
    healthy_verdict = table["verdict"].iloc[0]
    summary["train_health"] = np.where(summary["run"] == "macer-0.25", "collapsed: at chance in epochs 2-6", "")
    flagged = claims_module.claims_table(summary, CLAIM).iloc[0]
    assert flagged["verdict"] == healthy_verdict == "does not hold"
    assert "macer-0.25 collapsed: at chance in epochs 2-6" in flagged["note"]
    assert "cohen-0.25" not in flagged["note"].split("; ")[-1]
