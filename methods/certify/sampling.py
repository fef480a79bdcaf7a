"""Monte-Carlo votes for randomized smoothing: how often f predicts each class on noisy copies of an image.

Every smoothing certifier is a *sampling plan*: a generator that yields how many noisy samples it wants next,
receives their per-class counts, and returns its answer (CERTIFY: n0 selection draws, then n; the adaptive
certifier: n0, then one request per look until every radius is decided). Two drivers feed plans:

- plain (`certify.fast: false`): one image at a time, one forward pass per block of `batch_size` draws (Cohen's
  loop, with the tally kept on the device);
- fast (the default): the blocks of many images packed into one forward pass of a fixed shape, counts kept on the
  device per image slot and read back once per completed request, channels_last, bf16 autocast where the device
  supports it, torch.compile with static shapes (CUDA graphs on GPU), under inference_mode. A finished image's slot
  is refilled at once, and requests shorter than a block let more images into the round (up to 4 × the images a
  round of full blocks holds), so plans of different lengths (the adaptive certifier) keep the batch full.

The noise is defined once for both drivers: image i's draws come from its own generator, `batch_size` at a time
(the last block of a request holding the remainder), as N(0, I) in NCHW order scaled by σ. In fp32 the fast path
therefore sees exactly the plain path's noise; only the floating-point order of the forward pass differs. In bf16
the base classifier being certified is the bf16 one (the arg-max of its logits); every output records the dtype.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..core.errors import one_line

#: A sampling plan: yields sample counts wanted, is sent each request's per-class counts (CPU int64), returns.
Plan = Generator[int, torch.Tensor, Any]


@dataclass
class Outcome:
    """A plan's answer for one image, the noisy samples it used and the wall time spent on them."""

    result: Any
    samples: int
    seconds: float


@dataclass(frozen=True)
class FastSettings:
    """How the fast path runs f; `describe()` is what outputs record."""

    dtype: torch.dtype = torch.float32
    channels_last: bool = True
    compile: bool = False
    max_batch: int | None = None  # samples per forward pass; None = chosen from free memory

    def describe(self) -> dict:
        return {"dtype": dtype_name(self.dtype), "channels_last": self.channels_last, "compile": self.compile}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def bf16_supported(device: torch.device) -> bool:
    """Native bf16 matrix units: CUDA (Ampere and later) or a CPU with AVX512-BF16 / AMX (else autocast emulates)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """certify.dtype → a torch dtype: 'auto' is bfloat16 where the device computes it natively, else float32."""
    if name == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def run_plan(plan: Plan, sample: Callable[[int], torch.Tensor]) -> tuple[Any, int]:
    """Drive one plan with `sample(num) -> counts`: (its answer, samples it used)."""
    used = 0
    try:
        request = next(plan)
        while True:
            counts = sample(request)
            used += request
            request = plan.send(counts)
    except StopIteration as stop:
        return stop.value, used


def plain_counts(
    model: torch.nn.Module,
    x: torch.Tensor,
    num: int,
    sigma: float,
    num_classes: int,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """f's votes on `num` noisy copies of x (C, H, W), one forward pass per block of `batch_size` (the last holds the
    remainder); counts stay on the device until the end (one host sync per call)."""
    model.eval()
    counts = torch.zeros(num_classes, dtype=torch.long, device=x.device)
    with torch.inference_mode():
        remaining = num
        while remaining > 0:
            size = min(batch_size, remaining)
            batch = x.unsqueeze(0).expand(size, *x.shape)
            noise = torch.randn(batch.shape, device=x.device, dtype=x.dtype, generator=generator)
            predictions = model(batch + noise * sigma).argmax(1)
            counts += torch.bincount(predictions, minlength=num_classes)
            remaining -= size
    return counts.cpu()


Item = tuple[Any, torch.Tensor, torch.Generator | None, Plan]  # (key, image (C, H, W), its generator, its plan)


def run_plain(
    model: torch.nn.Module, num_classes: int, sigma: float, batch_size: int, items: Iterable[Item]
) -> Iterator[tuple[Any, Outcome]]:
    """The plain path: each image's plan driven to its end before the next image starts."""
    for key, x, generator, plan in items:
        t0 = time.perf_counter()
        result, used = run_plan(
            plan, lambda num: plain_counts(model, x, num, sigma, num_classes, batch_size, generator)
        )
        yield key, Outcome(result, used, time.perf_counter() - t0)


@dataclass
class _Slot:
    key: Any
    x: torch.Tensor
    generator: torch.Generator | None
    plan: Plan
    remaining: int = 0  # samples of the current request not drawn yet
    used: int = 0
    seconds: float = 0.0
    done: bool = False

    def advance(self, counts: torch.Tensor | None) -> Any:
        """Start the plan (counts None) or send it the finished request's counts; returns its answer when done."""
        try:
            request = next(self.plan) if counts is None else self.plan.send(counts)
        except StopIteration as stop:
            self.done = True
            return stop.value
        if request <= 0:
            raise ValueError(f"a sampling plan asked for {request} samples")
        self.remaining = request
        return None


