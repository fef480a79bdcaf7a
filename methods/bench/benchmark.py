"""The speed benchmark: each workload on the reference procedure and on the harness's fast path, in one process.

    python -m methods bench [--quick | --full] [--device cpu|cuda] [--out DIR]    (or: snakemake bench)

Writes DIR/bench.csv and DIR/bench.md. The reference procedures are plain re-creations of the published loops, kept
only as baselines:
- certification: Cohen's CERTIFY loop — fp32, eager, one image at a time, `batch` = 400 noisy copies per forward
  pass, a fresh randn per batch, predictions copied to the host and tallied there one by one;
- training: a plain fp32 eager step of each method (its own attack / noise copies), torch's default optimizer.
The fast paths are what the harness runs: methods/certify/sampling.FastSampler (packed images, counts on the device,
channels_last, bf16 where native, torch.compile) and methods/train/fast.py; the ℓ∞-dist layer's fast path is the
Triton kernel (CUDA only).

Workloads: certification of the digits CNN and ResNet-20 at CIFAR-10 shape (quick), plus ResNet-110 at CIFAR-10
shape and ResNet-50 at ImageNet shape (full; ResNet-50 on CUDA only); each training method's step at CIFAR-10
shape on synthetic data; the ℓ∞-dist layer and network at the v2 paper's width (5120); and, on the digits models of
the default config, the adaptive and sequential certifiers (the latter in several option sets) against CERTIFY at
n = 100,000 on the same images (certified accuracy at the configured radii, samples used, and where they go by p_A
band). Rates are throughput over a fixed wall-clock budget after an untimed warm-up (compilation
is reported apart, as setup_seconds); sec per image is at n0 + n = 100 + 100,000 noisy samples. `workload` names
the planner's key (methods/bench/plan.py): `certify:<dataset>:cohen` for the papers' models, `train:<dataset>:<method>`.
Timings on a shared machine are noisy: compare the speedup column (both paths measured in the same run).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import config as mc
from .. import linf_dist
from ..certify.sampling import FastSampler, FastSettings, resolve_dtype
from ..certify.smoothing import certify_plan
from ..certify.step import certify_run
from ..core import data, models
from ..core.io import device_name, select_device, synchronize
from ..core.tsv import read_tsv
from ..kernels import lp_dist as lp_dist_op
from ..report.published import load as load_published
from ..report.summary import certified_accuracy
from ..report.tables import markdown as markdown_table
from ..train.loop import train
from .linf_layer import triton_vs_chunked
from .plan import SALMAN_TIMED, paper_train_rate
from .precision import precision_rows
from .train_cost import compare_paths

N_PROTOCOL = 100_000 + 100  # noisy samples per image in the papers' CERTIFY protocol (n + n0)
REFERENCE_BATCH = 400  # Cohen's CIFAR-10 certify batch
#: Nominal dense peak TFLOP/s by device-name fragment and dtype (fp32 convolutions run as TF32 in torch by default).
PEAK_TFLOPS = {
    ("H100", "bfloat16"): 989.4,
    ("H100", "float32"): 494.7,
    ("H200", "bfloat16"): 989.4,
    ("H200", "float32"): 494.7,
    ("A100", "bfloat16"): 312.0,
    ("A100", "float32"): 156.0,
}
COLUMNS = (
    "workload",
    "model",
    "path",
    "device",
    "device_name",
    "batch",
    "dtype",
    "compiled",
    "items_per_sec",
    "sec_per_image",
    "sec_per_epoch",
    "speedup",
    "peak_mem_mb",
    "tflops",
    "peak_fraction",
    "setup_seconds",
    "note",
)


# ---------------------------------------------------------------- measuring


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        try:  # Linux: "5" resets the process's peak resident set (VmHWM)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def _peak_mb(dev: torch.device) -> float | None:
    """CUDA: peak allocated; CPU: the process's peak resident set since the last reset (Linux), else None."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def flops_per_sample(model: torch.nn.Module, shape: tuple[int, ...], dev: torch.device) -> float:
    """Forward FLOPs of one sample (2 per multiply-add), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros((1, *shape), device=dev))
    return float(counter.get_total_flops())


def _throughput(step, budget: float, dev: torch.device) -> float:
    """Items per second of `step()` (which returns the items it processed) over about `budget` seconds."""
    items, t0 = 0, time.perf_counter()
    while True:
        items += step()
        synchronize(dev)
        elapsed = time.perf_counter() - t0
        if elapsed >= budget:
            return items / elapsed


def reference_certify_step(model, x: torch.Tensor, sigma: float, num_classes: int, batch: int):
    """One batch of Cohen's loop: x repeated, randn noise, fp32 eager forward, predictions tallied on the host."""
    counts = np.zeros(num_classes, dtype=np.int64)

    def step() -> int:
        with torch.no_grad():
            noisy = x.repeat((batch, 1, 1, 1))
            predictions = model(noisy + torch.randn_like(noisy) * sigma).argmax(1).cpu().numpy()
        for p in predictions:  # one at a time, as the published loop counts
            counts[p] += 1
        return batch

    step.counts = counts
    return step


