"""Tests for methods/data.py: the dataset loaders read the real on-disk formats, keep pixels in [0, 1],
and fail with a DatasetNotFound that tells the user where they looked and which config key to set.

Every on-disk dataset is written here, tiny, into pytest's tmp_path: nothing is downloaded.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from methods.core import data
from methods.core.errors import DatasetNotFound


def _stack(ds, indices=None):
    """(images, labels) of `ds` as two tensors, read through __getitem__ like a DataLoader would."""
    indices = range(len(ds)) if indices is None else indices
    items = [ds[i] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


# ---------------------------------------------------------------------------------------------- digits


def test_digits_sizes_shapes_range_and_labels():
    """digits: 1297 train / 500 test images of shape (1, 8, 8), float32 in [0, 1], labels 0..9."""
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert (len(train), len(test)) == (1297, 500)
    assert len(train) + len(test) == 1797
    for ds in (train, test):
        x, y = _stack(ds)
        assert x.shape[1:] == (1, 8, 8) == data.info("digits").shape
        assert x.dtype == torch.float32
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert x.max() == 1.0  # scaled by 16, not by 255: the brightest pixel is exactly 1
        assert set(y.tolist()) == set(range(10))


def test_digits_split_is_the_documented_fixed_permutation():
    """digits: test = first 500 of RandomState(0).permutation(1797) of load_digits().images / 16, train = the rest,
    and two loads give identical tensors."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    perm = np.random.RandomState(0).permutation(1797)
    expected = {"test": perm[:500], "train": perm[500:]}
    for split, idx in expected.items():
        x, y = _stack(data.load("digits", split))
        x2, y2 = _stack(data.load("digits", split))
        assert torch.equal(x, x2) and torch.equal(y, y2)
        want_x = torch.tensor(bunch.images[idx] / 16.0, dtype=torch.float32).unsqueeze(1)
        assert torch.equal(x, want_x)
        assert torch.equal(y, torch.tensor(bunch.target[idx]))
    # The two index sets partition the 1797 images.
    assert sorted(np.concatenate([expected["test"], expected["train"]]).tolist()) == list(range(1797))


def test_digits_are_read_without_importing_sklearn_and_fall_back_to_it_loudly(monkeypatch):
    """The bundled CSV is parsed directly (a job need not import scikit-learn); where the file is not found the same
    arrays come from load_digits, with a warning."""
    import subprocess
    import sys

    code = "import sys; from methods.core import data; data.load('digits', 'test'); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    direct = data.digits_arrays()
    monkeypatch.setattr(data, "_digits_file", lambda: None)
    with pytest.warns(UserWarning, match="load_digits"):
        fallback = data.digits_arrays()
    assert np.array_equal(direct[0], fallback[0]) and np.array_equal(direct[1], fallback[1])


def test_digits_info_mean_std_match_training_split():
    """digits: the mean/std in DATASETS (used by the model's normalization layer) are those of the train split."""
    x, _ = _stack(data.load("digits", "train"))
    meta = data.info("digits")
    assert x.mean().item() == pytest.approx(meta.mean[0], abs=1e-3)
    assert x.std().item() == pytest.approx(meta.std[0], abs=1e-3)


# ----------------------------------------------------------------------------------------------- MNIST


def _write_idx_images(path: Path, images: np.ndarray) -> None:
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes())


def _write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes())


def _mnist_arrays(n: int, seed: int):
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
    images[:, 0, 0] = [0, 255, 1, 254, 128][:n]  # extremes at a known spot
    labels = rng.randint(0, 10, size=n).astype(np.uint8)
    return images, labels


def _write_mnist(root: Path, train: bool = True, test: bool = True):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, prefix, n, seed, wanted in (("train", "train", 5, 1, train), ("test", "t10k", 3, 2, test)):
        if not wanted:
            continue
        images, labels = _mnist_arrays(n, seed)
        _write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
        written[split] = (images, labels)
    return written


