"""The GPU acceptance script's Python steps (tests/gpu/run.sh runs them; each writes its numbers as it goes, so a
step cut short by its time limit still leaves what it measured), and the one file they end in.

    python tests/gpu/acceptance.py deps                   the project's pure-Python requirements not installed
    python tests/gpu/acceptance.py torchvision            the torchvision requirement that matches the installed torch
    python tests/gpu/acceptance.py certify OUT [--budget S]   ResNet-110 CERTIFY: reference loop vs fast path, protocol
    python tests/gpu/acceptance.py train OUT [--compile]      each method's step at CIFAR-10 shape, reference vs fast
    python tests/gpu/acceptance.py linf OUT                   the Triton l-inf-dist layer vs the chunked path
    python tests/gpu/acceptance.py report OUT                 every number above (and the doctor's, the tests', the
                                                              DAG's) in OUT/gpu_acceptance.md

`deps` and `torchvision` run before the project is installed, so they use the standard library only; the other
steps import the project and torch when they run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: What run.sh never installs: torch (preinstalled, with its CUDA build), and what must match it exactly.
TORCH_BOUND = ("torch", "torchvision", "triton")
PROTOCOL_IMAGES = 500  # Cohen's CIFAR-10 CERTIFY protocol: every 20th test image, n0 = 100, n = 100,000
SLICE = 50  # images per timed slice of the protocol (the whole protocol if the budget allows, else slices, scaled)


# ------------------------------------------------------------------------------------------------ installing


def _requirements() -> list[str]:
    """pyproject.toml's dependencies and the test extra's pytest (tomllib where Python has it, else a plain parse)."""
    text = (REPO / "pyproject.toml").read_text()
    try:
        import tomllib

        project = tomllib.loads(text)["project"]
        deps = list(project["dependencies"])
        test = project.get("optional-dependencies", {}).get("test", [])
    except ImportError:  # Python 3.10
        block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
        deps = re.findall(r'"([^"]+)"', block)
        test = re.findall(r'"([^"]+)"', re.search(r"^test = \[(.*?)\]", text, re.M).group(1))
    return deps + [r for r in test if r.startswith("pytest")]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip()


def missing_requirements() -> list[str]:
    """Requirements whose distribution is not installed (torch and what is bound to it excluded): what run.sh
    installs with pip. An installed version is not second-guessed."""
    from importlib import metadata

    missing = []
    for requirement in _requirements():
        name = _name(requirement)
        if name.lower() in TORCH_BOUND:
            continue
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(requirement)
    return missing


def torchvision_requirement(torch_version: str) -> str:
    """torchvision's release for a torch release: 0.(minor + 15) for torch 2.minor (2.11 → 0.26, 2.14 → 0.29)."""
    major, minor = (int(part) for part in re.match(r"(\d+)\.(\d+)", torch_version).groups())
    if major != 2:
        raise ValueError(f"no known torchvision for torch {torch_version}")
    return f"torchvision==0.{minor + 15}.*"


