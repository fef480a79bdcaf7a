"""The cost planner: the papers' rates turned into hours by hand-checkable formulas, measured rates first, and no
guessing where there is no rate."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from methods import config as mc
from methods.bench.plan import plan, summary
from methods.report.published import load as load_published

REPO = Path(__file__).resolve().parents[1]


def _config(dataset: str, runs: dict, certify: dict | None = None) -> dict:
    return mc.validate(
        {"dataset": dataset, "seeds": [0], "certify": certify or {"skip": 20, "count": 500}, "runs": runs}
    )


def test_paper_rates_by_hand():
    cfg = _config(
        "cifar10",
        {
            "cohen": {"method": "cohen", "hparams": {"sigma": 0.25}, "train": {"epochs": 90}},
            "pgd2": {
                "method": "salman",
                "hparams": {"sigma": 0.25, "attack": "pgd", "steps": 2, "num_noise": 1, "epsilon": 0.5},
                "train": {"epochs": 150},
            },
            "small-n": {
                "method": "cohen",
                "hparams": {"sigma": 0.5},
                "certify": {"n": 10_000, "n0": 100, "certifiers": ["cohen", "t-certify"]},
            },
        },
    )
    jobs = plan(cfg, load_published()).set_index(["job", "run", "certifier"])
    # MACER's Table 3: Cohen 31.4 s/epoch on one P100
    assert jobs.loc[("train", "cohen", ""), "hours"] == pytest.approx(31.4 * 90 / 3600)
    assert jobs.loc[("train", "cohen", ""), "gpus"] == 1
    # SmoothAdv PGD-2, m = 1: Salman-0.25 (PGD-10, m = 8: 1990.1 s/epoch) × (2 + 1)·1 / ((10 + 1)·8)
    assert jobs.loc[("train", "pgd2", ""), "seconds_per_unit"] == pytest.approx(1990.1 * 3 / 88)
    # CERTIFY: 15 s/image at n0 = 100, n = 100,000, scaled by the draws; 500 images (skip 20)
    assert jobs.loc[("certify", "cohen", "cohen"), "hours"] == pytest.approx(15 * 500 / 3600)
    small = jobs.loc[("certify", "small-n", "t-certify")]
    assert small["seconds_per_unit"] == pytest.approx(15 * 10_100 / 100_100) and small["units"] == 500


def test_imagenet_timings_count_their_four_gpus():
    cfg = _config(
        "imagenet",
        {"macer": {"method": "macer", "hparams": {"sigma": 0.25, "k": 2}, "train": {"epochs": 120}}},
        {"skip": 100, "count": 500},
    )
    row = plan(cfg, load_published()).set_index("job").loc["train"]
    assert row["hours"] == pytest.approx(3537.1 * 120 / 3600) and row["gpus"] == 4
    assert row["gpu_hours"] == pytest.approx(4 * 3537.1 * 120 / 3600)


def test_jobs_without_a_rate_are_listed_not_guessed():
    cfg = _config("digits", {"cohen": {"method": "cohen", "hparams": {"sigma": 0.25}}}, {"skip": 5, "count": 100})
    jobs = plan(cfg, load_published())
    assert jobs["hours"].isna().all() and jobs["source"].str.startswith("no published or measured rate").all()
    assert summary(jobs)["hours"].isna().all()  # empty, not 0


def test_measured_rates_come_first_and_the_fast_path_wins():
    cfg = _config("cifar10", {"cohen": {"method": "cohen", "hparams": {"sigma": 0.25}, "train": {"epochs": 10}}})
    bench = pd.DataFrame(
        {
            "workload": ["train:cifar10:cohen", "train:cifar10:cohen", "certify:cifar10:cohen"],
            "path": ["reference", "fast", "fast"],
            "sec_per_epoch": [20.0, 8.0, math.nan],
            "sec_per_image": [math.nan, math.nan, 2.0],
        }
    )
    jobs = plan(cfg, load_published(), bench).set_index("job")
    assert (
        jobs.loc["train", "hours"] == pytest.approx(8.0 * 10 / 3600) and jobs.loc["train", "source"] == "bench (fast)"
    )
    assert jobs.loc["certify", "seconds_per_unit"] == pytest.approx(2.0)


def test_early_stopping_certifiers_are_bounded_by_certify_and_t_certify_costs_as_much():
    cfg = _config(
        "cifar10",
        {
            "cohen": {
                "method": "cohen",
                "hparams": {"sigma": 0.25},
                "certify": {"certifiers": ["cohen", "t-certify", "adaptive", "sequential"]},
            }
        },
    )
    bench = pd.DataFrame(
        {"workload": ["certify:cifar10:cohen"], "path": ["fast"], "sec_per_epoch": [math.nan], "sec_per_image": [3.0]}
    )
    for table, seconds in ((None, 15.0), (bench, 3.0)):
        jobs = plan(cfg, load_published(), table).set_index(["job", "certifier"]).loc["certify"]
        assert list(jobs["seconds_per_unit"]) == pytest.approx([seconds] * 4)
        for early in ("adaptive", "sequential"):
            assert "upper bound" in jobs.loc[early, "source"]
        assert "upper bound" not in jobs.loc["t-certify", "source"]


def test_cli_plans_the_cifar10_paper_config(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "methods",
            "plan",
            "--configfile",
            str(REPO / "config" / "cifar10.yaml"),
            "--out",
            str(tmp_path / "plan.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = pd.read_csv(tmp_path / "plan.csv")
    cfg = mc.load(REPO / "config" / "cifar10.yaml")
    specs = [mc.resolve_run(cfg, run, seed) for _, run, seed in mc.runs_of(cfg)]
    assert (jobs["job"] == "train").sum() == len(specs)
    assert (jobs["job"] == "certify").sum() == sum(len(s["certify"]["certifiers"]) for s in specs)
    assert "GPU-hours" in out.stdout and "jobs without a rate" in out.stdout  # backward smoothing has none