def test_mnist_reads_raw_idx_files(tmp_path):
    """mnist: both splits are read from the raw IDX files under MNIST/raw; pixels = byte / 255, labels as written."""
    written = _write_mnist(tmp_path)
    for split, (images, labels) in written.items():
        ds = data.load("mnist", split, data_root=tmp_path)
        assert len(ds) == len(images)
        x, y = _stack(ds)
        assert x.shape[1:] == (1, 28, 28) == data.info("mnist").shape
        assert x.dtype == torch.float32
        want = torch.from_numpy(images).float().div(255.0).unsqueeze(1)
        assert torch.allclose(x, want, atol=1e-6)
        assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    # Accepts a str data_root as well as a Path.
    assert len(data.load("mnist", "test", data_root=str(tmp_path))) == 3


def test_mnist_missing_test_files_raise_dataset_not_found(tmp_path):
    """torchvision's MNIST opens all four raw files for either split; a missing one must be named, with the folder
    and `data_root`, instead of torchvision's bare RuntimeError."""
    _write_mnist(tmp_path, train=True, test=False)
    with pytest.raises(DatasetNotFound) as err:
        data.load("mnist", "train", data_root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "data_root" in message
    assert "t10k-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "train-images" not in message


def test_mnist_missing_labels_file_raises_dataset_not_found(tmp_path):
    """mnist: a missing labels file is reported as DatasetNotFound naming that file and `data_root`."""
    _write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFound, match="t10k-labels-idx1-ubyte.*data_root"):
        data.load("mnist", "test", data_root=tmp_path)


# -------------------------------------------------------------------------------------------- CIFAR-10


