"""ℓ∞-distance nets: Zhang et al. 2021 ("v1", ICML) and Zhang et al. 2022 ("v2", ICLR, "Boosting the certified
robustness of L-infinity distance nets"); ../shared/METHODS.md §6.

A neuron is u(x) = ‖x − w‖∞ (+ b on the output layer), so every layer is 1-Lipschitz in ℓ∞ and the logits z = −u
certify a prediction from the margin alone. Training relaxes ∞ to a growing p (8 → 1000, then ∞) because the
ℓ∞ gradient reaches one coordinate per neuron.

Everything here works in NETWORK units (after the model's normalisation, which divides by ONE scalar std so an
ℓ∞ ball of radius ε in pixels is a ball of radius ε/std in the network) except where a name says pixel:
`Hparams.eps_train` / `eps_test`, `certified_radius` and the `eps_pixel` arguments. `theta(hp)` is the one place that
converts ε_train; the official code divides by std too (METHODS.md warns that mixing the two is a factor-of-5 bug).

Cost: a naive layer materialises a B × out × in tensor (512 × 5120 × 5120 float32 ≈ 54 GB); the layer calls the
tiled op of methods/kernels/lp_dist.py (chunked torch, or Triton on CUDA), which never does.

Settings only: the shared loop drives training; it must call `model.set_p(p_at(progress, hp))` per mini-batch with
the fractional epoch `progress` and use `loss(z, y, hp, progress, model.scale)` (or `step_objective`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .core import data
from .core.interface import HparamError, StepResult, descend, require_choice, require_non_negative, require_positive
from .kernels.lp_dist import check_p, interval_lp_dist, lp_dist

THREAT_MODEL = "linf-certified"
ARCH = "linf_dist_mlp"  # the method's own architecture (build_model); the config's model.arch does not apply
SOURCE = "official code (zbh2047/L_inf-dist-net-v2; v1: zbh2047/L_inf-dist-net)"

INF = float("inf")


# ---------------------------------------------------------------------------------------------------------------
# layers and the v2 model


class LinfDistLayer(nn.Module):
    """u = ‖x − W‖_p (+ b), then mean shift on hidden layers.

    Mean shift = BatchNorm without variance or affine: subtract the batch mean in training (not detached, as in the
    official code) and a running mean (starts at 0, momentum 0.1) in eval. In eval it is a constant shift, so the
    layer stays 1-Lipschitz at p = ∞. `p` is set by the model (`LinfDistMLP.set_p`).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        mean_shift: bool,
        bias: bool,
        identity_val: float | None = 10.0,
        momentum: float = 0.1,
        chunk_bytes: int | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        if identity_val is not None and in_features <= out_features:
            # identity init: neuron i ≈ x[i mod in] + identity_val whenever that coordinate dominates the max
            with torch.no_grad():
                rows = torch.arange(out_features)
                self.weight[rows, rows % in_features] = -identity_val
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.mean_shift, self.momentum = mean_shift, momentum
        if mean_shift:
            self.register_buffer("running_mean", torch.zeros(out_features))
        self.p = INF
        self.chunk_bytes = chunk_bytes

    def _shift(self, u):
        if not self.mean_shift:
            return u
        if self.training:
            mean = u.mean(0)
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(mean.detach(), alpha=self.momentum)
            return u - mean
        return u - self.running_mean

    def forward(self, x):
        u = self._shift(lp_dist(x, self.weight, self.p, self.chunk_bytes))
        return u if self.bias is None else u + self.bias

    @torch.no_grad()
    def interval(self, lower, upper):
        """Bounds of the output over the input box; eval mode at p = ∞ only (a constant mean shift)."""
        if self.training or not math.isinf(self.p):
            raise ValueError("interval bounds need eval mode and p = inf")
        lo, hi = interval_lp_dist(lower, upper, self.weight, self.chunk_bytes)
        shift = (self.running_mean if self.mean_shift else 0) - (0 if self.bias is None else self.bias)
        return lo - shift, hi - shift

    def extra_repr(self):
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, p={self.p}, "
            f"mean_shift={self.mean_shift}, bias={self.bias is not None}"
        )


