"""The certify step: run a certifier over a run's test subset and write the per-example TSV.

The TSV is a superset of Cohen's certify.py output: ``idx label predict radius correct time`` (tab-separated, idx =
dataset index, predict = -1 on abstain, radius 0 when wrong or abstaining, time in seconds, radius at full
precision), then ``path dtype samples``: which path computed the row (fast / plain for smoothing, batch for the ℓ∞
evaluators), the dtype of the base classifier's forward pass, and the noisy samples drawn for it (0 for ℓ∞). A
sidecar ``<name>.json`` records the certifier's settings, the subset, the path's settings and provenance.

Noise is seeded per example from (run seed, dataset index), so a certificate does not depend on which shard or
which resumed process computed it. Rows are appended to ``<name>.tsv.partial`` as they finish (not a declared
Snakemake output, so a kill keeps them) and the finished file is renamed into place. The partial file starts with a
fingerprint of the settings and the model file, so rows from other settings are never resumed.
"""
from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from . import data
from .checkpoint import load_checkpoint
from .config import spec_json
from .io import atomic_write_text, provenance, select_device, synchronize, write_json
from .sampling import FastSampler, FastSettings, resolve_dtype, run_plain
from .smoothing import (certify_plan, default_split_grid, max_radius, t_certify_counts, t_certify_counts_grid,
                        t_certify_grid_plan, t_certify_plan)

#: The first six are Cohen's; read_tsv accepts files with only those (written before the fast path existed).
TSV_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "path", "dtype", "samples")
COHEN_COLUMNS = TSV_COLUMNS[:6]
@dataclass(frozen=True)
class Certifier:
    """What an evaluator applies to and what its radii mean (the report never mixes certified and empirical)."""

    threat_models: tuple[str, ...]  # the models it can evaluate
    norm: str  # "l2" or "linf"
    kind: str  # "certified" (a guarantee) or "empirical" (an attack's upper bound on the robust radius)
    note: str = ""  # a caveat the report prints beside its rows


CERTIFIERS = {
    "cohen": Certifier(("l2-smoothing",), "l2", "certified"),
    "t-certify": Certifier(("l2-smoothing",), "l2", "certified",
                           "Feng et al.'s T-CERTIFY, reconstructed (METHODS.md §4): top and runner-up bounded "
                           "separately, alpha split fixed in advance (t_certify_split)"),
    "t-certify-grid": Certifier(("l2-smoothing",), "l2", "certified",
                                "paper-style T-CERTIFY, reconstructed (METHODS.md §4): the largest radius over a grid "
                                "of alpha splits, each at alpha / (grid length), Bonferroni-corrected"),
    "adaptive": Certifier(("l2-smoothing",), "l2", "certified",
                          "adaptive: a sequential test per configured radius (Clopper-Pearson at alpha / J over J "
                          "pre-planned looks, anytime-valid); its radius is the largest configured radius it "
                          "certified, so its ACR is a lower bound and not comparable with CERTIFY's"),
    "linf-margin": Certifier(("linf-certified",), "linf", "certified"),
    "linf-interval": Certifier(("linf-certified",), "linf", "certified",
                               "interval bounds over the eps-box clipped to [0, 1], on the eps grid"),
    **{name: Certifier(("linf-certified", "linf-empirical"), "linf", "empirical",
                       "empirical radius (the largest eps of the grid the attack fails at): an upper bound on "
                       "robustness, not a certificate")
       for name in ("pgd20", "pgd100", "cw-pgd100", "autoattack")},
    "linf-dist-pgd": Certifier(("linf-certified",), "linf", "empirical",
                               "the l-inf-dist papers' PGD: 100 steps of eps/4 from x + clip(N(0, (eps/4)^2), "
                               "+-eps/2), CE on s*z; empirical (an upper bound), not a certificate"),
}
#: The certify settings each norm's evaluators read; a certify job's spec keeps only these, so changing n re-runs
#: no ℓ∞ evaluation, changing the ε grid no smoothing certificate, and adding a certifier re-runs nothing else.
SETTINGS = {"l2": ("sigma", "n0", "n", "alpha", "batch_size", "start", "skip", "count", "t_certify_split",
                   "t_certify_grid_size", "fast", "dtype", "compile", "max_batch", "adaptive"),
            "linf": ("eps_grid", "batch_size", "start", "skip", "count")}


def certifier_spec(spec: dict, certifier: str) -> dict:
    """`spec` with its certify section cut to what `certifier` reads."""
    if certifier not in CERTIFIERS:
        raise ValueError(f"unknown certifier {certifier!r} (known: {', '.join(CERTIFIERS)})")
    keep = SETTINGS[CERTIFIERS[certifier].norm]
    return {**spec, "certify": {k: v for k, v in spec["certify"].items() if k in keep}}