# ------------------------------------------------------------------------------------------------ measuring


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _append_csv(path: Path, rows: list[dict]) -> None:
    """Append rows (the header from the first write): each finished workload is on disk at once."""
    new = not path.exists()
    keys = list(rows[0]) if new else next(csv.reader(path.open()))
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def certify(out: Path, budget: float, dtype: str = "float32", reference_seconds: float = 10.0) -> dict:
    """ResNet-110 at CIFAR-10 shape, σ = 0.25: Cohen's loop (the reference procedure: fp32, one image, 400 draws a
    batch, host tally) for `reference_seconds`, then the fast path as the paper configs run it (certify.dtype
    `dtype`, default float32; compiled, CUDA graphs) on the 500-image protocol at n0 + n = 100 + 100,000, in slices
    of 50 images while `budget` seconds allow; the 500-image time is measured if it fits, else scaled from the
    slices. TF32 off on both (certify.tf32's default: the papers' fp32; this step is a process of its own).
    Random weights and images: speed only."""
    import torch

    from methods.bench.benchmark import N_PROTOCOL, REFERENCE_BATCH, flops_per_sample, reference_certify_step
    from methods.bench.plan import paper_certify_rate
    from methods.certify.sampling import FastSampler, FastSettings, resolve_dtype
    from methods.certify.smoothing import certify_plan
    from methods.core import data, models
    from methods.core.io import device_name, synchronize
    from methods.report.published import load as load_published

    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    meta = data.info("cifar10")
    torch.manual_seed(0)
    model = models.build("cifar_resnet110", "cifar10").to(dev).eval()
    x = torch.rand(meta.shape, device=dev)
    paper = paper_certify_rate(load_published(), "cifar10", "cohen")
    result = {
        "device": device_name(dev),
        "model": "cifar_resnet110",
        "flops_per_sample": flops_per_sample(model, meta.shape, dev),
        "paper_sec_per_image": paper.seconds if paper else None,
        "paper_source": paper.source if paper else None,
    }
    path = out / "certify.json"

    step = reference_certify_step(model, x.unsqueeze(0), 0.25, meta.num_classes, REFERENCE_BATCH)
    step()  # warm-up
    samples, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < reference_seconds:
        samples += step()
        synchronize(dev)
    rate = samples / (time.perf_counter() - t0)
    result["reference"] = {
        "samples_per_sec": rate,
        "sec_per_image": N_PROTOCOL / rate,
        "protocol_hours": PROTOCOL_IMAGES * N_PROTOCOL / rate / 3600,
        "batch": REFERENCE_BATCH,
        "dtype": "float32",
        "tf32_conv": torch.backends.cudnn.allow_tf32,
    }
    _write_json(path, result)

    t0 = time.perf_counter()
    settings = FastSettings(resolve_dtype(dtype, dev), compile=True)
    sampler = FastSampler(model, meta.num_classes, 0.25, 1000, meta.shape, dev, settings)
    list(sampler.run([(0, x, None, certify_plan(100, 2000, 0.25, 0.001))]))  # compiles the static shape
    synchronize(dev)
    setup = time.perf_counter() - t0
    xs = torch.rand((PROTOCOL_IMAGES, *meta.shape), device=dev)
    done, seconds = 0, 0.0
    while done < PROTOCOL_IMAGES:
        count = min(SLICE, PROTOCOL_IMAGES - done)
        plans = (
            (i, xs[i], torch.Generator(device=dev).manual_seed(i), certify_plan(100, 100_000, 0.25, 0.001))
            for i in range(done, done + count)
        )
        t0 = time.perf_counter()
        finished = sum(1 for _ in sampler.run(plans))
        synchronize(dev)
        seconds += time.perf_counter() - t0
        done += finished
        per_image = seconds / done
        described = sampler.describe()
        result["fast"] = {
            **{k: described[k] for k in ("dtype", "compiled", "cuda_graphs", "fallback", "forward_batch")},
            "setup_seconds": setup,
            "images": done,
            "seconds": seconds,
            "sec_per_image": per_image,
            "samples_per_sec": done * N_PROTOCOL / seconds,
            "protocol_seconds": PROTOCOL_IMAGES * per_image,
            "protocol_measured": done == PROTOCOL_IMAGES,
            "speedup": result["reference"]["sec_per_image"] / per_image,
        }
        _write_json(path, result)
        if seconds + per_image * SLICE > budget:
            break
    return result


def _timed_runs() -> list[dict]:
    """Per method, the config/cifar10.yaml run MACER's Table 3 timed (σ = 0.25; SmoothAdv PGD-10, m = 8), else the
    method's first run: the selection of methods.bench.benchmark.train_rows."""
    from methods import config as mc
    from methods.bench.plan import SALMAN_TIMED

    config = mc.load(REPO / "config" / "cifar10.yaml")
    chosen: dict[str, tuple[str, bool]] = {}
    for name, run in config["runs"].items():
        hp = run.get("hparams", {})
        timed = hp.get("sigma") == 0.25 and (
            run["method"] != "salman" or (hp.get("steps"), hp.get("num_noise")) == SALMAN_TIMED["cifar10"]
        )
        if run["method"] not in chosen or timed and not chosen[run["method"]][1]:
            chosen[run["method"]] = (name, timed)
    return [mc.resolve_run(config, name, 0) for name, _ in chosen.values()]


