"""TRADES (METHODS.md §7.1, §7.2) and the pass counts of every row of §7.4: the attack inside its ball, the KL as a
batchmean with its target not detached, the official third clean forward (same loss and gradients, other BatchNorm
statistics), the official and BS-repository variants, the paper settings in the configs, and forward / backward
passes per mini-batch counted with hooks."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from methods import backward_smoothing, fast_at, fast_at_bs, trades
from methods import config as mc
from methods.core.interface import HparamError
from methods.train.build import default_train_step

OFFICIAL = trades.Hparams()
BS_FAST_K10 = trades.Hparams(init="uniform_eps", attack_target="once", recompute_clean_target=False,
                             logged_forward=True)  # fmt: skip
FAST_TRADES = trades.Hparams(**trades.PAPER["cifar10-bs-fast-trades"]["hparams"])


class TinyBNNet(torch.nn.Module):
    """Conv + BatchNorm + linear on 3×8×8 images: small, with running statistics for the BN tests."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 16, classes)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(h.flatten(1))


def _batch(n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0  # pixels on the box's edges: the projection must clip there
    return x, torch.randint(0, 10, (n,), generator=g)


def _net(seed: int = 0) -> TinyBNNet:
    torch.manual_seed(seed)
    return TinyBNNet()


@pytest.mark.parametrize("hp", [OFFICIAL, BS_FAST_K10, FAST_TRADES, trades.Hparams(steps=0, init="uniform_eps")])
def test_the_attack_stays_in_the_eps_ball_and_the_pixel_box(hp):
    x, _ = _batch()
    model = _net()
    torch.manual_seed(1)
    x_adv = trades.adversarial_point(model, x, trades.draw(x, hp), hp)
    assert (x_adv - x).abs().max() <= hp.epsilon + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    if hp.steps:
        assert (x_adv - x).abs().max() > hp.epsilon / 2  # it moved


def test_draw_is_the_official_gaussian_or_the_bs_uniform_start():
    x = torch.rand(64, 3, 8, 8)
    torch.manual_seed(0)
    gauss = trades.draw(x, OFFICIAL)
    assert gauss.shape == x.shape and abs(float(gauss.std()) - 0.001) < 1e-4
    uniform = trades.draw(x, BS_FAST_K10)
    assert uniform.abs().max() <= 0.031 and uniform.abs().max() > 0.03 and abs(float(uniform.mean())) < 1e-3


def test_the_attack_does_not_move_weights_or_batchnorm_statistics_and_restores_the_mode():
    x, _ = _batch()
    model = _net().train()
    before = copy.deepcopy(model.state_dict())
    trades.adversarial_point(model, x, trades.draw(x, OFFICIAL), OFFICIAL)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())


def test_the_official_and_the_bs_target_give_the_same_point_from_the_same_start():
    """attack_target per_step recomputes F(x) in eval mode every step: the same values, only more forwards."""
    x, _ = _batch()
    model = _net()
    delta0 = trades.draw(x, BS_FAST_K10)
    a = trades.adversarial_point(model, x, delta0, trades.Hparams(attack_target="per_step"))
    b = trades.adversarial_point(model, x, delta0, trades.Hparams(attack_target="once"))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_kl_is_a_batchmean_by_hand():
    g = torch.Generator().manual_seed(0)
    target, logits = torch.randn(5, 10, generator=g), torch.randn(5, 10, generator=g)
    p, log_p, log_q = target.softmax(1), target.log_softmax(1), logits.log_softmax(1)
    by_hand = (p * (log_p - log_q)).sum() / 5
    torch.testing.assert_close(trades.kl_batchmean(target, logits), by_hand)