#: Caveats the report prints beside a certifier's rows.
CERTIFIER_NOTES = {name: c.note for name, c in CERTIFIERS.items() if c.note}


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


def _parse_rows(lines: list[str]) -> list[dict]:
    complete = [line for line in lines  # a torn last line and the partial file's fingerprint line are dropped
                if line.count("\t") == len(TSV_COLUMNS) - 1 and not line.startswith("#")]
    return list(csv.DictReader(complete, delimiter="\t")) if complete else []


def _read_rows(path: Path) -> list[dict]:
    return _parse_rows(Path(path).read_text().splitlines())


def _fingerprint(checkpoint: Path, spec: dict, certifier: str, shard: int, shards: int) -> str:
    """What the rows of a partial file depend on: a partial file from other settings or another model is stale."""
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return hashlib.sha256(spec_json({"certify": spec["certify"], "certifier": certifier, "seed": spec["seed"],
                                     "shard": [shard, shards], "model": digest.hexdigest()}).encode()).hexdigest()


def _resumable_rows(partial: Path, fingerprint: str) -> dict[int, dict]:
    if not partial.exists():
        return {}
    lines = partial.read_text().splitlines()
    if not lines or lines[0] != f"# fingerprint {fingerprint}":
        print(f"ignoring {partial}: it was written for other settings or another model", flush=True)
        return {}
    return {int(r["idx"]): r for r in _parse_rows(lines)}


def _format_row(row: dict) -> str:
    return "\t".join(str(row[c]) for c in TSV_COLUMNS) + "\n"


def _tsv_text(rows: list[dict]) -> str:
    """Header + rows: the per-example file (also the body of a partial file)."""
    return "\t".join(TSV_COLUMNS) + "\n" + "".join(_format_row(r) for r in rows)


def read_tsv(path: str | Path) -> pd.DataFrame:
    """A per-example TSV as a DataFrame, with the format checked."""
    frame = pd.read_csv(path, sep="\t")
    if tuple(frame.columns[: len(COHEN_COLUMNS)]) != COHEN_COLUMNS:
        raise ValueError(f"{path}: expected columns {TSV_COLUMNS}, found {tuple(frame.columns)}")
    return frame


def smoothing_plan(certifier: str, cfg: dict):
    """A fresh sampling plan of `certifier` for one image (methods/sampling.py)."""
    from .adaptive import adaptive_plan

    args = (cfg["n0"], cfg["n"], cfg["sigma"], cfg["alpha"])
    if certifier == "cohen":
        return certify_plan(*args)
    if certifier == "t-certify":
        return t_certify_plan(*args, split=cfg["t_certify_split"])
    if certifier == "t-certify-grid":
        return t_certify_grid_plan(*args, grid=default_split_grid(cfg["t_certify_grid_size"]))
    adaptive = cfg["adaptive"]
    return adaptive_plan(*args, radii=adaptive["radii"], first_look=adaptive["first_look"],
                         growth=adaptive["growth"])


def smoothing_sampler(model, num_classes: int, sample_shape, cfg: dict, dev: torch.device):
    """The driver of the smoothing plans: the fast path (default) or the plain one (`certify.fast: false`).
    Returns (run(items) -> iterator of (key, Outcome), describe() -> what the sidecar records of the path)."""
    if not cfg["fast"]:
        def run(items):
            return run_plain(model, num_classes, cfg["sigma"], cfg["batch_size"], items)
        return run, lambda: {"path": "plain", "dtype": "float32", "channels_last": False, "compile": False}
    settings = FastSettings(dtype=resolve_dtype(cfg["dtype"], dev), channels_last=True, compile=cfg["compile"],
                            max_batch=cfg["max_batch"])
    sampler = FastSampler(model, num_classes, cfg["sigma"], cfg["batch_size"], sample_shape, dev, settings)
    return sampler.run, sampler.describe


