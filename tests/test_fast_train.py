"""The training fast path (train.fast): device-resident data with on-device crop/flip, the fast step against the
reference step, learning and exact mid-epoch resume on the fast path, its config keys, and compare_paths."""

from __future__ import annotations

import json
import math
import os
import signal
import struct
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config
from torch.utils.data import DataLoader, RandomSampler

from methods import config as mc
from methods.core import data
from methods.train import device_data, distributed
from methods.train import fast as fast_train
from methods.train.build import build_training
from methods.train.device_data import DeviceTrainSet, crop_and_flip
from methods.train.loop import STATE_FILE, train


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# ---------------------------------------------------------------------------------------------------------------
# on-device crop and flip


def _candidates(image: torch.Tensor, padding: int, mode: str, flip: bool) -> dict[bytes, tuple]:
    """Every image torchvision's pad + crop (+ hflip) can make of `image`: {bytes: (top, left, flipped)}."""
    from torchvision.transforms.v2 import functional as TF

    size = image.shape[-1]
    padded = TF.pad(image, [padding], fill=0, padding_mode=mode)
    out = {}
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = TF.crop(padded, top, left, size, size)
            for flipped in (False, True) if flip else (False,):
                view = TF.horizontal_flip(crop) if flipped else crop
                out[view.contiguous().numpy().tobytes()] = (top, left, flipped)
    return out


@pytest.mark.parametrize("mode", ["constant", "edge"])
def test_crop_and_flip_draws_exactly_torchvisions_crops_and_flips_each_uniformly(mode):
    torch.manual_seed(0)
    padding, size = 2, 5
    image = torch.arange(1, 2 * size * size + 1, dtype=torch.float32).view(2, size, size)  # no 0, no symmetry
    candidates = _candidates(image, padding, mode, flip=True)
    assert len(candidates) == (2 * padding + 1) ** 2 * 2  # all distinct, so each output names its (top, left, flip)
    # the reference transform (data.crop_and_flip: torchvision's RandomCrop + flip) lands in the same set
    reference = data.crop_and_flip(size, crop_padding=padding, padding_mode=mode, flip=True)
    assert all(reference(image).contiguous().numpy().tobytes() in candidates for _ in range(200))

    n = 5000
    out = crop_and_flip(image.expand(n, -1, -1, -1), crop_padding=padding, padding_mode=mode, flip=True)
    assert out.shape == (n, 2, size, size)
    hits = Counter(candidates.get(o.contiguous().numpy().tobytes(), "none") for o in out)
    assert "none" not in hits  # every output is a crop of the padded image, flipped or not: right padding values
    assert len(hits) == len(candidates)  # every offset and both flips reached
    expected = n / len(candidates)
    assert all(0.5 * expected < count < 1.6 * expected for count in hits.values()), hits
    assert abs(sum(c for (t, l, f), c in hits.items() if f) / n - 0.5) < 0.05


def test_crop_and_flip_pads_with_zeros_or_the_edge_and_flips_per_image():
    image = torch.full((1, 1, 4, 4), 7.0)
    torch.manual_seed(1)
    zeros = crop_and_flip(image.expand(400, -1, -1, -1), crop_padding=1, padding_mode="constant")
    edge = crop_and_flip(image.expand(400, -1, -1, -1), crop_padding=1, padding_mode="edge")
    assert set(zeros.unique().tolist()) == {0.0, 7.0} and set(edge.unique().tolist()) == {7.0}
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(300, 1, 2, 8)
    flipped = crop_and_flip(ramp, flip=True)
    is_flip = (flipped == ramp.flip(-1)).flatten(1).all(1)
    assert ((flipped == ramp).flatten(1).all(1) | is_flip).all()  # each image whole: flipped or not, never mixed
    assert 0.4 < is_flip.float().mean() < 0.6
    same = crop_and_flip(ramp)  # nothing configured: a copy
    assert torch.equal(same, ramp) and same.data_ptr() != ramp.data_ptr()