def test_the_loss_by_hand_and_its_gradient_reaches_the_weights_through_the_kl_target():
    x, y = _batch()
    x_adv = trades.adversarial_point(_net(), x, trades.draw(x, OFFICIAL), OFFICIAL)
    model = _net().train()
    loss, _ = trades.trades_loss(model, x, y, x_adv, OFFICIAL)
    reference = _net().train()
    clean, adv, target = reference(x), reference(x_adv), reference(x)
    p = target.softmax(1)
    by_hand = F.cross_entropy(clean, y) + 6.0 * (p * (p.log() - adv.log_softmax(1))).sum() / len(x)
    torch.testing.assert_close(loss, by_hand)

    grads = torch.autograd.grad(loss, list(model.parameters()))
    detached = _net().train()
    logits = detached(x)
    loss_detached = F.cross_entropy(logits, y) + 6.0 * trades.kl_batchmean(detached(x).detach(), detached(x_adv))
    torch.testing.assert_close(loss_detached, loss)  # the same value ...
    grads_detached = torch.autograd.grad(loss_detached, list(detached.parameters()))
    assert max(float((a - b).abs().max()) for a, b in zip(grads, grads_detached)) > 1e-4  # ... another gradient


def test_recomputing_the_clean_target_gives_the_same_loss_and_gradients_and_other_bn_statistics():
    x, y = _batch()
    x_adv = trades.adversarial_point(_net(), x, trades.draw(x, OFFICIAL), OFFICIAL)
    results = {}
    for recompute in (True, False):
        model = _net().train()
        hp = trades.Hparams(recompute_clean_target=recompute)
        loss, _ = trades.trades_loss(model, x, y, x_adv, hp)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        results[recompute] = (loss, grads, model.bn.running_mean.clone(), int(model.bn.num_batches_tracked))
    (l1, g1, m1, n1), (l0, g0, m0, n0) = results[True], results[False]
    torch.testing.assert_close(l1, l0, rtol=0, atol=1e-6)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert (n1, n0) == (3, 2)  # three train-mode forwards (official) against two
    assert float((m1 - m0).abs().max()) > 1e-4


def test_the_objective_runs_in_eval_mode_without_grad_as_the_loops_test_pass_calls_it():
    x, y = _batch()
    model = _net().eval()
    with torch.no_grad():
        result = trades.objective(model, x, y, trades.draw(x, OFFICIAL), OFFICIAL)
    assert torch.isfinite(result.loss) and not model.training


def test_hparams_are_checked():
    with pytest.raises(HparamError, match="init"):
        trades.Hparams(init="zero")
    with pytest.raises(HparamError, match="attack_target"):
        trades.Hparams(attack_target="never")
    with pytest.raises(HparamError, match="steps"):
        trades.Hparams(steps=2.5)


# ------------------------------------------------------------------------------------------ pass counts (§7.4)


class PassCounter:
    """Forward and backward passes through `model` during a train step, counted with hooks: a forward hook counts
    forwards by the model's mode and hooks each forward's output, so a backward through that forward (a "graph")
    is counted; a hook on the first parameter says whether a backward call computed parameter gradients. Backward
    calls (torch.autograd.grad / torch.autograd.backward, patched to wrap) group the graphs: a call that computed
    parameter gradients is a "full" backward, else an input-gradient one."""

    def __init__(self, model: torch.nn.Module, monkeypatch):
        self.counts: Counter = Counter()
        self._call: dict | None = None
        model.register_forward_hook(self._forward)
        next(model.parameters()).register_hook(self._parameter)
        for name in ("grad", "backward"):
            original = getattr(torch.autograd, name)
            monkeypatch.setattr(torch.autograd, name, self._wrap(original))

    def _forward(self, module, inputs, output):
        self.counts["train_fwd" if module.training else "eval_fwd"] += 1
        if output.requires_grad:
            output.register_hook(self._graph)

    def _graph(self, grad):
        self._call["graphs"] += 1

    def _parameter(self, grad):
        self._call["params"] = True

    def _wrap(self, original):
        def run(*args, **kwargs):
            outer, self._call = self._call, {"graphs": 0, "params": False}
            try:
                return original(*args, **kwargs)
            finally:
                call, self._call = self._call, outer
                if call["params"]:
                    self.counts["full_bwd"] += 1
                    self.counts["full_bwd_graphs"] += call["graphs"]
                else:
                    self.counts["input_bwd"] += 1

        return run

    def forwards(self) -> int:
        """The table's rough cost in forwards: input bwd ≈ f, a full backward ≈ 2f per graph."""
        c = self.counts
        return c["eval_fwd"] + c["input_bwd"] + c["train_fwd"] + 2 * c["full_bwd_graphs"]