def _peak_tflops(name: str, dtype: str) -> float | None:
    return next((v for (fragment, d), v in PEAK_TFLOPS.items() if fragment in name and d == dtype), None)


def certify_rows(
    label: str,
    arch: str,
    dataset: str,
    dev: torch.device,
    budget: float,
    planner_key: str | None,
    compile_: bool = True,
) -> list[dict]:
    """Reference vs fast certification throughput of a randomly initialised `arch` (speed does not depend on the
    weights) at `dataset`'s shape, σ = 0.25; the fast path with `certify.compile` = `compile_`."""
    meta = data.info(dataset)
    torch.manual_seed(0)
    model = models.build(arch, dataset).to(dev).eval()
    x = torch.rand(meta.shape, device=dev)
    flops = flops_per_sample(model, meta.shape, dev)
    workload = planner_key or f"certify:{dataset}:cohen@{arch}"
    name = device_name(dev)
    rows = []

    _reset_peak(dev)
    step = reference_certify_step(model, x.unsqueeze(0), 0.25, meta.num_classes, REFERENCE_BATCH)
    step()  # warm-up
    rate = _throughput(step, budget, dev)
    rows.append(
        dict(
            workload=workload,
            model=label,
            path="reference",
            batch=REFERENCE_BATCH,
            dtype="float32",
            compiled=False,
            items_per_sec=rate,
            peak_mem_mb=_peak_mb(dev),
            setup_seconds=0.0,
            note="Cohen's loop: fp32, one image, randn per batch, host tally",
        )
    )

    settings = FastSettings(dtype=resolve_dtype("auto", dev), compile=compile_)
    _reset_peak(dev)
    t0 = time.perf_counter()
    sampler = FastSampler(model, meta.num_classes, 0.25, 1000, meta.shape, dev, settings)
    images = sampler.slots

    def plans(count: int, n: int):
        return [
            (i, x, torch.Generator(device=dev).manual_seed(i), certify_plan(100, n, 0.25, 0.001)) for i in range(count)
        ]

    list(sampler.run(plans(images, 2000)))  # warm-up: compiles the static shape
    synchronize(dev)
    setup = time.perf_counter() - t0
    per_round = sampler.slots * 1000
    rate = _throughput(lambda: sum(o.samples for _, o in sampler.run(plans(images, 10 * 1000))), budget, dev)
    described = sampler.describe()
    rows.append(
        dict(
            workload=workload,
            model=label,
            path="fast",
            batch=sampler.chunk,
            dtype=described["dtype"],
            compiled=described["compile"],
            items_per_sec=rate,
            peak_mem_mb=_peak_mb(dev),
            setup_seconds=setup,
            note=f"{images} images x 1000 draws per round ({per_round} samples), channels_last",
        )
    )
    for row in rows:
        tflops = row["items_per_sec"] * flops / 1e12
        peak = _peak_tflops(name, row["dtype"])
        row.update(
            device=dev.type,
            device_name=name,
            sec_per_image=N_PROTOCOL / row["items_per_sec"],
            speedup=row["items_per_sec"] / rows[0]["items_per_sec"],
            tflops=tflops,
            peak_fraction=tflops / peak if peak else None,
        )
    return rows


