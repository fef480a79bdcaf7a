"""`python -m methods doctor`: a self-check of this machine's device before any real job runs on it.

    python -m methods doctor [--device cuda|cpu|auto] [--quick] [--out doctor.json]     (or: snakemake doctor)

Why: the paper configs turn on paths that a CPU never exercises — the fast sampler's bf16 autocast and CUDA graphs,
the training fast path's autocast and torch.compile, the Triton ℓ∞-dist kernels, NCCL under DDP, the free-memory
probe — and a 1,000-job submission is the wrong place to find out that one of them fails or computes something
else. The doctor prints, in one screen, the versions (torch, CUDA, cuDNN, Triton), the device, its bf16 and TF32
support and free memory, then runs timed checks (each meant to take ≤ 30 s), each comparing a fast path with the
plain path it replaces on the same inputs:

- the tiny model: the default config's Cohen σ = 0.25 digits model, trained on the plain path in seconds (every
  certification check below runs on it: a trained model, not random weights, so that bf16 agreement means
  something);
- certification, fp32: the fast sampler's counts equal the plain loop's on the same noise (TF32 off for the check);
- certification, torch.compile (CUDA graphs on GPU): compiled counts equal eager ones up to float rounding, or the
  fallback was taken, and said;
- certification, bf16: per noisy sample, the fast path's bf16 prediction agrees with the plain fp32 one on ≥ 99 %
  (a forward pass of the size the free-memory probe picks);
- one training step per method, fast path vs reference path: losses close, nothing NaN; a compiled step that
  disagrees is re-run uncompiled to tell `train.compile` from `train.fast`;
- the Triton ℓ∞-dist kernels against the chunked path: values and gradients;
- DDP: two processes (NCCL with ≥ 2 GPUs, else gloo) take one step; both hold the same weights, and the weights
  one process gets from the whole batch.

Each check passes, fails, falls back (compile: the eager path runs, as the outputs record) or is skipped with the
reason (no CUDA, no native bf16, …). A failure names the setting that turns the failing path off (`certify.fast:
false`, `certify.compile: false`, `certify.dtype: float32`, `train.compile: false`, `train.fast: false`,
`METHODS_LINF_TRITON=0`, `train.processes: 1`): a fast path that disagrees with the plain one is an error
(`FastPathMismatch`), never a silent fallback. The doctor exits non-zero when any check fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from .. import config as mc
from ..certify.sampling import FastSampler, FastSettings, bf16_supported, plain_counts
from ..checkpoint import load_checkpoint
from ..core import data
from ..core.errors import ConfigError, one_line
from ..core.io import allow_tf32, device_name, select_device, synchronize, write_json
from ..kernels import lp_dist as lp_dist_op
from ..kernels import lp_dist_triton
from ..registry import METHODS
from ..train import distributed
from ..train import fast as fast_train
from ..train.build import build_training
from ..train.loop import train

#: What each check's sizes are (quick: CI on 2 CPU cores, well under a minute in all; full: a GPU node).
SIZES = {
    True: {"epochs": 5, "images": 4, "requests": (37, 250, 101), "compile_images": 4, "compile_n": 1000},
    False: {"epochs": 8, "images": 16, "requests": (100, 1000, 537), "compile_images": 8, "compile_n": 4000},
}
BF16_AGREEMENT = 0.99  # per noisy sample, bf16 fast path vs fp32 plain path, on the trained tiny model
COMPILED_FLIPS = 0.001  # share of the draws whose vote may move between compiled and eager fp32 (near-ties)
TINY_ACCURACY = 0.7  # clean accuracy the tiny model must reach for its checks to mean anything
DDP_TIMEOUT = 120  # seconds for the two DDP processes (start-up included) before they count as hung
ROOT = Path(__file__).resolve().parents[2]  # where `methods` imports from (for the DDP processes)


class FastPathMismatch(RuntimeError):
    """A fast path computes something other than the plain path it replaces: an error, never a silent fallback.
    `setting` turns that path off."""

    def __init__(self, what: str, setting: str):
        super().__init__(f"{what}; turn that path off with `{setting}`")
        self.setting = setting


class Skipped(Exception):
    """The check cannot run here; the message says why."""


@dataclass
class Outcome:
    """What a check that ran reports: a one-line detail and, where a compiled path fell back to eager, why."""

    detail: str
    fallback: str | None = None


@dataclass
class Result:
    name: str
    status: str  # pass | fail | fallback | skip
    seconds: float
    detail: str
    setting: str | None = None  # what turns the checked path off (printed for failures and fallbacks)
    warnings: list[str] = field(default_factory=list)
    traceback: str | None = None  # where a check crashed (in the JSON only)


@dataclass
class Report:
    environment: dict
    results: list[Result]

    @property
    def ok(self) -> bool:
        return not any(r.status == "fail" for r in self.results)

    def to_json(self) -> dict:
        return {"ok": self.ok, "environment": self.environment, "checks": [asdict(r) for r in self.results]}


@dataclass
class Env:
    """What the checks share: the device, the sizes, a scratch directory, and the tiny model once trained."""

    device: torch.device
    quick: bool
    workdir: Path
    model: torch.nn.Module | None = None
    sigma: float = 0.25

    @property
    def sizes(self) -> dict:
        return SIZES[self.quick]


# ------------------------------------------------------------------------------------------------ the environment


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cudnn_version() -> str | None:
    number = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if not number:
        return None
    major, rest = divmod(number, 10000) if number >= 10000 else divmod(number, 1000)
    minor, patch = divmod(rest, 100)
    return f"{major}.{minor}.{patch}"


def _free_host_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _nccl_version() -> str | None:
    try:
        return ".".join(map(str, torch.cuda.nccl.version()))
    except (AttributeError, RuntimeError, TypeError):
        return None


def native_bf16(dev: torch.device) -> bool:
    """bf16 in hardware: Ampere or later on CUDA (torch.cuda.is_bf16_supported also counts emulation), AVX512-BF16
    or AMX on the CPU. Where it is not, the bf16 options are not checked (they would not be chosen there)."""
    return fast_train.native_bf16(dev) if dev.type == "cuda" else bf16_supported(dev)


def environment(dev: torch.device) -> dict:
    """Versions, the device, its bf16 and TF32 support and settings, and free memory."""
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": _cudnn_version(),
        "triton": _version("triton"),
        "host": socket.gethostname(),
        "device": str(dev),
        "device_name": device_name(dev),
        "bf16_native": native_bf16(dev),
        "cpu_threads": torch.get_num_threads(),
        "host_free_bytes": _free_host_memory(),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        free, total = torch.cuda.mem_get_info(dev)
        env.update(
            gpus=torch.cuda.device_count(),
            capability=f"sm_{props.major}{props.minor}",
            free_bytes=free,
            total_bytes=total,
            tf32_supported=props.major >= 8,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
            nccl=_nccl_version(),
        )
    return env


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def format_environment(env: dict) -> str:
    versions = [f"torch {env['torch']}", f"CUDA {env['cuda'] or '-'}", f"cuDNN {env['cudnn'] or '-'}"]
    versions += [f"Triton {env['triton'] or '-'}", f"Python {env['python']}"]
    lines = [f"methods doctor on {env['host']}", "  " + " · ".join(versions)]
    if env["device"].startswith("cuda"):
        lines.append(
            f"  device  {env['device']}: {env['device_name']}, {env['capability']}, {env['gpus']} GPU(s), "
            f"{_gib(env['free_bytes'])} free of {_gib(env['total_bytes'])}"
            + (f", NCCL {env['nccl']}" if env.get("nccl") else "")
        )
        on = {True: "on", False: "off"}
        tf32 = (
            f"supported; pinned by train.tf32 / certify.tf32 (default off; torch's defaults: matmul "
            f"{on[env['tf32_matmul']]}, conv {on[env['tf32_cudnn']]})"
            if env["tf32_supported"]
            else "not supported (pre-Ampere)"
        )
        lines.append(f"  bf16    {'native' if env['bf16_native'] else 'not native: the bf16 options are not checked'}")
        lines.append(f"  TF32    {tf32}")
    else:
        lines.append(f"  device  {env['device_name']}; {_gib(env['host_free_bytes'])} host memory free")
        bf16 = "native (AVX512-BF16 / AMX)" if env["bf16_native"] else "not native: the bf16 options are not checked"
        lines.append(f"  bf16    {bf16} · TF32 n/a on the CPU")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ helpers


def _images(count: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    test = data.load("digits", "test")
    xs, ys = zip(*(test[i] for i in range(count)))
    return torch.stack(xs).to(dev), torch.tensor([int(y) for y in ys], device=dev)


def _needs_model(env: Env) -> torch.nn.Module:
    if env.model is None:
        raise Skipped("no tiny model (its training failed above)")
    return env.model


def _requests(sizes):
    """A plan asking for `sizes` in turn, returning every request's counts (the fast sampler's test plan)."""
    got = []
    for size in sizes:
        got.append((yield size))
    return got


def _fast_counts(sampler: FastSampler, images: torch.Tensor, sizes, dev: torch.device) -> dict[int, list]:
    items = [(i, images[i], torch.Generator(device=dev).manual_seed(i), _requests(sizes)) for i in range(len(images))]
    return {key: [c.tolist() for c in outcome.result] for key, outcome in sampler.run(items)}


def _default_spec(method: str, prefer: str | None = None) -> dict | None:
    """The default config's run `prefer`, else its first run of `method` (every method has one: CONTRIBUTING.md),
    resolved; None if it has none."""
    cfg = mc.load()
    names = [n for n, run in cfg["runs"].items() if run["method"] == method]
    name = prefer if prefer in names else next(iter(names), None)
    return mc.resolve_run(cfg, name, 0) if name else None


# ------------------------------------------------------------------------------------------------ the checks


def check_tiny_model(env: Env) -> Outcome:
    """Train the default config's Cohen σ = 0.25 digits model on the plain path (the checks below certify it)."""
    spec = _default_spec("cohen", prefer="cohen-0.25")
    epochs = env.sizes["epochs"]
    spec["train"] = {**spec["train"], "epochs": epochs, "lr": 0.1, "step_size": max(1, epochs - 2)}
    spec["train"].update(eval_each_epoch=False, fast=False, compile=None, select_best=None)
    with contextlib.redirect_stdout(io.StringIO()):  # its epoch lines: the doctor prints one line per check
        path = train(spec, env.workdir / "tiny", device=str(env.device), progress=False)
    model, _ = load_checkpoint(path, env.device)
    xs, ys = _images(100, env.device)
    with torch.inference_mode():
        accuracy = float((model(xs).argmax(1) == ys).float().mean())
    if not accuracy >= TINY_ACCURACY:
        raise RuntimeError(f"the plain training loop reached clean accuracy {accuracy:.2f} < {TINY_ACCURACY} on digits")
    env.model, env.sigma = model, spec["hparams"]["sigma"]
    return Outcome(f"digits small_cnn, Cohen σ = {env.sigma}, {epochs} epochs: clean accuracy {accuracy:.2f}")


