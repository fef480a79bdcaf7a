"""Datasets, all yielding (image in [0, 1] pixel space, label).

Pixels stay in [0, 1] because noise and attacks act in pixel space; normalization is the model's first layer.
`digits` (scikit-learn's bundled 8×8 digits) is the embedded default and needs no files. MNIST / CIFAR-10 /
ImageNet are read from `data_root`; nothing is downloaded unless the config says `download: true`. The synthetic
datasets are random tensors of the real shapes, for throughput benchmarks only.
"""

from __future__ import annotations

import importlib.util
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from .errors import DatasetNotFound


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_arch: str


_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # Cohen's constants (METHODS.md §0)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

DATASETS: dict[str, DatasetInfo] = {
    # digits: mean/std of the training split below, pixels scaled to [0, 1].
    "digits": DatasetInfo("digits", 10, (1, 8, 8), (0.3055,), (0.3765,), "small_cnn"),
    "mnist": DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), "small_cnn"),
    # Fashion-MNIST (Xiao et al. 2017): 60,000 + 10,000 real 28×28 grey images of 10 clothing classes; the training
    # split's mean and std.
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, (1, 28, 28), (0.2860,), (0.3530,), "lenet"),
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32), _CIFAR_MEAN, _CIFAR_STD, "cifar_resnet110"),
    "imagenet": DatasetInfo("imagenet", 1000, (3, 224, 224), _IMAGENET_MEAN, _IMAGENET_STD, "resnet50"),
    "synthetic-cifar10": DatasetInfo("synthetic-cifar10", 10, (3, 32, 32), _CIFAR_MEAN, _CIFAR_STD, "cifar_resnet110"),
    "synthetic-imagenet": DatasetInfo(
        "synthetic-imagenet", 1000, (3, 224, 224), _IMAGENET_MEAN, _IMAGENET_STD, "resnet50"
    ),
}

#: digits split: a fixed permutation (numpy's legacy RandomState(0), stable across versions); the first 500
#: permuted images are the test set, the other 1297 the training set. Test-set index = position in that test set.
DIGITS_TEST_SIZE = 500
#: Size of the synthetic datasets (train, test): enough batches to time an epoch, small enough to allocate.
SYNTHETIC_SIZES = {"synthetic-cifar10": (5000, 500), "synthetic-imagenet": (512, 64)}
#: Test-set sizes (ImageNet: the validation set), for planning without the files at hand.
TEST_SIZES = {
    "digits": DIGITS_TEST_SIZE,
    "mnist": 10_000,
    "fashion_mnist": 10_000,
    "cifar10": 10_000,
    "imagenet": 50_000,
    **{name: sizes[1] for name, sizes in SYNTHETIC_SIZES.items()},
}


def info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})") from None


def _missing(name: str, path: Path, hint: str) -> DatasetNotFound:
    return DatasetNotFound(
        f"{name}: {hint} not found in {path} (set config key `data_root`"
        + (", or `download: true` to fetch it)" if name in ("mnist", "cifar10") else ")")
    )


def load(
    name: str, split: str, data_root: str | Path = "data", download: bool = False, augment: bool | dict = False
) -> Dataset:
    """The `split` ("train" or "test") of dataset `name`.

    `augment`: True = the dataset's standard training augmentation (CIFAR-10: RandomCrop(32, pad 4) + flip;
    ImageNet: RandomResizedCrop + flip; none for digits and MNIST), or a dict {crop_padding, padding_mode
    ("constant" | "edge"), flip} for a paper's own crop (ℓ∞-dist v2: CIFAR pad 3 edge + flip, MNIST pad 1 edge).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    meta = info(name)
    root = Path(data_root)
    custom = isinstance(augment, dict)
    if name == "imagenet":
        if custom:
            raise ValueError("imagenet: only the standard augmentation (augment: true) is supported")
        return _imagenet(root, split, augment)
    if name == "digits":
        data = _digits(split)
    elif name == "mnist":
        data = _mnist(root, split, download)
    elif name == "fashion_mnist":
        data = _fashion_mnist(root, split, download)
    elif name == "cifar10":
        data = _cifar10(root, split, download, augment is True)
    else:
        data = _synthetic(name, split)
    if custom and split == "train":
        data = _Augmented(data, crop_and_flip(meta.shape[1], **augment))
    return data


def crop_and_flip(size: int, crop_padding: int = 0, padding_mode: str = "constant", flip: bool = False):
    """RandomCrop(size, padding, padding_mode) (+ horizontal flip): the training crops of the papers."""
    from torchvision.transforms import v2

    steps = [v2.RandomCrop(size, padding=crop_padding, padding_mode=padding_mode)] if crop_padding else []
    return v2.Compose(steps + ([v2.RandomHorizontalFlip()] if flip else []))


def _digits_file() -> Path | None:
    """scikit-learn's bundled digits (the CSV `load_digits` parses), found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits images (8×8, pixel values 0–16) and labels, as `sklearn.datasets.load_digits` returns them.
    Read straight from the bundled CSV: importing scikit-learn (and scipy with it) costs every job ≈2 s here; a
    scikit-learn whose file is not where expected is read through `load_digits`, with a warning."""
    path = _digits_file()
    if path is not None:
        table = np.loadtxt(path, delimiter=",")
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
    warnings.warn("scikit-learn's digits.csv.gz not found: reading the digits through sklearn.datasets.load_digits",
                  stacklevel=2)  # fmt: skip
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def _digits(split: str) -> Dataset:
    pixels, targets = digits_arrays()
    images = torch.tensor(pixels / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(targets, dtype=torch.long)
    perm = torch.from_numpy(np.random.RandomState(0).permutation(len(labels)))
    idx = perm[:DIGITS_TEST_SIZE] if split == "test" else perm[DIGITS_TEST_SIZE:]
    return TensorDataset(images[idx], labels[idx])


def _mnist(root: Path, split: str, download: bool) -> Dataset:
    from torchvision import datasets, transforms

    raw = root / "MNIST" / "raw"
    # torchvision opens all four raw IDX files whichever split is asked for.
    missing = [
        f"{prefix}-{kind}"
        for prefix in ("train", "t10k")
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
        if not (raw / f"{prefix}-{kind}").exists()
    ]
    if missing and not download:
        raise _missing("mnist", raw, ", ".join(missing))
    return datasets.MNIST(str(root), train=split == "train", download=download, transform=transforms.ToTensor())


#: Where Debian's `dataset-fashion-mnist` package puts the four IDX files (gzipped).
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}  # fmt: skip


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST family's format; `.gz` or plain): big-endian magic 0x00 0x00 0x08 <ndim>, the
    dimensions as big-endian uint32, then unsigned bytes."""
    import gzip

    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {body.size} bytes of data for dimensions {dims} (truncated?)")
    return body.reshape(dims)


