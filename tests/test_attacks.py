"""Empirical ℓ∞ evaluation: PGD (CE / CW-margin), AutoAttack through torchattacks, the empirical radius, TSV rows."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F
from conftest import linear_model

from methods.certify import attacks
from methods.core import adversary, models, tsv


def _cnn(seed=0):
    torch.manual_seed(seed)
    return models.build("small_cnn", "digits", "standard")


def _bn_model(seed=0):
    torch.manual_seed(seed)
    return models.CifarResNet(8, num_classes=5, in_channels=1)


def _images(seed=1, size=16, classes=10, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(size, 1, 8, 8, generator=g, dtype=dtype)
    x[0].fill_(0.0)
    x[1].fill_(1.0)
    return x, torch.randint(0, classes, (size,), generator=g)


def _confident_linear(seed=0, classes=10, dim=64, scale=8.0):
    g = torch.Generator().manual_seed(seed)
    return linear_model(torch.randn(classes, dim, generator=g, dtype=torch.float64) * scale)


def _exact_linf_radius(W, b, x, y):
    """min over j ≠ y of (z_y − z_j) / ‖w_y − w_j‖₁: the exact ℓ∞ robust radius of a linear classifier (no box)."""
    z = x.flatten(1) @ W.T + b
    radii = []
    for i in range(len(x)):
        r = [float((z[i, y[i]] - z[i, j]) / (W[y[i]] - W[j]).abs().sum()) for j in range(W.shape[0]) if j != y[i]]
        radii.append(min(r))
    return torch.tensor(radii, dtype=torch.float64)


@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize("random_start,restarts", [(False, 1), (True, 1), (True, 3)])
def test_pgd_stays_in_the_ball_and_the_box(loss, random_start, restarts):
    model = _cnn()
    x, y = _images()
    x_adv = adversary.pgd_linf(
        model,
        x,
        y,
        0.1,
        0.04,
        7,
        loss=loss,
        random_start=random_start,
        restarts=restarts,
        generator=torch.Generator().manual_seed(0),
    )
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > 0.05  # it moved


def test_pgd_argument_checks():
    model, (x, y) = _cnn(), _images()
    with pytest.raises(ValueError, match="loss"):
        adversary.pgd_linf(model, x, y, 0.1, 0.01, 2, loss="dlr")
    with pytest.raises(ValueError, match="random_start"):
        adversary.pgd_linf(model, x, y, 0.1, 0.01, 2, restarts=2)
    with pytest.raises(ValueError):
        adversary.pgd_linf(model, x, y, 0.1, 0.0, 2)


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_pgd_raises_the_loss_and_lowers_accuracy_on_a_confident_linear_model(loss):
    model = _confident_linear()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(64, 1, 8, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)  # labelled by its own predictions: clean accuracy 1
    x_adv = adversary.pgd_linf(model, x, y, 0.05, 0.0125, 10, loss=loss)
    with torch.no_grad():
        clean, attacked = model(x), model(x_adv)
    ce_clean, ce_adv = F.cross_entropy(clean, y, reduction="none"), F.cross_entropy(attacked, y, reduction="none")
    assert (ce_adv > ce_clean).float().mean() > 0.95
    assert attacks.robust_accuracy(model, x, y, x_adv) < 0.7
    assert (adversary.cw_margin(attacked, y) > adversary.cw_margin(clean, y)).all()


def test_cw_margin_masks_the_true_class():
    # the true class has the largest logit and every other logit is negative: counting the true class as 0 (the
    # backward-smoothing repo's cw_loss) would give 0 − 3 = −3 for the first example; masking gives −1 − 3 = −4
    logits = torch.tensor([[3.0, -1.0, -2.0], [-5.0, -0.5, -4.0], [1.0, 2.0, 0.5]])
    y = torch.tensor([0, 1, 2])
    torch.testing.assert_close(adversary.cw_margin(logits, y), torch.tensor([-4.0, -3.5, 1.5]))


def test_cw_pgd_step_follows_the_runner_up_not_a_zeroed_true_class():
    """One CW step on a linear model with every non-true logit negative: the gradient is w_j* − w_y for the best
    other class j*, which an unmasked (true class = 0) margin would not give."""
    W = torch.tensor([[2.0, 1.0, -1.0, 0.5], [-1.0, 0.5, 1.0, -2.0], [-0.5, -2.0, 0.25, 1.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -3.0, -3.0], dtype=torch.float64)
    model = linear_model(W, b)
    x = torch.full((1, 4), 0.5, dtype=torch.float64)
    y = torch.tensor([0])
    z = (x @ W.T + b)[0]
    assert z.argmax() == 0 and (z[1:] < 0).all()
    runner_up = 1 + int(z[1:].argmax())
    x_adv = adversary.pgd_linf(model, x, y, 0.1, 0.05, 1, loss="cw")
    torch.testing.assert_close(x_adv, x + 0.05 * (W[runner_up] - W[0]).sign())


def test_restarts_keep_the_first_success():
    model = _cnn(seed=2)
    x, y = _images(seed=5, size=32)
    args = (model, x, y, 0.08, 0.02, 3)
    single = adversary.pgd_linf(*args, random_start=True, generator=torch.Generator().manual_seed(0))
    multi = adversary.pgd_linf(*args, random_start=True, restarts=4, generator=torch.Generator().manual_seed(0))
    fooled_single = adversary.predict(model, single) != y
    fooled_multi = adversary.predict(model, multi) != y
    assert (fooled_multi | ~fooled_single).all()  # the first restart is the single run: its successes stay
    assert torch.equal(multi[fooled_single], single[fooled_single])
    assert fooled_multi.sum() >= fooled_single.sum()


def _threshold_model():
    """1-D inputs: class 1 iff x > 0.5 (logits 0.5 − x and x − 0.5)."""
    return linear_model([[-1.0], [1.0]], [0.5, -0.5])


def test_restarts_redraw_the_start_for_examples_not_yet_fooled():
    """Zero steps: each restart is a fresh uniform start. Points on the decision boundary's edge flip with
    probability ≈ 1/2 per start, so a second restart fools more; the unfooled keep the last restart's point."""
    model = _threshold_model()
    x = torch.full((64, 1), 0.49, dtype=torch.float64)
    y = torch.zeros(64, dtype=torch.long)
    single = adversary.pgd_linf(
        model, x, y, 0.02, 0.01, 0, random_start=True, generator=torch.Generator().manual_seed(1)
    )
    multi = adversary.pgd_linf(
        model, x, y, 0.02, 0.01, 0, random_start=True, restarts=2, generator=torch.Generator().manual_seed(1)
    )
    fooled_single, fooled_multi = single[:, 0] > 0.5, multi[:, 0] > 0.5
    assert 10 < fooled_single.sum() < 54
    assert (fooled_multi | ~fooled_single).all() and fooled_multi.sum() > fooled_single.sum()
    assert torch.equal(multi[fooled_single], single[fooled_single])
    assert (multi[~fooled_multi] != single[~fooled_multi]).all()  # not the first restart's point
    assert (multi - x).abs().max() <= 0.02 + 1e-12