def protocol_row(dev: torch.device, images: int = 500) -> dict:
    """The CIFAR-10 protocol end to end on the fast path: ResNet-110, n0 = 100, n = 100,000, `images` images."""
    meta = data.info("cifar10")
    torch.manual_seed(0)
    model = models.build("cifar_resnet110", "cifar10").to(dev).eval()
    xs = torch.rand((images, *meta.shape), device=dev)
    t0 = time.perf_counter()
    sampler = FastSampler(
        model, 10, 0.25, 1000, meta.shape, dev, FastSettings(resolve_dtype("auto", dev), compile=True)
    )
    list(sampler.run([(0, xs[0], None, certify_plan(100, 2000, 0.25, 0.001))]))
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    done = sum(
        1
        for _ in sampler.run(
            (i, xs[i], torch.Generator(device=dev).manual_seed(i), certify_plan(100, 100_000, 0.25, 0.001))
            for i in range(images)
        )
    )
    synchronize(dev)
    seconds = time.perf_counter() - t0
    described = sampler.describe()
    return dict(
        workload="protocol:cifar10:cohen",
        model=f"ResNet-110 CIFAR-10, {done} images, n=100,000",
        path="fast",
        device=dev.type,
        device_name=device_name(dev),
        batch=sampler.chunk,
        dtype=described["dtype"],
        compiled=described["compile"],
        items_per_sec=done * N_PROTOCOL / seconds,
        sec_per_image=seconds / done,
        setup_seconds=setup,
        note=f"the whole {done}-image protocol: {seconds:.1f} s",
    )


def train_rows(quick: bool, dev: torch.device) -> list[dict]:
    """Each training method's step at CIFAR-10 shape on synthetic data, reference vs fast (methods/bench_train)."""
    config = mc.load(Path(__file__).resolve().parent.parent / "config" / "cifar10.yaml")
    chosen: dict[str, str] = {}
    for name, run in config["runs"].items():  # per method: the σ = 0.25 model MACER's Table 3 timed, else the first
        hp = run.get("hparams", {})
        timed = hp.get("sigma") == 0.25 and (
            run["method"] != "salman" or (hp.get("steps"), hp.get("num_noise")) == SALMAN_TIMED["cifar10"]
        )
        if run["method"] not in chosen or timed and not chosen[run["method"]][1]:
            chosen[run["method"]] = (name, timed)
    published = load_published()
    specs = []
    for method, (name, _) in chosen.items():
        if quick and method == "linf_dist":
            continue  # a width-5120 net step takes minutes on a CPU; see the ℓ∞-dist layer/net rows
        spec = mc.resolve_run(config, name, 0)
        if quick:
            spec["model"] = {**spec["model"], "arch": "cifar_resnet20"}
            spec["train"] = {**spec["train"], "batch_size": 32}
        specs.append(spec)
    rows = compare_paths(specs, "synthetic-cifar10", steps=1 if quick else 5, warmup=1, device=str(dev))
    paper = {spec["run"]: paper_train_rate(published, "cifar10", spec["method"], spec["hparams"]) for spec in specs}
    out = []
    for row in rows:
        rate = paper[row["run"]]
        out.append(
            dict(
                workload=row["workload"].replace("synthetic-cifar10", "cifar10"),
                model=f"{row['run']} ({'ResNet-20, batch 32' if quick else 'paper model and batch'})",
                path=row["path"],
                device=dev.type,
                device_name=row["device"],
                batch=row["batch"],
                dtype=row["dtype"],
                compiled=row.get("compiled"),
                items_per_sec=row["items_per_sec"],
                sec_per_epoch=row["sec_per_epoch"],
                speedup=row["speedup"],
                peak_mem_mb=row["peak_mem_mb"],
                paper_sec_per_epoch=rate.seconds if rate else None,
                paper_source=rate.source if rate else "",
                note="train step on synthetic CIFAR-10-shaped data",
            )
        )
    return out