def _fashion_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            return candidate
    return None


def _fashion_mnist(root: Path, split: str, download: bool) -> Dataset:
    """Fashion-MNIST from its four IDX files (plain or .gz), found in the first folder that has them: data_root,
    data_root/FashionMNIST/raw (torchvision's layout, which `download: true` fetches into), then Debian's
    /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist)."""
    folders = [root, root / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST]
    names = _FASHION_FILES[split]
    found = next((f for f in folders if all(_fashion_file(f, n) for n in names)), None)
    if found is None and download:
        from torchvision import datasets

        datasets.FashionMNIST(str(root), train=split == "train", download=True)
        found = next((f for f in folders if all(_fashion_file(f, n) for n in names)), None)
    if found is None:
        raise DatasetNotFound(
            f"fashion_mnist: {', '.join(names)} (or .gz) not found in {root}, {root / 'FashionMNIST' / 'raw'} or "
            f"{DEBIAN_FASHION_MNIST} (set config key `data_root`, `apt-get install dataset-fashion-mnist`, or "
            f"`download: true` to fetch it)"
        )
    try:
        images, labels = (read_idx(_fashion_file(found, n)) for n in names)
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetNotFound(f"fashion_mnist: the files in {found} cannot be read ({exc})") from None
    if len(images) != len(labels):
        raise DatasetNotFound(f"fashion_mnist: {len(images)} images but {len(labels)} labels in {found}")
    x = torch.from_numpy(images.copy()).float().div_(255.0).unsqueeze(1)
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


class _Augmented(Dataset):
    """Applies a transform to the images of an in-memory (image, label) dataset."""

    def __init__(self, base: Dataset, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return self.transform(x), y


def _cifar10(root: Path, split: str, download: bool, augment: bool) -> Dataset:
    """CIFAR-10 from the python-pickle batches (cifar-10-batches-py), the format torchvision downloads."""
    folder = root / "cifar-10-batches-py"
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if download and not all((folder / f).exists() for f in files):
        from torchvision import datasets

        datasets.CIFAR10(str(root), train=split == "train", download=True)
    missing = [f for f in files if not (folder / f).exists()]
    if missing:
        raise _missing("cifar10", folder, ", ".join(missing))
    images, labels = [], []
    for f in files:
        with open(folder / f, "rb") as fh:
            batch = pickle.load(fh, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch["labels"])
    x = torch.from_numpy(np.concatenate(images)).float().div_(255.0)
    data: Dataset = TensorDataset(x, torch.tensor(labels, dtype=torch.long))
    if augment:
        data = _Augmented(data, crop_and_flip(32, crop_padding=4, flip=True))
    return data


def _imagenet(root: Path, split: str, augment: bool) -> Dataset:
    """ImageNet in the ImageFolder layout: data_root/imagenet/{train,val}/<wnid>/<image>."""
    from torchvision import datasets, transforms

    folder = root / "imagenet" / ("train" if split == "train" else "val")
    if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
        raise _missing("imagenet", folder, "class folders (ImageFolder layout)")
    if split == "train" and augment:
        tf = transforms.Compose(
            [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
        )
    else:
        tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    return datasets.ImageFolder(str(folder), transform=tf)


def _synthetic(name: str, split: str) -> Dataset:
    meta = info(name)
    n_train, n_test = SYNTHETIC_SIZES[name]
    n = n_train if split == "train" else n_test
    # Generated lazily per item: a synthetic ImageNet split would not fit in memory as one tensor.
    return _RandomImages(n, meta.shape, meta.num_classes, seed=0 if split == "train" else 1)


class _RandomImages(Dataset):
    def __init__(self, n: int, shape, num_classes: int, seed: int):
        self.n, self.shape, self.num_classes, self.seed = n, shape, num_classes, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        return torch.rand(self.shape, generator=gen), int(torch.randint(self.num_classes, (), generator=gen))