class LinfDistMLP(nn.Module):
    """The v2 MLP: (x − mean_c) / std with ONE scalar std, flatten, depth − 1 hidden ℓ∞-dist layers (mean shift,
    no bias), an output ℓ∞-dist layer (bias, no mean shift); logits z = −u.

    `scale` (s, init 1) is the learnable scalar v2's cross-entropy multiplies into z; `forward` returns raw z,
    which margins and certificates use.
    """

    def __init__(
        self,
        input_shape,
        num_classes: int,
        depth: int,
        width: int,
        mean,
        scalar_std: float,
        identity_val: float | None = 10.0,
        chunk_bytes: int | None = None,
    ):
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2 (hidden + output), got {depth}")
        if not scalar_std > 0:
            raise ValueError(f"scalar_std must be > 0, got {scalar_std}")
        self.input_shape = tuple(input_shape)
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        self.register_buffer("mean", mean.view(-1, *([1] * (len(self.input_shape) - 1))))
        self.scalar_std = float(scalar_std)
        d_in = math.prod(self.input_shape)
        dims = [d_in] + [width] * (depth - 1)
        layers = [
            LinfDistLayer(a, b, mean_shift=True, bias=False, identity_val=identity_val, chunk_bytes=chunk_bytes)
            for a, b in zip(dims[:-1], dims[1:])
        ]
        layers.append(
            LinfDistLayer(
                width, num_classes, mean_shift=False, bias=True, identity_val=identity_val, chunk_bytes=chunk_bytes
            )
        )
        self.layers = nn.ModuleList(layers)
        self.scale = nn.Parameter(torch.ones(()))

    def pixel_to_network(self, eps):
        return eps / self.scalar_std

    def normalize(self, x):
        return ((x - self.mean) / self.scalar_std).flatten(1)

    def set_p(self, p: float):
        p = check_p(p)
        for layer in self.layers:
            layer.p = p

    @property
    def p(self) -> float:
        ps = {layer.p for layer in self.layers}
        if len(ps) != 1:
            raise ValueError(f"layers disagree on p: {sorted(ps)}")
        return ps.pop()

    def forward(self, x):
        h = self.normalize(x)
        for layer in self.layers:
            h = layer(h)
        return -h

    @torch.no_grad()
    def logit_bounds(self, x, eps_pixel: float):
        """Interval bounds (z_lower, z_upper) of the logits over the ℓ∞ ball of radius eps_pixel around x, clipped
        to the pixel box [0, 1]; the scalar-std normalisation maps a box to a box."""
        lower = self.normalize((x - eps_pixel).clamp(0, 1))
        upper = self.normalize((x + eps_pixel).clamp(0, 1))
        for layer in self.layers:
            lower, upper = layer.interval(lower, upper)
        return -upper, -lower


def param_groups(model: LinfDistMLP, lr: float, scale_lr: float):
    """Adam groups as in v2: the scalar s has its own learning rate (0.006)."""
    rest = [p for name, p in model.named_parameters() if name != "scale"]
    return [{"params": rest, "lr": lr}, {"params": [model.scale], "lr": scale_lr}]


# ---------------------------------------------------------------------------------------------------------------
# hyper-parameters, schedules, losses


@dataclass(frozen=True)
class Hparams:
    """Defaults: v2, CIFAR-10 8/255 (METHODS.md §6). eps_* are pixel units; scalar_std is the dataset's (it
    converts eps_train into θ and must equal the model's)."""

    loss: str = "v2"  # "v2" (clipped hinge + λ·CE(s·z)) or "v1" (mixed hinge)
    eps_train: float = 0.09411  # pixel units
    eps_test: float = 8 / 255  # pixel units
    scalar_std: float = 0.2009  # CIFAR-10; MNIST 0.3081
    depth: int = 6
    width: int = 5120
    lambda0: float = 0.1
    lambda_end: float = 0.0005
    p0: float = 8.0
    p1: float = 1000.0
    p_start: float = 100  # epochs
    p_end: float = 1250
    epochs: int = 1300
    hinge_mix: float = 0.75  # v1: weight of the max term (the mean term gets 1 − mix)
    row_weight_decay: float = 0.0  # v1: 5e-3, decoupled ℓp-row decay before each Adam step (see `row_weight_decay`)

    def __post_init__(self):
        require_choice(self, "loss", ("v1", "v2"))
        require_positive(
            self, "eps_train", "eps_test", "scalar_std", "depth", "width", "lambda0", "lambda_end", "epochs"
        )
        require_non_negative(self, "row_weight_decay")
        if not 1 <= self.p0 <= self.p1:
            raise HparamError("p1", f"need 1 <= p0 <= p1, got p0={self.p0}, p1={self.p1}")
        if not 0 <= self.p_start <= self.p_end <= self.epochs:
            raise HparamError(
                "p_end", f"need 0 <= p_start <= p_end <= epochs, got {self.p_start}, {self.p_end}, {self.epochs}"
            )
        if self.depth < 2:
            raise HparamError("depth", f"must be >= 2, got {self.depth}")
        if not 0 <= self.hinge_mix <= 1:
            raise HparamError("hinge_mix", f"must be in [0, 1], got {self.hinge_mix}")


