"""The training fast path (config `train.fast: true`), beside the reference path (plain fp32, eager, DataLoader).

What the fast path changes, and where (`plan` decides per run, `FastPath.record` says what it decided):

- bf16 autocast around the model's forward, on CUDA GPUs with native bf16 (compute capability ≥ 8.0); the logits
  come back as float32, so every loss, the soft smoothed classifier, MACER's Φ⁻¹ and the attacks' updates stay
  fp32. Not on the CPU, nor on GPUs without native bf16 (P100, V100: fp32 there; fp16 would need loss scaling);
- channels_last weights and inputs for conv nets (the ℓ∞-dist nets are MLPs);
- torch.compile of that forward (`train.compile`: null = on CUDA only — on a 2-core CPU inductor took minutes to
  compile a ResNet-110 step and ran it no faster than the eager fast path, see methods/bench/train_cost.compare_paths;
  true = everywhere; false = off). Each attack step of SmoothAdv, ADRE-ADV and backward smoothing runs its forward
  and its input-gradient backward through the compiled model; the attack loop itself stays eager, because
  torch.autograd.grad breaks the graph (torch 2.15 traces it only behind an experimental dynamo flag) and PGD's
  zero-gradient fallback and DDN's masked updates are data-dependent branches;
- fused optimizers (else foreach) where torch has them for the optimizer and the device;
- the training set resident on the device for tensor-sized datasets, crop/flip done there
  (methods/train/device_data.py; ImageNet stays on the DataLoader);
- cudnn.benchmark on CUDA.

Noise is drawn on x's device by every method on both paths (methods/core/noise.py; backward smoothing's output noise ξ,
B × C numbers, is expanded from a seed on the CPU by design, so one seed gives one ξ on every device, and copied).
Evaluation passes (eval_each_epoch, select_best) use the plain fp32 model on both paths. The numerics differ from
the reference path (bf16, kernel choice, fusion, the augmentation's RNG), so `fast` is part of the spec.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.errors import ConfigError
from . import device_data

#: torch.compile's backend; tests swap in "aot_eager" to exercise the compiled wiring without inductor's C++ build.
COMPILE_BACKEND = "inductor"

#: Parts of the fast path a method does without, and why (printed and recorded in run.json).
METHOD_LIMITS = {
    "linf_dist": {
        "compile": "the l-inf-dist layer is a tiled custom autograd.Function and p changes every batch "
        "(a recompile per batch)",
        "autocast": "l-p distances at p up to 1000 are computed in float32 by design",
    },
}


@dataclass(frozen=True)
class FastPath:
    """What one training run does beyond the reference path (all off = the reference path)."""

    fast: bool = False
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False
    device_data: bool = False
    notes: tuple[str, ...] = field(default=())  # what was left out, and why

    @property
    def name(self) -> str:
        return "fast" if self.fast else "reference"

    @property
    def dtype(self) -> str:
        return str(self.autocast_dtype or torch.float32).removeprefix("torch.")

    def record(self, optimizer_impl: str = "default") -> dict:
        """run.json's `train_path`."""
        return {
            "path": self.name,
            "dtype": self.dtype,
            "compiled": self.compile,
            "channels_last": self.channels_last,
            "device_data": self.device_data,
            "optimizer": optimizer_impl,
            "notes": list(self.notes),
        }

    def log_fields(self) -> dict:
        """train_log.tsv's path columns."""
        return {"path": self.name, "dtype": self.dtype, "compiled": self.compile}

    def summary(self, optimizer_impl: str = "default") -> str:
        parts = [f"{self.dtype} autocast" if self.autocast_dtype else "float32"]
        parts += ["channels_last"] * self.channels_last + ["torch.compile"] * self.compile
        parts += [f"{optimizer_impl} optimizer", "data on the device" if self.device_data else "DataLoader"]
        return f"{self.name} path: " + ", ".join(parts) + "".join(f"; {note}" for note in self.notes)


REFERENCE = FastPath()