def test_augmentation_mirrors_what_data_load_applies():
    assert device_data.augmentation("cifar10", True) == {"crop_padding": 4, "padding_mode": "constant", "flip": True}
    for name in ("digits", "mnist", "synthetic-cifar10"):  # `true` is no augmentation there (data.load)
        assert device_data.augmentation(name, True) is None
    for name in ("digits", "synthetic-cifar10"):
        assert not isinstance(data.load(name, "train", augment=True), data._Augmented)
        assert isinstance(data.load(name, "train", augment={"crop_padding": 1}), data._Augmented)
    assert device_data.augmentation("cifar10", False) is None
    custom = {"crop_padding": 3, "padding_mode": "edge", "flip": True}
    assert device_data.augmentation("cifar10", custom) == custom
    assert device_data.augmentation("mnist", {"crop_padding": 1, "padding_mode": "edge", "flip": False}) == {
        "crop_padding": 1,
        "padding_mode": "edge",
        "flip": False,
    }
    assert device_data.augmentation("digits", {"crop_padding": 0, "padding_mode": "constant", "flip": False}) is None


# ---------------------------------------------------------------------------------------------------------------
# the resident training set: the same images, in the same batches, as the DataLoader path


def _write_idx(path, array: np.ndarray, kind: int):
    with open(path, "wb") as fh:
        fh.write(struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape))
        fh.write(array.astype(np.uint8).tobytes())


def test_resident_images_are_the_dataloader_paths_images(tmp_path):
    digits = DeviceTrainSet.load("digits")
    reference = data.load("digits", "train")
    assert len(digits) == len(reference) == 1297
    assert torch.equal(digits.images, torch.stack([reference[i][0] for i in range(len(reference))]))
    assert torch.equal(digits.labels, torch.tensor([int(reference[i][1]) for i in range(len(reference))]))
    synthetic = DeviceTrainSet.load("synthetic-cifar10")
    lazy = data.load("synthetic-cifar10", "train")
    for i in (0, 1, 4999):
        assert torch.equal(synthetic.images[i], lazy[i][0]) and int(synthetic.labels[i]) == lazy[i][1]

    raw = tmp_path / "MNIST" / "raw"  # a 12-image MNIST in torchvision's raw IDX layout
    raw.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.randint(0, 256, (12, 28, 28)), 3)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.randint(0, 10, (12,)), 1)
    mnist = DeviceTrainSet.load("mnist", tmp_path)
    reference = data.load("mnist", "train", tmp_path)
    assert torch.equal(mnist.images, torch.stack([reference[i][0] for i in range(12)]))  # ToTensor's values
    assert mnist.labels.tolist() == [int(reference[i][1]) for i in range(12)]
    with pytest.raises(ValueError, match="not a device-resident dataset"):
        DeviceTrainSet.load("imagenet")


def test_index_batches_are_the_dataloaders_batches_also_per_rank():
    resident = DeviceTrainSet.load("digits")
    images = data.load("digits", "train")
    reference = DataLoader(images, batch_size=100, shuffle=True, generator=torch.Generator().manual_seed(7))
    loader, sizes = resident.index_loader(100, torch.Generator().manual_seed(7))
    assert sizes is None and len(loader) == len(reference) == 13
    for (x, y), index in zip(reference, loader):
        rx, ry = resident.batch(index)
        assert torch.equal(rx, x) and torch.equal(ry, y)
    for rank in range(2):  # under DDP: the same slices of the same global batches as train.py's sharded loader
        ctx = distributed.Context(rank, 2)
        order = torch.Generator().manual_seed(3)
        sharded = distributed.ShardedBatches(RandomSampler(images, generator=order), 100, ctx)
        expected = DataLoader(images, batch_sampler=sharded, generator=order)
        loader, sizes = resident.index_loader(100, torch.Generator().manual_seed(3), ctx)
        assert sizes == sharded.global_sizes()
        got = [resident.batch(index) for index in loader]
        assert len(got) == len(expected)
        for (x, y), (rx, ry) in zip(expected, got):
            assert torch.equal(rx, x) and torch.equal(ry, y)


# ---------------------------------------------------------------------------------------------------------------
# the fast step against the reference step


def _digits_runs() -> dict:
    return {
        "cohen": {"method": "cohen", "hparams": {"sigma": 0.25}},
        "salman-pgd": {"method": "salman", "hparams": {"sigma": 0.25, "steps": 2, "num_noise": 2, "epsilon": 0.5}},
        "salman-ddn": {
            "method": "salman",
            "hparams": {"sigma": 0.25, "attack": "ddn", "steps": 2, "num_noise": 1, "epsilon": 0.5},
        },
        "macer": {"method": "macer", "hparams": {"sigma": 0.25, "k": 4}},
        "feng-adv": {"method": "feng", "hparams": {"sigma": 0.25, "k": 2, "adversarial": True, "steps": 2}},
        "bs": {"method": "backward_smoothing", "hparams": {"epsilon": 0.1, "step_size": 0.1}},
        "linf": {
            "method": "linf_dist",
            "hparams": {"depth": 3, "width": 32, "scalar_std": 0.3765, "p_start": 1, "p_end": 2, "epochs": 3},
        },
    }


