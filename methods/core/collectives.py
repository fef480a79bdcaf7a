"""What a method's train step needs to know about the processes it runs in (DDP under torchrun), and nothing more.

A step that takes several optimizer steps per loader batch (multi-noise SmoothAdv, ADRE-ADV) must agree with the
other ranks on how many, and weight each rank's piece by its share of the step's images (`rank_sizes`,
`near_equal`, `gradient_share`); an attack's input-only backward passes must not trigger DDP's gradient
reduction (`no_sync`). Outside torchrun every function is the one-process identity. The process group itself, the
DDP wrapper and its weighted all-reduce hook are the training loop's (methods/train/distributed.py): `gradient_share`
reads the hook's state that `train.distributed.wrap` attaches to the wrapped model as `hook_state`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@contextlib.contextmanager
def gradient_share(model, share: float):
    """Within: this rank's gradient enters the weighted all-reduce with `share` (its images' share of the current
    optimizer step's global mean) instead of the loader batch's n_rank / n_batch. For steps that cut the batch into
    several optimizer steps (multi-noise SmoothAdv); nothing where the model is not DDP-wrapped."""
    state = model.__dict__.get("hook_state") if isinstance(model, DistributedDataParallel) else None
    if state is None:
        yield
        return
    before, state.weight = state.weight, share
    try:
        yield
    finally:
        state.weight = before


def rank_sizes(n: int, device: torch.device) -> list[int]:
    """Every rank's n, in rank order (one all-gather); [n] where no process group is running."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [n]
    out = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(out, torch.tensor([n], dtype=torch.long, device=device))
    return [int(t) for t in out]


def near_equal(n: int, parts: int) -> list[int]:
    """The sizes `torch.tensor_split(·, parts)` cuts n items into: the first n mod parts one larger."""
    return [n // parts + (1 if j < n % parts else 0) for j in range(parts)]


def no_sync(model):
    """Inside an attack (frozen parameters, gradients w.r.t. the input only) DDP must not expect a reduction."""
    return model.no_sync() if isinstance(model, DistributedDataParallel) else contextlib.nullcontext()