def test_empirical_radius_stops_at_the_first_break_and_ignores_wrong_predictions():
    """A deliberately non-monotone attack: it breaks at ε = 0.25 but not at 0.3. The radius is the grid ε before
    the first break (0.1), not the largest unbroken one; a wrong clean prediction has radius 0 even when the
    "attack" moves it onto the label."""
    model = _threshold_model()
    x = torch.tensor([[0.3], [0.45]], dtype=torch.float64)
    y = torch.tensor([0, 1])  # the second is misclassified (0.45 → class 0)

    def fake_attack(model, x, y, eps):
        return x if eps == 0.3 else (x + eps).clamp(0, 1)

    radius = attacks.empirical_radius(model, x, y, [0.1, 0.25, 0.3], fake_attack)
    assert radius.tolist() == [0.1, 0.0]


def test_attacks_leave_weights_batchnorm_and_mode_alone():
    model = _bn_model()
    model.train()
    x, y = _images(classes=5)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    adversary.pgd_linf(model, x, y, 0.1, 0.03, 3, loss="cw", random_start=True)
    attacks.empirical_radius(model, x, y, [0.01, 0.02], adversary.PGD(0.02, 0.005, 2))
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, buffers[key]), key


def test_presets():
    assert (attacks.PGD20.eps, attacks.PGD20.step_size, attacks.PGD20.steps) == (8 / 255, 2 / 255, 20)
    assert (attacks.PGD100.eps, attacks.PGD100.step_size, attacks.PGD100.steps) == (8 / 255, 2 / 255, 100)
    ref = attacks.BACKWARD_SMOOTHING_PGD20
    assert (ref.eps, ref.step_size, ref.steps, ref.loss, ref.random_start) == (0.031, 0.0078, 20, "ce", False)
    scaled = attacks.PGD20.at(4 / 255)
    assert scaled.step_size == pytest.approx(1 / 255) and scaled.steps == 20