def train(out: Path, steps: int, compile: bool) -> list[dict]:
    """Each method's training step with its paper model and batch at CIFAR-10 shape (synthetic data), reference path
    vs fast path (compiled only with `compile`: compiling ResNet-110 per method would not fit the script's time),
    sec/epoch beside the paper's (MACER's Table 3 and the ℓ∞-dist log). Rows appended to OUT/train.csv per method."""
    from methods.bench.plan import paper_train_rate
    from methods.bench.train_cost import compare_paths
    from methods.report.published import load as load_published

    published = load_published()
    rows = []
    for spec in _timed_runs():
        paper = paper_train_rate(published, "cifar10", spec["method"], spec["hparams"])
        pair = compare_paths([spec], "synthetic-cifar10", steps=steps, warmup=1, device="cuda", compile=compile)
        for row in pair:
            row.update(
                model=spec["model"]["arch"],
                paper_sec_per_epoch=paper.seconds if paper else None,
                paper_source=paper.source if paper else "",
            )
        _append_csv(out / "train.csv", pair)
        rows += pair
        print(f"{spec['run']}: " + ", ".join(f"{r['path']} {r['sec_per_epoch']:.1f} s/epoch" for r in pair), flush=True)
    return rows


def linf(out: Path) -> list[dict]:
    """The ℓ∞-dist layer at the v2 paper's size (batch 512, in = out = 5120), forward + backward, p = ∞ and 8: the
    chunked torch path and the Triton kernels on this GPU."""
    from methods.bench.linf_layer import triton_vs_chunked

    rows = []
    for p in (math.inf, 8.0):
        pair = triton_vs_chunked(512, 5120, p, "cuda", reps=3)
        for row in pair:
            row["speedup"] = pair[0]["seconds"] / row["seconds"]
        _append_csv(out / "linf.csv", pair)
        rows += pair
    return rows


# ------------------------------------------------------------------------------------------------ the one file


def _read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open())) if path.exists() else []


def _num(value, fmt: str = ".3g") -> str:
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return "" if value in (None, "") else str(value)


def _table(rows: list[dict], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_num(row.get(c)) if c != "run" else str(row.get(c)) for c in columns) + " |")
    return lines