def linf_rows(quick: bool, dev: torch.device) -> list[dict]:
    """The ℓ∞-dist layer (in = out = 5120) and the v2 network, forward + backward: the chunked torch path, and the
    Triton kernel on CUDA."""
    batch, name = (64 if quick else 512), device_name(dev)
    rows = []
    for p in [math.inf] if quick else [math.inf, 8.0]:
        layer = triton_vs_chunked(batch, 5120, p, str(dev)) if dev.type == "cuda" else []
        if not layer:
            layer = [dict(path="reference", seconds=_layer_seconds(batch, 5120, p, dev), peak_mem_mb=None)]
        base = layer[0]["seconds"]
        for r in layer:
            rows.append(
                dict(
                    workload=f"linf-layer:p={p:g}",
                    model=f"l-inf-dist layer 5120x5120, batch {batch}",
                    path=r["path"],
                    device=dev.type,
                    device_name=name,
                    batch=batch,
                    dtype="float32",
                    items_per_sec=batch / r["seconds"],
                    speedup=base / r["seconds"],
                    peak_mem_mb=r.get("peak_mem_mb"),
                    note="forward + backward" + ("" if dev.type == "cuda" else "; Triton path needs CUDA"),
                )
            )
    net_batch = 8 if quick else 512
    hp = linf_dist.Hparams()  # the v2 CIFAR-10 net
    seconds, previous = {}, lp_dist_op.USE_TRITON
    try:
        for path in ["reference", "fast"] if dev.type == "cuda" else ["reference"]:
            lp_dist_op.USE_TRITON = path == "fast"
            seconds[path] = _net_seconds(hp, net_batch, dev)
    finally:
        lp_dist_op.USE_TRITON = previous
    for path, sec in seconds.items():
        rows.append(
            dict(
                workload="linf-net:cifar10",
                model=f"l-inf-dist net depth {hp.depth}, width {hp.width}, batch {net_batch}",
                path=path,
                device=dev.type,
                device_name=name,
                batch=net_batch,
                dtype="float32",
                items_per_sec=net_batch / sec,
                sec_per_epoch=sec * math.ceil(50_000 / net_batch),
                speedup=seconds["reference"] / sec,
                note="forward + backward at p = 8",
            )
        )
    return rows


def _layer_seconds(batch: int, width: int, p: float, dev: torch.device, reps: int = 1) -> float:
    x = torch.randn(batch, width, device=dev, requires_grad=True)
    w = torch.randn(width, width, device=dev, requires_grad=True)
    lp_dist_op.lp_dist(x[:2], w[:16], p).sum().backward()
    synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        lp_dist_op.lp_dist(x, w, p).sum().backward()
    synchronize(dev)
    return (time.perf_counter() - t0) / reps


def _net_seconds(hp, batch: int, dev: torch.device) -> float:
    model = linf_dist.build_model("cifar10", hp, {"arch": "auto", "normalization": "standard"}).to(dev).train()
    model.set_p(8.0)
    x = torch.rand(batch, 3, 32, 32, device=dev)
    model(x[:2]).sum().backward()
    synchronize(dev)
    t0 = time.perf_counter()
    model(x).sum().backward()
    synchronize(dev)
    return time.perf_counter() - t0


