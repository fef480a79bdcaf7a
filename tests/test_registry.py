"""Tests generated from the method registry (methods/registry.py): a method is tested the moment it registers.

For every registered method, on a tiny digits batch with the hyper-parameters of its run in the default config:
the module fulfils the interface (methods/core/interface.py), its loss is finite, one train step changes the
weights, its `Hparams` defaults are the paper setting it names (`PAPER[DEFAULTS]`), and a model file round-trips.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from methods import config as mc
from methods.checkpoint import load_checkpoint, save_model
from methods.core import data, models
from methods.core.interface import THREAT_MODELS, StepResult
from methods.registry import METHODS, get_method
from methods.train.build import build_training

METHOD_NAMES = sorted(METHODS)


def _default_run_spec(method: str) -> dict:
    """The spec of the default config's first run of `method` (digits-sized), trained on the CPU."""
    config = mc.load()
    runs = [name for name, run in config["runs"].items() if run["method"] == method]
    assert runs, f"{method} has no run in config/config.yaml: the default DAG must train every registered method"
    spec = mc.resolve_run(config, runs[0], seed=0)
    spec["device"] = "cpu"
    return spec


def _batch(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    test_set = data.load("digits", "test")
    xs, ys = zip(*(test_set[i] for i in range(size)))
    return torch.stack(xs), torch.tensor([int(y) for y in ys])


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_the_method_module_fulfils_the_interface(name):
    method = get_method(name)
    assert method.THREAT_MODEL in THREAT_MODELS
    assert isinstance(method.SOURCE, str) and method.SOURCE
    assert dataclasses.is_dataclass(method.Hparams) and method.Hparams.__dataclass_params__.frozen
    for function in ("draw", "objective"):
        assert callable(getattr(method, function)), function
    if hasattr(method, "build_model"):
        assert isinstance(getattr(method, "ARCH", None), str), "a method that builds its model names its ARCH"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_hparams_defaults_are_the_paper_setting_they_name(name):
    method = get_method(name)
    assert method.DEFAULTS in method.PAPER, f"DEFAULTS = {method.DEFAULTS!r} is not a PAPER setting"
    fields = {f.name for f in dataclasses.fields(method.Hparams)}
    for setting, entry in method.PAPER.items():
        unknown = set(entry["hparams"]) - fields
        assert not unknown, f"PAPER[{setting!r}] names unknown hyper-parameters {sorted(unknown)}"
        method.Hparams(**entry["hparams"])  # every setting is valid
    defaults, paper = method.Hparams(), method.PAPER[method.DEFAULTS]["hparams"]
    assert {k: getattr(defaults, k) for k in paper} == paper


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_the_loss_is_finite_and_one_step_moves_the_weights(name):
    spec = _default_run_spec(name)
    torch.manual_seed(0)
    training = build_training(spec, torch.device("cpu"))
    method, hp = get_method(name), training.hp
    x, y = _batch()
    training.model.train()
    result = method.objective(training.model, x, y, method.draw(x, hp), hp)
    assert isinstance(result, StepResult) and result.loss.dim() == 0
    assert torch.isfinite(result.loss), f"{name}: loss {float(result.loss)}"
    assert 0 <= int(result.correct) <= result.count

    before = {k: v.detach().clone() for k, v in training.model.state_dict().items()}
    step = training.step(training.step_model, training.optimizer, x, y, hp, 0.5)
    assert torch.isfinite(step.loss)
    after = training.model.state_dict()
    moved = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])]
    assert moved, f"{name}: one train step changed no weight"
    params = dict(training.model.named_parameters())
    assert any(k in params for k in moved), f"{name}: only buffers moved ({moved})"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_a_model_file_round_trips(name, tmp_path):
    spec = _default_run_spec(name)
    torch.manual_seed(0)
    model = build_training(spec, torch.device("cpu")).model.eval()
    method = get_method(name)
    info = {
        "method": name,
        "dataset": spec["dataset"],
        "num_classes": data.info(spec["dataset"]).num_classes,
        "hparams": spec["hparams"],
        "epochs_done": 0,
        **models.file_info(spec["model"], spec["dataset"], getattr(method, "ARCH", None)),
        "threat_model": method.THREAT_MODEL,
    }
    save_model(model, info, tmp_path / "model.pt")
    loaded, loaded_info = load_checkpoint(tmp_path / "model.pt")
    assert loaded_info == info and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x, _ = _batch(4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
