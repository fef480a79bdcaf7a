"""Empirical ℓ∞ evaluation: AutoAttack, the PGD presets of the evaluators, and an attack-based "empirical radius".

The attacks themselves (ℓ∞ PGD with CE or CW-margin, the frozen-eval context) are shared with training and live in
methods/core/adversary.py. Everything here is *empirical*: an attack can only show that a point is NOT robust.
Robust accuracy under an attack and the `empirical_radius` are upper bounds on the true (certified) quantities and
must never be plotted or tabled as certificates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..core.adversary import PGD, frozen_eval, predict
from ..core.io import synchronize
from ..core.tsv import TSV_COLUMNS
from ..fast_at import fast_pgd

#: PGD-20 / PGD-100 at ε = 8/255, step 2/255, CE, no random start (random start is the caller's choice: `replace`).
PGD20 = PGD(eps=8 / 255, step_size=2 / 255, steps=20)
PGD100 = PGD(eps=8 / 255, step_size=2 / 255, steps=100)
#: The backward-smoothing code's evaluation (func.PGDAttack): ε 0.031, step 0.0078, CE, no random start; PGD-20 for
#: the per-epoch "best" checkpoint (first 2,560 test images), PGD-100 for the final number (METHODS.md §5).
BACKWARD_SMOOTHING_PGD20 = PGD(eps=0.031, step_size=0.0078, steps=20)
BACKWARD_SMOOTHING_PGD100 = PGD(eps=0.031, step_size=0.0078, steps=100)
#: TRADES's own evaluation (`pgd_attack_cifar10.py`, the README's "FGSM-20"): PGD-20, ε 0.031, step 0.003, random
#: start U(−ε, ε), CE, eval mode (METHODS.md §7.1). The reference's start is not clipped to [0, 1] before its first
#: forward; here it is (pgd_linf projects it): the steps that follow project anyway.
TRADES_PGD20 = PGD(eps=0.031, step_size=0.003, steps=20, random_start=True)


@dataclass(frozen=True)
class FastPGD:
    """Fast AT's final evaluation (`utils.attack_pgd` via `evaluate_pgd(test_loader, model, 50, 10)`; METHODS.md §7.3)
    in frozen eval mode: `restarts` random starts U(−ε, ε) clipped to the pixel box, `steps` sign steps of the mean CE
    that move only the examples still classified correctly, and per example the restart with the highest CE
    (methods/fast_at.py's `fast_pgd`). `attack(model, x, y, eps)` runs it at another ε with the step the same
    fraction of ε, like `PGD`."""

    eps: float
    step_size: float
    steps: int
    restarts: int

    def __call__(self, model, x, y, eps: float | None = None, generator=None):
        step = self.step_size if eps is None or eps == self.eps else self.step_size * eps / self.eps
        with frozen_eval(model):
            return fast_pgd(model, x, y, self.eps if eps is None else eps, step, self.steps, self.restarts, generator)


#: PGD-50 with 10 restarts, ε 8/255, step 2/255 (Fast AT's reported robust accuracy).
FAST_PGD50X10 = FastPGD(eps=8 / 255, step_size=2 / 255, steps=50, restarts=10)

#: the official AutoAttack's iteration count for APGD-CE, APGD-T and FAB-T (fra31/auto-attack, all versions)
AUTOATTACK_ITERATIONS = 100
#: the official AutoAttack's query budget of Square (all versions; torchattacks uses the same)
AUTOATTACK_SQUARE_QUERIES = 5000
#: the official AutoAttack's number of target classes for APGD-T and FAB-T ("standard": 9, whatever the dataset)
AUTOATTACK_TARGETS = 9


# -------------------------------------------------------------------------------------------------- AutoAttack


def _torchattacks():
    try:
        import torchattacks
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "AutoAttack needs the `torchattacks` package (pip install torchattacks; it only needs "
            "torch, torchvision, scipy, numpy and requests at run time)"
        ) from err
    return torchattacks


def autoattack(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    version: str = "standard",
    num_classes: int | None = None,
    iterations: int | None = AUTOATTACK_ITERATIONS,
    square_queries: int = AUTOATTACK_SQUARE_QUERIES,
    seed: int = 0,
    verbose: bool = False,
) -> torch.Tensor:
    """AutoAttack (Croce & Hein 2020) in ℓ∞ at `eps` through `torchattacks.AutoAttack`; returns x_adv (detached).

    "standard" = APGD-CE, APGD-T, FAB-T, Square, each run on the examples the previous ones left correctly
    classified. Settings brought back to the official fra31/auto-attack ones:
    - `iterations` (default 100) of APGD-CE / APGD-T / FAB-T: torchattacks 3.5.1 builds them with its default of 10
      steps (its issue #196); None keeps the package's own value;
    - the targets of APGD-T / FAB-T: min(9, C − 1), the official count (torchattacks would use C − 1, e.g. 99 on
      CIFAR-100), by telling the package min(10, C) classes;
    - `square_queries` (default 5,000, the official budget; smaller values are for quick tests only).
    `num_classes` C is read off one forward pass when not given; "standard" and "plus" need C ≥ 4 (the targeted DLR
    loss, as in the official code). x must be (B, channels, H, W) in [0, 1]. The package reseeds torch's global RNG
    from `seed`: we fork the RNG so the caller's stream is unchanged. Eval mode and frozen parameters (FAB calls
    .backward(): frozen parameters keep it out of the weights' .grad).
    """
    ta = _torchattacks()
    if x.dim() != 4:
        raise ValueError(f"AutoAttack (torchattacks) needs images of shape (B, C, H, W), got {tuple(x.shape)}")
    x, y = x.detach(), y.detach()
    devices = [x.device] if x.device.type == "cuda" else []
    with frozen_eval(model), torch.random.fork_rng(devices=devices):
        if num_classes is None:
            with torch.no_grad():
                num_classes = model(x[:1]).shape[1]
        if num_classes < 4 and version in ("standard", "plus"):
            raise ValueError(f"AutoAttack's targeted DLR loss (APGD-T) needs at least 4 classes, got {num_classes}")
        aa = ta.AutoAttack(
            model,
            norm="Linf",
            eps=eps,
            version=version,
            n_classes=min(num_classes, AUTOATTACK_TARGETS + 1),
            seed=seed,
            verbose=verbose,
        )
        for sub in aa._autoattack.attacks:  # private in torchattacks 3.5.1: fail loudly if it changes
            if isinstance(sub, (ta.APGD, ta.APGDT, ta.FAB)):
                if iterations is not None:
                    sub.steps = iterations
            elif isinstance(sub, ta.Square):
                sub.n_queries = square_queries
            else:
                raise RuntimeError(f"unexpected AutoAttack component {type(sub).__name__}: check torchattacks")
        with torch.enable_grad():
            x_adv = aa(x, y)
    return x_adv.detach()


# ----------------------------------------------------------------------------------- radius and per-example rows


Attack = Callable[..., torch.Tensor]  # attack(model, x, y, eps) -> x_adv


def empirical_radius(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps_grid: Sequence[float],
    attack: Attack = PGD20,
    example_seeds: Sequence[int] | None = None,
) -> torch.Tensor:
    """Per example, the largest ε of the (increasing) grid such that `attack(model, x, y, ε)` fails to change the
    correct clean prediction at that ε and at every smaller grid ε; 0 where the clean prediction is wrong, and
    0 also where the attack succeeds at the first grid ε. An example the attack never breaks gets the largest grid ε
    (read: "≥ max(grid)"). The grid is walked upwards and each ε attacks only the examples still standing.

    THIS IS AN EMPIRICAL, UPPER-BOUND QUANTITY, NOT A CERTIFICATE. An attack can only prove non-robustness: with r*
    the true ℓ∞ robust radius, the attack cannot break a point at ε < r* (no adversarial example exists there), so
    the result is ≥ the largest grid ε below r*; but where the attack misses adversarial examples it overstates r*,
    arbitrarily. Call it "empirical radius", and never plot or table it next to certified radii as if it were one.

    `example_seeds` (one int per example) seed each example's random start on its own at every ε (attacks that take
    `generator=`, i.e. `PGD`), so the radius does not depend on the batch: sharded evaluations merge exactly.
    """
    grid = [float(e) for e in eps_grid]
    if not grid or any(e <= 0 for e in grid) or any(b <= a for a, b in zip(grid, grid[1:])):
        raise ValueError(f"eps_grid must be positive and strictly increasing, got {list(eps_grid)!r}")
    radius = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    standing = (predict(model, x) == y).nonzero().squeeze(1)
    for eps in grid:
        if len(standing) == 0:
            break
        if example_seeds is None:
            x_adv = attack(model, x[standing], y[standing], eps)
        else:
            generators = [torch.Generator().manual_seed(int(example_seeds[i])) for i in standing.tolist()]
            x_adv = attack(model, x[standing], y[standing], eps, generator=generators)
        held = predict(model, x_adv) == y[standing]
        standing = standing[held]
        radius[standing] = eps
    return radius


def empirical_rows(idx, label, predict, radius, seconds) -> list[dict]:
    """Per-example rows with the TSV columns of methods/core/tsv.py: `idx label predict radius correct time path dtype
    samples`: predict = the clean prediction, correct = int(predict == label), radius = the empirical radius (forced
    to 0 where the prediction is wrong, as certify does), time = seconds per example (a float for the whole batch is
    spread evenly: attacks run batched), path "batch", dtype "float32", samples 0 (no noise is drawn). Pure: tensors
    or sequences in, plain Python values out; writes nothing."""

    def as_list(v):
        return v.tolist() if isinstance(v, torch.Tensor) else list(v)

    idx, label, predict, radius = as_list(idx), as_list(label), as_list(predict), as_list(radius)
    if not len(idx) == len(label) == len(predict) == len(radius):
        raise ValueError("idx, label, predict and radius must have the same length")
    if isinstance(seconds, (int, float)):
        seconds = [seconds / max(len(idx), 1)] * len(idx)
    seconds = as_list(seconds)
    rows = []
    for i, lab, pred, rad, sec in zip(idx, label, predict, radius, seconds):
        correct = int(int(pred) == int(lab))
        values = (
            int(i),
            int(lab),
            int(pred),
            float(rad) if correct else 0.0,
            correct,
            float(sec),
            "batch",
            "float32",
            0,
        )
        rows.append({c: "" for c in TSV_COLUMNS} | dict(zip(TSV_COLUMNS, values)))  # no counts: nothing is drawn
    return rows


def evaluate_batch(model, x, y, idx, eps_grid: Sequence[float], attack: Attack = PGD20) -> list[dict]:
    """`empirical_rows` for one batch: clean predictions, empirical radii over `eps_grid`, wall time per example."""
    synchronize(x.device)
    start = time.perf_counter()
    pred = predict(model, x)
    radius = empirical_radius(model, x, y, eps_grid, attack)
    synchronize(x.device)
    return empirical_rows(idx, y, pred, radius, time.perf_counter() - start)


def robust_accuracy(model, x, y, x_adv) -> float:
    """Fraction of examples classified correctly at x_adv (an upper bound on the true robust accuracy)."""
    return float((predict(model, x_adv) == y).double().mean())
