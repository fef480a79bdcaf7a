"""The benchmark's measuring pieces (not its speeds: timings are printed, never asserted): the reference loop tallies
every draw, rows are well-formed and consistent, bench.csv feeds the planner, bench.md has its sections."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from methods.bench import benchmark as bench
from methods.bench.plan import bench_rates
from methods.core import models


def test_reference_loop_tallies_every_draw_on_the_host():
    model = models.build("small_cnn", "digits").eval()
    x = torch.rand(1, 1, 8, 8)
    step = bench.reference_certify_step(model, x, 0.25, 10, 400)
    assert step() == 400 and step() == 400
    assert int(step.counts.sum()) == 800


def test_flops_per_sample_of_a_linear_layer_is_twice_its_multiply_adds():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    assert bench.flops_per_sample(model, (1, 8, 8), torch.device("cpu")) == 2 * 64 * 10


def test_certify_rows_and_the_planner_read_the_same_file(tmp_path):
    rows = bench.certify_rows(
        "digits CNN", "small_cnn", "digits", torch.device("cpu"), budget=0.3, planner_key="certify:digits:cohen"
    )
    assert [r["path"] for r in rows] == ["reference", "fast"]
    for row in rows:
        assert row["sec_per_image"] == pytest.approx(bench.N_PROTOCOL / row["items_per_sec"])
        assert row["tflops"] > 0 and row["device"] == "cpu"
    assert rows[0]["speedup"] == 1.0
    assert rows[1]["speedup"] == pytest.approx(rows[1]["items_per_sec"] / rows[0]["items_per_sec"])
    assert rows[1]["batch"] % 1000 == 0 and rows[1]["setup_seconds"] > 0
    print(
        f"digits CNN certify: reference {rows[0]['items_per_sec']:.0f}/s, fast {rows[1]['items_per_sec']:.0f}/s "
        f"({rows[1]['speedup']:.2f}x, {rows[1]['dtype']})"
    )
    frame = pd.DataFrame(rows)
    frame.to_csv(tmp_path / "bench.csv", index=False)
    rates = bench_rates(pd.read_csv(tmp_path / "bench.csv"))
    assert rates["certify:digits:cohen"].seconds == pytest.approx(rows[1]["sec_per_image"])  # fast preferred
    assert rates["certify:digits:cohen"].source == "bench (fast)"
    text = bench.markdown(frame, True, torch.device("cpu"))
    assert "## Certification" in text and "| digits CNN | fast |" in text
    assert not math.isnan(rows[1]["items_per_sec"])
