"""Models take [0, 1] pixels and normalise in their first layer (METHODS.md §0), with the papers' constants."""

from __future__ import annotations

import pytest
import torch

from methods.core import data, models


def test_normalization_constants_are_cohens():
    """CIFAR-10 std is Cohen's (0.2023, 0.1994, 0.2010), not the often-quoted (0.247, 0.243, 0.261)."""
    assert data.info("cifar10").mean == (0.4914, 0.4822, 0.4465)
    assert data.info("cifar10").std == (0.2023, 0.1994, 0.2010)
    assert data.info("imagenet").mean == (0.485, 0.456, 0.406)
    assert data.info("imagenet").std == (0.229, 0.224, 0.225)


@pytest.mark.parametrize(
    "mode,expected",
    [("standard", lambda x, m, s: (x - m) / s), ("center", lambda x, m, s: x - m), ("none", lambda x, m, s: x)],
)
def test_normalize_modes(mode, expected):
    layer = models.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), mode)
    x = torch.rand(2, 3, 4, 4)
    m = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    s = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
    assert torch.allclose(layer(x), expected(x, m, s))


def test_every_model_starts_with_its_normalization_layer():
    model = models.build("auto", "cifar10", "center")
    assert isinstance(model[0], models.Normalize) and model[0].mode == "center"
    assert model[0].std.flatten().tolist() == pytest.approx([0.2023, 0.1994, 0.2010])


def test_resnet110_is_cohens_cifar_network():
    net = models.build("cifar_resnet110", "cifar10")[1]
    blocks = [m for m in net.modules() if isinstance(m, models.BasicBlock)]
    assert len(blocks) == 54  # 6n + 2 = 110 → n = 18 blocks per stage, 3 stages
    assert [b.conv2.out_channels for b in blocks[::18]] == [16, 32, 64]
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(1.73e6, rel=0.01)


@pytest.mark.parametrize(
    "arch,dataset,shape",
    [("small_cnn", "digits", (1, 8, 8)), ("lenet", "mnist", (1, 28, 28)), ("cifar_resnet20", "cifar10", (3, 32, 32))],
)
def test_models_map_pixels_to_logits(arch, dataset, shape):
    assert models.build(arch, dataset)(torch.rand(3, *shape)).shape == (3, 10)


def test_small_cnn_width_sets_its_channels_and_other_archs_refuse_one():
    """`model.width` (the default config's 8): channels width, 2·width, 2·width; a model file without it (written
    before the option existed) rebuilds the default 16."""
    convs = [m for m in models.build("small_cnn", "digits", width=8).modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 16]
    info = {"arch": "small_cnn", "normalization": "standard"}
    assert models.from_spec(info, "digits")[1].features[0].out_channels == 16
    assert models.from_spec({**info, "width": 8}, "digits")[1].features[0].out_channels == 8
    with pytest.raises(ValueError, match="no width option"):
        models.build("lenet", "mnist", width=8)


def test_unknown_arch_and_bad_depth_are_refused():
    with pytest.raises(ValueError, match="unknown arch"):
        models.build("vgg", "cifar10")
    with pytest.raises(ValueError, match="6n"):
        models.CifarResNet(21)


@pytest.mark.parametrize("arch, blocks, params_millions", [("resnet18", 8, 11.17), ("wrn34_10", 15, 46.16)])
def test_adversarial_training_models_have_the_literatures_shapes(arch, blocks, params_millions):
    """ResNet-18 (11.17 M parameters) and WRN-34-10 (46.16 M), as in TRADES / backward smoothing."""
    net = models.build(arch, "cifar10")[1]
    assert sum(isinstance(m, (models.BasicBlock, models.WideBlock)) for m in net.modules()) == blocks
    assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(params_millions, abs=0.01)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_normalization_constants_can_be_overridden_and_a_scalar_std_is_shared():
    model = models.build("small_cnn", "cifar10", "standard", mean=[0.5, 0.5, 0.5], std=0.2)
    norm = model[0]
    assert norm.mean.flatten().tolist() == pytest.approx([0.5] * 3) and norm.std.flatten().tolist() == pytest.approx(
        [0.2] * 3
    )
    with pytest.raises(ValueError, match="3 channels"):
        models.build("small_cnn", "cifar10", "standard", mean=[0.5])
