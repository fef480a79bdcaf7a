"""Fast AT (METHODS.md §7.3, §7.4 row a): the official FGSM-RS against the reference's normalised-space arithmetic,
both attacks inside their ball and box, the BS variant's eval-mode attack, the reference's PGD (per-example stop,
highest-CE restart), the early stop's rule (alone and in the training loop, with resume), the precision option,
PreActResNet-18, and the paper settings in the configs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from methods import config as mc
from methods import fast_at, fast_at_bs, load_checkpoint
from methods.certify import attacks
from methods.core import models
from methods.train import early_stop
from methods.train.build import build_training
from methods.train.loop import train

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


class TinyBNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 16, 10)

    def forward(self, x):
        return self.fc(F.max_pool2d(F.relu(self.bn(self.conv(x))), 2).flatten(1))


def _batch(n: int = 16, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g, dtype=dtype)
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0  # pixels on the box's edges
    return x, torch.randint(0, 10, (n,), generator=g)


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return TinyBNNet()


OFFICIAL = fast_at.Hparams(amp="off")


def test_fgsm_rs_stays_in_the_eps_ball_and_the_box_and_moves_bn_statistics_in_train_mode():
    x, y = _batch()
    model = _net().train()
    before = model.bn.running_mean.clone()
    torch.manual_seed(1)
    x_adv = fast_at.fgsm_rs_point(model, x, y, fast_at.draw(x, OFFICIAL), OFFICIAL)
    assert (x_adv - x).abs().max() <= OFFICIAL.epsilon + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > OFFICIAL.epsilon * 0.9
    assert not torch.equal(before, model.bn.running_mean)  # the attack's forward is a train-mode forward
    assert all(p.grad is None for p in model.parameters())  # its parameter gradients are discarded


def test_the_random_start_is_clipped_to_the_box_before_the_first_forward():
    x = torch.zeros(4, 3, 8, 8)
    x[:, 1] = 1.0
    delta = fast_at.clip_to_box(fast_at.draw(x, OFFICIAL), x)
    assert (x + delta).min() >= 0 and (x + delta).max() <= 1
    assert (delta[:, 0] >= 0).all() and (delta[:, 1] <= 0).all()


def test_pixel_space_fgsm_rs_equals_the_official_normalised_space_arithmetic():
    """The reference normalises in the loader: δ ~ U(−ε/σ_c, ε/σ_c), clamp to ((0 − μ)/σ − X, (1 − μ)/σ − X), one
    signed step of α/σ_c, clamp to ±ε/σ_c and to the box again. Ours: pixel space, the normalisation inside the model.
    Same uniform draw, same net (train mode, float64): the same point to 1e-5."""
    x, y = _batch(dtype=torch.float64)
    mu, sigma = (
        torch.tensor(MEAN, dtype=torch.float64).view(3, 1, 1),
        torch.tensor(STD, dtype=torch.float64).view(3, 1, 1),
    )
    net = _net().double().train()
    ours_model = torch.nn.Sequential(models.Normalize(MEAN, STD), copy.deepcopy(net)).double().train()
    u = 2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) - 1
    hp = fast_at.Hparams(amp="off")
    ours = fast_at.fgsm_rs_point(ours_model, x, y, u * hp.epsilon, hp)

    eps, alpha = hp.epsilon / sigma, hp.step_size / sigma
    lower, upper = (0 - mu) / sigma, (1 - mu) / sigma
    xn = (x - mu) / sigma
    delta = (u * eps).clone()  # per channel U(−ε/σ_c, ε/σ_c) from the same uniforms
    delta = torch.max(torch.min(delta, upper - xn), lower - xn).requires_grad_(True)
    loss = F.cross_entropy(net(xn + delta), y)
    loss.backward()
    delta = torch.max(torch.min(delta.detach() + alpha * delta.grad.sign(), eps), -eps)
    delta = torch.max(torch.min(delta, upper - xn), lower - xn)
    official = (xn + delta) * sigma + mu  # back to pixels
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-5)
    assert (ours - x).abs().max() > hp.epsilon / 2


def test_the_bs_variant_attacks_in_eval_mode_with_alpha_eps_and_trains_on_the_attacked_point():
    x, y = _batch()
    model = _net().train()
    before = copy.deepcopy(model.state_dict())
    hp = fast_at_bs.Hparams()
    assert hp.step_size == hp.epsilon == 0.031
    torch.manual_seed(2)
    delta0 = fast_at_bs.draw(x, hp)
    x_adv = fast_at_bs.adversarial_point(model, x, y, delta0, hp)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert (x_adv - x).abs().max() <= hp.epsilon + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    # away from the box's edges, one step of α = ε from δ₀ either moves by exactly ε or stops on the ball's face
    inside = (x > 2 * hp.epsilon) & (x < 1 - 2 * hp.epsilon)
    d = (x_adv - x)[inside]
    full_step = ((d - delta0[inside]).abs() - hp.epsilon).abs() < 1e-6
    on_face = (d.abs() - hp.epsilon).abs() < 1e-6
    assert (full_step | on_face).all() and full_step.float().mean() > 0.3
    result = fast_at_bs.objective(model, x, y, fast_at_bs.draw(x, hp), hp)
    assert torch.isfinite(result.loss) and result.count == len(x)


def test_fast_pgd_stays_in_the_ball_and_moves_only_correctly_classified_examples():
    x, y = _batch(32)
    model = _net().eval()
    with torch.no_grad():
        y = model(x).argmax(1)  # every example correct at x ...
    y[:4] = (y[:4] + 1) % 10  # ... but the first four: misclassified from the start, they never move
    eps = 8 / 255
    gens = [torch.Generator().manual_seed(i) for i in range(len(x))]
    x_adv = fast_at.fast_pgd(model, x, y, eps, 2 / 255, 10, 1, [torch.Generator().manual_seed(i) for i in range(32)])
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    start = fast_at.clip_to_box(fast_at._uniform(x.shape, eps, x, gens), x)
    with torch.no_grad():
        wrong_at_start = model(x + start).argmax(1) != y
    assert wrong_at_start[:4].all()
    torch.testing.assert_close(x_adv[wrong_at_start], (x + start)[wrong_at_start], rtol=0, atol=1e-7)
    assert (x_adv[~wrong_at_start] - (x + start)[~wrong_at_start]).abs().max() > 1e-3


def test_fast_pgd_keeps_each_examples_highest_loss_restart():
    x, y = _batch(24)
    model = _net().eval()

    def generators():
        return [torch.Generator().manual_seed(100 + i) for i in range(len(x))]

    gens = generators()
    first = fast_at.fast_pgd(model, x, y, 8 / 255, 2 / 255, 3, 1, gens)
    second = fast_at.fast_pgd(model, x, y, 8 / 255, 2 / 255, 3, 1, gens)  # the generators went on: restart 2
    both = fast_at.fast_pgd(model, x, y, 8 / 255, 2 / 255, 3, 2, generators())
    with torch.no_grad():
        l1, l2 = (F.cross_entropy(model(p), y, reduction="none") for p in (first, second))
    expected = torch.where((l2 >= l1).view(-1, 1, 1, 1), second, first)
    torch.testing.assert_close(both, expected, rtol=0, atol=0)
    assert not torch.equal(first, second)


def test_the_evaluator_preset_is_pgd50_with_10_restarts_in_frozen_eval_mode():
    preset = attacks.FAST_PGD50X10
    assert (preset.eps, preset.step_size, preset.steps, preset.restarts) == (8 / 255, 2 / 255, 50, 10)
    x, y = _batch(8)
    model = _net().train()
    before = copy.deepcopy(model.state_dict())
    x_adv = preset(model, x, y, 0.1, generator=[torch.Generator().manual_seed(i) for i in range(8)])
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert attacks.TRADES_PGD20.random_start and attacks.TRADES_PGD20.step_size == 0.003


# ------------------------------------------------------------------------------------------ early stop


def _scripted(accuracies):
    """A check that returns the given accuracies (out of 100) in turn."""
    it = iter(accuracies)
    return lambda model, x, y: (round(100 * next(it)), 100)


def _run_rule(accuracies):
    model = torch.nn.Linear(2, 2)
    rule = early_stop.EarlyStop(_scripted(accuracies))
    weights = []
    for epoch in range(1, len(accuracies) + 1):
        with torch.no_grad():
            model.weight.fill_(epoch)  # "training" epoch e leaves weights e
        weights.append(model.weight.clone())
        rule.capture(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
        if rule.after_epoch(model, epoch):
            break
    return rule, model


def test_early_stop_stops_and_restores_on_a_falling_robust_accuracy():
    rule, model = _run_rule([0.30, 0.45, 0.20, 0.50])
    assert rule.stopped_after == 3 and rule.accuracies == [0.30, 0.45, 0.20]
    assert (model.weight == 2).all()  # epoch 2's weights
    assert rule.record()["weights_of_epoch"] == 2


def test_early_stop_runs_on_when_the_accuracy_holds():
    rule, model = _run_rule([0.30, 0.45, 0.30])
    assert not rule.stopped and (model.weight == 3).all() and rule.record()["weights_of_epoch"] == 3
    rule, _ = _run_rule([0.30, 0.45, 0.25])  # a drop of exactly 0.2 does not stop (strict, as the reference)
    assert not rule.stopped


def test_early_stop_state_round_trips():
    rule, _ = _run_rule([0.30, 0.45])
    again = early_stop.EarlyStop(_scripted([0.20]))
    again.load_state_dict(rule.state_dict())
    model = torch.nn.Linear(2, 2)
    again.capture(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    assert again.after_epoch(model, 3) and (model.weight == 2).all()


def _digits_spec(epochs: int, schedule: str = "cyclic", **hparams) -> dict:
    cfg = mc.load()
    cfg["runs"]["fa"] = {"method": "fast_at",
                         "hparams": {"epsilon": 0.1, "step_size": 0.125, "amp": "off", **hparams},
                         "train": {"epochs": epochs, "lr": 0.05, "schedule": schedule, "schedule_step": "iteration",
                                   "eval_each_epoch": False, "batch_size": 256},
                         "certify": {"certifiers": ["pgd20-at-eps"]}}  # fmt: skip
    spec = mc.resolve_run(cfg, "fa", 0)
    spec["device"] = "cpu"
    return spec


def test_the_training_loop_stops_restores_and_resumes_as_the_rule_says(tmp_path, monkeypatch):
    """Scripted check accuracies 0.30, 0.45, 0.20: the run stops after epoch 3 with epoch 2's weights, the same
    weights as a 2-epoch run (a constant lr: the schedule does not depend on the number of epochs); killed right
    after the stop and rerun, it trains nothing more and writes them again."""
    torch.set_num_threads(1)
    monkeypatch.setattr(fast_at, "early_stop_accuracy", lambda m, x, y, hp: (30, 100))
    train(_digits_spec(2, "constant", early_stop=True), tmp_path / "two", progress=False)
    two, _ = load_checkpoint(tmp_path / "two" / "model.pt")

    checks = iter([30, 45, 20])
    monkeypatch.setattr(fast_at, "early_stop_accuracy", lambda m, x, y, hp: (next(checks), 100))

    def kill(epoch):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_digits_spec(5, "constant", early_stop=True), tmp_path / "stop", progress=False, on_epoch_end=kill)
    assert not (tmp_path / "stop" / "model.pt").exists()
    monkeypatch.setattr(fast_at, "early_stop_accuracy", lambda *a: pytest.fail("no check after the stop"))
    train(_digits_spec(5, "constant", early_stop=True), tmp_path / "stop", progress=False)
    stopped, info = load_checkpoint(tmp_path / "stop" / "model.pt")
    assert info["early_stop"]["stopped_after_epoch"] == 3 and info["early_stop"]["weights_of_epoch"] == 2
    assert info["early_stop"]["accuracies"] == [0.30, 0.45, 0.20]
    for key, value in two.state_dict().items():
        torch.testing.assert_close(stopped.state_dict()[key], value, rtol=0, atol=0)


def test_the_real_check_runs_in_train_mode_on_the_first_batch():
    model = _net().train()
    x, y = _batch(32)
    correct, count = fast_at.early_stop_accuracy(model, x, y, fast_at.Hparams(epsilon=0.1, amp="off"))
    assert count == 32 and 0 <= correct <= 32 and model.training


# ------------------------------------------------------------------------------------------ precision


def test_precision_falls_back_to_float32_on_a_cpu_and_says_so():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert fast_at.precision(fast_at.Hparams(), cuda) == (torch.float16, "")
    dtype, note = fast_at.precision(fast_at.Hparams(), cpu)
    assert dtype is None and "float32" in note
    assert fast_at.precision(fast_at.Hparams(amp="bfloat16"), cpu) == (torch.bfloat16, "")
    assert fast_at.precision(fast_at.Hparams(amp="off"), cuda) == (None, "")


@pytest.mark.parametrize("amp, dtype", [("bfloat16", "bfloat16"), ("float16", "float32"), ("off", "float32")])
def test_the_training_path_records_the_methods_precision(amp, dtype):
    spec = _digits_spec(1, amp=amp)
    torch.manual_seed(0)
    training = build_training(spec, torch.device("cpu"))
    assert training.path.dtype == dtype and training.path.log_fields()["dtype"] == dtype
    assert any("float16 asked" in n for n in training.path.notes) == (amp == "float16")
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    result = training.step(training.step_model, training.optimizer, x, y, training.hp, 0.0)
    assert torch.isfinite(result.loss)
    assert all(p.dtype == torch.float32 for p in training.model.parameters())  # fp32 master weights


# ------------------------------------------------------------------------------------------ model and configs


def test_preact_resnet18_has_the_references_shape_and_parameter_count():
    net = models.ARCHS["preact_resnet18"](3, 10)
    # 11,172,170: FAST's PreActResNet18() (CIFAR10/preact_resnet.py @ 54f7287) counted the same way
    assert sum(p.numel() for p in net.parameters()) == 11_172_170
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert models.ARCHS["preact_resnet18"](1, 10)(torch.rand(2, 1, 8, 8)).shape == (2, 10)  # digits-sized
    shortcuts = [m.shortcut for m in net.layers if m.shortcut is not None]
    assert len(shortcuts) == 3 and all(len(s) == 1 and isinstance(s[0], torch.nn.Conv2d) for s in shortcuts)


@pytest.mark.parametrize("run", ["fast-at-official-preact18", "fast-at-official-preact18-early-stop"])
def test_the_official_fast_at_runs_are_the_paper_setting(run):
    spec = mc.resolve_run(mc.load(mc.REPO_ROOT / "config" / "cifar10.yaml"), run, seed=0)
    paper = fast_at.PAPER["cifar10" if run.endswith("preact18") else "cifar10-early-stop"]
    assert spec["hparams"] == fast_at.Hparams(**paper["hparams"]).__dict__
    assert spec["hparams"]["step_size"] == pytest.approx(1.25 * spec["hparams"]["epsilon"])
    for key, value in paper["train"].items():
        assert spec["train"][key] == value, key
    assert spec["model"]["arch"] == "preact_resnet18"
    assert set(spec["certify"]["certifiers"]) == {"fast-pgd50x10-at-eps", "autoattack-at-eps"}


@pytest.mark.parametrize("run", ["fast-at-bs-resnet18", "fast-at-bs-wrn34-10"])
def test_the_bs_fast_at_runs_are_the_bs_recipe(run):
    spec = mc.resolve_run(mc.load(mc.REPO_ROOT / "config" / "cifar10.yaml"), run, seed=0)
    paper = fast_at_bs.PAPER["cifar10"]
    assert spec["hparams"] == fast_at_bs.Hparams(**paper["hparams"]).__dict__
    for key, value in paper["train"].items():
        assert spec["train"][key] == value, key


def test_the_fast_at_rows_of_published_csv():
    from methods.report import published

    rows = published.load()
    rows = rows[rows["paper"] == "wong2020"].set_index("metric")
    assert rows.loc["pgd_accuracy", "value"] == 0.4606
    assert rows.loc["pgd_accuracy", "certifier"] == "fast-pgd50x10-at-eps"
    assert rows.loc["autoattack_accuracy", "value"] == 0.4321
    assert rows.loc["pgd_accuracy", "epsilon"] == 8 / 255