def _free_memory_batch(
    shape: tuple[int, ...], device: torch.device, forward: Callable[[torch.Tensor], torch.Tensor]
) -> int:
    """Samples per forward pass that fit in half the free memory (CUDA: measured on a probe batch). On the CPU
    4 MB of fp32 input per pass, within [256, 4096] (4,096 digits, 341 CIFAR-10, 256 ImageNet images): measured
    here, larger passes are slower per sample once their activations leave the caches."""
    if device.type != "cuda":
        return int(min(4096, max(256, (1 << 22) // (4 * math.prod(shape)))))
    probe = 64
    x = torch.zeros((probe, *shape), device=device)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        forward(x)
    torch.cuda.synchronize(device)
    per_sample = max(1, (torch.cuda.max_memory_allocated(device) - base) // probe)
    free, _ = torch.cuda.mem_get_info(device)
    return max(probe, min(1 << 17, int(0.5 * free // per_sample)))


def _cudagraph_skips() -> int:
    """How many graphs inductor has compiled without CUDA graphs so far (it logs why); 0 where torch lacks the
    counter."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - a torch without dynamo's counters
        return 0
    return int(counters["inductor"]["cudagraph_skips"])


class FastSampler:
    """Packs the sample blocks of many images into fixed-shape forward passes; see the module docstring."""

    def __init__(
        self,
        model: torch.nn.Module,
        num_classes: int,
        sigma: float,
        batch_size: int,
        sample_shape: tuple[int, ...],
        device: torch.device,
        settings: FastSettings = FastSettings(),
    ):
        self.num_classes, self.sigma, self.batch_size = num_classes, sigma, batch_size
        self.shape, self.device, self.settings = tuple(sample_shape), device, settings
        self.layout = (
            torch.channels_last if settings.channels_last and len(self.shape) == 3 else torch.contiguous_format
        )
        model = model.eval()
        if self.layout == torch.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.compiled = False  # compiled code ran (compile asked for and no fallback taken)
        self.cuda_graphs = False  # ... and inductor kept its CUDA graphs (it skips them for some graphs, and logs why)
        self.fallback: str | None = None  # why the sampler runs eagerly although compile was asked for
        self._forward, eager = self._build_forward(model)
        max_batch = settings.max_batch or _free_memory_batch(self.shape, device, eager)  # eager: no extra compile
        # A round holds up to `capacity` samples (slots × batch_size, whole passes of `chunk`, a static shape). Up to
        # `in_flight` images are held at once, so that requests shorter than a block (CERTIFY's n0 selection draws,
        # the adaptive certifier's first looks) still fill the round instead of running a mostly idle pass.
        self.slots = max(1, max_batch // batch_size)
        self.in_flight = 4 * self.slots
        self.chunk = min(max_batch, self.slots * batch_size)
        self.capacity = math.ceil(self.slots * batch_size / self.chunk) * self.chunk

    def _build_forward(self, model: torch.nn.Module):
        """(the forward pass the sampler runs — compiled where asked —, its eager version).

        A compilation failure, when torch.compile is called or at the first compiled pass (no compiler toolchain,
        an unsupported op, a CUDA-graph capture error), falls back to the eager pass with one warning and is
        recorded (`describe()`: compiled, cuda_graphs, fallback): eager computes the same classifier. Running out
        of memory is not a compilation failure and is raised as it is."""
        dtype, device = self.settings.dtype, self.device

        def predict(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                return model(x).argmax(1)

        if not self.settings.compile:
            return predict, predict
        graphs = device.type == "cuda"
        try:
            if graphs:  # CUDA graphs: one launch per pass
                compiled = torch.compile(predict, dynamic=False, mode="reduce-overhead")
            else:  # freezing folds BatchNorm into the convolutions and prepacks the weights (the model never changes)
                compiled = torch.compile(predict, dynamic=False, options={"freezing": True})
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            self._fall_back(exc)
            return predict, predict

        def guarded(x: torch.Tensor) -> torch.Tensor:
            nonlocal compiled
            if compiled is not predict:
                skips = _cudagraph_skips()
                try:
                    out = compiled(x)
                except torch.OutOfMemoryError:
                    raise
                except Exception as exc:
                    self._fall_back(exc)
                    compiled = predict
                else:
                    if not self.compiled:  # the first compiled pass: did inductor keep its CUDA graphs?
                        self.compiled = True
                        self.cuda_graphs = graphs and _cudagraph_skips() == skips
                    return out
            return predict(x)

        return guarded, predict

    def _fall_back(self, exc: Exception) -> None:
        """Eager from now on: one warning, and the reason kept for the outputs."""
        self.compiled = self.cuda_graphs = False
        self.fallback = f"torch.compile failed ({one_line(exc)}); running eagerly"
        warnings.warn(
            f"{self.fallback} (recorded in the certify sidecar's `fallback`; `certify.compile: false` skips compiling)",
            RuntimeWarning,
            stacklevel=4,
        )

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The fast path's predictions for one forward pass of noisy samples x (forward_batch, *sample_shape), in the
        sampler's layout, dtype and compilation: what `python -m methods doctor` compares with the plain path
        sample by sample."""
        with torch.inference_mode():
            x = x.to(self.device).contiguous(memory_format=self.layout)
            return self._forward(x).clone()

    def describe(self) -> dict:
        """What the certify sidecar records of the path. `compile` (kept for older readers) equals `compiled`: the
        compiled code ran; `compile_requested` is the setting."""
        return {
            "path": "fast",
            **self.settings.describe(),
            "compile": self.compiled,
            "compile_requested": self.settings.compile,
            "compiled": self.compiled,
            "cuda_graphs": self.cuda_graphs,
            "fallback": self.fallback,
            "forward_batch": self.chunk,
            "images_per_round": self.slots,
            "images_in_flight": self.in_flight,
        }

    def run(self, items: Iterable[Item]) -> Iterator[tuple[Any, Outcome]]:
        """Drive every item's plan; yields (key, Outcome) as each finishes (not in input order)."""
        with torch.inference_mode():
            yield from self._run(iter(items))

    def _run(self, items: Iterator[Item]) -> Iterator[tuple[Any, Outcome]]:
        classes, dev, held, capacity = self.num_classes, self.device, self.in_flight, self.capacity
        slots: list[_Slot | None] = [None] * held
        counts = torch.zeros(held, classes, dtype=torch.long, device=dev)
        buffer = torch.zeros((capacity, *self.shape), device=dev).contiguous(memory_format=self.layout)
        exhausted, start = False, 0
        while True:
            t0 = time.perf_counter()
            served, sizes, instant, offset = [], [], [], 0

            def draw(s: int) -> bool:
                """Image s's next block into the round if it has one and it fits: its own generator, NCHW order, the
                plain path's block sizes."""
                nonlocal offset
                slot = slots[s]
                size = min(self.batch_size, slot.remaining)
                if size == 0 or offset + size > capacity:
                    return False
                noise = torch.randn((size, *self.shape), device=dev, generator=slot.generator)
                torch.add(slot.x, noise.mul_(self.sigma), out=buffer[offset : offset + size])
                slot.remaining -= size
                slot.used += size
                served.append(s)
                sizes.append(size)
                offset += size
                return True

            def in_flight() -> list[int]:  # round-robin order, from where the last full round stopped
                return sorted((s for s in range(held) if slots[s] is not None), key=lambda s: (s - start) % held)

            # 1. one block of every image in flight
            for s in in_flight():
                if not draw(s):
                    start = s
                    break
            # 2. room left: start new images (a plan that asks for nothing is answered after the round)
            while offset < capacity and not exhausted and None in slots:
                item = next(items, None)
                if item is None:
                    exhausted = True
                    break
                slot = _Slot(*item)
                result = slot.advance(None)
                if slot.done:
                    instant.append((slot.key, Outcome(result, 0, 0.0)))
                    continue
                slot.x = slot.x.to(dev)
                free = slots.index(None)
                slots[free] = slot
                if not draw(free):
                    break
            # 3. room left and no image to start (the last images of a run): more blocks of those in flight
            more = True
            while more and offset < capacity:
                more = False
                for s in in_flight():
                    more = draw(s) or more
            if not served:
                yield from instant
                return
            # each pass's output copied at once: under CUDA graphs the next replay reuses its buffer. Compiled code
            # gets whole chunks (a static shape: no recompilation, one CUDA graph); eager passes stop at `offset`, so
            # a round of short requests (the sequential certifier's looks) does not pay for a full chunk of stale rows.
            static = self.settings.compile and self.fallback is None
            predictions = torch.cat(
                [
                    self._forward(buffer[i : i + self.chunk if static else min(i + self.chunk, offset)]).clone()
                    for i in range(0, offset, self.chunk)
                ]
            )
            owner = torch.repeat_interleave(torch.tensor(served), torch.tensor(sizes)).to(dev, non_blocking=True)
            counts.view(-1).add_(torch.bincount(owner * classes + predictions[:offset], minlength=counts.numel()))
            finished = [s for s in dict.fromkeys(served) if slots[s].remaining == 0]
            if finished:  # one host sync for every request completed in this round
                rows = counts[finished].cpu()
                counts[finished] = 0
            seconds = time.perf_counter() - t0
            for s, size in zip(served, sizes):  # the round's time, shared by the samples each image drew
                slots[s].seconds += seconds * size / offset
            for row, s in enumerate(finished):
                slot = slots[s]
                result = slot.advance(rows[row])
                if slot.done:
                    slots[s] = None
                    yield slot.key, Outcome(result, slot.used, slot.seconds)
            yield from instant
