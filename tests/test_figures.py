"""Paper-style figures: one hue per method everywhere, per-σ and σ-sweep figures, published markers."""

from __future__ import annotations

import colorsys

import matplotlib.colors as mcolors
import pytest
from test_compare import _results

from methods.report import figures
from methods.report.published import load as load_published
from methods.report.summary import summarize


def _hue(color) -> float:
    return colorsys.rgb_to_hls(*mcolors.to_rgb(color))[0]


def test_runs_of_a_method_are_shades_of_its_hue():
    colors = figures.run_colors(
        ["cohen-0.12", "cohen-0.25", "cohen-0.50", "macer-0.25"], ["cohen", "cohen", "cohen", "macer"]
    )
    cohen = [colors[m] for m in ("cohen-0.12", "cohen-0.25", "cohen-0.50")]
    assert len({mcolors.to_hex(c) for c in cohen}) == 3  # runs tell apart
    assert all(abs(_hue(c) - _hue(figures.METHOD_COLORS["cohen"])) < 0.02 for c in cohen)
    assert mcolors.to_hex(colors["macer-0.25"]) == figures.METHOD_COLORS["macer"]
    lightness = [colorsys.rgb_to_hls(*c)[1] for c in cohen]
    assert lightness == sorted(lightness) and lightness[-1] - lightness[0] > 0.4  # visibly apart


def _summary(tmp_path, dataset="cifar10"):
    root = tmp_path / "results"
    tsvs = (
        _results(root, "cohen-0.25", "cohen", "cohen", [([0.3, 0.6, 0.0], [1, 1, 0])], dataset=dataset)
        + _results(root, "cohen-0.50", "cohen", "cohen", [([1.2, 0.1, 0.0], [1, 1, 0])], dataset=dataset, sigma=0.5)
        + _results(root, "salman-a", "salman", "cohen", [([0.4, 0.4, 0.0], [1, 1, 0])], dataset=dataset)
        + _results(root, "salman-b", "salman", "cohen", [([0.2, 0.7, 0.0], [1, 1, 0])], dataset=dataset)
    )
    refs = {"cohen-0.25": [{"paper": "cohen2019", "dataset": "cifar10", "setting": "sigma=0.25"}]}
    return summarize(tsvs, [0.0], tmp_path / "summary.csv", published=refs)


def test_per_sigma_and_sweep_figures_and_their_published_points(tmp_path):
    summary, published = _summary(tmp_path), load_published()
    points = figures._published_points(summary, published)
    assert len(points) == 7 and set(points["run"]) == {"cohen-0.25"} and (points["sigma"] == 0.25).all()
    paths = figures.plot_per_sigma(summary, published, tmp_path / "figs", 1.5)
    assert sorted(p.name for p in paths) == [
        "certified_accuracy_sigma0.25.pdf",
        "certified_accuracy_sigma0.25.png",
        "certified_accuracy_sigma0.5.pdf",
        "certified_accuracy_sigma0.5.png",
    ]
    assert figures.sigmas_and_sweeps(summary) == ([0.25, 0.5], ["cohen"])
    paths = figures.plot_sigma_sweeps(summary, published, tmp_path / "figs", 1.5)
    assert sorted(p.name for p in paths) == ["sigma_sweep_cohen.pdf", "sigma_sweep_cohen.png"]
    with pytest.raises(ValueError, match="no CERTIFY results at sigma = 1"):
        figures.plot_per_sigma(summary, published, tmp_path / "figs", 1.5, sigmas=[1.0])
    with pytest.raises(ValueError, match="salman has no sigma sweep"):
        figures.plot_sigma_sweeps(summary, published, tmp_path / "figs", 1.5, methods=["salman"])


def test_no_published_points_on_another_datasets_axes(tmp_path):
    summary = _summary(tmp_path, dataset="digits")
    assert figures._published_points(summary, load_published()).empty


def test_figure_names_match_what_the_dag_expects():
    assert figures.l2_figure_stems([0.12, 0.25, 0.5, 1.0, 0.25], ["cohen"]) == [
        "certified_accuracy_sigma0.12",
        "certified_accuracy_sigma0.25",
        "certified_accuracy_sigma0.5",
        "certified_accuracy_sigma1",
        "sigma_sweep_cohen",
    ]
