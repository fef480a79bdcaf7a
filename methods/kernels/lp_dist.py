"""The ℓp-distance op y[b, o] = ‖x[b] − W[o]‖_p of ℓ∞-distance nets (methods/linf_dist.py), forward and backward.

A naive layer materialises a B × out × in tensor (512 × 5120 × 5120 float32 ≈ 54 GB). `lp_dist` tiles it over the
output (and, if needed, batch) dimension with a per-tile memory budget, in forward and backward, using plain torch
ops on whatever device the input is on; on float32 CUDA tensors it dispatches to the Triton kernels
(`lp_dist_triton`), which never hold the B × out × in tensor at all. `interval_lp_dist` bounds the p = ∞ distance
over an input box (the interval certificate). `python -m methods.bench.linf_layer` measures both paths.
"""

from __future__ import annotations

import math

import torch

from . import lp_dist_triton

#: Working-set budget of one tile of lp_dist / interval bounds (all its temporaries together), used when
#: chunk_bytes is None. Big tiles amortise kernel launches on a GPU; on a CPU cache-sized tiles run 2-3× faster
#: than 64-256 MB ones (methods/bench/linf_layer.py: 16 × 5120 × 5120, 2 cores).
DEFAULT_CHUNK_BYTES = {"cuda": 256 * 2**20, "cpu": 8 * 2**20}

#: lp_dist on float32 CUDA tensors runs the Triton kernels (methods/kernels/lp_dist_triton.py) unless this is False
#: (METHODS_LINF_TRITON=0 in the environment at import, which also keeps Triton from being imported): then, and
#: everywhere else, the chunked torch path.
USE_TRITON = lp_dist_triton.SWITCH != "0"


def _budget(chunk_bytes, device: torch.device) -> int:
    if chunk_bytes is None:
        return DEFAULT_CHUNK_BYTES.get(device.type, DEFAULT_CHUNK_BYTES["cuda"])
    return int(chunk_bytes)


def check_p(p: float) -> float:
    p = float(p)
    if not (p >= 1):  # also rejects NaN
        raise ValueError(f"p must be >= 1 or inf, got {p!r}")
    return p