def check_certify_fp32(env: Env) -> Outcome:
    """The fast sampler (several images a pass, a block split over two passes, remainder blocks) against the plain
    loop, fp32, eager, on the same noise: every request's counts equal."""
    model = _needs_model(env)
    dev, sizes = env.device, env.sizes["requests"]
    images, _ = _images(env.sizes["images"], dev)
    batch = 64
    with allow_tf32(False, dev):
        sampler = FastSampler(model, 10, env.sigma, batch, (1, 8, 8), dev, FastSettings(torch.float32, max_batch=200))
        fast = _fast_counts(sampler, images, sizes, dev)
        for i in range(len(images)):
            generator = torch.Generator(device=dev).manual_seed(i)
            plain = [plain_counts(model, images[i], n, env.sigma, 10, batch, generator).tolist() for n in sizes]
            if fast[i] != plain:
                moved = sum(abs(a - b) for f, p in zip(fast[i], plain) for a, b in zip(f, p)) // 2
                raise FastPathMismatch(
                    f"fast-path fp32 counts differ from the plain path's on the same noise (image {i}: {moved} of "
                    f"{sum(sizes)} votes moved)",
                    "certify.fast: false",
                )
    draws = len(images) * sum(sizes)
    return Outcome(f"{len(images)} images, {draws:,} draws: identical counts ({sampler.slots} images a pass)")


