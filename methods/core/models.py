"""Base classifiers. Every model takes [0, 1] pixels and starts with its dataset's normalization layer.

Putting normalization inside the model (as the reference code does) means Gaussian noise and attacks act in pixel
space, so certified radii are pixel-space radii. The layer is configurable per run because the papers differ:
Cohen divides by std, Salman's released models only centre, MACER's CIFAR code has no normalization at all.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import data


class Normalize(nn.Module):
    """(x - mean) / std per channel; `center` mode skips the division, `none` is the identity."""

    def __init__(self, mean, std, mode: str = "standard"):
        super().__init__()
        if mode not in ("standard", "center", "none"):
            raise ValueError(f"normalization must be standard, center or none, got {mode!r}")
        self.mode = mode
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        if self.mode == "none":
            return x
        x = x - self.mean
        return x / self.std if self.mode == "standard" else x

    def extra_repr(self):
        return f"mode={self.mode}"


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head: the digits / MNIST workhorse, fast enough for a laptop DAG."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(8 * width, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes)
        )

    def forward(self, x):
        return self.head(self.features(x))


class LeNet(nn.Module):
    """LeNet-5 (two conv + pool stages, three linear layers; 28×28 inputs only). MACER's MNIST setting names "LeNet"
    (METHODS.md §3) without its layers; LeNet-5 is this harness's reading of it, not a verified copy of MACER's."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """CIFAR ResNet basic block; a 1×1 conv + BN shortcut where the shape changes (as in Cohen's cifar_resnet)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class CifarResNet(nn.Module):
    """ResNet of depth 6n + 2 for 32×32 inputs: 16/32/64 channels, n basic blocks per stage (He et al. 2016)."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        )
        layers, planes_in = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(planes_in, planes, stride if i == 0 else 1))
                planes_in = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():  # the initialisation of the reference CIFAR ResNets
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class ResNet18(nn.Module):
    """The CIFAR-style ResNet-18 of the adversarial-training literature (TRADES, backward smoothing): a 3×3 stem
    without pooling, four stages of two basic blocks (64/128/256/512 channels), global average pooling."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        )
        layers, planes_in = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            for i in range(2):
                layers.append(BasicBlock(planes_in, planes, stride if i == 0 else 1))
                planes_in = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


class WideBlock(nn.Module):
    """Pre-activation wide basic block (BN-ReLU-conv twice); where the shape changes, the shortcut is a 1×1 conv of
    the pre-activated input, as in the WideResNet of TRADES and its followers."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(in_planes), nn.BatchNorm2d(planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            None if in_planes == planes and stride == 1 else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
        )

    def forward(self, x):
        pre = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WideResNet-depth-widen (Zagoruyko & Komodakis 2016) for 32×32 inputs; WRN-34-10 is backward smoothing's."""

    def __init__(self, depth: int = 34, widen: int = 10, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks, planes_in = [], widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                blocks.append(WideBlock(planes_in, planes, stride if i == 0 else 1))
                planes_in = planes
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.BatchNorm2d(planes_in),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(planes_in, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class PreActBlock(nn.Module):
    """Pre-activation basic block of Fast AT's PreActResNet-18 (METHODS.md §7.3): BN-ReLU-conv twice; where the shape
    changes, the shortcut is a 1×1 conv (no BN) of the block's raw input, not of its pre-activation (as FAST's
    `preact_resnet.py` writes it)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x):
        out = self.conv1(nn.functional.relu(self.bn1(x)))
        out = self.conv2(nn.functional.relu(self.bn2(out)))
        return out + (x if self.shortcut is None else self.shortcut(x))


class PreActResNet18(nn.Module):
    """Fast AT's PreActResNet-18 (Wong et al. 2020; METHODS.md §7.3): a 3×3 conv stem (64 channels, stride 1, no BN
    before the first stage), four stages of two PreActBlocks (64/128/256/512, strides 1/2/2/2), a final BN + ReLU,
    average pooling and a linear head. The reference pools with avg_pool2d(4), the global average of the 4×4 map of
    a 32×32 input; global average pooling here is the same there and also takes smaller inputs (digits)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        layers, planes_in = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            for i in range(2):
                layers.append(PreActBlock(planes_in, planes, stride if i == 0 else 1))
                planes_in = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = nn.functional.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


def _resnet50(in_channels: int, num_classes: int) -> nn.Module:
    from torchvision.models import resnet50

    if in_channels != 3:
        raise ValueError("resnet50 expects 3-channel inputs")
    return resnet50(weights=None, num_classes=num_classes)


ARCHS = {
    "small_cnn": lambda c, k, width=16: SmallCNN(c, k, width),
    "lenet": lambda c, k: LeNet(c, k),
    "cifar_resnet20": lambda c, k: CifarResNet(20, k, c),
    "cifar_resnet56": lambda c, k: CifarResNet(56, k, c),
    "cifar_resnet110": lambda c, k: CifarResNet(110, k, c),
    "resnet50": _resnet50,
    "resnet18": lambda c, k: ResNet18(c, k),
    "wrn34_10": lambda c, k: WideResNet(34, 10, c, k),
    "preact_resnet18": lambda c, k: PreActResNet18(c, k),
}


#: Architectures with a width option (`model.width`): the channels of their first convolution.
WIDTH_ARCHS = ("small_cnn",)


def check_width(arch: str, width: int | None) -> None:
    """Refuse a width for an architecture that has none (a ValueError naming it)."""
    if width is not None and arch not in WIDTH_ARCHS:
        raise ValueError(f"arch {arch} has no width option (only {', '.join(WIDTH_ARCHS)})")


def build(
    arch: str, dataset: str, normalization: str = "standard", mean=None, std=None, width: int | None = None
) -> nn.Sequential:
    """Normalize followed by the network `arch` ("auto" = the dataset's default).

    `mean` / `std` override the dataset's constants where a paper used its own (backward smoothing's CIFAR std;
    ℓ∞-dist nets' single scalar std, given as one number, so that ℓ∞ balls map exactly onto network units).
    `width` (None: the architecture's own) applies to WIDTH_ARCHS only.
    """
    meta = data.info(dataset)
    arch = meta.default_arch if arch == "auto" else arch
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r} (known: {', '.join(ARCHS)})")
    channels = meta.shape[0]
    mean = list(meta.mean) if mean is None else list(mean)
    std = list(meta.std) if std is None else ([float(std)] * channels if isinstance(std, (int, float)) else list(std))
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"{dataset} has {channels} channels: mean {mean} / std {std} do not match")
    check_width(arch, width)
    net = ARCHS[arch](channels, meta.num_classes, **({} if width is None else {"width": width}))
    return nn.Sequential(Normalize(mean, std, normalization), net)


