"""The training set resident on the device: the fast path's data loading (methods/train/fast.py).

For the tensor-sized datasets (digits, MNIST, CIFAR-10, synthetic-cifar10) every training image is loaded once, as
one float32 tensor in [0, 1] on the training device, with the exact values the DataLoader path yields. Each epoch's
batches are indices drawn from the same seeded generator, in the same way, as the reference path's DataLoader
(`index_loader` builds that DataLoader over the indices alone, so shuffling, the last smaller batch and, under DDP,
`distributed.ShardedBatches` are literally the same code); a batch is then gathered on the device and cropped and
flipped there, per image, with torch ops (`crop_and_flip`) that follow torchvision's RandomCrop(size, padding,
padding_mode) + RandomHorizontalFlip semantics for the config's `augment` exactly as `data.load` applies them.

The crop/flip draws come from torch's global RNG on the device (the training loop seeds it per epoch and saves it in
the mid-epoch resume state), not from torchvision's CPU draws, so the augmented images differ from the reference
path's while following the same distribution. Resuming mid-epoch replays only the index order: no augmentation is
redone for the skipped batches, and the restored RNG continues the epoch exactly.

ImageNet (files decoded per image) stays on the DataLoader.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset

from ..core import data
from . import distributed

#: Datasets whose whole training split fits on a device as one tensor (CIFAR-10: 50,000 × 3 × 32 × 32 float32,
#: 614 MB; MNIST 188 MB).
RESIDENT = ("digits", "mnist", "fashion_mnist", "cifar10", "synthetic-cifar10")

#: torchvision's padding modes → torch.nn.functional.pad's
_PAD_MODES = {"constant": "constant", "edge": "replicate"}


def resident(dataset: str) -> bool:
    return dataset in RESIDENT


def augmentation(dataset: str, augment: bool | dict) -> dict | None:
    """The crop/flip that `data.load(dataset, "train", augment=augment)` applies, as crop_and_flip's keyword
    arguments, or None where it applies none: a dict `augment` as given (any dataset but ImageNet), `true` the
    standard CIFAR-10 crop (zero padding 4) + flip, and nothing for `true` elsewhere (digits, MNIST, the synthetic
    sets), nor for `false`."""
    if isinstance(augment, dict):
        spec = {
            "crop_padding": int(augment.get("crop_padding", 0)),
            "padding_mode": augment.get("padding_mode", "constant"),
            "flip": bool(augment.get("flip", False)),
        }
        if spec["padding_mode"] not in _PAD_MODES:
            raise ValueError(f"padding_mode must be one of {', '.join(_PAD_MODES)}, got {spec['padding_mode']!r}")
        return spec if spec["crop_padding"] or spec["flip"] else None
    if augment is True and dataset == "cifar10":
        return {"crop_padding": 4, "padding_mode": "constant", "flip": True}
    return None


def crop_and_flip(
    x: torch.Tensor,
    crop_padding: int = 0,
    padding_mode: str = "constant",
    flip: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per image of the batch x (B, C, H, W): torchvision's RandomCrop((H, W), padding=crop_padding,
    padding_mode=padding_mode) — pad every side, then a window at offsets (top, left) uniform in
    {0, …, 2·crop_padding}² — followed by RandomHorizontalFlip (p = ½), each image with its own draws, on x's device.
    "constant" pads with 0, "edge" repeats the border pixel. Returns a new tensor; x is not modified."""
    if x.dim() != 4:
        raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
    batch, _, height, width = x.shape
    if crop_padding:
        p = int(crop_padding)
        if padding_mode == "constant":
            padded = F.pad(x, (p, p, p, p), mode="constant", value=0.0)
        else:
            padded = F.pad(x, (p, p, p, p), mode=_PAD_MODES[padding_mode])
        top = torch.randint(0, 2 * p + 1, (batch,), device=x.device, generator=generator)
        left = torch.randint(0, 2 * p + 1, (batch,), device=x.device, generator=generator)
        rows = (top[:, None] + torch.arange(height, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (left[:, None] + torch.arange(width, device=x.device))[:, None, :]  # (B, 1, W)
        images = torch.arange(batch, device=x.device)[:, None, None]
        # advanced indices around a slice put the indexed dims first: (B, H, W, C), i.e. a channels_last view
        x = padded[images, :, rows, cols].permute(0, 3, 1, 2)
    if flip:
        flipped = torch.rand(batch, device=x.device, generator=generator) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
    return x if crop_padding or flip else x.clone()


class _Indices(Dataset):
    """0, …, n − 1: what the epoch's DataLoader yields instead of images."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def _tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, C, H, W) float32, labels (N,) int64) of an un-augmented training split, exactly as its items."""
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors
        return images.float(), labels.long()
    from torchvision import datasets

    if isinstance(dataset, datasets.MNIST):  # its transform is ToTensor(): uint8 → float32 / 255
        return dataset.data.unsqueeze(1).float().div(255), torch.as_tensor(dataset.targets).long()
    items = [dataset[i] for i in range(len(dataset))]  # synthetic-cifar10: generated per item
    return torch.stack([x for x, _ in items]).float(), torch.tensor([int(y) for _, y in items], dtype=torch.long)


class DeviceTrainSet:
    """A training split as two device tensors, batched by index and augmented on the device."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        device,
        augment: dict | None = None,
        channels_last: bool = False,
    ):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.augment = augment
        self.channels_last = channels_last

    @classmethod
    def load(
        cls,
        dataset: str,
        data_root="data",
        download: bool = False,
        augment: bool | dict = False,
        device="cpu",
        channels_last: bool = False,
    ) -> DeviceTrainSet:
        if not resident(dataset):
            raise ValueError(f"{dataset}: not a device-resident dataset (those are {', '.join(RESIDENT)})")
        images, labels = _tensors(data.load(dataset, "train", data_root, download, augment=False))
        return cls(images, labels, device, augmentation(dataset, augment), channels_last)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size() + self.labels.numel() * self.labels.element_size()

    def index_loader(
        self, batch_size: int, generator: torch.Generator, ctx: distributed.Context = distributed.SINGLE
    ) -> tuple[DataLoader, list[int] | None]:
        """The epoch's batches of indices: the reference path's DataLoader (shuffle=True, or the sharded batch
        sampler under DDP, with the epoch's `generator`), built over the indices instead of the images, so the
        order, the batch sizes and each rank's slice are the reference path's. Returns (loader, the global batch
        sizes under DDP, else None)."""
        indices = _Indices(len(self))
        if ctx.active:
            sharded = distributed.ShardedBatches(RandomSampler(indices, generator=generator), batch_size, ctx)
            return DataLoader(indices, batch_sampler=sharded, generator=generator), sharded.global_sizes()
        return DataLoader(indices, batch_size=batch_size, shuffle=True, generator=generator), None

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of the given indices, cropped and flipped on the device as configured."""
        index = index.to(self.device, non_blocking=True)
        x, y = self.images.index_select(0, index), self.labels.index_select(0, index)
        if self.augment is not None:
            x = crop_and_flip(x, **self.augment)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y