def check_certify_compile(env: Env) -> Outcome:
    """The sampler compiled (CUDA graphs on GPU) against eager, fp32, on the same noise: votes equal up to
    float rounding (≤ 0.1 % of the draws move, near-ties); or the fallback was taken, which the sidecar records."""
    model = _needs_model(env)
    dev = env.device
    if env.quick and dev.type == "cpu":
        raise Skipped(
            "--quick on the CPU: the CPU configs do not compile (certify.compile: false in config.yaml) and "
            "inductor's C++ build takes tens of seconds; run without --quick to check it"
        )
    images, _ = _images(env.sizes["compile_images"], dev)
    sizes = (env.sizes["compile_n"],)
    torch._dynamo.reset()
    with allow_tf32(False, dev), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a fallback warns; the outcome below says it
        passes = None if dev.type == "cuda" else 1000  # on CUDA the pass size the free-memory probe picks
        compiled = FastSampler(
            model, 10, env.sigma, 500, (1, 8, 8), dev, FastSettings(torch.float32, compile=True, max_batch=passes)
        )
        fast = _fast_counts(compiled, images, sizes, dev)
        eager = FastSampler(model, 10, env.sigma, 500, (1, 8, 8), dev, FastSettings(torch.float32, max_batch=passes))
        reference = _fast_counts(eager, images, sizes, dev)
    described = compiled.describe()
    draws = len(images) * sum(sizes)
    moved = sum(abs(a - b) for i in fast for f, r in zip(fast[i], reference[i]) for a, b in zip(f, r)) // 2
    what = "torch.compile" + (" with CUDA graphs" if dev.type == "cuda" else " (inductor, frozen weights)")
    if described["fallback"]:
        return Outcome(f"fell back to eager: {described['fallback']}", fallback=described["fallback"])
    if moved > COMPILED_FLIPS * draws:
        raise FastPathMismatch(
            f"the compiled sampler's votes differ from eager's on the same noise ({moved} of {draws:,} moved, more "
            f"than {COMPILED_FLIPS:.1%})",
            "certify.compile: false",
        )
    detail = f"{what}: {moved} of {draws:,} votes moved vs eager fp32 (passes of {compiled.chunk:,})"
    if dev.type == "cuda" and not described["cuda_graphs"]:
        skipped = "inductor compiled it without CUDA graphs (its log says why); one launch per kernel instead"
        return Outcome(f"{detail}; {skipped}", fallback=skipped)
    return Outcome(detail)