def _spec(run: str, **train) -> dict:
    raw = tiny_config(batch_size=32, **train)
    raw["runs"] = _digits_runs()
    return mc.resolve_run(mc.validate(raw), run, 0)


def _one_step(spec: dict, x, y):
    torch.manual_seed(0)
    t = build_training(spec, torch.device("cpu"))
    t.step_model.train()
    torch.manual_seed(123)  # the step's draws (noise, attack directions, ξ)
    result = t.step(t.step_model, t.optimizer, fast_train.prepare_input(x, t.path), y, t.hp, 2.5)
    return (
        t,
        float(result.loss.detach()),
        int(result.correct),
        {k: v.detach().clone() for k, v in t.model.state_dict().items()},
    )


@pytest.mark.parametrize("run", list(_digits_runs()))
def test_the_fp32_fast_step_computes_the_reference_steps_loss(run):
    """On the CPU the fast path is fp32 (no autocast) and, with compile off, differs from the reference only in
    layout (channels_last: oneDNN sums a convolution in another order, ~1e-7 relative) and in the fused optimizer
    (the same update, other rounding): the same loss and, after the step, the same weights up to float rounding."""
    torch.manual_seed(5)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    reference, ref_loss, ref_correct, ref_weights = _one_step(_spec(run), x, y)
    fast, fast_loss, fast_correct, fast_weights = _one_step(_spec(run, fast=True, compile=False), x, y)
    assert reference.path is fast_train.REFERENCE and reference.optimizer_impl == "default"
    assert fast.path.fast and fast.path.dtype == "float32" and not fast.path.compile
    assert fast.optimizer_impl == "fused"
    assert fast.path.channels_last == (run != "linf")  # the l-inf-dist net is an MLP
    assert fast_loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    assert abs(fast_correct - ref_correct) <= 1  # an argmax tie broken by rounding, at most
    for key, value in ref_weights.items():
        torch.testing.assert_close(fast_weights[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert fast_weights.keys() == ref_weights.keys()  # checkpoint keys unchanged


def test_a_compiled_fast_step_runs_the_attack_through_the_compiled_model(monkeypatch):
    """torch.compile wiring (train/eval switches, frozen parameters, the remainder mini-batch's shape), with the
    aot_eager backend so that no C++ is built: the loss stays the reference's up to rounding."""
    torch._dynamo.reset()
    monkeypatch.setattr(fast_train, "COMPILE_BACKEND", "aot_eager")
    torch.manual_seed(5)
    x, y = torch.rand(33, 1, 8, 8), torch.randint(0, 10, (33,))  # 33 = 16 + 16 + 1 with m = 2
    _, ref_loss, _, _ = _one_step(_spec("salman-pgd"), x, y)
    fast, fast_loss, _, _ = _one_step(_spec("salman-pgd", fast=True, compile=True), x, y)
    assert fast.path.compile and isinstance(fast.step_model, fast_train.CompiledWithFallback)
    assert fast.step_model.compiled and fast.step_model.fallback is None  # compiled code ran: no fallback
    assert fast_loss == pytest.approx(ref_loss, rel=1e-4)
    torch._dynamo.reset()


def test_every_smoothing_method_draws_its_noise_on_the_inputs_device():
    from methods.registry import get_method

    x = torch.empty(4, 3, 32, 32, device="meta")  # a draw on any other device would not be on "meta"
    for run, entry in _digits_runs().items():
        method = get_method(entry["method"])
        draw = method.draw(x, method.Hparams(**entry["hparams"]))
        if entry["method"] == "backward_smoothing":  # a 0-dim seed; ξ is expanded from it on the CPU by design
            assert draw.dim() == 0 and draw.dtype == torch.int64
        elif entry["method"] == "linf_dist":
            assert draw is None
        else:
            assert draw.device.type == "meta", run


def test_plan_follows_method_model_dataset_and_device():
    cpu = torch.device("cpu")
    cohen = _spec("cohen", fast=True)
    model = build_training(cohen, cpu).model
    path = fast_train.plan(cohen, model, cpu)
    assert path.fast and path.channels_last and path.autocast_dtype is None and not path.compile  # CPU: compile off
    assert path.device_data
    assert fast_train.plan(_spec("cohen", fast=True, compile=True), model, cpu).compile
    assert not fast_train.plan(cohen, model, cpu, dataset="imagenet").device_data
    linf = _spec("linf", fast=True, compile=True)
    linf_path = fast_train.plan(linf, build_training(linf, cpu).model, cpu)
    assert not linf_path.compile and not linf_path.channels_last and any("p changes" in n for n in linf_path.notes)
    assert fast_train.plan(_spec("cohen"), model, cpu) is fast_train.REFERENCE


# ---------------------------------------------------------------------------------------------------------------
# training on the fast path


def test_fast_path_training_learns_digits_and_records_its_path(tmp_path):
    spec = mc.resolve_run(
        tiny_config(
            epochs=6,
            batch_size=32,
            schedule="constant",
            eval_each_epoch=True,
            fast=True,
            augment={"crop_padding": 1, "padding_mode": "edge"},
        ),
        "cohen-0.25",
        0,
    )
    train(spec, tmp_path, device="cpu", progress=False)
    log = pd.read_csv(tmp_path / "train_log.tsv", sep="\t")
    assert log["test_accuracy"].iloc[-1] > 0.6  # chance is 0.1
    assert (log["path"] == "fast").all() and (log["dtype"] == "float32").all() and not log["compiled"].any()
    record = json.loads((tmp_path / "run.json").read_text())["train_path"]
    assert record["path"] == "fast" and record["device_data"] and record["channels_last"]
    assert record["optimizer"] == "fused"


def _resume_spec():
    return mc.resolve_run(
        tiny_config(
            epochs=2,
            batch_size=64,
            lr=0.05,
            schedule="constant",
            fast=True,
            checkpoint_every_steps=4,
            augment={"crop_padding": 2, "padding_mode": "constant", "flip": True},
        ),
        "cohen-0.25",
        seed=1,
    )


@pytest.fixture(scope="module")
def uninterrupted_fast_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fast-clean")
    train(_resume_spec(), out, device="cpu", progress=False)
    return out


class Killed(Exception):
    pass


@pytest.mark.parametrize("how", ["SIGUSR1", "kill"])
def test_a_fast_run_stopped_mid_epoch_resumes_to_the_same_weights(tmp_path, monkeypatch, how, uninterrupted_fast_run):
    """Stopped in the 2nd epoch, in its 9th batch (the 30th overall): by SIGUSR1, which saves the state after that
    batch, or by a crash, which leaves the last periodic state (after its 8th batch). The rerun replays the epoch's
    index order up to there, restores the RNG of the on-device crop/flip and the noise, and ends bit-identical to an
    uninterrupted run."""
    from methods import cohen

    real, calls = cohen.objective, []

    def objective(*args):
        calls.append(1)
        if len(calls) == 30:
            if how == "kill":
                raise Killed
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(*args)

    monkeypatch.setattr(cohen, "objective", objective)
    stopped = tmp_path / "stopped"
    with pytest.raises(SystemExit if how == "SIGUSR1" else Killed) as info:
        train(_resume_spec(), stopped, device="cpu", progress=False)
    if how == "SIGUSR1":
        assert info.value.code == 128 + signal.SIGUSR1
    state = torch.load(stopped / STATE_FILE, weights_only=True)
    assert state["partial"]["epoch"] == 1
    assert state["partial"]["batches_done"] == (9 if how == "SIGUSR1" else 8)  # 21 batches in an epoch
    monkeypatch.setattr(cohen, "objective", real)
    train(_resume_spec(), stopped, device="cpu", progress=False)
    clean, resumed = _weights(uninterrupted_fast_run / "model.pt"), _weights(stopped / "model.pt")
    assert clean.keys() == resumed.keys()
    for key in clean:
        assert torch.equal(clean[key], resumed[key]), key
    a = pd.read_csv(uninterrupted_fast_run / "train_log.tsv", sep="\t")
    b = pd.read_csv(stopped / "train_log.tsv", sep="\t")
    pd.testing.assert_series_equal(a["loss"], b["loss"], check_exact=True)
    pd.testing.assert_series_equal(a["accuracy"], b["accuracy"], check_exact=True)


def test_the_fast_path_is_part_of_the_spec():
    from methods.train.loop import training_fingerprint

    assert training_fingerprint(_spec("cohen")) != training_fingerprint(_spec("cohen", fast=True))


# ---------------------------------------------------------------------------------------------------------------
# config keys


def test_schema_accepts_and_refuses_the_fast_path_keys(tmp_path):
    defaults = tiny_config()["train"]
    assert defaults["fast"] is False and defaults["compile"] is None
    for train_cfg in (
        {"fast": True},
        {"fast": True, "compile": False},
        {"fast": True, "compile": True},
        {"fast": False, "compile": None},
    ):
        assert {k: tiny_config(**train_cfg)["train"][k] for k in train_cfg} == train_cfg
    for bad, field in (
        ({"fast": "yes"}, "train.fast"),
        ({"fast": 1}, "train.fast"),
        ({"compile": "max-autotune"}, "train.compile"),
        ({"fastt": True}, "train"),
    ):
        with pytest.raises(mc.ConfigError, match=f"config error at {field}"):
            tiny_config(**bad)
    with pytest.raises(mc.ConfigError, match=r"runs\.cohen-0\.25\.train\.compile: compile: true needs fast: true"):
        mc.resolve_run(tiny_config(compile=True), "cohen-0.25", 0)  # compile without the fast path: refused up front
    for name in ("cifar10", "imagenet", "mnist"):  # the GPU configs train on the fast path, the smoke config not
        assert mc.yaml.safe_load((mc.REPO_ROOT / "config" / f"{name}.yaml").read_text())["train"]["fast"] is True
    assert "fast" not in mc.yaml.safe_load(mc.DEFAULT_CONFIG.read_text())["train"]


# ---------------------------------------------------------------------------------------------------------------
# the benchmark


def test_compare_paths_times_both_paths_of_each_run_side_by_side():
    from methods.bench.train_cost import COMPARE_COLUMNS, TRAIN_SIZES, compare_paths, format_comparison

    specs = [_spec("cohen"), _spec("salman-pgd")]
    specs[1]["train"]["batch_size"] = 8
    for spec in specs:
        spec["model"]["arch"] = "small_cnn"  # any input size; the paper's ResNets would only make this slower
    rows = compare_paths(specs, "synthetic-cifar10", steps=1, warmup=0, device="cpu")
    assert [(r["run"], r["path"]) for r in rows] == [
        ("cohen", "reference"),
        ("cohen", "fast"),
        ("salman-pgd", "reference"),
        ("salman-pgd", "fast"),
    ]
    for row in rows:
        assert tuple(row) == COMPARE_COLUMNS
        assert row["workload"] == f"train:synthetic-cifar10:{row['method']}"
        assert row["device"].startswith("cpu") and row["dtype"] == "float32" and row["peak_mem_mb"] is None
        assert row["sec_per_batch"] > 0 and row["items_per_sec"] == pytest.approx(row["batch"] / row["sec_per_batch"])
        assert row["sec_per_epoch"] == pytest.approx(
            row["sec_per_batch"] * math.ceil(TRAIN_SIZES["synthetic-cifar10"] / row["batch"])
        )
    for ref, fast in (rows[0:2], rows[2:4]):
        assert ref["speedup"] == 1.0 and not ref["compiled"]
        assert fast["speedup"] == pytest.approx(ref["sec_per_batch"] / fast["sec_per_batch"])
    assert rows[2]["batch"] == 8 and "salman-pgd" in format_comparison(rows)


def test_the_fast_path_is_fp32_unless_bf16_is_asked_for():
    """Precision is the papers' fp32 by default on the fast path too; bf16 autocast is a labelled option (and needs the
    fast path), TF32 is off unless asked for."""
    cpu = torch.device("cpu")
    model = build_training(_spec("cohen"), cpu).model
    assert fast_train.plan(_spec("cohen", fast=True), model, cpu).autocast_dtype is None
    bf16 = fast_train.plan(_spec("cohen", fast=True, dtype="bfloat16"), model, cpu)
    assert bf16.autocast_dtype == torch.bfloat16 and bf16.record()["dtype"] == "bfloat16" and bf16.record()["autocast"]
    with pytest.raises(mc.ConfigError, match="train.dtype: dtype: bfloat16 needs fast: true"):
        _spec("cohen", dtype="bfloat16")
    assert _spec("cohen")["train"]["tf32"] is False and _spec("cohen")["certify"]["dtype"] == "float32"