#: The sequential certifier's option sets the adaptive workload runs beside CERTIFY and the adaptive certifier:
#: label -> certify.sequential overrides (SEQUENTIAL.md §5.5). The first is the config's default.
SEQUENTIAL_OPTION_SETS = {
    "sequential": {},  # KT+u (w = ½), futility at δ_U = α, looks ×1.1 (SEQUENTIAL.md's defaults)
    "sequential[delta_u=0.05]": {"delta_u": 0.05},  # bolder futility: fewer draws, a few lost certificates
    "sequential[delta_u=0.2,growth=1.05]": {"delta_u": 0.2, "growth": 1.05},
    "sequential[hybrid=0.5]": {"hybrid": 0.5},  # CS at α/2 + Clopper–Pearson at α/2 at the cap
    "sequential[hybrid=0.5,w=0,delta_u=0.2,growth=1.05]": {"hybrid": 0.5, "w": 0.0, "delta_u": 0.2, "growth": 1.05},
    "sequential[ub]": {"bound": "ub"},  # Voráček's union bound on the same looks
    "sequential[wsr]": {"bound": "wsr"},  # Waudby-Smith & Ramdas' betting CS
}
#: p_A bands (CERTIFY's estimate nA / n at n = 100,000) for where each certifier's draws go.
P_A_BANDS = (0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0)


def _band_table(frames: dict[str, pd.DataFrame], run: str) -> pd.DataFrame:
    """Draws per image by p_A band (p̂_A from CERTIFY's counts of the same image), per certifier: how many images
    fall in each band, their mean draws, and the band's share of the certifier's total draws."""
    cohen = frames["cohen"].set_index("idx")
    p_hat = cohen["nA"] / cohen["n"]
    labels = [f"[{lo:g}, {hi:g})" for lo, hi in zip(P_A_BANDS[:-1], P_A_BANDS[1:])] + ["1 (unanimous)"]
    band = pd.cut(p_hat.where(p_hat < 1), list(P_A_BANDS), right=False, labels=labels[:-1])
    band = band.cat.add_categories(labels[-1]).fillna(labels[-1])
    rows = []
    for name in labels:
        members = band.index[band == name]
        row = {"run": run, "p_A band": name, "images": len(members)}
        for certifier, frame in frames.items():
            samples = frame.set_index("idx")["samples"]
            row[certifier] = float(samples.loc[members].mean()) if len(members) else float("nan")
            row[f"{certifier} share"] = float(samples.loc[members].sum() / samples.sum())
        rows.append(row)
    return pd.DataFrame(rows)


