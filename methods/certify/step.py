"""The certify step: run a registered certifier over a run's test subset and write the per-example TSV.

The certifier comes from methods/certify/registry.py: a smoothing certifier's sampling plans are driven by the fast
or the plain sampler, an ℓ∞ evaluator takes a batch at a time; the step owns everything else. The TSV has the
format of methods/core/tsv.py; a sidecar ``<name>.json`` records the certifier's settings, the subset, the path's
settings and provenance.

Noise is seeded per example from (run seed, dataset index), so a certificate does not depend on which shard or
which resumed process computed it. Rows are appended to ``<name>.tsv.partial`` as they finish (not a declared
Snakemake output, so a kill keeps them) and the finished file is renamed into place. The partial file starts with a
fingerprint of the settings and the model file, so rows from other settings are never resumed.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint import load_checkpoint
from ..core import data
from ..core.errors import InputError
from ..core.io import (
    RunLock,
    allow_tf32,
    atomic_write_text,
    provenance,
    select_device,
    sha256_file,
    spec_json,
    synchronize,
    write_json,
)
from ..core.tsv import format_row, parse_rows, read_rows, tsv_text
from .registry import CERTIFIERS, BatchEvaluator, SmoothingCertifier, certifier_spec, check_serves
from .sampling import FastSampler, FastSettings, resolve_dtype, run_plain


def subset_indices(dataset_size: int, start: int, skip: int, count: int | None) -> list[int]:
    """Dataset indices start, start + skip, ... (at most `count` of them): the papers' test subsets.

    Cohen's CIFAR-10 files: start 0, skip 20, count 500; MACER: start 500, skip 1, count 500.
    """
    if start >= dataset_size:
        raise ValueError(f"certify.start = {start} is past the end of the test set ({dataset_size} images)")
    indices = list(range(start, dataset_size, skip))
    return indices if count is None else indices[:count]


def shard_of(indices: list[int], shard: int, shards: int) -> list[int]:
    """Shard `shard` of `shards` (0-based): every shards-th index, so shards stay balanced in cost."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in [0, {shards}), got {shard}")
    return indices[shard::shards]


def example_generator(seed: int, idx: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 2**32 + idx)


def _fingerprint(model_sha256: str, spec: dict, certifier: str, shard: int, shards: int) -> str:
    """What the rows of a partial file depend on: a partial file from other settings or another model is stale."""
    return hashlib.sha256(
        spec_json(
            {
                "certify": spec["certify"],
                "certifier": certifier,
                "seed": spec["seed"],
                "shard": [shard, shards],
                "model": model_sha256,
            }
        ).encode()
    ).hexdigest()


def _resumable_rows(partial: Path, fingerprint: str) -> dict[int, dict]:
    if not partial.exists():
        return {}
    lines = partial.read_text().splitlines()
    if not lines or lines[0] != f"# fingerprint {fingerprint}":
        print(f"ignoring {partial}: it was written for other settings or another model", flush=True)
        return {}
    return {int(r["idx"]): r for r in parse_rows(lines)}


def smoothing_sampler(model, num_classes: int, sample_shape, cfg: dict, dev: torch.device):
    """The driver of the smoothing plans: the fast path (default) or the plain one (`certify.fast: false`).
    Returns (run(items) -> iterator of (key, Outcome), describe() -> what the sidecar records of the path)."""
    if not cfg["fast"]:

        def run(items):
            return run_plain(model, num_classes, cfg["sigma"], cfg["batch_size"], items)

        plain = {"path": "plain", "dtype": "float32", "channels_last": False, "compile": False}
        plain.update(compile_requested=False, compiled=False, cuda_graphs=False, fallback=None)
        return run, lambda: dict(plain)
    settings = FastSettings(
        dtype=resolve_dtype(cfg["dtype"], dev), channels_last=True, compile=cfg["compile"], max_batch=cfg["max_batch"]
    )
    sampler = FastSampler(model, num_classes, cfg["sigma"], cfg["batch_size"], sample_shape, dev, settings)
    return sampler.run, sampler.describe


def seeded(evaluate, seed: int):
    """A batch evaluator whose global-RNG draws (AutoAttack's) are seeded per batch from (seed, first index), with
    plain Python results."""

    def run(xs, ys, idxs):
        torch.manual_seed(seed * 2**32 + idxs[0])
        predictions, radius = evaluate(xs, ys, idxs)
        return list(zip(predictions.tolist(), radius.tolist()))

    return run


