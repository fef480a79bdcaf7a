"""SmoothAdv (Salman et al. 2019): the attack on the soft smoothed classifier, its warm-up, and the training step."""

from __future__ import annotations

import math

import pytest
import torch

from methods import cohen, salman
from methods.core import models
from methods.core.interface import HparamError


def _model(seed=0):
    """A small conv net with BatchNorm, so eval-mode and running statistics can be checked."""
    torch.manual_seed(seed)
    return models.build("small_cnn", "digits", "standard")


def _batch(seed=1, size=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(size, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (size,), generator=g)
    return x, y


@pytest.mark.parametrize("kind", ["pgd", "ddn"])
@pytest.mark.parametrize("m", [1, 4])
def test_attack_stays_in_the_epsilon_ball_and_the_pixel_box(kind, m):
    model = _model()
    x, y = _batch()
    hp = salman.Hparams(sigma=0.25, attack=kind, steps=6, epsilon=0.5, num_noise=m)
    noise = salman.draw(x, hp)
    x_adv = salman.attack(model, x, y, noise, 0.5, hp)
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert (norms <= 0.5 + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad


@pytest.mark.parametrize("kind", ["pgd", "ddn"])
def test_attack_raises_the_soft_smoothed_loss(kind):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.mul_(8)  # a confident classifier, labelled by its own clean predictions
    x, _ = _batch(size=32)
    y = model(x).argmax(1)
    hp = salman.Hparams(sigma=0.25, attack=kind, steps=10, epsilon=1.0, num_noise=4)
    noise = salman.draw(x, hp)
    x_adv = salman.attack(model, x, y, noise, 1.0, hp)
    with torch.no_grad():
        model.eval()
        clean = salman.soft_smoothed_nll(model, x, y, noise)
        attacked = salman.soft_smoothed_nll(model, x_adv, y, noise)
    assert attacked.mean() > clean.mean() + 0.1
    if kind == "pgd":  # PGD ascends every example; DDN returns x itself where it found nothing adversarial
        assert (attacked >= clean - 1e-5).float().mean() > 0.9


@pytest.mark.parametrize("kind", ["pgd", "ddn"])
def test_attack_leaves_weights_gradients_mode_and_batchnorm_untouched(kind):
    model = _model()
    model.train()
    x, y = _batch()
    hp = salman.Hparams(sigma=0.25, attack=kind, steps=3, epsilon=0.5, num_noise=2)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    salman.attack(model, x, y, salman.draw(x, hp), 0.5, hp)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert model.training
    for key, value in model.state_dict().items():  # eval mode: BatchNorm running statistics did not move
        assert torch.equal(value, buffers[key]), key


def test_attack_does_not_disturb_existing_gradients():
    model = _model()
    x, y = _batch()
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    hp = salman.Hparams(attack="pgd", steps=2, epsilon=0.5, num_noise=1)
    salman.attack(model, x, y, salman.draw(x, hp), 0.5, hp)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_pgd_single_step_is_a_normalised_gradient_step_of_two_epsilon():
    """T = 1 from δ = 0: x̂ = clamp(x + 2ε·∇J/‖∇J‖) then projected to the ε-ball — checked against autograd."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).double()
    x = 0.3 + 0.4 * torch.rand(4, 1, 8, 8, dtype=torch.float64)  # far from the box edges
    y = torch.tensor([0, 1, 2, 3])
    noise = 0.1 * torch.randn(4, 2, 1, 8, 8, dtype=torch.float64)
    eps = 0.05
    x_adv = salman.pgd_attack(model, x, y, noise, eps, steps=1)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(salman.soft_smoothed_nll(model, xr, y, noise).sum(), xr)
    direction = grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(x_adv, x + eps * direction)  # 2ε step, projected back to norm ε


def test_ddn_learning_rate_schedule():
    assert salman.ddn_learning_rate(1, 1) == pytest.approx(0.01)
    assert [salman.ddn_learning_rate(t, 2) for t in (1, 2)] == pytest.approx([0.505, 0.01])
    rates = [salman.ddn_learning_rate(t, 10) for t in range(1, 11)]
    assert rates == sorted(rates, reverse=True) and rates[0] < 1


def test_ddn_result_is_quantised():
    model = _model()
    x = torch.randint(0, 256, (8, 1, 8, 8)).float() / 255
    y = torch.arange(8)
    hp = salman.Hparams(attack="ddn", steps=4, epsilon=1.0, num_noise=1)
    x_adv = salman.attack(model, x, y, salman.draw(x, hp), 1.0, hp)
    delta = (x_adv - x) * 255
    torch.testing.assert_close(delta, delta.round(), atol=1e-4, rtol=0)


def test_warm_up():
    assert [salman.warmed_up_epsilon(1.0, 10, e) for e in (0, 4, 9, 20)] == pytest.approx([0.1, 0.5, 1.0, 1.0])
    assert salman.warmed_up_epsilon(0.5, 1, 0) == 0.5  # warmup 1: no warm-up
    assert salman.warmed_up_epsilon(1.0, 10, 4.75) == pytest.approx(0.5)  # constant within an epoch


def test_objective_with_one_noise_draw_is_cohens_loss_at_the_given_point():
    model = _model()
    x, y = _batch()
    noise = 0.25 * torch.randn(16, 1, 1, 8, 8)
    got = salman.objective(model, x, y, noise, salman.Hparams(num_noise=1)).loss
    want = cohen.objective(model, x, y, noise[:, 0], cohen.Hparams()).loss
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("batch_size, m, steps", [(16, 1, 1), (16, 4, 4), (17, 8, 9), (3, 8, 3)])
def test_train_step_splits_the_batch_into_mini_batches(batch_size, m, steps):
    """m > 1: ⌊B/m⌋ images per optimizer step plus a remainder step, every image used once with m draws."""
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    calls = []
    original = optimizer.step
    optimizer.step = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    x, y = _batch(size=batch_size)
    hp = salman.Hparams(attack="pgd", steps=1, epsilon=0.5, num_noise=m)
    result = salman.train_step(model, optimizer, x, y, hp, epoch=0)
    assert len(calls) == steps
    assert result.count == batch_size * m
    assert math.isfinite(result.loss.item())
    assert model.training


def test_hparams_validation():
    with pytest.raises(HparamError, match="attack"):
        salman.Hparams(attack="fgsm")
    with pytest.raises(HparamError, match="num_noise"):
        salman.Hparams(num_noise=0)


def test_single_noise_attack_objective_is_the_cross_entropy_whose_gradient_never_vanishes():
    """m = 1: J is the cross-entropy, as the reference's single-noise attack computes it; −log of a clamped softmax
    would give no gradient once p_y < 1e-20 (logits 60 apart), CE still does."""
    logits = torch.tensor([[[0.0, 60.0, 0.0]]], requires_grad=True)  # (B, m = 1, C): p_y ≈ e^-60
    y = torch.tensor([0])
    j = salman.soft_smoothed_nll_from_logits(logits, y)
    assert j.item() == pytest.approx(torch.nn.functional.cross_entropy(logits[:, 0], y).item())
    (grad,) = torch.autograd.grad(j.sum(), logits)
    assert grad.abs().sum() > 0.5
    many = torch.tensor([[[0.0, 60.0, 0.0], [0.0, 60.0, 0.0]]], requires_grad=True)  # m = 2: the reference's clamp
    (grad,) = torch.autograd.grad(salman.soft_smoothed_nll_from_logits(many, y).sum(), many)
    assert grad.abs().sum() == 0