def _binary_problem(seed=0, dim=16, size=40):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(2, dim, generator=g, dtype=torch.float64)
    b = torch.randn(2, generator=g, dtype=torch.float64) * 0.5
    x = 0.4 + 0.2 * torch.rand(size, dim, generator=g, dtype=torch.float64)  # far from the box: ε ≤ 0.3 never clips
    return linear_model(W, b), W, b, x


def test_empirical_radius_brackets_the_exact_radius_of_a_linear_binary_classifier():
    model, W, b, x = _binary_problem()
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:3] = 1 - y[:3]  # three wrong labels: radius 0
    exact = _exact_linf_radius(W, b, x, y)
    grid = [0.005 * k for k in range(1, 41)]  # up to 0.2
    assert min(abs(r - e) for r in exact[3:].tolist() for e in grid) > 1e-6  # no ties at the decision boundary
    radius = attacks.empirical_radius(model, x, y, grid)
    assert (radius[:3] == 0).all()
    covered = 0
    for r_hat, r in zip(radius[3:].tolist(), exact[3:].tolist()):
        below = max([e for e in grid if e < r], default=0.0)
        above = [e for e in grid if e > r]
        # a provably robust point is never "broken": the empirical radius is at least the grid ε below the truth
        assert r_hat >= below
        # and PGD finds the break of a linear model just above it (or saturates at the top of the grid)
        assert r_hat == (below if above else grid[-1])
        covered += bool(above) and below > 0
    assert covered >= 10  # the grid really brackets most radii


def test_empirical_radius_is_consistent_with_the_attack_at_every_grid_point():
    """Monotone by construction: the attack fails at every grid ε ≤ the radius and succeeds at the next one."""
    model, W, b, x = _binary_problem(seed=1, size=24)
    with torch.no_grad():
        y = model(x).argmax(1)
    grid = [0.01 * k for k in range(1, 16)]
    attack = adversary.PGD(eps=0.01, step_size=0.0025, steps=20)
    radius = attacks.empirical_radius(model, x, y, grid, attack)
    for eps in grid:
        held = adversary.predict(model, attack(model, x, y, eps)) == y
        assert torch.equal(held[radius >= eps - 1e-12], torch.ones_like(held[radius >= eps - 1e-12]))
    for i, r in enumerate(radius.tolist()):
        nxt = [e for e in grid if e > r + 1e-12]
        if nxt:
            assert adversary.predict(model, attack(model, x[i : i + 1], y[i : i + 1], nxt[0]))[0] != y[i]