def check_certify_bf16(env: Env, force: bool = False) -> Outcome:
    """Per noisy sample, the fast path's bf16 forward (as certify.dtype auto runs it here: compiled on CUDA, in a
    pass of the size the free-memory probe picks) against the plain fp32 model: ≥ 99 % agreement. `force` runs it
    where bf16 is only emulated (tests)."""
    model = _needs_model(env)
    dev = env.device
    if not (force or native_bf16(dev)):
        raise Skipped("this device has no native bf16: the bf16 option (certify.dtype auto / bfloat16) is not for it")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a compile fallback: check_certify_compile reports it
        torch._dynamo.reset()
        sampler = FastSampler(
            model, 10, env.sigma, 1000, (1, 8, 8), dev, FastSettings(torch.bfloat16, compile=dev.type == "cuda")
        )
        count = sampler.chunk
        images, _ = _images(20, dev)
        generator = torch.Generator(device=dev).manual_seed(0)
        noise = torch.randn((count, 1, 8, 8), device=dev, generator=generator) * env.sigma
        noisy = images.repeat_interleave(math.ceil(count / len(images)), 0)[:count] + noise
        fast = sampler.predict(noisy)
    with torch.inference_mode(), allow_tf32(False, dev):
        plain = torch.cat([model(noisy[i : i + 4096]).argmax(1) for i in range(0, count, 4096)])
    agreement = float((fast == plain).float().mean())
    described = sampler.describe()
    if agreement < BF16_AGREEMENT:
        raise FastPathMismatch(
            f"bf16 predictions agree with fp32 on {agreement:.2%} of {count:,} noisy samples (< {BF16_AGREEMENT:.0%})",
            "certify.dtype: float32",
        )
    how = "compiled" if described["compiled"] else "eager"
    return Outcome(
        f"{agreement:.2%} of {count:,} noisy samples agree with fp32 ({how}; forward pass of {count:,}"
        f"{', from the free-memory probe' if dev.type == 'cuda' else ''})"
    )


def _loss_tolerance(path: fast_train.FastPath, dev: torch.device) -> tuple[float, float]:
    """(rel, abs): bf16 rounds logits to 8 bits; on CUDA fp32 (TF32 off: train.tf32's default) each path picks its
    own kernels, and an attack's data-dependent branch (DDN's, PGD's zero-gradient fallback) may flip for one image;
    on the CPU only the summation order differs."""
    if path.autocast_dtype is not None:
        return 0.1, 0.05
    return (5e-3, 1e-3) if dev.type == "cuda" else (1e-4, 1e-5)