def report(out: Path) -> Path:
    """OUT/gpu_acceptance.md: the steps' status and time, the doctor's checks, the CUDA tests' summary, the
    certification and training numbers beside the papers', the Triton comparison and the DAG's jobs. A step that
    left nothing says so."""
    lines = ["# GPU acceptance", ""]
    steps = (
        [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()]
        if (out / "steps.tsv").exists()
        else []
    )
    if steps:
        lines += ["| step | status | seconds |", "|---|---|---|"] + [f"| {s[0]} | {s[1]} | {s[2]} |" for s in steps]
        lines.append("")

    lines += ["## Doctor", ""]
    doctor_file = out / "doctor.json"
    if doctor_file.exists():
        doctor = json.loads(doctor_file.read_text())
        env = doctor["environment"]
        lines.append(
            f"{env['device_name']} · torch {env['torch']} · CUDA {env.get('cuda')} · cuDNN {env.get('cudnn')} · "
            f"Triton {env.get('triton')} · {'OK' if doctor['ok'] else 'FAILED'}"
        )
        lines += ["", "| check | status | seconds | detail |", "|---|---|---|---|"]
        for c in doctor["checks"]:
            detail = c["detail"] + (f" (turn off: `{c['setting']}`)" if c["status"] == "fail" and c["setting"] else "")
            lines.append(f"| {c['name']} | {c['status']} | {c['seconds']:.1f} | {detail.replace('|', '/')} |")
    else:
        lines.append("no doctor.json (the step failed before writing it, or timed out): see doctor.txt")
    lines.append("")

    lines += ["## CUDA tests", ""]
    log = out / "pytest.txt"
    summary = (
        [line for line in log.read_text().splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
        if log.exists()
        else []
    )
    lines += [summary[-1] if summary else "no pytest summary (see pytest.txt)", ""]

    lines += ["## Certification: ResNet-110, CIFAR-10 protocol (500 images, n0 + n = 100,100)", ""]
    cert_file = out / "certify.json"
    if cert_file.exists():
        cert = json.loads(cert_file.read_text())
        ref, fast = cert.get("reference", {}), cert.get("fast")
        lines.append(
            f"reference (Cohen's loop, fp32, batch 400, TF32 {ref.get('tf32_conv')}): "
            f"{_num(ref.get('samples_per_sec'), ',.0f')} samples/s = {_num(ref.get('sec_per_image'), '.2f')} s/image = "
            f"{_num(ref.get('protocol_hours'), '.2f')} h for the protocol; the paper: "
            f"{_num(cert.get('paper_sec_per_image'))} s/image ({cert.get('paper_source')})"
        )
        if fast:
            how = "measured" if fast["protocol_measured"] else f"scaled from {fast['images']} images"
            lines.append(
                f"fast ({fast['dtype']}, compiled {fast['compiled']}, CUDA graphs {fast['cuda_graphs']}, forward "
                f"batch {fast['forward_batch']}, setup {fast['setup_seconds']:.0f} s): "
                f"{_num(fast['samples_per_sec'], ',.0f')} samples/s = {fast['sec_per_image']:.3f} s/image; the "
                f"500-image protocol {fast['protocol_seconds']:.0f} s ({how}); {fast['speedup']:.1f}× the reference"
                + (f"; fell back: {fast['fallback']}" if fast.get("fallback") else "")
            )
        else:
            lines.append("fast path: no number (the step stopped before its first slice)")
    else:
        lines.append("no certify.json (the step failed or timed out before the reference was measured)")
    lines.append("")

    lines += ["## Training: sec/epoch at CIFAR-10 shape, beside the papers' (MACER Table 3: one P100)", ""]
    train_rows = _read_csv(out / "train.csv")
    columns = ["run", "model", "path", "dtype", "compiled", "batch", "sec_per_epoch", "speedup", "peak_mem_mb"]
    columns += ["paper_sec_per_epoch"]
    lines += _table(train_rows, columns) if train_rows else ["no train.csv (the step failed or timed out)"]
    lines.append("")

    lines += ["## l-inf-dist layer: Triton vs chunked (batch 512, in = out = 5120, forward + backward)", ""]
    linf_rows = _read_csv(out / "linf.csv")
    lines += (
        _table(linf_rows, ["workload", "path", "seconds", "speedup", "peak_mem_mb"]) if linf_rows else ["no linf.csv"]
    )
    lines.append("")

    lines += ["## Synthetic CIFAR-10 DAG on the GPU", ""]
    dag = out / "dag" / "results" / "synthetic-cifar10"
    summary_rows = _read_csv(dag / "summary.csv")
    if summary_rows:
        lines += _table(summary_rows, ["run", "certifier", "train_sec_per_epoch", "certify_sec_per_example", "device"])
    else:
        lines.append("no summary.csv (the DAG did not finish: see dag.txt)")
    lines.append("")
    path = out / "gpu_acceptance.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("deps")
    sub.add_parser("torchvision")
    for name in ("certify", "train", "linf", "report"):
        p = sub.add_parser(name)
        p.add_argument("out", type=Path)
        if name == "certify":
            p.add_argument("--budget", type=float, default=60.0, help="seconds of protocol slices after the compile")
            p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"], help="certify.dtype")
        if name == "train":
            p.add_argument("--steps", type=int, default=3)
            p.add_argument("--compile", action="store_true", help="compile the fast path (minutes per method)")
    args = parser.parse_args(argv)
    if args.step == "deps":
        print("\n".join(missing_requirements()))
    elif args.step == "torchvision":
        from importlib import metadata

        print(torchvision_requirement(metadata.version("torch")))
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        if args.step == "certify":
            certify(args.out, args.budget, args.dtype)
        elif args.step == "train":
            train(args.out, args.steps, args.compile)
        elif args.step == "linf":
            linf(args.out)
        else:
            print(f"wrote {report(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
