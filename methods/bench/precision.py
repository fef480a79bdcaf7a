"""What bf16 changes: the papers trained and certified in fp32; the fast paths offer bf16. Measured, not assumed.

    python -m methods bench --only precision [--device cpu|cuda]

Two questions, on the default config's Cohen and MACER digits runs (σ = 0.25; MACER multiplies its logits by β = 16
in its surrogate, where bf16's spacing of 0.0625 between 8 and 16 quantises β·Δlogit in steps of about 1):
- certification of the same weights (the fp32-trained model) in fp32 and in bf16 (certify.dtype): certified accuracy
  at the report's radii, ACR, and per-image agreement (same prediction; largest radius difference), on the config's
  test images with its n0, n and α;
- training in fp32 and in bf16 autocast (train.dtype on the fast path, everything else equal: same seed, batch order
  and noise), each model certified in fp32: clean accuracy, certified accuracy and ACR of the two.
On a CPU, bf16 autocast runs where the CPU computes bf16 (AVX512-BF16/AMX) or is emulated; the row says which device.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from .. import config as mc
from ..certify.sampling import bf16_supported
from ..certify.step import certify_run
from ..core.io import device_name
from ..core.tsv import read_tsv
from ..report.summary import average_certified_radius, certified_accuracy
from ..train.loop import train

RUNS = ("cohen-0.25", "macer-0.25")


def _spec(config: dict, run: str, train_dtype: str, certify_dtype: str) -> dict:
    spec = copy.deepcopy(mc.resolve_run(config, run, 0))
    spec["train"].update(fast=True, compile=False, dtype=train_dtype)
    spec["certify"].update(fast=True, compile=False, dtype=certify_dtype)
    return spec


def _metrics(frame, radii) -> dict:
    return {"clean_acc": float(frame["correct"].mean()), "acr": average_certified_radius(frame),
            **{f"acc@{r:g}": certified_accuracy(frame, r) for r in radii}}  # fmt: skip


def precision_rows(dev: torch.device, out_dir: Path, quick: bool = True) -> list[dict]:
    """One row per (run, comparison): the fp32 side, the bf16 side, their differences and per-image agreement."""
    config = mc.load()
    radii = config["report"]["radii"]
    native = bf16_supported(dev)
    rows = []
    for run in RUNS:
        models, frames = {}, {}
        for train_dtype in ("float32", "bfloat16"):
            spec = _spec(config, run, train_dtype, "float32")
            run_dir = out_dir / "precision" / f"{run}-train-{train_dtype}"
            models[train_dtype] = run_dir / "model.pt"
            if not models[train_dtype].exists():
                train(spec, run_dir, device=str(dev), progress=False)
        for train_dtype, certify_dtype in (("float32", "float32"), ("float32", "bfloat16"), ("bfloat16", "float32")):
            spec = _spec(config, run, train_dtype, certify_dtype)
            tsv = out_dir / "precision" / f"{run}-train-{train_dtype}-certify-{certify_dtype}.tsv"
            certify_run(models[train_dtype], spec, tsv, "cohen", device=str(dev), progress=False)
            frames[train_dtype, certify_dtype] = read_tsv(tsv)
        base = frames["float32", "float32"]
        for label, other in (("certify bf16 (same fp32 weights)", frames["float32", "bfloat16"]),
                             ("train bf16 (certified in fp32)", frames["bfloat16", "float32"])):  # fmt: skip
            ours, theirs = _metrics(base, radii), _metrics(other, radii)
            same = (base["predict"].to_numpy() == other["predict"].to_numpy()).mean()
            gap = np.abs(base["radius"].to_numpy() - other["radius"].to_numpy())
            rows.append({"workload": f"precision:digits:{run}", "model": f"{run} digits, {len(base)} images, "
                         f"n={config['certify']['n']}", "path": label, "device": dev.type,
                         "device_name": device_name(dev), "dtype": "bfloat16", "native_bf16": native,
                         "prediction_agreement": float(same), "max_radius_gap": float(gap.max()),
                         "mean_radius_gap": float(gap.mean()),
                         **{f"fp32 {k}": v for k, v in ours.items()},
                         **{f"bf16 {k}": v for k, v in theirs.items()},
                         **{f"diff {k}": theirs[k] - ours[k] for k in ours}})  # fmt: skip
            print(
                f"  precision {run:<12} {label:<34} agreement {same:.3f}  ACR {ours['acr']:.4f} -> "
                f"{theirs['acr']:.4f}  clean {ours['clean_acc']:.3f} -> {theirs['clean_acc']:.3f}",
                flush=True,
            )
    return rows
