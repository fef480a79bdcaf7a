"""Training cost per method, measured side by side: seconds per optimizer batch and the sec/epoch they imply.

    python -m methods bench-train --configfile config/cifar10.yaml --dataset synthetic-cifar10 \\
        --run cohen-0.25 --run salman-pgd10-m8-eps1.00-0.25 --run macer-0.25 --run feng-0.25 --steps 5

Each run's own train_step (attack, k noisy copies, mini-batches) is timed on random batches of the run's batch size
after `warmup` untimed steps, one step at a time with the device synchronised around it; sec/batch is the median
over the timed steps (robust to a shared machine's busy moments). sec/epoch = sec/batch ×
batches per epoch of the real dataset (50,000 CIFAR-10 images, 1,281,167 ImageNet). The first run is the baseline
of the ratio column, measured in the same process, so the ratios hold on a shared, noisy machine.

`compare_paths` times each run's step twice in one process: on the reference path (plain fp32 eager, torch's default
optimizer, NCHW) and on the fast path (methods/train/fast.py: bf16 autocast on CUDA, channels_last, torch.compile,
fused optimizer), on the same random batch. Only the step is timed on both paths, not the data loading: the fast
path's on-device crop/flip is not in its number, nor the reference path's DataLoader in its own.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from ..core import data
from ..core.io import device_name, select_device, synchronize
from ..train import fast as fast_train
from ..train.build import build_training

#: Training-set sizes the sec/epoch extrapolation uses (synthetic datasets stand for the real ones).
TRAIN_SIZES = {
    "digits": 1297,
    "mnist": 60_000,
    "fashion_mnist": 60_000,
    "cifar10": 50_000,
    "imagenet": 1_281_167,
    "synthetic-cifar10": 50_000,
    "synthetic-imagenet": 1_281_167,
}


def _path_spec(spec: dict, fast: bool, compile: bool | None = None) -> dict:
    """`spec` with train.fast set (and train.compile where given): the two paths of one run."""
    train = {**spec["train"], "fast": fast}
    if not fast:
        train["compile"] = None
    elif compile is not None:
        train["compile"] = compile
    return {**spec, "train": train}


#: Untimed steps a compiled path always gets: the compilation, and the recompile for a dynamic batch size (the
#: remainder mini-batch of SmoothAdv's m-noise split).
COMPILED_WARMUP = 2


class _Timed:
    """One path of one run on one random [0, 1] batch shaped like `dataset` (drawn from seed 0 before the model, so
    both paths see the same batch and the same initial weights): built, warmed up, then timed a step at a time.

    peak_mem_mb: on CUDA, the most memory the path itself held during its build and untimed steps (CUDA's
    max_memory_allocated minus what was allocated before: another path alive beside it is not counted); the CPU
    always runs the untimed steps it is given, a GPU at least one, so that the peak includes a step."""

    def __init__(self, spec: dict, dataset: str, warmup: int, dev: torch.device):
        info = data.info(dataset)
        batch = spec["train"]["batch_size"]
        self.dev, self.fast = dev, spec["train"].get("fast", False)
        torch.manual_seed(0)
        x = torch.rand(batch, *info.shape, device=dev)
        self.y = torch.randint(0, info.num_classes, (batch,), device=dev)
        if dev.type == "cuda":
            synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev)
        with fast_train.backend_flags(self.fast, dev):
            if self.fast:
                torch._dynamo.reset()  # a fresh compile cache, not at another model's recompile limit
            self.t = build_training(spec, dev, dataset)
            self.t.step_model.train()
            self.x = fast_train.prepare_input(x, self.t.path)
            del x
            warmup = max(warmup, COMPILED_WARMUP if self.t.path.compile else 0, 1 if dev.type == "cuda" else 0)
            synchronize(dev)
            t0 = time.perf_counter()
            for _ in range(warmup):
                self._step()
            synchronize(dev)
            self.warmup_sec = time.perf_counter() - t0
        self.peak_mem_mb = (torch.cuda.max_memory_allocated(dev) - before) / 2**20 if dev.type == "cuda" else None

    def _step(self):
        t = self.t
        t.step(t.step_model, t.optimizer, self.x, self.y, t.hp, 10**6)  # epoch: past any warm-up, full attack ε

    def time_step(self) -> float:
        """Seconds of one step, the device synchronised before and after."""
        with fast_train.backend_flags(self.fast, self.dev):
            synchronize(self.dev)
            t0 = time.perf_counter()
            self._step()
            synchronize(self.dev)
            return time.perf_counter() - t0


def _release(dev: torch.device) -> None:
    import gc

    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def time_train_steps(spec: dict, dataset: str, steps: int, warmup: int, device: str) -> dict:
    """sec/batch (the median over `steps` timed steps) of `spec`'s training step, on the path its train.fast names,
    on random [0, 1] batches shaped like `dataset`."""
    dev = select_device(device)
    batch = spec["train"]["batch_size"]
    timed = _Timed(spec, dataset, warmup, dev)
    sec_per_batch = statistics.median(timed.time_step() for _ in range(steps))
    del timed
    _release(dev)
    batches = math.ceil(TRAIN_SIZES[dataset] / batch)
    return {
        "run": spec["run"],
        "method": spec["method"],
        "batch_size": batch,
        "sec_per_batch": sec_per_batch,
        "images_per_sec": batch / sec_per_batch,
        "sec_per_epoch": sec_per_batch * batches,
        "device": device_name(dev),
    }


def bench(specs: list[dict], dataset: str, steps: int = 3, warmup: int = 1, device: str = "auto") -> list[dict]:
    rows = [time_train_steps(spec, dataset, steps, warmup, device) for spec in specs]
    for row in rows:
        row["ratio_to_first"] = row["sec_per_batch"] / rows[0]["sec_per_batch"]
    return rows


def format_rows(rows: list[dict]) -> str:
    header = f"{'run':<34} {'method':<7} {'batch':>5} {'s/batch':>9} {'img/s':>9} {'s/epoch':>10} {'×first':>7}"
    lines = [header, "-" * len(header)]
    lines += [
        f"{r['run']:<34} {r['method']:<7} {r['batch_size']:>5} {r['sec_per_batch']:>9.4f} "
        f"{r['images_per_sec']:>9.1f} {r['sec_per_epoch']:>10.1f} {r['ratio_to_first']:>7.2f}"
        for r in rows
    ]
    return "\n".join(lines + [f"device: {rows[0]['device']}"])


#: The keys of compare_paths' rows, in order.
COMPARE_COLUMNS = (
    "workload",
    "run",
    "method",
    "path",
    "device",
    "dtype",
    "compiled",
    "batch",
    "items_per_sec",
    "sec_per_batch",
    "sec_per_epoch",
    "speedup",
    "peak_mem_mb",
)


def compare_paths(
    specs: list[dict], dataset: str, steps: int = 3, warmup: int = 1, device: str = "auto", compile: bool | None = None
) -> list[dict]:
    """Each spec's training step on the reference path and on the fast path, side by side in this process, on
    random batches of `dataset`'s shape and the spec's batch size: two rows per spec (reference first), with
    COMPARE_COLUMNS. Both paths are built and warmed up (`warmup` untimed steps each; a compiled path at least
    COMPILED_WARMUP, so that the timed steps run compiled code), then their `steps` timed steps alternate;
    sec_per_batch is the median. speedup = the reference row's sec/batch over this row's (1.0 on the reference
    row); sec_per_epoch = sec/batch × batches in an epoch of the real dataset; items_per_sec counts training images
    (not noisy copies); peak_mem_mb is what the path held at most on CUDA (see _Timed), None on the CPU.
    `compile` overrides the specs' train.compile for the fast path (None: theirs, whose null means on CUDA only)."""
    dev = select_device(device)
    name = device_name(dev)
    rows = []
    for spec in specs:
        batch = spec["train"]["batch_size"]
        batches = math.ceil(TRAIN_SIZES[dataset] / batch)
        paths = [
            _Timed(_path_spec(spec, False), dataset, warmup, dev),
            _Timed(_path_spec(spec, True, compile), dataset, warmup, dev),
        ]
        seconds: list[list[float]] = [[], []]
        for _ in range(steps):  # alternating, so that a busy moment of a shared machine hits both paths alike
            for timed, times in zip(paths, seconds):
                times.append(timed.time_step())
        reference = statistics.median(seconds[0])
        for timed, times in zip(paths, seconds):
            path, sec = timed.t.path, statistics.median(times)
            rows.append(
                {
                    "workload": f"train:{dataset}:{spec['method']}",
                    "run": spec["run"],
                    "method": spec["method"],
                    "path": path.name,
                    "device": name,
                    "dtype": path.dtype,
                    "compiled": path.compile,
                    "batch": batch,
                    "items_per_sec": batch / sec,
                    "sec_per_batch": sec,
                    "sec_per_epoch": sec * batches,
                    "speedup": reference / sec,
                    "peak_mem_mb": timed.peak_mem_mb,
                }
            )
        del paths
        _release(dev)
    return rows


def format_comparison(rows: list[dict]) -> str:
    header = (
        f"{'run':<34} {'path':<9} {'dtype':<8} {'compiled':>8} {'batch':>5} {'s/batch':>9} {'img/s':>9} "
        f"{'s/epoch':>10} {'speedup':>7} {'peak MB':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        peak = "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"
        lines.append(
            f"{r['run']:<34} {r['path']:<9} {r['dtype']:<8} {str(r['compiled']):>8} {r['batch']:>5} "
            f"{r['sec_per_batch']:>9.4f} {r['items_per_sec']:>9.1f} {r['sec_per_epoch']:>10.1f} "
            f"{r['speedup']:>7.2f} {peak:>8}"
        )
    return "\n".join(lines + [f"device: {rows[0]['device']}" if rows else "no runs"])
