"""Backward smoothing (Chen et al. 2020): the output-noise init, the TRADES step and loss, and the attack's hygiene."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import linear_model

from methods import backward_smoothing as bs
from methods.core import interface, models
from methods.core.interface import HparamError


def _linear(seed=0, classes=4, dim=12):
    g = torch.Generator().manual_seed(seed)
    return linear_model(
        torch.randn(classes, dim, generator=g, dtype=torch.float64) * 3,
        torch.randn(classes, generator=g, dtype=torch.float64),
    )


def _batch(seed=1, size=8, shape=(12,), classes=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(size, *shape, generator=g, dtype=dtype)
    x[0].fill_(0.0)  # pixels at the box's edges, so the [0, 1] clamp has work to do
    x[1].fill_(1.0)
    return x, torch.randint(0, classes, (size,), generator=g)


def _xi(size, classes, gamma, seed=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.rand(size, classes, generator=g, dtype=dtype) - 1) * gamma


def _bn_model(seed=0):
    """A tiny CIFAR ResNet (BatchNorm everywhere) on 1×8×8 inputs."""
    torch.manual_seed(seed)
    return models.CifarResNet(8, num_classes=5, in_channels=1)


def _proj(x_new, x, eps):
    return torch.min(torch.max(x_new, x - eps), x + eps).clamp(0, 1)


def _kl_by_hand(p_logits, q_logits):
    """Σ_batch Σ_c P (log P − log Q), written out with logsumexp."""
    log_p = p_logits - p_logits.logsumexp(1, keepdim=True)
    log_q = q_logits - q_logits.logsumexp(1, keepdim=True)
    return (log_p.exp() * (log_p - log_q)).sum()


def test_hparams_defaults_and_validation():
    hp = bs.Hparams()
    assert (hp.epsilon, hp.step_size, hp.gamma, hp.beta, hp.steps) == (0.031, 0.031, 1.0, 6.0, 1)
    assert bs.Hparams(gamma=0.0).gamma == 0  # allowed: init = x
    assert bs.Hparams(beta=0.0, steps=0).steps == 0
    for field, value in [
        ("epsilon", 0.0),
        ("step_size", -0.01),
        ("gamma", -0.5),
        ("beta", -1.0),
        ("steps", -1),
        ("steps", 1.5),
    ]:
        with pytest.raises(HparamError) as err:
            bs.Hparams(**{field: value})
        assert err.value.field == field
    assert bs.THREAT_MODEL in interface.THREAT_MODELS
    assert "BackwardSmoothing" in bs.SOURCE


@pytest.mark.parametrize("explicit", [True, False])
def test_init_stays_in_the_epsilon_ball_and_the_pixel_box(explicit):
    model = models.build("small_cnn", "digits", "standard")
    x, _ = _batch(size=16, shape=(1, 8, 8), classes=10, dtype=torch.float32)
    hp = bs.Hparams(epsilon=0.05, step_size=0.08, gamma=2.0)  # α > ε: the projection is active
    xi = _xi(16, 10, 2.0, dtype=torch.float32) if explicit else bs.draw(x, hp)
    x1 = bs.backward_smoothing_init(model, x, xi, hp)
    assert (x1 - x).abs().max() <= 0.05 + 1e-6
    assert x1.min() >= 0 and x1.max() <= 1
    assert not torch.equal(x1, x)  # it moved
    assert not x1.requires_grad


def test_gamma_zero_returns_x_exactly():
    model = _linear()
    x, _ = _batch()
    hp = bs.Hparams(gamma=0.0, epsilon=0.1, step_size=0.1)
    for xi in (bs.draw(x, hp), torch.zeros(len(x), 4, dtype=torch.float64)):
        assert torch.equal(bs.backward_smoothing_init(model, x, xi, hp), x)
    with pytest.raises(ValueError):
        bs.backward_smoothing_init(model, x, _xi(len(x), 4, 0.5), hp)


def test_explicit_xi_must_fit_gamma_and_the_logits():
    model = _linear()
    x, _ = _batch()
    hp = bs.Hparams(gamma=0.5)
    with pytest.raises(ValueError, match="exceeds"):
        bs.backward_smoothing_init(model, x, _xi(len(x), 4, 0.5) * 3, hp)
    with pytest.raises(ValueError, match="shape"):
        bs.backward_smoothing_init(model, x, _xi(len(x), 3, 0.5), hp)


@pytest.mark.parametrize("eps,alpha", [(0.05, 0.02), (0.01, 0.03)])
def test_init_is_one_signed_descent_step_on_a_linear_model(eps, alpha):
    model = _linear()
    W, b = model[1].weight.detach(), model[1].bias.detach()
    x, _ = _batch()
    xi = _xi(len(x), 4, 1.0)
    hp = bs.Hparams(epsilon=eps, step_size=alpha, gamma=1.0)

    z = x @ W.T + b
    x_prime = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_kl_by_hand(z + xi, x_prime @ W.T + b), x_prime)
    # ∂KL/∂logits = Q − P for a linear model: an independent check of the autograd gradient itself
    closed = (torch.softmax(z, 1) - torch.softmax(z + xi, 1)) @ W
    torch.testing.assert_close(grad, closed)
    assert (grad != 0).all()
    expected = _proj(x - alpha * grad.sign(), x, eps)
    torch.testing.assert_close(bs.backward_smoothing_init(model, x, xi, hp), expected, rtol=0, atol=1e-12)


def test_trades_step_is_one_signed_ascent_step_on_a_linear_model():
    model = _linear(seed=3)
    W, b = model[1].weight.detach(), model[1].bias.detach()
    x, _ = _batch(seed=4)
    x_cur = _proj(x + 0.02 * torch.randn_like(x), x, 0.03)
    hp = bs.Hparams(epsilon=0.03, step_size=0.02)
    z = x @ W.T + b
    grad = (torch.softmax(x_cur @ W.T + b, 1) - torch.softmax(z, 1)) @ W  # ∇ KL(S(z) ‖ S(F(x′))) at x_cur
    expected = _proj(x_cur + 0.02 * grad.sign(), x, 0.03)
    torch.testing.assert_close(bs.trades_step(model, x, x_cur, z, hp), expected, rtol=0, atol=1e-12)


def _hand_loss(W, b, x, y, x_adv, beta):
    logits, logits_adv = x @ W.T + b, x_adv @ W.T + b
    log_p = logits - logits.logsumexp(1, keepdim=True)
    ce = -log_p.gather(1, y[:, None]).mean()
    return ce + beta * _kl_by_hand(logits, logits_adv) / len(x)


def test_trades_loss_matches_a_hand_computation_with_gradients_through_both_kl_arguments():
    model = _linear(seed=5)
    x, y = _batch(seed=6)
    x_adv = _proj(x + 0.05 * torch.randn_like(x), x, 0.05)
    beta = 6.0
    loss, logits = bs.trades_loss(model, x, y, x_adv, beta)

    W = model[1].weight.detach().clone().requires_grad_(True)
    b = model[1].bias.detach().clone().requires_grad_(True)
    hand = _hand_loss(W, b, x, y, x_adv, beta)
    torch.testing.assert_close(loss, hand)
    torch.testing.assert_close(logits, x @ W.detach().T + b.detach())

    loss.backward()
    hand.backward()
    torch.testing.assert_close(model[1].weight.grad, W.grad)
    # a detached clean distribution would give another gradient: the test can tell the two apart
    W2 = W.detach().clone().requires_grad_(True)
    clean = x @ W2.T + b.detach()
    detached = F.cross_entropy(clean, y) + beta * _kl_by_hand(clean.detach(), x_adv @ W2.T + b.detach()) / len(x)
    detached.backward()
    assert not torch.allclose(W2.grad, W.grad)


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_objective_is_init_then_trades_steps_then_the_loss(steps):
    model = _linear(seed=7)
    W, b = model[1].weight.detach(), model[1].bias.detach()
    x, y = _batch(seed=8)
    hp = bs.Hparams(epsilon=0.04, step_size=0.015, gamma=0.8, beta=10.0, steps=steps)
    xi = _xi(len(x), 4, 0.8, seed=9)

    z = x @ W.T + b
    x_adv = _proj(x - hp.step_size * ((torch.softmax(z, 1) - torch.softmax(z + xi, 1)) @ W).sign(), x, hp.epsilon)
    for _ in range(steps):
        grad = (torch.softmax(x_adv @ W.T + b, 1) - torch.softmax(z, 1)) @ W
        x_adv = _proj(x_adv + hp.step_size * grad.sign(), x, hp.epsilon)
    result = bs.objective(model, x, y, xi, hp)
    torch.testing.assert_close(result.loss, _hand_loss(W, b, x, y, x_adv, hp.beta))
    assert result.count == len(x)
    assert int(result.correct) == int((z.argmax(1) == y).sum())


def test_draw_is_a_seed_that_expands_to_uniform_output_noise():
    x, _ = _batch()
    hp = bs.Hparams(gamma=0.7)
    torch.manual_seed(11)
    seed = bs.draw(x, hp)
    torch.manual_seed(11)
    assert seed.dim() == 0 and not seed.is_floating_point() and torch.equal(seed, bs.draw(x, hp))
    assert len({int(bs.draw(x, hp)) for _ in range(5)}) == 5  # fresh noise every batch
    xi = bs.output_noise(seed, (4000, 10), 0.7, x)
    assert xi.dtype == x.dtype and xi.abs().max() <= 0.7
    assert abs(float(xi.mean())) < 0.02 and abs(float(xi.var()) - 0.7**2 / 3) < 0.01  # U[−γ, γ]: var γ²/3
    # the objective with the seed is the objective with the ξ that seed stands for
    model = _linear()
    y = torch.arange(len(x)) % 4
    with_seed = bs.objective(model, x, y, seed, hp).loss
    explicit = bs.objective(model, x, y, bs.output_noise(seed, (len(x), 4), 0.7, x), hp).loss
    torch.testing.assert_close(with_seed, explicit, rtol=0, atol=0)


def test_attack_leaves_weights_batchnorm_and_mode_alone_and_the_loss_trains_them():
    model = _bn_model()
    model.train()
    x, y = _batch(size=16, shape=(1, 8, 8), classes=5, dtype=torch.float32)
    hp = bs.Hparams(epsilon=0.05, step_size=0.05, steps=2)
    xi = bs.draw(x, hp)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}

    x_adv = bs.adversarial_point(model, x, xi, hp)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, buffers[key]), key

    twin = copy.deepcopy(model)  # what two train-mode forwards (clean, then adversarial) do to BN statistics
    twin(x)
    twin(x_adv)
    result = bs.objective(model, x, y, xi, hp)
    assert model.training
    result.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, twin.state_dict()[key], msg=key)
    assert any(not torch.equal(model.state_dict()[k], buffers[k]) for k in buffers if "running_mean" in k)


def test_attack_does_not_disturb_existing_gradients():
    model = _bn_model()
    x, y = _batch(size=8, shape=(1, 8, 8), classes=5, dtype=torch.float32)
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    bs.adversarial_point(model, x, bs.draw(x, bs.Hparams()), bs.Hparams(steps=2))
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_objective_in_eval_mode_under_no_grad_moves_nothing():
    """methods.train.loop.evaluate calls objectives in eval mode under no_grad: the attack still needs gradients."""
    model = _bn_model()
    model.eval()
    x, y = _batch(size=8, shape=(1, 8, 8), classes=5, dtype=torch.float32)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        result = bs.objective(model, x, y, bs.draw(x, bs.Hparams()), bs.Hparams())
    assert torch.isfinite(result.loss) and not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, buffers[key]), key


def test_default_train_step_descends():
    from methods.train.build import default_train_step

    model = models.build("small_cnn", "digits", "standard")
    x, y = _batch(size=16, shape=(1, 8, 8), classes=10, dtype=torch.float32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    result = default_train_step(bs, model, optimizer, x, y, bs.Hparams(), 0)
    assert result.count == 16 and torch.isfinite(result.loss)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_paper_schedule_per_iteration_equals_per_epoch_milestones():
    """The reference steps MultiStepLR every iteration at 50% / 75% of epochs·len(loader) (391 CIFAR batches)."""
    train = bs.PAPER["cifar10"]["train"]
    epochs, per_epoch = train["epochs"], 391  # ⌈50,000 / 128⌉
    total = epochs * per_epoch
    lr_at_epoch_start = []
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=train["lr"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[total / 2, total * 3 / 4], gamma=0.1)
    for it in range(total):
        if it % per_epoch == 0:
            lr_at_epoch_start.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [train["lr"] * train["gamma"] ** sum(e >= m for m in train["milestones"]) for e in range(epochs)]
    assert lr_at_epoch_start == pytest.approx(expected)
    assert bs.PAPER["cifar10"]["hparams"] == dict(epsilon=0.031, step_size=0.031, gamma=1.0, beta=6.0, steps=1)
    assert bs.PAPER["cifar10"]["normalization"]["std"] == (0.2471, 0.2435, 0.2616)