def _window_fraction(progress: float, hp: Hparams) -> float:
    if progress >= hp.p_end:
        return 1.0
    if progress <= hp.p_start:
        return 0.0
    return (progress - hp.p_start) / (hp.p_end - hp.p_start)


def p_at(progress: float, hp: Hparams) -> float:
    """p for the mini-batch at fractional epoch `progress` (epoch + batch / batches_per_epoch): p0 before p_start,
    p0·(p1/p0)^r inside the window, ∞ from p_end on."""
    if progress >= hp.p_end:
        return INF
    return hp.p0 * (hp.p1 / hp.p0) ** _window_fraction(progress, hp)


def lambda_at(progress: float, hp: Hparams) -> float:
    """λ0·(λ_end/λ0)^r over the p window; λ_end through the p = ∞ phase (the official ratio is clipped at 1)."""
    return hp.lambda0 * (hp.lambda_end / hp.lambda0) ** _window_fraction(progress, hp)


def theta(hp: Hparams) -> float:
    """θ = 2·ε_train in NETWORK units (ε_train is pixel units): CIFAR 8/255 → 2 × 0.09411 / 0.2009 = 0.9369."""
    return 2 * hp.eps_train / hp.scalar_std


def _others(z, y):
    """z with the label entry masked out (−inf), for max over j ≠ y."""
    return z.masked_fill(F.one_hot(y, z.shape[1]).bool(), -INF)


def v1_loss(z, y, hp: Hparams):
    """h_j = max(0, z_j − z_y + θ) for j ≠ y, h_y = 0; mean over the batch of mix·max_j h_j + (1 − mix)·mean_j h_j
    (the mean over all K entries, the label's 0 included)."""
    h = (z - z.gather(1, y[:, None]) + theta(hp)).clamp(min=0)
    h = h.masked_fill(F.one_hot(y, z.shape[1]).bool(), 0)
    return hp.hinge_mix * h.amax(1).mean() + (1 - hp.hinge_mix) * h.mean()


def v2_loss(z, y, hp: Hparams, lam: float, scale):
    """mean_i max_{j≠y} clip(1 + (z_j − z_y)/θ, 0, 1) + λ·CE(s·z, y)."""
    hinge = (1 + (_others(z, y) - z.gather(1, y[:, None])) / theta(hp)).clamp(0, 1).amax(1).mean()
    return hinge + lam * F.cross_entropy(scale * z, y)


def loss(z, y, hp: Hparams, progress: float, scale=1.0):
    return v1_loss(z, y, hp) if hp.loss == "v1" else v2_loss(z, y, hp, lambda_at(progress, hp), scale)


def step_objective(model: LinfDistMLP, x, y, hp: Hparams, progress: float) -> StepResult:
    """Set p for this mini-batch, forward, loss (the shared loop does the rest)."""
    if abs(model.scalar_std - hp.scalar_std) > 1e-12:
        raise HparamError("scalar_std", f"Hparams has {hp.scalar_std}, the model normalises by {model.scalar_std}")
    model.set_p(p_at(progress, hp))
    z = model(x)
    return StepResult(loss(z, y, hp, progress, model.scale), (z.argmax(1) == y).sum(), len(y))


# ---------------------------------------------------------------------------------------------------------------
# certificates


def margin(z, y):
    """z_y − max_{j≠y} z_j (network units)."""
    return z.gather(1, y[:, None]).squeeze(1) - _others(z, y).amax(1)


def certified_radius(z, y, scalar_std: float):
    """max(0, margin)/2 in PIXEL units (× scalar std); 0 when the prediction is wrong (margin ≤ 0 then)."""
    return margin(z, y).clamp(min=0) / 2 * scalar_std


def is_certified(z, y, eps_pixel: float, scalar_std: float):
    """margin > 2ε with ε converted to network units (strict: a tie at the boundary is not certified)."""
    return margin(z, y) > 2 * eps_pixel / scalar_std


def require_certifiable(model: nn.Module):
    """The margin rule holds only at p = ∞ in eval mode (then the net is 1-Lipschitz in ℓ∞)."""
    for m in model.modules():
        if m.training:
            raise ValueError(
                "model is in train mode: its outputs are not a certificate at finite p / in train mode "
                "(call model.eval())"
            )
        if isinstance(m, LinfDistLayer) and not math.isinf(m.p):
            raise ValueError(
                f"model is at p = {m.p}: not a certificate at finite p / in train mode (call model.set_p(inf))"
            )