def from_spec(model_cfg: dict, dataset: str) -> nn.Sequential:
    """The model a spec's (or a model file's) `model` section describes."""
    return build(model_cfg["arch"], dataset, model_cfg["normalization"], model_cfg.get("mean"), model_cfg.get("std"),
                 model_cfg.get("width"))  # fmt: skip


def for_method(method, hp, model_cfg: dict, dataset: str) -> nn.Module:
    """The method's own architecture where it has one (ℓ∞-dist nets), else the one `model_cfg` describes (a spec's
    `model` section, or a model file's info)."""
    if hasattr(method, "build_model"):
        return method.build_model(dataset, hp, model_cfg)
    return from_spec(model_cfg, dataset)


def file_info(model_cfg: dict, dataset: str, own_arch: str | None = None) -> dict:
    """What a model file records of its network, enough for `from_spec` to rebuild it: the architecture (a method's
    own, else the config's, "auto" resolved), normalization, mean / std overrides and the width option."""
    return {
        "arch": own_arch or resolved_arch(model_cfg["arch"], dataset),
        "normalization": model_cfg["normalization"],
        "mean": model_cfg.get("mean"),
        "std": model_cfg.get("std"),
        "width": model_cfg.get("width"),
    }


def resolved_arch(arch: str, dataset: str) -> str:
    return data.info(dataset).default_arch if arch == "auto" else arch