def plan_chunks(batch: int, out: int, inp: int, itemsize: int, chunk_bytes: int, buffers: int = 1):
    """(batch rows, output columns) per tile so that `buffers` tiles of batch × out × inp fit in chunk_bytes.

    Whole batches first (x is then read once per tile), split the batch only when one output column is too big.
    A single (1, 1, inp) tile is the floor even if it exceeds the budget.
    """
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
    elems = max(1, int(chunk_bytes) // (itemsize * buffers))
    if batch * inp <= elems:
        return batch, max(1, min(out, elems // (batch * inp)))
    return max(1, min(batch, elems // inp)), 1


def _tiles(batch: int, out: int, bc: int, oc: int):
    for o0 in range(0, out, oc):
        for b0 in range(0, batch, bc):
            yield slice(b0, min(b0 + bc, batch)), slice(o0, min(o0 + oc, out))


class _LpDist(torch.autograd.Function):
    """‖x[b] − w[o]‖_p, tiled. p = ∞ saves the argmax (B × out indices) so its backward is a scatter;
    finite p saves the norms and recomputes the differences tile by tile in backward."""

    @staticmethod
    def forward(ctx, x, weight, p, chunk_bytes):
        batch, inp = x.shape
        out = weight.shape[0]
        bc, oc = plan_chunks(batch, out, inp, x.element_size(), chunk_bytes, buffers=1)
        result = x.new_empty(batch, out)
        if math.isinf(p):
            index = torch.empty(batch, out, dtype=torch.long, device=x.device)
            for bs, os_ in _tiles(batch, out, bc, oc):
                diff = (x[bs, None, :] - weight[None, os_, :]).abs_()
                idx = diff.argmax(-1)  # ties: the first index (torch.argmax's documented rule)
                index[bs, os_] = idx
                result[bs, os_] = diff.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
            ctx.save_for_backward(x, weight, index)
        else:
            for bs, os_ in _tiles(batch, out, bc, oc):
                diff = (x[bs, None, :] - weight[None, os_, :]).abs_()
                # ‖v‖_p = m·‖v/m‖_p with m = max|v_i|: no overflow for p up to 1000 (|v|^p alone would)
                m = diff.amax(-1, keepdim=True)
                safe = torch.where(m > 0, m, torch.ones_like(m))
                norm = diff.div_(safe).pow_(p).sum(-1).pow_(1.0 / p).mul_(m.squeeze(-1))
                result[bs, os_] = norm
            ctx.save_for_backward(x, weight, result)
        ctx.p, ctx.chunk_bytes = p, chunk_bytes
        return result

    @staticmethod
    def backward(ctx, grad):
        x, weight, saved = ctx.saved_tensors
        p = ctx.p
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        batch, inp = x.shape
        out = weight.shape[0]
        grad = grad.contiguous()
        grad_x = grad_w = None
        if math.isinf(p):
            # the whole gradient goes to the argmax coordinate, with sign(x_i − w_i); 0 where x == w there
            index = saved
            flat = index + torch.arange(out, device=x.device).unsqueeze(0) * inp  # into weight.view(-1)
            sign = torch.sign(x.gather(1, index) - weight.reshape(-1)[flat])
            g = grad * sign
            if need_x:
                grad_x = torch.zeros_like(x).scatter_add_(1, index, g)
            if need_w:
                grad_w = torch.zeros(out * inp, dtype=weight.dtype, device=weight.device)
                grad_w = grad_w.index_add_(0, flat.reshape(-1), g.reshape(-1), alpha=-1).view(out, inp)
            return grad_x, grad_w, None, None

        # d‖v‖_p / dv_i = sign(v_i) · (|v_i| / ‖v‖_p)^{p−1}; the ratio is ≤ 1, so no overflow; ‖v‖ = 0 → 0
        norm = saved
        safe = torch.where(norm > 0, norm, torch.ones_like(norm))
        scaled_grad = torch.where(norm > 0, grad, torch.zeros_like(grad))
        grad_x = torch.zeros_like(x) if need_x else None
        grad_w = torch.zeros_like(weight) if need_w else None
        bc, oc = plan_chunks(batch, out, inp, x.element_size(), ctx.chunk_bytes, buffers=2)
        for bs, os_ in _tiles(batch, out, bc, oc):
            v = x[bs, None, :] - weight[None, os_, :]
            term = v.abs().div_(safe[bs, os_].unsqueeze(-1))
            term = term.pow_(p - 1) if p != 1 else term.fill_(1)
            term.mul_(v.sign_()).mul_(scaled_grad[bs, os_].unsqueeze(-1))
            if need_x:
                grad_x[bs] += term.sum(1)
            if need_w:
                grad_w[os_] -= term.sum(0)
        return grad_x, grad_w, None, None


def lp_dist(x: torch.Tensor, weight: torch.Tensor, p: float, chunk_bytes: int | None = None):
    """out[b, o] = ‖x[b] − weight[o]‖_p for x (B, in), weight (out, in), p ≥ 1 or inf, never holding more than
    about chunk_bytes (None: DEFAULT_CHUNK_BYTES for x's device) of B × out × in temporaries at once.

    p = ∞ backward: the gradient goes to ONE coordinate, the first argmax (torch.argmax's tie rule; the official CUDA
    kernel takes the first in its loop order). An autograd `amax` (see `naive_lp_dist`) would instead split it
    evenly across tied coordinates; the two agree whenever the max is unique.
    """
    p = check_p(p)
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"expected x (B, in) and weight (out, in), got {tuple(x.shape)} and {tuple(weight.shape)}")
    if x.dtype != weight.dtype or x.device != weight.device:
        raise ValueError(f"x and weight differ: {x.dtype}/{x.device} vs {weight.dtype}/{weight.device}")
    if USE_TRITON and x.is_cuda and lp_dist_triton.available(x, weight):
        return lp_dist_triton.lp_dist(x, weight, p, chunk_bytes)
    return _LpDist.apply(x, weight, p, _budget(chunk_bytes, x.device))


def naive_lp_dist(x: torch.Tensor, weight: torch.Tensor, p: float):
    """The broadcast B × out × in version through autograd: the test oracle (small sizes only).
    It overflows for large p with |x − w| > 1 and splits the p = ∞ gradient across ties."""
    p = check_p(p)
    diff = x[:, None, :] - weight[None, :, :]
    if math.isinf(p):
        return diff.abs().amax(-1)
    return torch.linalg.vector_norm(diff, ord=p, dim=-1)


@torch.no_grad()
def interval_lp_dist(lower, upper, weight, chunk_bytes: int | None = None):
    """Bounds of ‖x − w‖∞ over the box lower ≤ x ≤ upper, tiled like lp_dist:
    lo = max_i dist(w_i, [l_i, u_i]), hi = max_i max(|l_i − w_i|, |u_i − w_i|)."""
    batch, inp = lower.shape
    out = weight.shape[0]
    bc, oc = plan_chunks(batch, out, inp, lower.element_size(), _budget(chunk_bytes, lower.device), buffers=2)
    lo, hi = lower.new_empty(batch, out), lower.new_empty(batch, out)
    for bs, os_ in _tiles(batch, out, bc, oc):
        below = lower[bs, None, :] - weight[None, os_, :]  # l − w
        min_b, max_b = torch.aminmax(below, dim=-1)
        above = upper[bs, None, :] - weight[None, os_, :]  # u − w
        min_a, max_a = torch.aminmax(above, dim=-1)
        lo[bs, os_] = torch.maximum(max_b, -min_a).clamp_(min=0)
        hi[bs, os_] = torch.maximum(max_a, -min_b)
    return lo, hi