class Certificate(NamedTuple):
    logits: torch.Tensor  # raw z
    correct: torch.Tensor  # bool per example
    radius: torch.Tensor  # certified ℓ∞ radius, pixel units (0 where wrong)
    certified: torch.Tensor  # bool: radius > eps_pixel by the strict margin rule


@torch.no_grad()
def certify_batch(model: LinfDistMLP, x, y, eps_pixel: float) -> Certificate:
    require_certifiable(model)
    z = model(x)
    return Certificate(
        z, z.argmax(1) == y, certified_radius(z, y, model.scalar_std), is_certified(z, y, eps_pixel, model.scalar_std)
    )


@torch.no_grad()
def interval_certified(model: LinfDistMLP, x, y, eps_pixel: float):
    """Certified iff the lower bound of z_y beats the upper bound of every other z_j over the ε-box clipped to
    [0, 1]. Each interval is within ±ε/std of the centre's value, so this certifies everything the margin rule
    does, and more near the pixel-box edges."""
    require_certifiable(model)
    z_lo, z_hi = model.logit_bounds(x, eps_pixel)
    return z_lo.gather(1, y[:, None]).squeeze(1) > _others(z_hi, y).amax(1)


# ---------------------------------------------------------------------------------------------------------------
# paper settings

_V2_OPT = dict(
    optimizer="adam",
    betas=(0.9, 0.99),
    adam_eps=1e-10,
    lr=0.03,
    scale_lr=0.006,
    batch_size=512,
    weight_decay=0.0,
    lr_schedule="cosine over all epochs",
)
_CIFAR = dict(
    dataset="cifar10", scalar_std=0.2009, mean=(0.4914, 0.4822, 0.4465), augment="RandomCrop(32, pad 3, edge) + flip"
)
_MNIST = dict(dataset="mnist", scalar_std=0.3081, mean=(0.1307,), augment="RandomCrop(28, pad 1, edge)")
_V2_CIFAR = dict(loss="v2", depth=6, width=5120, p0=8.0, p1=1000.0, p_start=100, p_end=1250, epochs=1300)
_V2_MNIST = dict(loss="v2", depth=5, width=5120, p0=8.0, p1=1000.0, p_start=25, p_end=400, epochs=450)

#: Per setting: `hparams` (Hparams fields, eps in pixels) and the rest of the recipe for the shared loop.
#: Published clean / PGD / certified (%) from the v2 README; v1 certified per the v2 abstract (net alone).
PAPER = {
    "v2-mnist-0.1": dict(
        hparams=dict(_V2_MNIST, eps_train=0.3, eps_test=0.1, scalar_std=0.3081, lambda0=0.05, lambda_end=0.0002),
        **_MNIST,
        **_V2_OPT,
        published=(98.93, 98.03, 97.95),
    ),
    "v2-mnist-0.3": dict(
        hparams=dict(_V2_MNIST, eps_train=0.45, eps_test=0.3, scalar_std=0.3081, lambda0=0.05, lambda_end=0.0002),
        **_MNIST,
        **_V2_OPT,
        published=(98.56, 94.73, 93.20),
    ),
    "v2-cifar10-2/255": dict(
        hparams=dict(_V2_CIFAR, eps_train=0.03922, eps_test=2 / 255, scalar_std=0.2009, lambda0=0.05, lambda_end=0.002),
        **_CIFAR,
        **_V2_OPT,
        published=(60.61, 54.28, 54.12),
    ),
    "v2-cifar10-8/255": dict(
        hparams=dict(_V2_CIFAR, eps_train=0.09411, eps_test=8 / 255, scalar_std=0.2009, lambda0=0.1, lambda_end=0.0005),
        **_CIFAR,
        **_V2_OPT,
        published=(54.30, 41.84, 40.06),
    ),
    "v2-cifar10-16/255": dict(
        hparams=dict(
            _V2_CIFAR, eps_train=0.15685, eps_test=16 / 255, scalar_std=0.2009, lambda0=0.1, lambda_end=0.0002
        ),
        **_CIFAR,
        **_V2_OPT,
        published=(48.50, 32.73, 29.04),
    ),
    # v1, net alone: depth 6, width 5120 per the official command (command/ell_inf_dist_net_cifar10.sh:
    # MLP(depth=6,width=5), hinge(mix=0.75), --epochs 0,100,0,750,800); METHODS.md does not state the depth.
    # λ fields are unused by the v1 loss. Decoupled ℓp-row weight decay 5e-3 (METHODS.md) is the loop's job.
    "v1-cifar10-8/255": dict(
        hparams=dict(
            loss="v1",
            depth=6,
            width=5120,
            p0=8.0,
            p1=1000.0,
            p_start=100,
            p_end=750,
            epochs=800,
            eps_train=0.1568,
            eps_test=8 / 255,
            scalar_std=0.2009,
            row_weight_decay=5e-3,
        ),
        **dict(_CIFAR, augment="RandomCrop(32, pad 4, zeros) + flip"),
        optimizer="adam",
        betas=(0.9, 0.99),
        adam_eps=1e-10,
        lr=0.02,
        batch_size=512,
        weight_decay=5e-3,
        weight_decay_kind="decoupled lp-row, before the Adam step",
        lr_schedule="constant until epoch 100, then cosine to 0",
        published=(None, None, 33.30),
    ),
}


#: The PAPER setting whose hparams are Hparams' defaults.
DEFAULTS = "v2-cifar10-8/255"


def paper_hparams(setting: str) -> Hparams:
    return Hparams(**PAPER[setting]["hparams"])


# ---------------------------------------------------------------------------------------------------------------
# the method contract (methods/core/interface.py): the architecture and the optimizer groups are part of the method


class ScaledLogits(nn.Module):
    """s·z: what v2's cross-entropy, and so its PGD evaluation, sees (margins and certificates use raw z)."""

    def __init__(self, net: LinfDistMLP):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.scale * self.net(x)


def build_model(dataset: str, hp: Hparams, model_cfg: dict) -> LinfDistMLP:
    """The ℓ∞-dist MLP for `dataset`: per-channel means (the config's `model.mean`, else the dataset's) and the
    method's one scalar std, so ε converts exactly between pixel and network units."""
    meta = data.info(dataset)
    mean = model_cfg.get("mean") or meta.mean
    return LinfDistMLP(meta.shape, meta.num_classes, hp.depth, hp.width, mean, hp.scalar_std)


def optimizer_params(model: LinfDistMLP, lr: float, hp: Hparams):
    """v2 trains the logit scale s at its own learning rate (0.006); v1 has no s in its loss."""
    return param_groups(model, lr, SCALE_LR) if hp.loss == "v2" else model.parameters()


SCALE_LR = 0.006


def draw(x, hp: Hparams):
    return None  # deterministic objective: no random draws


def objective(model: LinfDistMLP, x, y, draws, hp: Hparams) -> StepResult:
    """The loss at the model's current p with the final λ (what the per-epoch test pass reports)."""
    z = model(x)
    return StepResult(loss(z, y, hp, hp.p_end, model.scale), (z.argmax(1) == y).sum(), len(y))


@torch.no_grad()
def row_weight_decay(model: LinfDistMLP, lr: float, wd: float) -> None:
    """v1's decoupled ℓp-row weight decay: w ← w − lr·wd·(|w| / ‖w_row‖_p)^(p−2)·w at the layers' current p, the
    gradient of ½‖w_row‖_p² scaled to ℓ2 decay at p = 2; at p = ∞ only each row's largest |w| decays. The output
    layer's bias decays too, plainly (b ← b − lr·wd·b), as the reference decays every parameter."""
    for layer in model.layers:
        if layer.bias is not None:
            layer.bias.sub_(lr * wd * layer.bias)
        w, p = layer.weight, layer.p
        magnitude = w.abs()
        if math.isinf(p):
            factor = (magnitude == magnitude.amax(1, keepdim=True)).to(w.dtype)
        else:
            norm = torch.linalg.vector_norm(
                w / magnitude.amax(1, keepdim=True).clamp_min(1e-30), ord=p, dim=1, keepdim=True
            ) * magnitude.amax(1, keepdim=True)
            factor = (magnitude / norm.clamp_min(1e-30)) ** (p - 2)
        w.sub_(lr * wd * factor * w)


def train_step(model: LinfDistMLP, optimizer, x, y, hp: Hparams, epoch: float) -> StepResult:
    """p and λ follow the per-mini-batch schedule: `epoch` is fractional progress (epoch + batch fraction). v1's
    row weight decay is applied between the backward pass and the Adam step, as the reference does."""
    if not hp.row_weight_decay:
        return descend(optimizer, step_objective(model, x, y, hp, epoch))
    result = step_objective(model, x, y, hp, epoch)
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    row_weight_decay(model, optimizer.param_groups[0]["lr"], hp.row_weight_decay)
    optimizer.step()
    return result