def test_empirical_radius_never_understates_a_multiclass_linear_radius():
    g = torch.Generator().manual_seed(7)
    W = torch.randn(5, 16, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    model = linear_model(W, b)
    x = torch.rand(30, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    exact = _exact_linf_radius(W, b, x, y)  # the box only makes the true radius larger
    grid = [0.01 * k for k in range(1, 21)]
    radius = attacks.empirical_radius(model, x, y, grid, adversary.PGD(0.01, 0.0025, 20, loss="cw"))
    below = torch.tensor([max([e for e in grid if e < r], default=0.0) for r in exact.tolist()], dtype=torch.float64)
    assert (radius >= below).all()
    assert (radius < grid[-1]).sum() > 5  # and the attack does break points


def test_empirical_radius_grid_must_increase():
    model, _, _, x = _binary_problem(size=4)
    y = torch.zeros(4, dtype=torch.long)
    for grid in ([], [0.1, 0.05], [0.0, 0.1], [0.1, 0.1]):
        with pytest.raises(ValueError):
            attacks.empirical_radius(model, x, y, grid)


def test_rows_match_the_certify_tsv(tmp_path):
    rows = attacks.empirical_rows(
        torch.tensor([10, 11, 12]),
        torch.tensor([1, 0, 2]),
        torch.tensor([1, 2, 2]),
        torch.tensor([0.03, 0.5, 0.0], dtype=torch.float64),
        0.3,
    )
    assert [tuple(r) for r in rows] == [tsv.TSV_COLUMNS] * 3
    assert [r["correct"] for r in rows] == [1, 0, 1]
    assert [r["radius"] for r in rows] == [0.03, 0.0, 0.0]  # a wrong prediction carries no radius
    assert [r["predict"] for r in rows] == [1, 2, 2]
    assert sum(r["time"] for r in rows) == pytest.approx(0.3)
    path = tmp_path / "rows.tsv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=tsv.TSV_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    frame = tsv.read_tsv(path)
    assert frame["radius"].tolist() == [0.03, 0.0, 0.0] and frame["idx"].tolist() == [10, 11, 12]


def test_evaluate_batch_rows():
    model, W, b, x = _binary_problem(seed=2, size=6)
    with torch.no_grad():
        y = model(x).argmax(1)
    rows = attacks.evaluate_batch(model, x, y, list(range(100, 106)), [0.01, 0.02, 0.05])
    assert [r["idx"] for r in rows] == list(range(100, 106))
    assert all(r["correct"] == 1 and r["predict"] == r["label"] for r in rows)
    assert all(r["radius"] in (0.0, 0.01, 0.02, 0.05) and r["time"] >= 0 for r in rows)


def test_autoattack_on_a_tiny_linear_model():
    pytest.importorskip("torchattacks", reason="AutoAttack goes through the torchattacks package")
    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, 16, generator=g)
    b = torch.randn(5, generator=g)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5))
    with torch.no_grad():
        model[1].weight.copy_(W)
        model[1].bias.copy_(b)
    x = 0.4 + 0.2 * torch.rand(8, 1, 4, 4, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    exact = _exact_linf_radius(W.double(), b.double(), x.double(), y)
    ordered = exact.sort().values
    eps = float(ordered[3] + ordered[4]) / 2  # half the points provably robust, half not
    assert (exact - eps).abs().min() > 1e-4
    model.train()
    torch.manual_seed(123)
    x_adv = attacks.autoattack(model, x, y, eps, iterations=20, square_queries=500)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))  # the package's reseeding did not leak into our RNG stream
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    held = adversary.predict(model, x_adv) == y
    # no attack breaks a provably robust point; AutoAttack breaks every non-robust point of a linear model
    assert torch.equal(held, exact > eps)
    assert all(p.grad is None for p in model.parameters()) and model.training


