"""The house rules, checked as tests: the import layers (import-linter), ruff's lint and format, snakefmt.

The layers are the contract in pyproject.toml ([tool.importlinter]): stages import only the stages below them,
method modules only `core` and `kernels` (Feng's ADRE-ADV on SmoothAdv's procedure declared), no cycles anywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "command",
    [
        (str(BIN / "lint-imports"),),
        (sys.executable, "-m", "ruff", "check", "methods", "tests"),
        (sys.executable, "-m", "ruff", "format", "--check", "methods", "tests"),
        (str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules"),
    ],
    ids=["lint-imports", "ruff-check", "ruff-format", "snakefmt"],
)
def test_the_code_follows_the_house_rules(command):
    out = _run(*command)
    assert out.returncode == 0, f"{' '.join(command)} failed:\n{out.stdout}\n{out.stderr}"


def test_the_layers_contract_breaks_on_an_upward_import(tmp_path):
    """The contract is not vacuous: in a copy of the package, a core module importing the train stage breaks it."""
    shutil.copytree(REPO / "methods", tmp_path / "methods", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    (tmp_path / "methods" / "core" / "probe.py").write_text("from ..train import loop  # noqa: F401\n")
    out = subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(tmp_path)})  # fmt: skip
    assert out.returncode != 0
    assert "methods.core.probe -> methods.train.loop" in out.stdout