def certify_run(
    checkpoint: str | Path,
    spec: dict,
    out: str | Path,
    certifier: str = "cohen",
    device: str = "auto",
    shard: int = 0,
    shards: int = 1,
    progress: bool = True,
) -> Path:
    """Evaluate the run's test subset (or one shard of it) with `certifier`; write `out` (TSV) and its sidecar JSON.

    Smoothing certifiers run as sampling plans on the fast path (many images per forward pass; an example's `time`
    is its share of the passes it took part in) or the plain one (one image at a time); ℓ∞ evaluators take a batch
    of `certify.batch_size` examples at a time, each example's `time` being its share of the batch. One process at a
    time per output (a second one stops with a message instead of interleaving rows in the partial file); the model
    file must be the run's (method, dataset, hyper-parameters, run name: a copied or swapped file is refused).
    """
    with RunLock(Path(out), f"certification {out}"):
        return _certify(checkpoint, spec, Path(out), certifier, device, shard, shards, progress)


def check_model_belongs(info: dict, spec: dict, checkpoint) -> None:
    """The model file was trained for this run: same method, dataset, hyper-parameters (σ among them) and run name."""
    for key in ("method", "dataset", "run"):
        if key in info and info[key] != spec[key]:
            raise InputError(f"{checkpoint} was trained for {key} {info[key]!r}, not this run's {spec[key]!r}: "
                             f"certify the run's own model file")  # fmt: skip
    differing = sorted(k for k in set(info["hparams"]) | set(spec["hparams"])
                       if info["hparams"].get(k) != spec["hparams"].get(k))  # fmt: skip
    if differing:
        shown = ", ".join(f"{k} {info['hparams'].get(k)!r} vs {spec['hparams'].get(k)!r}" for k in differing[:3])
        raise InputError(f"{checkpoint} was trained with other hyper-parameters than run {spec['run']!r} ({shown}): "
                         f"certify the run's own model file")  # fmt: skip


def _certify(checkpoint, spec: dict, out: Path, certifier: str, device: str, shard: int, shards: int,
             progress: bool) -> Path:  # fmt: skip
    spec = certifier_spec(spec, certifier)  # also refuses an unknown certifier
    entry = CERTIFIERS[certifier]
    dev = select_device(device if device != "auto" else spec.get("device", "auto"))
    model, info = load_checkpoint(checkpoint, dev)
    check_serves(certifier, info["threat_model"], str(checkpoint))
    check_model_belongs(info, spec, checkpoint)
    model_sha256 = sha256_file(checkpoint)
    cfg = spec["certify"]
    test_set = data.load(info["dataset"], "test", spec["data_root"], spec["download"])
    indices = shard_of(subset_indices(len(test_set), cfg["start"], cfg["skip"], cfg["count"]), shard, shards)
    partial = out.with_name(out.name + ".partial")
    fingerprint = _fingerprint(model_sha256, spec, certifier, shard, shards)
    done = _resumable_rows(partial, fingerprint)
    rows_kept = [done[i] for i in indices if i in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "w") as fh:  # rewrite what is kept (drops a torn line), then append as rows finish
        fh.write(f"# fingerprint {fingerprint}\n" + tsv_text(rows_kept))
    todo = [i for i in indices if i not in done]
    if rows_kept:
        print(f"resuming certification: {len(rows_kept)} of {len(indices)} examples already done", flush=True)

    def write(
        fh, idx: int, label: int, prediction: int, radius: float, seconds: float, path: str, dtype: str, samples: int,
        counts: dict | None = None,
    ) -> None:  # fmt: skip
        correct = int(prediction == label)
        row = {"idx": idx, "label": label, "predict": prediction, "radius": repr(float(radius) if correct else 0.0),
               "correct": correct, "time": repr(seconds), "path": path, "dtype": dtype, "samples": samples}  # fmt: skip
        fh.write(format_row({**row, **(counts or {})}))

    with (
        allow_tf32(cfg.get("tf32", False), dev),
        open(partial, "a") as fh,
        tqdm(
            total=len(todo), desc=f"{certifier} {spec['run']} seed{spec['seed']}", disable=not progress, file=sys.stderr
        ) as bar,
    ):
        if isinstance(entry, SmoothingCertifier):
            run, describe = smoothing_sampler(model, info["num_classes"], test_set[0][0].shape, cfg, dev)
            described = describe()  # path and dtype are fixed for the run (only compilation may change)
            path, dtype = described["path"], described["dtype"]
            labels = {}

            def items():  # loaded lazily: the fast path holds only the images in flight
                for idx in todo:
                    x, labels[idx] = test_set[idx]
                    yield idx, x.to(dev), example_generator(spec["seed"], idx, dev), entry.plan(cfg)

            for idx, outcome in run(items()):
                decision = outcome.result
                label = int(labels.pop(idx))
                write(fh, idx, label, decision.prediction, decision.radius, outcome.seconds, path, dtype,
                      outcome.samples, decision.counts)  # fmt: skip
                fh.flush()
                bar.update(1)
            path_info = describe()
        else:
            assert isinstance(entry, BatchEvaluator), certifier
            evaluate = seeded(entry.build(model, info, cfg, spec["seed"]), spec["seed"])
            chunk = cfg["batch_size"]
            for start in range(0, len(todo), chunk):
                idxs = todo[start : start + chunk]
                xs, labels = zip(*(test_set[i] for i in idxs))
                xs, labels = torch.stack(xs).to(dev), [int(label) for label in labels]
                synchronize(dev)
                t0 = time.perf_counter()
                results = evaluate(xs, torch.tensor(labels, device=dev), idxs)
                synchronize(dev)
                seconds = (time.perf_counter() - t0) / len(idxs)
                for idx, label, (prediction, radius) in zip(idxs, labels, results):
                    write(fh, idx, label, prediction, radius, seconds, "batch", "float32", 0)
                fh.flush()
                bar.update(len(idxs))
            path_info = {"path": "batch", "dtype": "float32"}

    atomic_write_text(out, tsv_text(sorted(read_rows(partial), key=lambda r: int(r["idx"]))))
    write_json(
        out.with_suffix(".json"),
        {
            "certifier": certifier,
            "norm": entry.norm,
            "kind": entry.kind,
            "sigma": cfg.get("sigma"),
            **entry.record(cfg),
            "max_radius": entry.max_radius(cfg, info["num_classes"]),
            "tf32": cfg.get("tf32", False),
            "subset": {"start": cfg["start"], "skip": cfg["skip"], "count": cfg["count"], "examples": len(indices)},
            "shard": shard,
            "shards": shards,
            **path_info,
            "model": str(checkpoint),
            "model_sha256": model_sha256,
            "model_info": info,
            "provenance": provenance(dev),
        },
    )
    partial.unlink()
    return out


