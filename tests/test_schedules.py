"""The per-iteration schedules of the backward-smoothing comparison (METHODS.md §7.3, §7.4): Fast AT's cyclic
triangle, the BS code's "jump then linear decay", MultiStep at fractions of the iterations (not the references'
float-milestone accident), each with its momentum, at named iterations."""

from __future__ import annotations

import math

import pytest
import torch

from methods import config as mc
from methods.core.errors import ConfigError
from methods.train.build import build_scheduler, multistep_milestones


def _cfg(**train) -> dict:
    base = dict(schedule="constant", schedule_step="iteration", epochs=15, lr=0.2, momentum=0.9, gamma=0.1,
                milestones=[], step_size=30, cosine_start=0)  # fmt: skip
    return {**base, **train}


def _trace(cfg: dict, batches_per_epoch: int, iterations: int) -> tuple[list[float], list[float]]:
    """The lr and momentum each iteration trains at (read before the step, as the training loop's batch sees them)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg["lr"], momentum=cfg["momentum"])
    sched = build_scheduler(opt, cfg, batches_per_epoch)
    lrs, moms = [], []
    for _ in range(iterations):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    return lrs, moms


def test_fast_at_cyclic_is_zero_at_the_start_peaks_mid_run_with_momentum_08_and_ends_at_zero():
    # 10 epochs of 100 batches: 1,000 iterations, the peak at iteration 500
    lrs, moms = _trace(_cfg(schedule="cyclic", epochs=10), 100, 1001)
    assert lrs[0] == 0.0 and moms[0] == pytest.approx(0.9)  # the first batch trains at lr 0 (as the reference)
    assert lrs[500] == pytest.approx(0.2) and moms[500] == pytest.approx(0.8)
    assert lrs[1000] == pytest.approx(0.0, abs=1e-12) and moms[1000] == pytest.approx(0.9)
    for t in (1, 137, 250, 499, 501, 750, 999):  # linear in between, momentum the mirror image
        lr = 0.2 * (1 - abs(t / 500 - 1))
        assert lrs[t] == pytest.approx(lr) and moms[t] == pytest.approx(0.9 - 0.1 * lr / 0.2), t


def test_fast_at_cyclic_at_the_official_15_epochs_of_391_batches():
    """Fast AT's CIFAR-10 run: 5,865 iterations, step_size_up = step_size_down = 2932.5 (a float, as the reference)."""
    lrs, moms = _trace(_cfg(schedule="cyclic"), 391, 5865)
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(0.2 * 2932 / 2932.5)
    assert max(range(5865), key=lrs.__getitem__) in (2932, 2933) and min(moms) == pytest.approx(0.8, abs=1e-4)
    assert lrs[-1] == pytest.approx(0.2 / 2932.5)  # the last batch: one step before lr 0


def test_bs_cyclic_jumps_to_the_peak_on_the_second_iteration_then_decays_linearly():
    lrs, moms = _trace(_cfg(schedule="cyclic_jump", epochs=4), 25, 100)  # lr_steps = 100
    assert lrs[0] == 0.0 and moms[0] == pytest.approx(0.9)
    assert lrs[1] == pytest.approx(0.2) and moms[1] == pytest.approx(0.8)
    for t in range(2, 100):
        assert lrs[t] == pytest.approx(0.2 * (101 - t) / 100), t
        assert moms[t] == pytest.approx(0.9 - 0.1 * (101 - t) / 100), t


def test_momentum_stays_put_when_cycle_momentum_is_off_and_lr_min_lifts_the_floor():
    lrs, moms = _trace(_cfg(schedule="cyclic", epochs=2, lr_min=0.01, cycle_momentum=False), 50, 101)
    assert lrs[0] == pytest.approx(0.01) and lrs[50] == pytest.approx(0.2) and lrs[100] == pytest.approx(0.01)
    assert set(moms) == {0.9}


def test_multistep_fractions_of_the_iterations_equal_epochs_50_and_75_at_391_batches():
    cfg = _cfg(schedule="multistep", epochs=100, lr=0.1, milestone_fractions=[0.5, 0.75])
    assert multistep_milestones(cfg, 391) == [19_550, 29_325] == [50 * 391, 75 * 391]
    by_epochs = _cfg(schedule="multistep", epochs=100, lr=0.1, milestones=[50, 75])
    a, _ = _trace(cfg, 391, 29_330)
    b, _ = _trace(by_epochs, 391, 29_330)
    assert a == b
    assert a[19_549] == 0.1 and a[19_550] == pytest.approx(0.01) and a[29_325] == pytest.approx(0.001)


def test_multistep_fractions_fire_where_the_references_float_milestones_never_do():
    """METHODS.md §7.4: MultiStepLR(milestones=[lr_steps / 2, lr_steps * 3 / 4]) fires only at whole numbers; at
    Fast AT's 15 × 391 iterations (2932.5, 4398.75) it never does. Ours drops at the first whole iteration after."""
    lr_steps = 15 * 391
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    accident = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[lr_steps / 2, lr_steps * 3 / 4], gamma=0.1)
    for _ in range(lr_steps):
        opt.step()
        accident.step()
    assert opt.param_groups[0]["lr"] == 0.2  # the accident: never decayed
    lrs, _ = _trace(_cfg(schedule="multistep", milestone_fractions=[0.5, 0.75]), 391, lr_steps)
    assert multistep_milestones(_cfg(milestone_fractions=[0.5, 0.75]), 391) == [2933, 4399]
    assert lrs[2932] == 0.2 and lrs[2933] == pytest.approx(0.02) and lrs[4399] == pytest.approx(0.002)
    assert math.isclose(lrs[-1], 0.002)


def test_config_accepts_the_new_schedules_and_rejects_milestones_with_fractions():
    config = mc.load()
    config["runs"]["cyc"] = {"method": "cohen", "hparams": {"sigma": 0.25},
                             "train": {"schedule": "cyclic", "schedule_step": "iteration", "lr": 0.2}}  # fmt: skip
    assert mc.resolve_run(config, "cyc", 0)["train"]["schedule"] == "cyclic"
    both = {"schedule": "multistep", "milestones": [5], "milestone_fractions": [0.5]}
    config["runs"]["both"] = {"method": "cohen", "hparams": {"sigma": 0.25}, "train": both}
    with pytest.raises(ConfigError, match="milestone_fractions"):
        mc.resolve_run(config, "both", 0)
