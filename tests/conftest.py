"""Shared fixtures: tiny specs resolved through the real config path, so tests exercise what the CLI runs."""

from __future__ import annotations

import copy

import pytest

from methods import config as mc


def tiny_config(**train_overrides) -> dict:
    """A digits Cohen config small enough to train in about a second."""
    raw = {
        "dataset": "digits",
        "device": "cpu",
        "seeds": [0],
        "train": {"epochs": 3, "batch_size": 128, "lr": 0.05, "step_size": 2, "augment": False, **train_overrides},
        "certify": {"n0": 20, "n": 200, "batch_size": 100, "skip": 25, "count": 8},
        "runs": {"cohen-0.25": {"method": "cohen", "hparams": {"sigma": 0.25}}},
    }
    return mc.validate(copy.deepcopy(raw))


@pytest.fixture
def tiny_spec():
    return mc.resolve_run(tiny_config(), "cohen-0.25", seed=0)


def linear_model(weight, bias=None):
    """A fixed linear classifier on flattened inputs, so tests can recompute its logits by hand with numpy."""
    import torch

    weight = torch.as_tensor(weight, dtype=torch.float64)
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0]).double()
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.zeros(weight.shape[0]) if bias is None else torch.as_tensor(bias))
    return torch.nn.Sequential(torch.nn.Flatten(), layer)


def pytest_collection_modifyitems(config, items):
    """Run the real-SLURM test (tests/cluster/) after every other test of the session. It installs SLURM and
    snakemake-executor-plugin-slurm; with both present, a `snakemake` call can take about 10 s longer (the plugin
    asks `scontrol` at import, which waits 10 s where a slurm.conf names a controller that is down). The rest of the
    suite runs first, in the environment it started with. A stable sort: the other tests keep their order."""
    from pathlib import Path

    cluster = Path(__file__).parent / "cluster"
    items.sort(key=lambda item: cluster in Path(str(item.path)).parents)