#: METHODS.md §7.4: eval fwd, input bwd, train fwd, full bwd (graphs), rough cost in forwards.
TABLE = {
    "TRADES official, K = 10": (trades, OFFICIAL, (20, 10, 3, 1, 3), 39),
    "TRADES via trades_fast, K = 10": (trades, BS_FAST_K10, (12, 10, 2, 1, 2), 28),
    "Fast TRADES (c), K = 1": (trades, FAST_TRADES, (3, 1, 2, 1, 2), 10),
    "Backward smoothing (d), K = 1": (backward_smoothing, backward_smoothing.Hparams(), (3, 2, 2, 1, 2), 11),
    "Fast AT, BS repo (a)": (fast_at_bs, fast_at_bs.Hparams(), (2, 1, 1, 1, 1), 6),
    "FGSM-RS, FAST official": (fast_at, fast_at.Hparams(amp="off"), (0, 0, 2, 2, 2), 6),
}


@pytest.mark.parametrize("row", TABLE)
def test_pass_counts_per_mini_batch_equal_the_table(row, monkeypatch):
    method, hp, expected, cost = TABLE[row]
    model = _net().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = _batch()
    counter = PassCounter(model, monkeypatch)
    default_train_step(method, model, optimizer, x, y, hp, 0.0)
    c = counter.counts
    assert (c["eval_fwd"], c["input_bwd"], c["train_fwd"], c["full_bwd"], c["full_bwd_graphs"]) == expected
    assert counter.forwards() == cost


def test_the_pass_count_ratio_is_the_claimed_three_times():
    """TRADES-10 / backward smoothing ≈ 28/11 ≈ 2.5 (same code base) to 39/11 ≈ 3.5 (official): a cost model."""
    assert 28 / 11 == pytest.approx(2.55, abs=0.01) and 39 / 11 == pytest.approx(3.55, abs=0.01)
    assert TABLE["TRADES official, K = 10"][3] / TABLE["Backward smoothing (d), K = 1"][3] == 39 / 11


# ------------------------------------------------------------------------------------------ the configs


def _run(config: str, name: str) -> dict:
    cfg = mc.load(mc.REPO_ROOT / "config" / config)
    return mc.resolve_run(cfg, name, seed=0)


@pytest.mark.parametrize(
    "run, setting",
    [("trades-official-wrn34-10", "cifar10-official"), ("trades10-bs-resnet18", "cifar10-bs-trades10"),
     ("trades10-bs-wrn34-10", "cifar10-bs-trades10"), ("fast-trades-resnet18", "cifar10-bs-fast-trades"),
     ("fast-trades-wrn34-10", "cifar10-bs-fast-trades")],
)  # fmt: skip
def test_the_cifar10_runs_are_the_paper_settings(run, setting):
    spec, paper = _run("cifar10.yaml", run), trades.PAPER[setting]
    assert spec["hparams"] == trades.Hparams(**paper["hparams"]).__dict__
    for key, value in paper["train"].items():
        assert spec["train"][key] == value, key
    if paper.get("normalization") is None:
        assert spec["model"]["normalization"] == "none"
    else:
        assert spec["model"]["mean"] == list(paper["normalization"]["mean"])
        assert spec["model"]["std"] == list(paper["normalization"]["std"])


def test_the_trades_rows_of_published_csv():
    from methods.report import published

    frame = published.load()
    rows = frame[frame["paper"] == "zhang2019"].set_index("metric")
    assert rows.loc["clean_accuracy", "value"] == 0.8492
    assert rows.loc["pgd_accuracy", "value"] == 0.5661
    assert rows.loc["pgd_accuracy", "certifier"] == "trades-pgd20-at-eps"
    assert rows.loc["autoattack_accuracy", "value"] == 0.5308
    assert set(rows["epsilon"]) == {0.031} and set(rows["subset"]) == {"0:1:10000"}