def adaptive_rows(quick: bool, dev: torch.device, out_dir: Path) -> list[dict]:
    """The adaptive and sequential certifiers (each option set of SEQUENTIAL_OPTION_SETS) against CERTIFY at
    n = 100,000 on the default config's Cohen digits models (trained here, a few seconds each), on the same images:
    certified accuracy at the report's radii and its gap to CERTIFY's, draws per image (mean, median, 90th
    percentile, largest) and seconds per image, all on the fast path. Where the draws go by p_A band is printed and
    written to adaptive_bands.md / .csv."""
    config = mc.load()
    runs = ["cohen-0.25", "cohen-0.50"] + ([] if quick else ["cohen-0.12"])
    images = 100 if quick else 500
    radii = config["report"]["radii"]
    rows, bands = [], []
    for run in runs:
        spec = mc.resolve_run(config, run, 0)
        spec["certify"] = {
            **spec["certify"],
            "n": 100_000,
            "skip": 1,
            "count": images,
            "adaptive": {**spec["certify"]["adaptive"], "radii": radii},
            "sequential": {**spec["certify"]["sequential"], "radii": radii},
        }
        run_dir = out_dir / "models" / run
        model = run_dir / "model.pt"
        if not model.exists():
            train(spec, run_dir, device=str(dev), progress=False)
        jobs = [("cohen", "cohen", spec), ("adaptive", "adaptive", spec)] + [
            (label, "sequential", {**spec, "certify": {**spec["certify"],
                                                      "sequential": {**spec["certify"]["sequential"], **overrides}}})
            for label, overrides in SEQUENTIAL_OPTION_SETS.items()]  # fmt: skip
        frames, accuracy = {}, {}
        for label, certifier, job_spec in jobs:
            name = "".join(c if c.isalnum() or c in "._=-" else "-" for c in label)
            tsv = certify_run(model, job_spec, run_dir / f"{name}.tsv", certifier=certifier, device=str(dev),
                              progress=True)  # fmt: skip
            frames[label] = read_tsv(tsv)
            accuracy[label] = {r: certified_accuracy(frames[label], r) for r in radii}
        base_frame, base_acc = frames["cohen"], accuracy["cohen"]
        for label, frame in frames.items():
            acc, samples = accuracy[label], frame["samples"]
            rows.append(
                dict(
                    workload=f"adaptive:digits:{run}",
                    model=f"{run} digits, {images} images, n=100,000",
                    path=label,
                    device=dev.type,
                    device_name=device_name(dev),
                    dtype=frame["dtype"].iloc[0],
                    items_per_sec=samples.sum() / frame["time"].sum(),
                    sec_per_image=float(frame["time"].mean()),
                    samples_per_image=float(samples.mean()),
                    samples_median=float(samples.median()),
                    samples_p90=float(samples.quantile(0.9)),
                    samples_max=int(samples.max()),
                    samples_vs_cohen=float(samples.mean() / base_frame["samples"].mean()),
                    samples_vs_adaptive=float(samples.mean() / frames["adaptive"]["samples"].mean()),
                    max_acc_gap_vs_cohen=max(abs(acc[r] - base_acc[r]) for r in radii),
                    **{f"acc@{r:g}": acc[r] for r in radii},
                    note="certified accuracy at the report radii",
                )
            )
        bands.append(_band_table(frames, run))
    table = pd.concat(bands, ignore_index=True)
    table.to_csv(out_dir / "adaptive_bands.csv", index=False)
    shown = table[["run", "p_A band", "images"]].copy()
    for certifier in [c for c in table.columns if f"{c} share" in table.columns]:
        shown[certifier] = [
            f"{m:,.0f} ({s:.0%})" if m == m else "" for m, s in zip(table[certifier], table[f"{certifier} share"])
        ]
    text = (
        "Mean draws per image by p_A band (p_A estimated by CERTIFY's nA / n on the same image; n0 = 100 "
        "included), and the band's share of the certifier's draws\n\n" + markdown_table(shown, ".0f")
    )
    (out_dir / "adaptive_bands.md").write_text(text)
    print(text, flush=True)
    return rows


# ---------------------------------------------------------------- the run


def bench(
    quick: bool = True, device: str = "auto", out: str | Path = "bench", only: list[str] | None = None
) -> pd.DataFrame:
    dev = select_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    budget = 4.0 if quick else 20.0
    parts = only or ["certify", "train", "linf", "adaptive"] + ([] if quick else ["precision"])
    rows: list[dict] = []
    if "certify" in parts:
        rows += certify_rows("digits CNN", "small_cnn", "digits", dev, budget, "certify:digits:cohen")
        rows += certify_rows("ResNet-20, CIFAR-10 shape", "cifar_resnet20", "cifar10", dev, budget, None)
        if not quick:
            rows += certify_rows(
                "ResNet-110, CIFAR-10 shape", "cifar_resnet110", "cifar10", dev, budget, "certify:cifar10:cohen"
            )
            if dev.type == "cuda":
                rows += certify_rows(
                    "ResNet-50, ImageNet shape", "resnet50", "imagenet", dev, budget, "certify:imagenet:cohen"
                )
                rows.append(protocol_row(dev))
        _progress(rows)
    if "train" in parts:
        rows += train_rows(quick, dev)
        _progress(rows)
    if "linf" in parts:
        rows += linf_rows(quick, dev)
        _progress(rows)
    if "adaptive" in parts:
        rows += adaptive_rows(quick, dev, out)
    if "precision" in parts:  # opt-in (--only precision, or --full): it trains four digits models
        rows += precision_rows(dev, out, quick)
    frame = pd.DataFrame(rows)
    ordered = [c for c in COLUMNS if c in frame] + [c for c in frame.columns if c not in COLUMNS]
    frame = frame[ordered]
    frame.to_csv(out / "bench.csv", index=False)
    (out / "bench.md").write_text(markdown(frame, quick, dev))
    return frame