def _one_step(spec: dict, dev: torch.device, x: torch.Tensor, y: torch.Tensor, start: dict | None):
    """One train step from the same weights and the same draws: (Training, loss, all weights finite)."""
    torch.manual_seed(0)
    with fast_train.backend_flags(spec["train"]["fast"], dev, spec["train"].get("tf32", False)):
        t = build_training(spec, dev)
        if start is not None:
            t.model.load_state_dict(start)
        t.step_model.train()
        torch.manual_seed(123)
        result = t.step(t.step_model, t.optimizer, fast_train.prepare_input(x, t.path), y, t.hp, 2.5)
        synchronize(dev)
    finite = all(bool(torch.isfinite(p).all()) for p in t.model.parameters())
    return t, float(result.loss.detach()), finite


#: `--quick` compiles only this method's training step (on a GPU each compile takes tens of seconds).
QUICK_COMPILED = "cohen"


def _agrees(loss: float, finite: bool, reference: float, tolerance: tuple[float, float]) -> bool:
    rel, abs_ = tolerance
    return math.isfinite(loss) and finite and abs(loss - reference) <= abs_ + rel * abs(reference)


def check_train_step(env: Env, method: str, compile: bool | None = None, bf16: bool | None = None) -> Outcome:
    """One step of `method` (its default-config run, batch 32 of digits) on the reference path and on the fast
    path, from the same weights (the tiny model's where the architecture is the same) and the same draws: the
    losses within the path's tolerance, no NaN. A compiled step that disagrees is re-run eagerly, to name
    `train.compile` or `train.fast`. Where the device computes bf16 natively, the bf16 option (`train.dtype:
    bfloat16`, eager) is stepped too. `compile` overrides train.compile (None: the device's default, except that
    --quick compiles only QUICK_COMPILED's step); `bf16` forces the bf16 step on or off (None: native bf16 only)."""
    dev = env.device
    spec = _default_spec(method)
    if spec is None:
        raise Skipped(f"the default config has no {method} run to take the settings from")
    spec["train"] = {**spec["train"], "batch_size": 32, "fast": False, "compile": None, "dtype": "float32"}
    notes = []
    if compile is None and env.quick and dev.type == "cuda" and method != QUICK_COMPILED:
        compile = False
        notes.append(f"eager: --quick compiles {QUICK_COMPILED}'s step only")

    def fast_spec(**train) -> dict:
        return {**spec, "train": {**spec["train"], "fast": True, **train}}

    x, y = _images(32, dev)
    # the tiny model's trained weights where the architecture is the same (fewer near-ties than at initialisation)
    start = None if env.model is None else {k: v.detach().clone() for k, v in env.model.state_dict().items()}
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a compile fallback: reported below
        try:
            _, ref_loss, ref_finite = _one_step(spec, dev, x, y, start)
        except RuntimeError as exc:
            if start is None or "state_dict" not in str(exc):
                raise
            start = None  # another architecture than the tiny model's: its own initial weights on both paths
            _, ref_loss, ref_finite = _one_step(spec, dev, x, y, start)
        fast, fast_loss, fast_finite = _one_step(fast_spec(compile=compile), dev, x, y, start)
    if not (math.isfinite(ref_loss) and ref_finite):
        raise RuntimeError(f"the reference path's step gives loss {ref_loss} (weights finite: {ref_finite})")
    path = fast.path
    record = fast_train.compile_record(fast.step_model, path)
    tolerance = _loss_tolerance(path, dev)
    how = f"{path.dtype}{', compiled' if record['compiled'] else ''}{', channels_last' if path.channels_last else ''}"
    if not _agrees(fast_loss, fast_finite, ref_loss, tolerance):
        setting = "train.fast: false"
        if record["compiled"]:  # compiled: is it the compiler, or the rest of the fast path?
            torch._dynamo.reset()
            _, eager_loss, eager_finite = _one_step(fast_spec(compile=False), dev, x, y, start)
            if _agrees(eager_loss, eager_finite, ref_loss, tolerance):
                setting = "train.compile: false"
        raise FastPathMismatch(
            f"{method}: the fast step ({how}) gives loss {fast_loss:.6g} (weights finite: {fast_finite}), the "
            f"reference step {ref_loss:.6g} (tolerance {tolerance[0]:g} relative + {tolerance[1]:g})",
            setting,
        )
    detail = f"loss {fast_loss:.5g}, reference {ref_loss:.5g} ({how})"
    if bf16 if bf16 is not None else native_bf16(dev):
        half, half_loss, half_finite = _one_step(fast_spec(compile=False, dtype="bfloat16"), dev, x, y, start)
        if half.path.autocast_dtype is not None:  # else the method (ℓ∞-dist nets) or the device keeps fp32
            half_tolerance = _loss_tolerance(half.path, dev)
            if not _agrees(half_loss, half_finite, ref_loss, half_tolerance):
                raise FastPathMismatch(
                    f"{method}: the bf16 fast step gives loss {half_loss:.6g} (weights finite: {half_finite}), the "
                    f"reference step {ref_loss:.6g} (tolerance {half_tolerance[0]:g} relative + {half_tolerance[1]:g})",
                    "train.dtype: float32",
                )
            notes.append(f"bf16 option: loss {half_loss:.5g}")
    detail += "".join(f"; {note}" for note in notes)
    if record["fallback"]:
        return Outcome(f"{detail}; {record['fallback']}", fallback=record["fallback"])
    return Outcome(detail)


