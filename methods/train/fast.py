"""The training fast path (config `train.fast: true`), beside the reference path (plain fp32, eager, DataLoader).

What the fast path changes, and where (`plan` decides per run, `FastPath.record` says what it decided):

- only where `train.dtype: bfloat16` asks for it (a speed option: every paper here trained in fp32, which is the
  default, and the tables say which runs trained otherwise): bf16 autocast around the model's forward, on CUDA GPUs
  with native bf16 (compute capability ≥ 8.0) or on the CPU; the logits come back as float32, so every loss, the
  soft smoothed classifier, MACER's Φ⁻¹ and the attacks' updates stay fp32. fp32 on GPUs without native bf16
  (P100, V100; fp16 would need loss scaling). MACER's surrogate multiplies the logits by β = 16, where bf16's spacing
  of 0.0625 between 8 and 16 quantises β·Δlogit in steps of about 1 (`python -m methods bench --only precision`
  measures what bf16 changes);
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
TF32 is a setting of its own (`train.tf32`, default false, on both paths): PyTorch allows TF32 convolutions on
Ampere-or-later GPUs by default, which is not the papers' fp32; run.json records the setting.

Noise is drawn on x's device by every method on both paths (methods/core/noise.py; backward smoothing's output noise ξ,
B × C numbers, is expanded from a seed on the CPU by design, so one seed gives one ξ on every device, and copied).
Evaluation passes (eval_each_epoch, select_best) use the plain fp32 model on both paths. The numerics differ from
the reference path (bf16, kernel choice, fusion, the augmentation's RNG), so `fast` is part of the spec.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.errors import ConfigError, one_line
from ..core.io import allow_tf32
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
            "autocast": self.autocast_dtype is not None,
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
    """Cross-field rules of the train section: `compile` and `dtype: bfloat16` are settings of the fast path."""
    if train_cfg.get("dtype", "float32") != "float32" and not train_cfg.get("fast", False):
        raise ConfigError(
            f"config error at {where}.dtype: dtype: {train_cfg['dtype']} needs fast: true (the reference path is "
            f"plain eager fp32); drop train.dtype or set train.fast: true"
        )
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
    wants_bf16 = cfg.get("dtype", "float32") == "bfloat16" and "autocast" not in limits
    autocast = wants_bf16 and (native_bf16(device) or device.type == "cpu")
    if wants_bf16 and not autocast:
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


def _backward_compiled_in_forward():
    """AOTAutograd compiles a graph's backward lazily, at its first backward(), which runs in the method's step and
    not inside CompiledWithFallback's guard; this asks for it at the forward instead, so that a backward that
    cannot be compiled falls back too. A no-op on a torch without the switch."""
    try:
        from torch._functorch import config
    except ImportError:  # pragma: no cover - a torch without functorch's config
        return contextlib.nullcontext()
    if not hasattr(config, "force_non_lazy_backward_lowering"):
        return contextlib.nullcontext()
    return config.patch(force_non_lazy_backward_lowering=True)


class CompiledWithFallback(nn.Module):
    """torch.compile of the fast path's FastModel that falls back to the FastModel itself, eagerly, when compiling
    fails (when torch.compile is called, or at any compiled call: no compiler toolchain, an op inductor cannot
    lower, a failing backward compile): one warning, and `fallback` says why (run.json's train_path records it).
    Eager computes the same model, so falling back is safe; running out of memory is not a compilation failure and
    is raised as it is. Every other attribute is the FastModel's (and so the model's)."""

    def __init__(self, eager: FastModel, backend: str):
        super().__init__()
        self.eager = eager
        self.fallback: str | None = None
        try:
            compiled = torch.compile(eager, backend=backend)
        except Exception as exc:  # e.g. a Python version dynamo does not support
            compiled = None
            self._fall_back(exc)
        self.__dict__["_compiled"] = compiled  # not a submodule: it holds `eager`'s parameters, registered once

    @property
    def compiled(self) -> bool:
        """Compiled code runs (no fallback taken so far)."""
        return self.__dict__["_compiled"] is not None

    def _fall_back(self, exc: Exception) -> None:
        self.__dict__["_compiled"] = None
        self.fallback = f"torch.compile failed ({one_line(exc)}); training on the eager fast path"
        warnings.warn(
            f"{self.fallback} (recorded in run.json's train_path; `train.compile: false` skips compiling)",
            RuntimeWarning,
            stacklevel=3,
        )

    def forward(self, *args, **kwargs):
        compiled = self.__dict__["_compiled"]
        if compiled is not None:
            try:
                with _backward_compiled_in_forward():
                    return compiled(*args, **kwargs)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:
                self._fall_back(exc)
        return self.eager(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "eager":
                raise
            return getattr(self._modules["eager"], name)


def step_model(model: nn.Module, path: FastPath, device: torch.device) -> nn.Module:
    """What the train steps call: the model itself on the reference path, else its FastModel, compiled if planned
    (falling back to the FastModel if compiling fails: CompiledWithFallback)."""
    if not (path.channels_last or path.autocast_dtype or path.compile):
        return model
    wrapped = FastModel(model, path, device.type)
    return CompiledWithFallback(wrapped, COMPILE_BACKEND) if path.compile else wrapped


def compile_record(step_model: nn.Module, path: FastPath) -> dict:
    """run.json's (and the log's) account of compilation: asked for by the plan, actually running, and why not."""
    guard = step_model if isinstance(step_model, CompiledWithFallback) else None
    return {
        "compile_requested": path.compile,
        "compiled": guard is not None and guard.compiled,
        "fallback": guard.fallback if guard is not None else None,
    }


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
def backend_flags(fast: bool, device: torch.device, tf32: bool = False):
    """cudnn.benchmark for the fast path on CUDA, and TF32 on CUDA as `tf32` says (both paths), restored afterwards."""
    with allow_tf32(tf32, device):
        if not (fast and device.type == "cuda"):
            yield
            return
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = previous