def check(train_cfg: dict, where: str = "train") -> None:
    """Cross-field rule of the train section: `compile` is a setting of the fast path."""
    if train_cfg.get("compile") and not train_cfg.get("fast", False):
        raise ConfigError(
            f"config error at {where}.compile: compile: true needs fast: true (the reference path is "
            f"plain eager fp32); drop train.compile or set train.fast: true"
        )


def native_bf16(device: torch.device) -> bool:
    """A CUDA device with bf16 in hardware (Ampere and later), not emulated."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0) and torch.cuda.is_bf16_supported(
        including_emulation=False
    )


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def plan(spec: dict, model: nn.Module, device: torch.device, dataset: str | None = None) -> FastPath:
    """The path `spec` trains `model` on: REFERENCE unless spec.train.fast, else what of the fast path applies to
    this method, model, dataset (default the spec's) and device."""
    cfg = spec["train"]
    check(cfg)
    if not cfg.get("fast", False):
        return REFERENCE
    limits = METHOD_LIMITS.get(spec["method"], {})
    notes = [f"no {part}: {why}" for part, why in limits.items()]
    autocast = native_bf16(device) and "autocast" not in limits
    if device.type == "cuda" and not native_bf16(device) and "autocast" not in limits:
        notes.append("float32: this GPU has no native bf16")
    wanted = cfg.get("compile")
    compiled = (device.type == "cuda" if wanted is None else bool(wanted)) and "compile" not in limits
    dataset = dataset or spec["dataset"]
    resident = device_data.resident(dataset)
    if not resident:
        notes.append(f"{dataset} stays on the DataLoader (not a tensor-sized dataset)")
    return FastPath(
        fast=True,
        autocast_dtype=torch.bfloat16 if autocast else None,
        channels_last=has_conv(model) and "channels_last" not in limits,
        compile=compiled,
        device_data=resident,
        notes=tuple(notes),
    )


def prepare_model(model: nn.Module, path: FastPath) -> nn.Module:
    """In place, before the optimizer is built: channels_last weights (the parameters stay the same objects)."""
    if path.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def prepare_input(x: torch.Tensor, path: FastPath) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if path.channels_last and x.dim() == 4 else x


class FastModel(nn.Module):
    """model's forward with channels_last inputs and autocast, returning float32 logits; every other attribute is
    the model's (ℓ∞-dist nets and the attacks read their model's own fields). Holds no state of its own: the
    checkpoint keys are the wrapped model's, saved from the model itself."""

    def __init__(self, model: nn.Module, path: FastPath, device_type: str):
        super().__init__()
        self.model = model
        self.channels_last = path.channels_last
        self.autocast_dtype = path.autocast_dtype
        self.device_type = device_type

    def forward(self, x):
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is None:
            return self.model(x)
        with torch.autocast(self.device_type, dtype=self.autocast_dtype):
            logits = self.model(x)
        return logits.float()

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self._modules["model"], name)


def step_model(model: nn.Module, path: FastPath, device: torch.device) -> nn.Module:
    """What the train steps call: the model itself on the reference path, else its FastModel, compiled if planned."""
    if not (path.channels_last or path.autocast_dtype or path.compile):
        return model
    wrapped = FastModel(model, path, device.type)
    return torch.compile(wrapped, backend=COMPILE_BACKEND) if path.compile else wrapped


def fast_optimizer(build: Callable[..., torch.optim.Optimizer]) -> tuple[torch.optim.Optimizer, str]:
    """build(fused=True) where torch has a fused kernel for the optimizer and the parameters' device, else
    build(foreach=True), else build(): (optimizer, "fused" | "foreach" | "default")."""
    for impl in ("fused", "foreach"):
        try:
            return build(**{impl: True}), impl
        except (RuntimeError, ValueError, TypeError):
            continue
    return build(), "default"


@contextlib.contextmanager
def backend_flags(fast: bool, device: torch.device):
    """cudnn.benchmark for the fast path on CUDA, restored afterwards (the reference path keeps torch's defaults)."""
    if not (fast and device.type == "cuda"):
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous
