"""MACER's objective against a hand computation (numpy + scipy) on a fixed linear model with fixed noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import linear_model
from scipy.stats import norm

from methods import macer
from methods.core.interface import HparamError

W = np.array([[2.0, -1.0, 0.5, 0.0], [-1.0, 1.5, 0.0, 0.5], [0.0, 0.0, -1.0, 1.0]])


def _softmax(u):
    e = np.exp(u - u.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def hand_macer(x, y, noise, hp):
    """MACER's loss written out per example from METHODS.md §3, independently of methods.macer."""
    batch, k = noise.shape[:2]
    total_c, total_r = 0.0, 0.0
    for i in range(batch):
        u = np.stack([W @ (x[i] + noise[i, j]).ravel() for j in range(k)])  # (k, C)
        total_c += -np.log(_softmax(u).mean(0)[y[i]] + 1e-10)
        z = _softmax(hp.beta * u).mean(0)
        order = np.argsort(-z, kind="stable")
        if order[0] != y[i]:
            continue
        xi = norm.ppf(z[order[0]]) - norm.ppf(z[order[1]])
        if np.isfinite(xi) and xi <= hp.gamma:
            total_r += hp.sigma / 2 * (hp.gamma - xi)
    return (total_c + hp.lam * total_r) / batch, total_c / batch


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(6, 1, 2, 2))
    y = np.array([0, 1, 2, 0, 1, 2])
    noise = 0.5 * rng.standard_normal(size=(6, 4, 1, 2, 2))
    return x, y, noise


def _torch(x, y, noise):
    return torch.tensor(x), torch.tensor(y), torch.tensor(noise)


@pytest.mark.parametrize("beta, gamma, lam", [(16.0, 8.0, 12.0), (1.0, 8.0, 3.0), (2.0, 0.5, 1.0)])
def test_macer_loss_matches_hand_computation(batch, beta, gamma, lam):
    x, y, noise = batch
    hp = macer.Hparams(sigma=0.5, k=4, gamma=gamma, beta=beta, lam=lam)
    expected, _ = hand_macer(x, y, noise, hp)
    result = macer.objective(linear_model(W), *_torch(x, y, noise), hp)
    assert result.loss.item() == pytest.approx(expected, rel=1e-9)
    assert result.count == 6


def test_hinge_vanishes_beyond_gamma(batch):
    """With γ below every eligible ξ the robustness term is exactly zero: the loss is l_C alone, whatever λ."""
    x, y, noise = batch
    model, args = linear_model(W), _torch(x, y, noise)
    hp = macer.Hparams(sigma=0.5, k=4, gamma=1e-6, beta=1.0, lam=100.0)
    _, classification_only = hand_macer(x, y, noise, hp)
    assert macer.objective(model, *args, hp).loss.item() == pytest.approx(classification_only, rel=1e-9)
    # ... while a γ that every ξ stays below makes the same λ matter
    hp_wide = macer.Hparams(sigma=0.5, k=4, gamma=50.0, beta=1.0, lam=100.0)
    assert macer.objective(model, *args, hp_wide).loss.item() > classification_only + 1.0


def test_robustness_terms_exclude_misclassified_and_non_finite():
    z_hat = torch.tensor(
        [
            [0.7, 0.2, 0.1],  # right (y=0), ξ finite: kept
            [0.7, 0.2, 0.1],  # wrong (y=1): excluded
            [1.0, 0.0, 0.0],  # right but Φ⁻¹(1) = ∞: excluded
            [0.34, 0.33, 0.33],
        ],  # right, tiny ξ: kept
        dtype=torch.float64,
        requires_grad=True,
    )
    y = torch.tensor([0, 1, 0, 0])
    terms = macer.robustness_terms(z_hat, y, sigma=0.5, gamma=8.0)
    expected = [0.25 * (8 - (norm.ppf(0.7) - norm.ppf(0.2))), 0.25 * (8 - (norm.ppf(0.34) - norm.ppf(0.33)))]
    np.testing.assert_allclose(terms.detach().numpy(), expected, rtol=1e-9)
    terms.sum().backward()
    assert torch.isfinite(z_hat.grad).all()
    assert torch.all(z_hat.grad[1] == 0) and torch.all(z_hat.grad[2] == 0)


def test_saturated_softmax_gives_finite_gradients():
    """β·logits large enough to saturate the softmax: the filtered terms must not put NaN into the weights' grads."""
    model = linear_model(W * 200)
    x = torch.rand(4, 1, 2, 2, dtype=torch.float64)
    y = model(x).argmax(1)
    hp = macer.Hparams(sigma=0.01, k=2)
    noise = hp.sigma * torch.randn(4, 2, 1, 2, 2, dtype=torch.float64)
    macer.objective(model, x, y, noise, hp).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_draw_shape_and_scale():
    hp = macer.Hparams(sigma=0.5, k=16)
    torch.manual_seed(0)
    noise = macer.draw(torch.zeros(64, 1, 8, 8), hp)
    assert noise.shape == (64, 16, 1, 8, 8)
    assert noise.std().item() == pytest.approx(0.5, rel=0.02)


def test_hparams_validation():
    with pytest.raises(HparamError, match="lam"):
        macer.Hparams(lam=-1)
    with pytest.raises(HparamError, match="k"):
        macer.Hparams(k=0)


def test_deferred_macer_trains_without_the_robustness_term_until_its_epoch(batch, monkeypatch):
    seen = []
    real = macer.objective
    monkeypatch.setattr(macer, "objective", lambda m, x, y, n, hp: (seen.append(hp.lam), real(m, x, y, n, hp))[1])
    model = linear_model(W)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y, _ = _torch(*batch)
    hp = macer.Hparams(sigma=0.5, k=4, lam=12.0, deferred_epochs=2)
    for epoch in range(4):
        macer.train_step(model, optimizer, x, y, hp, epoch)
    assert seen == [0.0, 0.0, 12.0, 12.0]
    macer.train_step(model, optimizer, x, y, macer.Hparams(sigma=0.5, k=4), 0)
    assert seen[-1] == 12.0  # the default: MACER as published, λ from the first epoch