def test_autoattack_uses_the_official_iterations_and_target_counts(monkeypatch):
    """torchattacks 3.5.1 builds APGD / APGD-T / FAB-T with 10 steps and C − 1 targets; the official standard
    version runs 100 iterations and 9 targets. Record what each component really runs with."""
    ta = pytest.importorskip("torchattacks", reason="AutoAttack goes through the torchattacks package")
    seen = {}
    for cls in (ta.APGD, ta.APGDT, ta.FAB, ta.Square):

        def fake_forward(self, images, labels, _name=cls.__name__):
            seen[_name] = (
                getattr(self, "steps", None),
                getattr(self, "n_target_classes", None),
                getattr(self, "n_queries", None),
            )
            return images.clone()  # "fails" everywhere, so every component runs

        monkeypatch.setattr(cls, "forward", fake_forward)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 12))
    x, _ = _images(size=3, classes=12)
    y = adversary.predict(model, x)  # correct everywhere, and the fakes never flip it
    attacks.autoattack(model, x, y, 8 / 255)
    assert seen == {
        "APGD": (100, None, None),
        "APGDT": (100, 9, None),
        "FAB": (100, 9, None),
        "Square": (None, None, 5000),
    }
    seen.clear()
    attacks.autoattack(model, x, y, 8 / 255, iterations=None, square_queries=100)  # the package's own steps
    assert seen["APGD"][0] == 10 and seen["APGDT"][:2] == (10, 9) and seen["Square"][2] == 100


def test_autoattack_needs_four_classes():
    pytest.importorskip("torchattacks", reason="AutoAttack goes through the torchattacks package")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    with pytest.raises(ValueError, match="4 classes"):
        attacks.autoattack(model, *_images(size=2, classes=3), 0.03)


def test_autoattack_missing_package_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "torchattacks":
            raise ImportError("no torchattacks")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="torchattacks"):
        attacks.autoattack(_cnn(), *_images(size=2), 0.03)


def test_gaussian_start_is_the_linf_dist_papers():
    """random_start="gaussian": x + clip(N(0, (ε/4)²), ±ε/2), then projected; with 0 steps that is the result."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = 0.25 + 0.5 * torch.rand(64, 1, 4, 4)
    y = torch.zeros(64, dtype=torch.long)
    eps = 0.1
    x0 = adversary.pgd_linf(
        model, x, y, eps, eps / 4, steps=0, random_start="gaussian", generator=torch.Generator().manual_seed(1)
    )
    delta = x0 - x
    assert delta.abs().max() <= eps / 2 + 1e-6 and (delta.abs() > eps / 2 - 1e-6).any()  # clipped at ±ε/2
    assert abs(delta.std().item() - eps / 4) < 0.1 * eps / 4 + 0.002  # N(0, (ε/4)²) before the clip


@pytest.mark.parametrize("random_start", ["gaussian", True])
def test_per_example_seeds_make_random_start_radii_independent_of_the_batch(random_start):
    """Sharded ℓ∞ evaluations must merge exactly: with one seed per example, an example's empirical radius is the
    same whether it is attacked with all others, in another order, or alone (and a batch-level generator is not)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    x, y = torch.rand(8, 1, 3, 4), torch.randint(0, 4, (8,))
    y = model(x).argmax(1)  # every clean prediction right, so every example is attacked
    attack = adversary.PGD(eps=0.3, step_size=0.05, steps=3, random_start=random_start, restarts=2)
    grid, seeds = [0.05, 0.1, 0.2, 0.4], [1000 + i for i in range(8)]
    whole = attacks.empirical_radius(model, x, y, grid, attack, seeds)
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    shuffled = attacks.empirical_radius(model, x[order], y[order], grid, attack, [seeds[i] for i in order])
    assert torch.equal(shuffled, whole[order])
    for i in (0, 3):
        alone = attacks.empirical_radius(model, x[i : i + 1], y[i : i + 1], grid, attack, [seeds[i]])
        assert torch.equal(alone, whole[i : i + 1])
    # the starts themselves: per-example generators give each example its own stream
    starts = adversary._start_noise(torch.randn, x.shape, x.dtype, [torch.Generator().manual_seed(s) for s in seeds])
    assert torch.equal(starts[3], torch.randn((1, 3, 4), generator=torch.Generator().manual_seed(seeds[3])))