def _write_cifar(root: Path, train_batches=range(1, 6), test: bool = True):
    """Writes cifar-10-batches-py in the real format; returns {file: (uint8 images N×3×32×32, labels)}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in train_batches] + (["test_batch"] if test else [])
    written = {}
    for k, name in enumerate(names):
        rng = np.random.RandomState(100 + k)
        n = 2 if name != "test_batch" else 3
        images = rng.randint(0, 256, size=(n, 3, 32, 32)).astype(np.uint8)
        images[0, 0, 0, 0], images[0, 2, 31, 31] = 0, 255
        labels = [(2 * k + j) % 10 for j in range(n)]
        # Real files: "data" is N×3072, each row R(1024) G(1024) B(1024), each plane 32×32 row-major.
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": images.reshape(n, 3072), "labels": labels, "batch_label": name}, fh)
        written[name] = (images, labels)
    return written


def test_cifar10_train_concatenates_batches_in_order(tmp_path):
    """cifar10 train: data_batch_1..5 concatenated in order, pixels = byte / 255 in (3, 32, 32), labels kept."""
    written = _write_cifar(tmp_path)
    ds = data.load("cifar10", "train", data_root=tmp_path)
    order = [f"data_batch_{i}" for i in range(1, 6)]
    want_x = torch.from_numpy(np.concatenate([written[f][0] for f in order])).float() / 255.0
    want_y = torch.tensor([y for f in order for y in written[f][1]])
    assert len(ds) == 10
    x, y = _stack(ds)
    assert x.shape[1:] == (3, 32, 32) == data.info("cifar10").shape
    assert x.dtype == torch.float32
    assert torch.allclose(x, want_x, atol=1e-6)
    assert torch.equal(y, want_y)


def test_cifar10_test_split_reads_test_batch(tmp_path):
    """cifar10 test: exactly test_batch, same layout and scaling."""
    written = _write_cifar(tmp_path)
    ds = data.load("cifar10", "test", data_root=tmp_path)
    images, labels = written["test_batch"]
    x, y = _stack(ds)
    assert torch.allclose(x, torch.from_numpy(images).float() / 255.0, atol=1e-6)
    assert y.tolist() == labels


def test_cifar10_augment_is_pad4_crop_and_flip(tmp_path):
    """cifar10 augment=True: (3, 32, 32) in [0, 1], label unchanged, each output a 4-padded 32-crop of the image
    or of its mirror, and not always the identity."""
    written = _write_cifar(tmp_path)
    torch.manual_seed(0)
    ds = data.load("cifar10", "train", data_root=tmp_path, augment=True)
    orig = torch.from_numpy(written["data_batch_1"][0][0]).float() / 255.0
    padded = [torch.nn.functional.pad(img, (4, 4, 4, 4)) for img in (orig, orig.flip(-1))]
    candidates = [p[:, i : i + 32, j : j + 32] for p in padded for i in range(9) for j in range(9)]
    changed = 0
    for _ in range(20):
        x, y = ds[0]
        assert x.shape == (3, 32, 32)
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert y == written["data_batch_1"][1][0]
        assert any(torch.allclose(x, c, atol=1e-6) for c in candidates)
        changed += not torch.allclose(x, orig, atol=1e-6)
    assert changed > 0


# -------------------------------------------------------------------------------------------- ImageNet


_COLORS = {"n01000000": (200, 30, 60), "n02000000": (10, 120, 250)}


def _write_imagenet(root: Path):
    from PIL import Image

    # Create the later class first, so directory creation order differs from sorted order.
    for split in ("train", "val"):
        for wnid in sorted(_COLORS, reverse=True):
            folder = root / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            img = Image.new("RGB", (300, 260), _COLORS[wnid])
            img.save(folder / "a.png")
            img.save(folder / "b.JPEG", quality=95)


def test_imagenet_val_transform_and_sorted_class_labels(tmp_path):
    """imagenet val: Resize(256)+CenterCrop(224) gives (3, 224, 224) in [0, 1]; label i = i-th sorted wnid folder."""
    _write_imagenet(tmp_path)
    ds = data.load("imagenet", "test", data_root=tmp_path)
    assert len(ds) == 4
    assert ds.classes == sorted(_COLORS)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 224, 224) == data.info("imagenet").shape
        assert x.dtype == torch.float32 and x.min() >= 0.0 and x.max() <= 1.0
        wnid = sorted(_COLORS)[y]
        want = torch.tensor(_COLORS[wnid], dtype=torch.float32).view(3, 1, 1) / 255.0
        # Flat-colour images: the PNG is exact, the JPEG within compression error.
        assert (x - want).abs().max() < 0.03, wnid
    assert sorted(int(y) for _, y in ds.samples) == [0, 0, 1, 1]


def test_imagenet_train_augment_gives_224(tmp_path):
    """imagenet train with augment=True (RandomResizedCrop): (3, 224, 224) in [0, 1], labels by sorted folder."""
    _write_imagenet(tmp_path)
    torch.manual_seed(0)
    ds = data.load("imagenet", "train", data_root=tmp_path, augment=True)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 224, 224)
        assert x.min() >= 0.0 and x.max() <= 1.0
        want = torch.tensor(_COLORS[sorted(_COLORS)[y]], dtype=torch.float32).view(3, 1, 1) / 255.0
        assert (x - want).abs().max() < 0.03


# ----------------------------------------------------------------------------------------- missing data


@pytest.mark.parametrize(
    "name, split, looked_in",
    [
        ("mnist", "train", "MNIST/raw"),
        ("mnist", "test", "MNIST/raw"),
        ("cifar10", "train", "cifar-10-batches-py"),
        ("cifar10", "test", "cifar-10-batches-py"),
        ("imagenet", "train", "imagenet/train"),
        ("imagenet", "test", "imagenet/val"),
    ],
)
def test_missing_dataset_raises_dataset_not_found(tmp_path, name, split, looked_in):
    """An empty data_root raises DatasetNotFound (a FileNotFoundError) with a one-line message naming the
    path looked in and the config key `data_root`."""
    with pytest.raises(DatasetNotFound) as excinfo:
        data.load(name, split, data_root=tmp_path)
    assert isinstance(excinfo.value, FileNotFoundError)
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert str(tmp_path / looked_in) in msg
    assert "data_root" in msg


def test_imagenet_folder_without_class_dirs_raises_dataset_not_found(tmp_path):
    """imagenet: a split folder that exists but holds no class folders is still DatasetNotFound."""
    (tmp_path / "imagenet" / "val").mkdir(parents=True)
    (tmp_path / "imagenet" / "val" / "stray.png").write_bytes(b"")
    with pytest.raises(DatasetNotFound, match="data_root"):
        data.load("imagenet", "test", data_root=tmp_path)


def test_cifar10_partial_folder_names_missing_batches(tmp_path):
    """cifar10 with only test_batch present: test loads, train raises DatasetNotFound naming every missing
    data_batch_i (and not the batch that is present)."""
    _write_cifar(tmp_path, train_batches=[2, 4])
    assert len(data.load("cifar10", "test", data_root=tmp_path)) == 3
    with pytest.raises(DatasetNotFound) as excinfo:
        data.load("cifar10", "train", data_root=tmp_path)
    msg = str(excinfo.value)
    named = msg.split(" not found in ")[0]  # the file list, before the tmp path
    for i in (1, 3, 5):
        assert f"data_batch_{i}" in named
    for i in (2, 4):
        assert f"data_batch_{i}" not in named
    assert str(tmp_path / "cifar-10-batches-py") in msg and "data_root" in msg


def test_cifar10_only_test_batch_names_all_train_batches(tmp_path):
    """cifar10 with only test_batch: the train error names data_batch_1..5."""
    _write_cifar(tmp_path, train_batches=[])
    with pytest.raises(DatasetNotFound) as excinfo:
        data.load("cifar10", "train", data_root=tmp_path)
    named = str(excinfo.value).split(" not found in ")[0]  # the file list, before the (test-named) tmp path
    assert all(f"data_batch_{i}" in named for i in range(1, 6))
    assert "test_batch" not in named


# ------------------------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("name", ["synthetic-cifar10", "synthetic-imagenet"])
def test_synthetic_shapes_range_labels_and_determinism(name):
    """synthetic-*: the real shapes and sizes, values in [0, 1], labels in range, item i the same on every
    access and every load, different items and splits different."""
    meta = data.info(name)
    train, test = data.load(name, "train"), data.load(name, "test")
    assert (len(train), len(test)) == data.SYNTHETIC_SIZES[name]
    picks = [0, 1, len(test) - 1]
    for ds in (train, test):
        x, y = _stack(ds, picks)
        assert x.shape[1:] == meta.shape
        assert x.dtype == torch.float32
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert ((y >= 0) & (y < meta.num_classes)).all()
        x2, y2 = _stack(data.load(name, "train" if ds is train else "test"), picks)
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert not torch.equal(x[0], x[1])
    assert not torch.equal(train[0][0], test[0][0])
    # Labels cover more than one class (not a constant).
    assert len({train[i][1] for i in range(20)}) > 1


# ------------------------------------------------------------------------------------ names and splits


def test_unknown_dataset_raises_value_error_naming_known():
    """info() and load() of an unknown name raise ValueError listing the known datasets."""
    for call in (lambda: data.info("nope"), lambda: data.load("nope", "train")):
        with pytest.raises(ValueError) as excinfo:
            call()
        msg = str(excinfo.value)
        assert "nope" in msg
        for known in data.DATASETS:
            assert known in msg


@pytest.mark.parametrize("name", ["digits", "mnist", "cifar10", "imagenet", "synthetic-cifar10"])
def test_bad_split_raises_value_error(tmp_path, name):
    """split must be "train" or "test": "val" is a ValueError, checked before any file is looked for."""
    with pytest.raises(ValueError, match="val"):
        data.load(name, "val", data_root=tmp_path)


def test_info_of_known_datasets():
    """info() returns the registered entries; the class counts and shapes are the real ones."""
    assert data.info("cifar10").shape == (3, 32, 32) and data.info("cifar10").num_classes == 10
    assert data.info("imagenet").num_classes == 1000
    for name, meta in data.DATASETS.items():
        assert data.info(name) is meta and meta.name == name
        assert len(meta.mean) == len(meta.std) == meta.shape[0]


def test_a_papers_own_crop_pads_with_edge_values_and_keeps_the_shape():
    """ℓ∞-dist v2 crops with edge padding (not zeros): a padded border repeats the image's edge pixels."""
    import torch

    from methods.core import data

    torch.manual_seed(0)
    crop = data.crop_and_flip(8, crop_padding=3, padding_mode="edge", flip=False)
    x = torch.rand(1, 8, 8) * 0.5 + 0.5  # no zeros anywhere
    outs = [crop(x) for _ in range(50)]
    assert all(o.shape == (1, 8, 8) for o in outs)
    assert all(o.min() >= 0.5 for o in outs)  # zero padding would bring in zeros
    zero_pad = data.crop_and_flip(8, crop_padding=3, padding_mode="constant")
    assert any(zero_pad(x).min() == 0 for _ in range(50))
    train = data.load("digits", "train", augment={"crop_padding": 1, "padding_mode": "edge", "flip": False})
    test = data.load("digits", "test", augment={"crop_padding": 1, "padding_mode": "edge", "flip": False})
    assert train[0][0].shape == (1, 8, 8) and torch.equal(test[0][0], data.load("digits", "test")[0][0])