def _linf_evaluator(certifier: str, model, info: dict, cfg: dict, seed: int):
    """A whole batch at once: ℓ∞-dist certificates (margin/2, or interval bounds on the ε grid) or an attack's
    empirical radius on the ε grid."""
    from . import attacks

    grid = cfg["eps_grid"]
    if certifier == "linf-margin":
        from .linf_dist import certify_batch

        def run(xs, ys, idxs):
            cert = certify_batch(model, xs, ys, grid[0])
            return cert.logits.argmax(1), cert.radius
    elif certifier == "linf-interval":
        from .linf_dist import interval_certified

        def run(xs, ys, idxs):
            predictions = attacks.predict(model, xs)
            radius = torch.zeros(len(xs), dtype=torch.float64, device=xs.device)
            standing = predictions == ys
            for eps in grid:  # the box grows with ε, so certification is monotone: keep the largest certified ε
                standing &= interval_certified(model, xs, ys, eps)
                radius[standing] = eps
            return predictions, radius
    else:
        attack = EMPIRICAL_ATTACKS[certifier](info["num_classes"])
        if certifier == "linf-dist-pgd":
            from .linf_dist import ScaledLogits

            model = ScaledLogits(model)

        per_example = certifier != "autoattack"  # PGD's random starts: one generator per example

        def run(xs, ys, idxs):
            seeds = [seed * 2**32 + idx for idx in idxs] if per_example else None
            return attacks.predict(model, xs), attacks.empirical_radius(model, xs, ys, grid, attack, seeds)

    def evaluate(xs, ys, idxs):
        torch.manual_seed(seed * 2**32 + idxs[0])  # what still draws from the global RNG (AutoAttack) is per batch
        predictions, radius = run(xs, ys, idxs)
        return list(zip(predictions.tolist(), radius.tolist()))

    return evaluate


def _autoattack(num_classes: int):
    from .attacks import autoattack

    return lambda model, x, y, eps: autoattack(model, x, y, eps, num_classes=num_classes)


def _pgd(preset: str, loss: str = "ce", random_start: bool | str = False):
    def build(num_classes: int):
        from dataclasses import replace

        from . import attacks

        return replace(getattr(attacks, preset), loss=loss, random_start=random_start)
    return build


#: Empirical ℓ∞ evaluators: certifier name → (num_classes → attack(model, x, y, eps)). PGD steps are ε/4 at every ε
#: of the grid (2/255 at 8/255), no random start.
EMPIRICAL_ATTACKS = {"pgd20": _pgd("PGD20"), "pgd100": _pgd("PGD100"), "cw-pgd100": _pgd("PGD100", "cw"),
                     "linf-dist-pgd": _pgd("PGD100", random_start="gaussian"), "autoattack": _autoattack}


def certifier_max_radius(certifier: str, cfg: dict, sigma: float | None, num_classes: int) -> float | None:
    """The largest radius `certifier` can return with these settings: the curves' cliff (None: unbounded)."""
    if CERTIFIERS[certifier].norm == "linf":
        return None if certifier == "linf-margin" else max(cfg["eps_grid"])
    if certifier == "cohen":
        return max_radius(sigma, cfg["n"], cfg["alpha"])
    if certifier == "adaptive":
        from . import adaptive

        a = cfg["adaptive"]
        return adaptive.max_radius(sigma, cfg["n"], cfg["alpha"], a["radii"], a["first_look"], a["growth"])
    unanimous = [cfg["n0"]] + [0] * (num_classes - 1), [cfg["n"]] + [0] * (num_classes - 1)
    if certifier == "t-certify":
        return t_certify_counts(*unanimous, sigma, cfg["alpha"], cfg["t_certify_split"])[1]
    return t_certify_counts_grid(*unanimous, sigma, cfg["alpha"], default_split_grid(cfg["t_certify_grid_size"]))[1]


def _settings(certifier: str, cfg: dict) -> dict:
    """What the sidecar records of the certifier's own settings."""
    if CERTIFIERS[certifier].norm == "linf":
        return {"eps_grid": cfg["eps_grid"], "batch_size": cfg["batch_size"]}
    out = {"n0": cfg["n0"], "n": cfg["n"], "alpha": cfg["alpha"], "batch_size": cfg["batch_size"]}
    if certifier == "t-certify":
        out["t_certify_split"] = cfg["t_certify_split"]
    if certifier == "t-certify-grid":
        out["t_certify_grid"] = default_split_grid(cfg["t_certify_grid_size"])
    if certifier == "adaptive":
        from .adaptive import decision_radii, look_schedule

        a = cfg["adaptive"]
        out.update(radii=list(decision_radii(a["radii"])),
                   looks=look_schedule(cfg["n"], a["first_look"], a["growth"]))
    return out


