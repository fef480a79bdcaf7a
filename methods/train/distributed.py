"""Multi-process data-parallel training (torchrun + DistributedDataParallel), kept out of the training loop's way.

`torchrun --standalone --nproc_per_node=N -m methods train ...` starts N processes; `setup()` reads torchrun's
environment and joins the process group (NCCL on CUDA, gloo on the CPU). The design goal is that N processes on a
global batch B train the same model as one process on B:
- every rank walks the same global batch order (the epoch's seeded sampler) and takes its contiguous slice of each
  batch (`ShardedBatches`; a final batch smaller than N is skipped by every rank, so no rank idles in a collective);
- gradients are averaged with weights n_rank / n_batch (`weighted_allreduce_hook`), so an uneven last batch still
  gives the gradient of the mean over the whole batch (a step that takes several optimizer steps per batch sets
  each one's weights with `gradient_share`);
- losses, counts and accuracies are summed across ranks for the log; only rank 0 writes files.
Exactly equal (up to float summation order) for deterministic single-step objectives; noise draws differ (each rank
draws for its own slice, seeded per rank), as do BatchNorm batch statistics (per rank, as usual with DDP).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where collectives' tensors live (CUDA for NCCL)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = Context()


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join torchrun's process group when WORLD_SIZE > 1; on CUDA each rank takes GPU LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return SINGLE, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    ctx = Context(rank, world, local_rank, str(device))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ctx, device


def teardown(ctx: Context) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


class ShardedBatches:
    """The epoch's global batches (`batch_size` images in the order of `sampler`, the last one smaller), each cut
    into `world` contiguous slices: this rank's slice. A batch smaller than `world` is skipped by every rank."""

    def __init__(self, sampler, batch_size: int, ctx: Context):
        self.sampler, self.batch_size, self.ctx = sampler, batch_size, ctx

    def global_sizes(self) -> list[int]:
        """The global size of each batch, in order, computed without drawing the sampler's order."""
        n = len(self.sampler)
        sizes = [self.batch_size] * (n // self.batch_size) + ([n % self.batch_size] if n % self.batch_size else [])
        return [size for size in sizes if size >= self.ctx.world]

    def __iter__(self):
        order = list(self.sampler)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            if len(batch) < self.ctx.world:
                continue
            lo, hi = (len(batch) * r // self.ctx.world for r in (self.ctx.rank, self.ctx.rank + 1))
            yield batch[lo:hi]

    def __len__(self) -> int:
        return len(self.global_sizes())


class Wrapped(DistributedDataParallel):
    """DDP that still answers the methods' questions about their model (ℓ∞-dist nets read their own layers)."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


class HookState:
    """The weight n_rank / n_batch of this rank's gradient in the current step, set by the loop before each step."""

    weight: float = 1.0


def weighted_allreduce_hook(state: HookState, bucket):  # no annotation: DDP checks it literally
    tensor = bucket.buffer()
    tensor.mul_(state.weight)
    return dist.all_reduce(tensor, async_op=True).get_future().then(lambda fut: fut.value()[0])


def wrap(model: torch.nn.Module, ctx: Context, device: torch.device) -> tuple[torch.nn.Module, HookState | None]:
    """The model the train steps see: DDP with the weighted average where distributed, else the model itself."""
    if not ctx.active:
        return model, None
    ddp = Wrapped(model, device_ids=[device.index] if device.type == "cuda" else None)
    state = HookState()
    ddp.register_comm_hook(state, weighted_allreduce_hook)
    ddp.hook_state = state  # for `gradient_share`: a step that takes several optimizer steps per batch
    return ddp, state


def all_sum(ctx: Context, *values: torch.Tensor) -> list[torch.Tensor]:
    """Element-wise sums across ranks (the values themselves where not distributed)."""
    if not ctx.active:
        return list(values)
    out = []
    for v in values:
        v = v.detach().clone().double()
        dist.all_reduce(v)
        out.append(v)
    return out


def any_rank(ctx: Context, *flags: bool) -> list[bool]:
    """Whether any rank raised each flag (a stop signal, a checkpoint due): every rank acts on the same batch."""
    if not ctx.active:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def gather(ctx: Context, obj):
    """Every rank's `obj`, in rank order (a one-element list where not distributed)."""
    if not ctx.active:
        return [obj]
    out = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()