def check_triton(env: Env) -> Outcome:
    """The Triton ℓp-dist kernels against the chunked torch path (the dispatch of kernels.lp_dist both ways), at
    p = ∞ and p = 8, on shapes that do not divide the tiles: values, grad_x and grad_W."""
    dev = env.device
    if dev.type != "cuda":
        raise Skipped("needs CUDA (tests/test_linf_dist_triton.py checks the kernels' logic on the CPU, interpreted)")
    if not lp_dist_op.USE_TRITON:  # first: with it set, triton is not even imported (lp_dist_triton.WANTED)
        raise Skipped("METHODS_LINF_TRITON=0 is set: the ℓ∞-dist nets run the chunked path")
    if lp_dist_triton.triton is None:
        raise Skipped("triton is not importable: the ℓ∞-dist nets run the chunked path")
    gen = torch.Generator().manual_seed(0)
    x, w, g = (torch.randn(*shape, generator=gen).to(dev) for shape in ((67, 300), (129, 300), (67, 129)))
    worst = 0.0
    for p in (math.inf, 8.0):
        outputs = {}
        for use in (True, False):
            lp_dist_op.USE_TRITON = use
            try:
                xi, wi = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
                out = lp_dist_op.lp_dist(xi, wi, p)
                outputs[use] = (out.detach(), *torch.autograd.grad(out, (xi, wi), g))
            finally:
                lp_dist_op.USE_TRITON = True
        if not lp_dist_triton.available(x, w):
            raise Skipped("the Triton path is not available for these tensors (lp_dist_triton.available)")
        for name, ours, ref in zip(("values", "grad_x", "grad_W"), outputs[True], outputs[False]):
            # finite p: (|v|/y)^(p-1) turns y's float32 rounding into a relative error ≈ p·6e-8 in both paths
            tolerance = (1e-4, max(1e-5, p * 2.5e-7 * float(ref.abs().max())))
            rtol, atol = (1e-5, 1e-6) if name == "values" or math.isinf(p) else tolerance
            if not torch.allclose(ours, ref, rtol=rtol, atol=atol):
                raise FastPathMismatch(
                    f"Triton ℓp-dist {name} at p = {p:g} differ from the chunked path's (max |diff| "
                    f"{float((ours - ref).abs().max()):.3g})",
                    "METHODS_LINF_TRITON=0",
                )
            worst = max(worst, float((ours - ref).abs().max()))
    return Outcome(f"p = ∞ and 8, values and gradients match the chunked path (max |diff| {worst:.2g})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_spec() -> dict:
    """A deterministic step (backward smoothing with γ = 0 and no attack step: cross-entropy through the DDP model)
    on a BatchNorm-free model, so that two processes on halves of a batch must equal one process on all of it."""
    spec = _default_spec("backward_smoothing")
    spec["hparams"] = {**spec["hparams"], "gamma": 0.0, "steps": 0}
    spec["train"] = {**spec["train"], "fast": False, "compile": None, "select_best": None}
    return spec


DDP_BATCH = 17  # split 9 / 8 over two processes: the weighted gradient average is exercised


def ddp_worker(rank: int, world: int, port: int, device: str, spec_json: str, out: str) -> None:
    """One DDP process (started by check_ddp): the project's own setup and wrap, one step on this rank's slice of
    the batch, its parameters saved for the parent to compare."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    spec = json.loads(spec_json)
    ctx, dev = distributed.setup(torch.device(device))
    try:
        torch.manual_seed(0)
        training = build_training(spec, dev)
        step_model, hook = distributed.wrap(training.step_model, ctx, dev)
        x, y = _images(DDP_BATCH, dev)
        lo, hi = (DDP_BATCH * r // world for r in (rank, rank + 1))
        hook.weight = (hi - lo) / DDP_BATCH
        step_model.train()
        torch.manual_seed(1 + rank)
        training.step(step_model, training.optimizer, x[lo:hi], y[lo:hi], training.hp, 0.5)
        weights = {k: v.detach().cpu() for k, v in training.model.named_parameters()}
        torch.save({"weights": weights, "backend": torch.distributed.get_backend()}, Path(out) / f"rank{rank}.pt")
    finally:
        distributed.teardown(ctx)


DDP_CHILD = "import json, sys; from methods.bench.doctor import ddp_worker; ddp_worker(*json.loads(sys.argv[1]))"


def check_ddp(env: Env) -> Outcome:
    """Two processes take one DDP step (NCCL on two GPUs, else gloo on the CPU): they must hold identical weights,
    equal to one process's step on the whole batch."""
    dev = env.device
    nccl = dev.type == "cuda" and torch.cuda.device_count() >= 2 and torch.distributed.is_nccl_available()
    device = "cuda" if nccl else "cpu"
    if not torch.distributed.is_available() or not (nccl or torch.distributed.is_gloo_available()):
        raise Skipped("this torch has no usable distributed backend (gloo / NCCL)")
    spec = _ddp_spec()
    out = env.workdir / "ddp"
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    child_env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    procs, logs = [], []
    for rank in range(2):
        log = open(out / f"rank{rank}.log", "w")
        args = json.dumps([rank, 2, port, device, mc.spec_json(spec), str(out)])
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", DDP_CHILD, args], stdout=log, stderr=subprocess.STDOUT, env=child_env
            )
        )
        logs.append(log)
    deadline = time.monotonic() + DDP_TIMEOUT
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the two DDP processes did not finish in {DDP_TIMEOUT} s (hung in a collective?)") from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    for rank, proc in enumerate(procs):
        if proc.returncode != 0:
            tail = (out / f"rank{rank}.log").read_text().strip().splitlines()[-1:] or ["(no output)"]
            raise RuntimeError(f"DDP process {rank} exited with {proc.returncode}: {tail[0][:200]}")
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single_dev = torch.device("cuda", 0) if nccl else torch.device("cpu")
    torch.manual_seed(0)
    one = build_training(spec, single_dev)
    x, y = _images(DDP_BATCH, single_dev)
    torch.manual_seed(1)
    one.step(one.step_model, one.optimizer, x, y, one.hp, 0.5)
    expected = {k: v.detach().cpu() for k, v in one.model.named_parameters()}
    between = max(float((ranks[0]["weights"][k] - ranks[1]["weights"][k]).abs().max()) for k in expected)
    if between > 1e-6:
        raise FastPathMismatch(
            f"after one DDP step the two processes' weights differ by {between:.3g}", "train.processes: 1"
        )
    for k, v in expected.items():
        if not torch.allclose(ranks[0]["weights"][k], v, rtol=1e-4, atol=1e-5):
            diff = float((ranks[0]["weights"][k] - v).abs().max())
            raise FastPathMismatch(
                f"two DDP processes' step differs from one process's on the whole batch ({k}: {diff:.3g})",
                "train.processes: 1",
            )
    backend = ranks[0]["backend"]
    why = "" if nccl else (" (NCCL needs ≥ 2 GPUs)" if dev.type == "cuda" else "")
    return Outcome(f"{backend}{why}: both processes hold the weights one process gets on the {DDP_BATCH}-image batch")