#: Sidecar fields that may differ between the shards of one certification (everything else must agree): how a
#: node batched or compiled does not change the certificates; the dtype does (it is the base classifier).
_SHARD_FIELDS = (
    "shard",
    "shards",
    "subset",
    "provenance",
    "forward_batch",
    "images_per_round",
    "images_in_flight",
    "compile",
    "compiled",
    "cuda_graphs",
    "fallback",
)
#: Of those, what the merged sidecar keeps per shard (`shard_compile`): a node that fell back to eager stays on record.
_COMPILE_FIELDS = ("compiled", "cuda_graphs", "fallback")


def merge_shards(shard_files: list[str | Path], out: str | Path) -> Path:
    """Concatenate shard TSVs in dataset-index order (a sharded certification equals the unsharded one). Where the
    shards have sidecars, also write `out`'s: the shards' common settings, the examples summed, and each shard's
    provenance; shards certified with different settings or models are refused."""
    shard_files = [Path(f) for f in shard_files]
    rows = [r for f in shard_files for r in read_rows(f)]
    indices = [int(r["idx"]) for r in rows]
    if len(set(indices)) != len(indices):
        raise ValueError("the shards overlap: an image appears in more than one shard file")
    sidecars = [f.with_suffix(".json") for f in shard_files]
    metas = [json.loads(m.read_text()) for m in sidecars if m.exists()]
    if metas and len(metas) != len(shard_files):
        raise ValueError("some shards have a sidecar .json and some do not")
    if metas:
        common = [{k: v for k, v in m.items() if k not in _SHARD_FIELDS} for m in metas]
        if any(c != common[0] for c in common[1:]):
            raise ValueError("the shards were certified with different settings or models: refusing to merge")
        shards = sorted(m["shard"] for m in metas)
        if shards != list(range(metas[0]["shards"])):
            raise ValueError(f"expected shards 0..{metas[0]['shards'] - 1}, got {shards}")
        subset = {**metas[0]["subset"], "examples": sum(m["subset"]["examples"] for m in metas)}
        merged = {
            **common[0],
            "shard": None,
            "shards": metas[0]["shards"],
            "subset": subset,
            "provenance": metas[0]["provenance"],
            "shard_provenance": [m["provenance"] for m in metas],
            "shard_compile": [{k: m[k] for k in _COMPILE_FIELDS if k in m} for m in metas],
        }
    atomic_write_text(out, tsv_text(sorted(rows, key=lambda r: int(r["idx"]))))
    if metas:
        write_json(Path(out).with_suffix(".json"), merged)
    return Path(out)
