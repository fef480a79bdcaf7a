"""Feng et al.'s ADRE objective [reconstructed, METHODS.md §4] against Cohen's loss and a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import linear_model

from methods import cohen, feng

W = np.array([[1.0, -2.0, 0.5, 0.3], [-1.0, 1.0, 0.2, 0.5], [0.4, 0.0, -1.0, 1.0]])


@pytest.fixture
def batch():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.uniform(0, 1, size=(5, 1, 2, 2)))
    y = torch.tensor([0, 1, 2, 2, 1])
    noise = torch.tensor(0.25 * rng.standard_normal(size=(5, 8, 1, 2, 2)))
    return x, y, noise


def test_adre_with_zero_lambda_is_cohens_loss_averaged_over_the_k_copies(batch):
    x, y, noise = batch
    model = linear_model(W)
    adre = feng.objective(model, x, y, noise, feng.Hparams(k=8, lam=0.0)).loss
    per_copy = [cohen.objective(model, x, y, noise[:, j], cohen.Hparams(sigma=0.25)).loss for j in range(8)]
    assert adre.item() == pytest.approx(torch.stack(per_copy).mean().item(), rel=1e-12)


def test_adre_regularizer_matches_hand_computation(batch):
    x, y, noise = batch
    model = linear_model(W)
    lam = 0.7
    expected_reg = []
    for i in range(5):
        logits = np.stack([W @ (x[i] + noise[i, j]).numpy().ravel() for j in range(8)])
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        g = probs.mean(0)
        wrong = [c for c in range(3) if c != int(y[i])]
        expected_reg.append(np.log(max(g[c] for c in wrong) + 1e-10))
    with_reg = feng.objective(model, x, y, noise, feng.Hparams(k=8, lam=lam)).loss.item()
    without = feng.objective(model, x, y, noise, feng.Hparams(k=8, lam=0.0)).loss.item()
    assert with_reg - without == pytest.approx(lam * np.mean(expected_reg), rel=1e-9)


def test_strongest_wrong_class_is_the_wrong_winner_when_g_is_wrong():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]])
    wrong = feng.strongest_wrong_probability(probs, torch.tensor([0, 1]))
    assert wrong.tolist() == pytest.approx([0.3, 0.6])  # right: the runner-up; wrong: the (wrong) winner


def test_regularizer_gradient_pushes_the_strongest_wrong_class_down(batch):
    """A small gradient step on one example's regularizer lowers Ĝ of its strongest wrong class."""
    x, y, noise = batch
    for i in range(len(y)):
        xi, yi, ni = x[i : i + 1], y[i : i + 1], noise[i : i + 1]
        model = linear_model(W)

        def wrong_winner():
            probs = torch.softmax(model((xi.unsqueeze(1) + ni).flatten(0, 1)).view(1, 8, -1), -1).mean(1)
            return feng.strongest_wrong_probability(probs, yi).item()

        before = wrong_winner()
        regularizer = (
            feng.objective(model, xi, yi, ni, feng.Hparams(k=8, lam=1.0)).loss
            - feng.objective(model, xi, yi, ni, feng.Hparams(k=8, lam=0.0)).loss
        )
        regularizer.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.01 * p.grad
        assert wrong_winner() < before


def test_adversarial_variant_trains_with_smoothadv_attack(monkeypatch):
    """ADRE-ADV evaluates ADRE at SmoothAdv's attacked point with the attack's m = k draws."""
    from methods import salman

    seen = {}
    real_attack = salman.attack

    def spy(model, x, y, noise, epsilon, hp):
        seen["noise_shape"], seen["epsilon"] = tuple(noise.shape), epsilon
        return real_attack(model, x, y, noise, epsilon, hp)

    monkeypatch.setattr(salman, "attack", spy)
    model = linear_model(W).float()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hp = feng.Hparams(k=4, adversarial=True, steps=2, epsilon=0.5, warmup=10)
    x, y = torch.rand(8, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    result = feng.train_step(model, optimizer, x, y, hp, epoch=1)
    assert seen["noise_shape"] == (2, 4, 1, 2, 2)  # ⌊8/4⌋ images per mini-batch, 4 draws each
    assert seen["epsilon"] == pytest.approx(0.5 * 2 / 10)  # warmed up: epoch 1 of 10
    assert result.count == 8 and torch.isfinite(result.loss)