# ------------------------------------------------------------------------------------------------ the run


#: (name, the setting that turns the checked path off, check). A check is f(env) -> Outcome.
def checks() -> list[tuple[str, str | None, Callable[[Env], Outcome]]]:
    out = [
        ("tiny model (plain training)", None, check_tiny_model),
        ("certify: fast = plain, fp32", "certify.fast: false", check_certify_fp32),
        ("certify: compile, CUDA graphs", "certify.compile: false", check_certify_compile),
        ("certify: bf16 ≈ fp32 per sample", "certify.dtype: float32", check_certify_bf16),
    ]
    for method in METHODS:
        out.append((f"train step: {method}", "train.fast: false", _bind(check_train_step, method)))
    out += [
        ("l∞-dist: Triton = chunked", "METHODS_LINF_TRITON=0", check_triton),
        ("DDP: 2 processes, one step", "train.processes: 1", check_ddp),
    ]
    return out


def _bind(check, *args):
    return lambda env: check(env, *args)


def run_check(name: str, setting: str | None, check: Callable[[Env], Outcome], env: Env) -> Result:
    """Time one check and turn what it says (or raises) into a Result."""
    t0 = time.perf_counter()
    trace = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            outcome = check(env)
            status, detail = ("fallback" if outcome.fallback else "pass"), outcome.detail
        except Skipped as exc:
            status, detail = "skip", str(exc)
        except FastPathMismatch as exc:
            status, detail, setting = "fail", str(exc), exc.setting
            trace = traceback.format_exc()
        except Exception as exc:  # a crash is a failure of the path under check
            status, detail = "fail", f"crashed: {one_line(exc)}"
            trace = traceback.format_exc()
    seconds = time.perf_counter() - t0
    messages = list(dict.fromkeys(f"{w.category.__name__}: {str(w.message)[:300]}" for w in caught))
    return Result(name, status, seconds, detail, setting, messages, trace)