# --- Fashion-MNIST: Debian's files, torchvision's layout, files written here ----------------------------------------


def _write_idx(path, array, gz: bool):
    import gzip

    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("layout, gz", [("root", True), ("torchvision", False)])
def test_fashion_mnist_reads_idx_files_in_either_layout(tmp_path, monkeypatch, layout, gz):
    import numpy as np

    from methods.core import data

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    folder = tmp_path if layout == "root" else tmp_path / "FashionMNIST" / "raw"
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (5, 28, 28)), np.array([0, 9, 3, 3, 1])
    for prefix in ("train", "t10k"):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
    test = data.load("fashion_mnist", "test", tmp_path)
    assert len(test) == 5 and test[1][1] == 9
    assert torch.equal(test[0][0], torch.tensor(images[0], dtype=torch.float32).div(255).unsqueeze(0))


def test_fashion_mnist_missing_names_every_place_it_looked(tmp_path, monkeypatch):
    from methods.core import data

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    with pytest.raises(DatasetNotFound) as err:
        data.load("fashion_mnist", "train", tmp_path / "root")
    message = str(err.value)
    assert str(tmp_path / "root") in message and str(tmp_path / "debian") in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_fashion_mnist_truncated_file_is_a_clear_error(tmp_path, monkeypatch):
    import numpy as np

    from methods.core import data

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 28, 28)), gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4), gz=False)
    blob = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(blob[:-100])
    with pytest.raises(DatasetNotFound, match="truncated"):
        data.load("fashion_mnist", "test", tmp_path)


DEBIAN_MISSING = "Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)"


@pytest.mark.skipif(not __import__("pathlib").Path("/usr/share/datasets/fashion-mnist").is_dir(), reason=DEBIAN_MISSING)
def test_fashion_mnist_from_the_debian_package():
    """The real files: 60,000 + 10,000 images, ten balanced classes, the training split's mean and std."""
    from methods.core import data

    train, test = data.load("fashion_mnist", "train", "no-such-root"), data.load("fashion_mnist", "test", "x")
    assert (len(train), len(test)) == (60_000, 10_000)
    images, labels = train.tensors
    assert torch.bincount(labels).tolist() == [6000] * 10
    assert images.shape[1:] == (1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert (images.mean().item(), images.std().item()) == pytest.approx(
        (data.info("fashion_mnist").mean[0], data.info("fashion_mnist").std[0]), abs=1e-3
    )