def certify_run(checkpoint: str | Path, spec: dict, out: str | Path, certifier: str = "cohen",
                device: str = "auto", shard: int = 0, shards: int = 1, progress: bool = True) -> Path:
    """Evaluate the run's test subset (or one shard of it) with `certifier`; write `out` (TSV) and its sidecar JSON.

    Smoothing certifiers run as sampling plans on the fast path (many images per forward pass; an example's `time`
    is its share of the passes it took part in) or the plain one (one image at a time); ℓ∞ evaluators take a batch
    of `certify.batch_size` examples at a time, each example's `time` being its share of the batch.
    """
    spec = certifier_spec(spec, certifier)  # also refuses an unknown certifier
    out = Path(out)
    dev = select_device(device if device != "auto" else spec.get("device", "auto"))
    model, info = load_checkpoint(checkpoint, dev)
    if info["threat_model"] not in CERTIFIERS[certifier].threat_models:
        raise ValueError(f"certifier {certifier} needs a {' or '.join(CERTIFIERS[certifier].threat_models)} model; "
                         f"{checkpoint} is {info['threat_model']}")
    cfg = spec["certify"]
    test_set = data.load(info["dataset"], "test", spec["data_root"], spec["download"])
    indices = shard_of(subset_indices(len(test_set), cfg["start"], cfg["skip"], cfg["count"]), shard, shards)
    partial = out.with_name(out.name + ".partial")
    fingerprint = _fingerprint(Path(checkpoint), spec, certifier, shard, shards)
    done = _resumable_rows(partial, fingerprint)
    rows_kept = [done[i] for i in indices if i in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "w") as fh:  # rewrite what is kept (drops a torn line), then append as rows finish
        fh.write(f"# fingerprint {fingerprint}\n" + _tsv_text(rows_kept))
    todo = [i for i in indices if i not in done]
    if rows_kept:
        print(f"resuming certification: {len(rows_kept)} of {len(indices)} examples already done", flush=True)

    def write(fh, idx: int, label: int, prediction: int, radius: float, seconds: float, path: str, dtype: str,
              samples: int) -> None:
        correct = int(prediction == label)
        fh.write(_format_row({"idx": idx, "label": label, "predict": prediction,
                              "radius": repr(float(radius) if correct else 0.0), "correct": correct,
                              "time": repr(seconds), "path": path, "dtype": dtype, "samples": samples}))

    norm = CERTIFIERS[certifier].norm
    with open(partial, "a") as fh, tqdm(total=len(todo), desc=f"{certifier} {spec['run']} seed{spec['seed']}",
                                         disable=not progress, file=sys.stderr) as bar:
        if norm == "l2":
            run, describe = smoothing_sampler(model, info["num_classes"], test_set[0][0].shape, cfg, dev)
            described = describe()  # path and dtype are fixed for the run (only compilation may change)
            path, dtype = described["path"], described["dtype"]
            labels = {}

            def items():  # loaded lazily: the fast path holds only the images in flight
                for idx in todo:
                    x, labels[idx] = test_set[idx]
                    yield idx, x.to(dev), example_generator(spec["seed"], idx, dev), smoothing_plan(certifier, cfg)

            for idx, outcome in run(items()):
                prediction, radius = outcome.result
                write(fh, idx, int(labels.pop(idx)), prediction, radius, outcome.seconds, path, dtype,
                      outcome.samples)
                fh.flush()
                bar.update(1)
            path_info = describe()
        else:
            evaluate, chunk = _linf_evaluator(certifier, model, info, cfg, spec["seed"]), cfg["batch_size"]
            for start in range(0, len(todo), chunk):
                idxs = todo[start:start + chunk]
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

    atomic_write_text(out, _tsv_text(sorted(_read_rows(partial), key=lambda r: int(r["idx"]))))
    write_json(out.with_suffix(".json"), {
        "certifier": certifier, "norm": CERTIFIERS[certifier].norm, "kind": CERTIFIERS[certifier].kind,
        "sigma": cfg.get("sigma"), **_settings(certifier, cfg),
        "max_radius": certifier_max_radius(certifier, cfg, cfg.get("sigma"), info["num_classes"]),
        "subset": {"start": cfg["start"], "skip": cfg["skip"], "count": cfg["count"], "examples": len(indices)},
        "shard": shard, "shards": shards, **path_info, "model": str(checkpoint), "model_info": info,
        "provenance": provenance(dev)})
    partial.unlink()
    return out


#: Sidecar fields that may differ between the shards of one certification (everything else must agree): how a
#: node batched or compiled does not change the certificates; the dtype does (it is the base classifier).
_SHARD_FIELDS = ("shard", "shards", "subset", "provenance", "forward_batch", "images_per_round", "images_in_flight",
                 "compile")


def merge_shards(shard_files: list[str | Path], out: str | Path) -> Path:
    """Concatenate shard TSVs in dataset-index order (a sharded certification equals the unsharded one). Where the
    shards have sidecars, also write `out`'s: the shards' common settings, the examples summed, and each shard's
    provenance; shards certified with different settings or models are refused."""
    shard_files = [Path(f) for f in shard_files]
    rows = [r for f in shard_files for r in _read_rows(f)]
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
        merged = {**common[0], "shard": None, "shards": metas[0]["shards"], "subset": subset,
                  "provenance": metas[0]["provenance"], "shard_provenance": [m["provenance"] for m in metas]}
    atomic_write_text(out, _tsv_text(sorted(rows, key=lambda r: int(r["idx"]))))
    if metas:
        write_json(Path(out).with_suffix(".json"), merged)
    return Path(out)
