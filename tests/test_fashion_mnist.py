"""Real images in CI: a miniature of config/fashion_mnist.yaml through the whole DAG, on Debian's Fashion-MNIST files
(.ci/run installs dataset-fashion-mnist with apt before the test command; elsewhere the test is skipped, saying so)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from methods.core.data import DEBIAN_FASHION_MNIST

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(),
    reason=f"{DEBIAN_FASHION_MNIST} is missing: apt-get install dataset-fashion-mnist (CI's .ci/run does)",
)


@pytest.mark.slow
def test_the_miniature_fashion_mnist_dag_runs_on_real_images(tmp_path):
    shutil.copy(REPO / "tests" / "fashion_mnist" / "mini.yaml", tmp_path / "config.yaml")
    out = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--cores", "2", "--configfile", str(tmp_path / "config.yaml")],
                         capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "results" / "fashion_mnist" / "summary.csv")
    assert set(summary["run"]) == {"cohen-0.25", "macer-0.25"} and (summary["examples"] == 20).all()
    assert (
        summary.loc[summary["run"] == "cohen-0.25", "clean_acc"] > 0.3
    ).all()  # one epoch on real images, 10 classes
    claims = pd.read_csv(tmp_path / "results" / "fashion_mnist" / "tables" / "claims.csv")
    macer = claims[claims["claim"] == "macer-acr-over-cohen"].iloc[0]
    assert macer["images"] == 20 and macer["verdict"] in ("holds", "does not hold", "inconclusive")
    assert (claims.loc[claims["claim"] == "bs-third-of-trades-time", "verdict"] == "not measured").all()
    for name in ("certified_accuracy.png", "cost_robustness.png", "certified_accuracy_sigma0.25.png"):
        assert (tmp_path / "figures" / "fashion_mnist" / name).stat().st_size > 0, name