def _progress(rows: list[dict]) -> None:
    last = rows[-1]
    print(
        f"  {last['workload']:<34} {last['path']:<9} {last.get('items_per_sec', float('nan')):>12.1f} items/s "
        f"speedup {last.get('speedup', float('nan')):.2f}",
        flush=True,
    )


def markdown(frame: pd.DataFrame, quick: bool, dev: torch.device) -> str:
    """bench.md: one table per kind of workload, the speedups against the reference measured in the same run."""

    def table(rows: pd.DataFrame, cols: list[str]) -> str:
        cols = [c for c in cols if c in rows and rows[c].notna().any()]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for _, r in rows.iterrows():
            cells = []
            for c in cols:
                v = r[c]
                cells.append(
                    ""
                    if v is None or (isinstance(v, float) and math.isnan(v))
                    else f"{v:.4g}"
                    if isinstance(v, float)
                    else str(v)
                )
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    kind = frame["workload"].str.split(":").str[0]
    parts = [
        f"# Benchmark ({'quick' if quick else 'full'}, {device_name(dev)})",
        "",
        "Reference = the published procedure re-created as a baseline; fast = the harness's path. Speedups are "
        "measured in the same run; seconds on a shared machine are noisy.",
        "",
    ]
    sections = [
        (
            "certify",
            "Certification (sec_per_image at n0 + n = 100,100)",
            [
                "model",
                "path",
                "batch",
                "dtype",
                "compiled",
                "items_per_sec",
                "sec_per_image",
                "speedup",
                "peak_mem_mb",
                "tflops",
                "peak_fraction",
                "setup_seconds",
            ],
        ),
        ("protocol", "The CIFAR-10 protocol end to end", ["model", "path", "dtype", "sec_per_image", "note"]),
        (
            "train",
            "Training step (sec_per_epoch over the real dataset's batches)",
            [
                "model",
                "path",
                "batch",
                "dtype",
                "compiled",
                "items_per_sec",
                "sec_per_epoch",
                "speedup",
                "peak_mem_mb",
                "paper_sec_per_epoch",
                "paper_source",
            ],
        ),
        ("linf-layer", "l-inf-dist layer", ["model", "path", "items_per_sec", "speedup", "peak_mem_mb", "note"]),
        ("linf-net", "l-inf-dist network", ["model", "path", "items_per_sec", "sec_per_epoch", "speedup"]),
        (
            "precision",
            "What bf16 changes (Cohen and MACER, digits): fp32 vs bf16, same images",
            [
                "model",
                "path",
                "native_bf16",
                "prediction_agreement",
                "max_radius_gap",
                "mean_radius_gap",
                "fp32 clean_acc",
                "bf16 clean_acc",
                "fp32 acr",
                "bf16 acr",
                "diff acr",
                *[c for c in frame.columns if c.startswith("diff acc@")],
            ],
        ),
        (
            "adaptive",
            "Adaptive and sequential certifiers vs CERTIFY, same images (path column = certifier)",
            [
                "model",
                "path",
                "samples_per_image",
                "samples_median",
                "samples_p90",
                "samples_vs_cohen",
                "samples_vs_adaptive",
                "max_acc_gap_vs_cohen",
                "sec_per_image",
                *[c for c in frame.columns if c.startswith("acc@")],
            ],
        ),
    ]
    for key, title, cols in sections:
        rows = frame[kind == key]
        if len(rows):
            parts += [f"## {title}", "", table(rows, cols), ""]
    return "\n".join(parts)
