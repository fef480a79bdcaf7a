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
        "train": {"epochs": 3, "batch_size": 128, "lr": 0.05, "step_size": 2, "augment": False,
                  **train_overrides},
        "certify": {"n0": 20, "n": 200, "batch_size": 100, "skip": 25, "count": 8},
        "runs": {"cohen-0.25": {"method": "cohen", "hparams": {"sigma": 0.25}}},
    }
    return mc.validate(copy.deepcopy(raw))


@pytest.fixture
def tiny_spec():
    return mc.resolve_run(tiny_config(), "cohen-0.25", seed=0)