NAME_WIDTH = 32
INDENT = " " * (2 + 8 + 8 + 2 + NAME_WIDTH + 1)  # under the detail column


def format_result(r: Result, width: int = 120) -> str:
    """One check: status, seconds, name, the detail wrapped under itself; for a failure the setting to turn off."""
    label = {"pass": "PASS", "fail": "FAIL", "fallback": "FALLBACK", "skip": "SKIP"}[r.status]
    head = f"  {label:<8}{r.seconds:6.1f} s  {r.name:<{NAME_WIDTH}} "
    lines = textwrap.wrap(r.detail, width, initial_indent=head, subsequent_indent=INDENT, break_on_hyphens=False)
    lines = lines or [head]
    if r.status == "fail":
        lines.append(f"{INDENT}→ turn it off: {r.setting}" if r.setting else f"{INDENT}→ the plain path itself fails")
    elif r.status == "fallback" and r.setting:
        lines.append(f"{INDENT}→ recorded in the outputs; `{r.setting}` skips the attempt")
    return "\n".join(lines)


def doctor(
    device: str = "auto",
    quick: bool = False,
    out: str | Path | None = None,
    only: list[str] | None = None,
    echo: Callable[[str], None] = lambda line: print(line, flush=True),
) -> Report:
    """Print the environment and run every check (or the tiny model and the checks whose name contains one of
    `only`); write the report as JSON to `out` if given. Returns the Report (`.ok` is False when a check failed)."""
    try:
        dev = select_device(device)
    except RuntimeError as exc:
        raise ConfigError(f"doctor: {exc}") from None
    env_info = environment(dev)
    echo(format_environment(env_info))
    # the tiny model is always trained: the certification checks run on it, the training checks start from it
    chosen = [c for c in checks() if c[2] is check_tiny_model or only is None or any(p in c[0] for p in only)]
    echo(f"checks ({'quick' if quick else 'full'}; each meant to take ≤ 30 s):")
    results = []
    with tempfile.TemporaryDirectory(prefix="methods-doctor-") as scratch:
        env = Env(dev, quick, Path(scratch))
        for name, setting, check in chosen:
            result = run_check(name, setting, check, env)
            results.append(result)
            echo(format_result(result))
    report = Report(env_info, results)
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fallback", "skip", "fail")}
    echo(
        f"{'OK' if report.ok else 'FAILED'}: {counts['pass']} passed, {counts['fallback']} fell back, "
        f"{counts['skip']} skipped, {counts['fail']} failed"
    )
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json(out, report.to_json())
    return report
