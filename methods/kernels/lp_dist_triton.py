"""Triton kernels for the ℓp-dist layer y[b, o] = ‖x[b] − W[o]‖_p (finite p ≥ 1 and p = ∞), forward and backward.

Why: the layer is a "GEMM with max instead of sum". Written with broadcasting it materialises the
batch × out × in tensor x[:, None, :] − W[None, :, :]: 512 × 5120 × 5120 float32 ≈ 54 GB at the v2 paper's width,
and the chunked torch path in `methods/kernels/lp_dist.py` (`lp_dist`) still writes and reads every one of those
B·O·I numbers through GPU memory, tile by tile, several times per pass. The kernels here keep each difference in a
register: a program owns an output tile and loops over the reduced dimension, so the only tensors in memory are
x, W, the B × out outputs (plus, at p = ∞, the B × out argmax indices) and the gradients.

What they compute, and how it matches the chunked path (`lp_dist._LpDist`), which the tests use as the oracle:

* p = ∞, forward: y = max_i |x_i − w_i| and the FIRST index attaining it (strict `>` while scanning i upward:
  torch.argmax's tie rule). Saved: the int32 argmax, B × out.
  Backward: the whole gradient goes to that coordinate with sign(x_i − w_i) (0 where x_i == w_i): a B·O scatter
  (atomic adds: grad_x[b, i*] += g·s, grad_W[o, i*] −= g·s).
* finite p, forward: m = max_i |v_i|; y = m · (Σ_i (|v_i|/m)^p)^{1/p}, and y = 0 where m = 0 (two passes over i,
  max then the scaled sum, exactly the chunked path's order, so p up to 1000 cannot overflow). Saved: y.
  Backward: ∂y/∂v_i = sign(v_i) · (|v_i|/y)^{p−1} (≤ 1, no overflow), 0 where y = 0 or v_i = 0; p = 1 gives
  sign(v_i). Two kernels recompute v tile by tile: grad_x[b, i] = Σ_o c[b, o]·∂ (a program owns a (b, i) tile and
  loops over o) and grad_W[o, i] = −Σ_b c[b, o]·∂ (owns an (o, i) tile, loops over b), c = the incoming gradient.
  Deterministic (no atomics) at finite p.

Differences to expect: powers are exp2(p·log2 r) in float32, the same code in the interpreter and on the GPU
(Triton's interpreter cannot call libdevice's powf). On an NVIDIA GPU Triton lowers tl.log2 to libdevice's log2f
and tl.exp2 to the hardware ex2.approx (≈ 2 ulp), so each power term that matters (r^p ≥ 2^-24) is within ≈ 1e-6
relative of torch's pow, at any p; sums run in a different order; multiplying by 1/m instead of dividing by m is a
further ulp; NaN inputs are not propagated through the p = ∞ max as torch.amax would; and the p = ∞ backward's
atomic adds make grad_x / grad_W bitwise nondeterministic (as torch's CUDA scatter_add is).

Supported: float32 CUDA tensors (float64/half fall back to the chunked path), fewer than 2^31 elements in x, W
and the output (int32 offsets). `available(x, weight)` says whether the dispatch in `lp_dist.lp_dist` may use
this path; `METHODS_LINF_TRITON=0` (or `methods.kernels.lp_dist.USE_TRITON = False`) forces the chunked one.
The block sizes are untuned guesses (`BLOCKS`); the Triton CPU interpreter (TRITON_INTERPRET=1, set before this
module is imported) runs the same kernels on CPU tensors, which is how tests/test_linf_dist_triton.py checks them
without a GPU.
"""

from __future__ import annotations

import math
import os

import torch

#: Triton is imported only where its kernels can run: a CUDA device, or its CPU interpreter (TRITON_INTERPRET=1),
#: or where METHODS_LINF_TRITON=1 asks for it (compiling the kernels ahead of time without a GPU). Every rule starts
#: Python and imports this module (through the method registry); the import alone costs ≈0.5 s of a CPU job here.
SWITCH = os.environ.get("METHODS_LINF_TRITON")  # "0": off (kernels.lp_dist.USE_TRITON), "1": import regardless
WANTED = SWITCH == "1" or os.environ.get("TRITON_INTERPRET") == "1" or (SWITCH != "0" and torch.cuda.is_available())

triton = tl = None
if WANTED:
    try:
        import triton
        import triton.language as tl
    except ImportError:  # triton ships with the CUDA torch wheels
        triton = tl = None

#: Tile sizes (powers of two): forward (b, o) tile; backward (b or o, i) tile; p = ∞ scatter block; warps.
#: 64 × 64 tiles on 8 warps compile for sm_90 without register spills (≈ 90-115 registers a thread; ptxas -v).
BLOCKS = {"fwd_b": 64, "fwd_o": 64, "bwd_rows": 64, "bwd_k": 64, "scatter": 1024, "num_warps": 8}

_INT32_LIMIT = 2**31


def available(x, weight=None) -> bool:
    """True when the Triton path can run on x (and weight): triton importable and not in interpreter mode, CUDA
    float32 tensors on one device, every tensor involved under 2^31 elements."""
    if triton is None or INTERPRET or not isinstance(x, torch.Tensor):
        return False
    if not x.is_cuda or x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] == 0:
        return False
    if weight is not None:
        if weight.device != x.device or weight.dtype != x.dtype or weight.dim() != 2:
            return False
        if weight.numel() >= _INT32_LIMIT or x.shape[0] * weight.shape[0] >= _INT32_LIMIT:
            return False
    return x.numel() < _INT32_LIMIT


if triton is not None:

    @triton.jit
    def _fwd_inf_kernel(xt_ptr, wt_ptr, out_ptr, idx_ptr, B, O, I, BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr):
        # xt: (I, B), wt: (I, O) contiguous, so the column i of x and of W is one contiguous load per step
        rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        ro = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
        mb = rb < B
        mo = ro < O
        best = tl.full((BLOCK_B, BLOCK_O), -1.0, tl.float32)  # below every |v|: i = 0 always wins first
        arg = tl.zeros((BLOCK_B, BLOCK_O), dtype=tl.int32)
        for i in range(0, I):
            xi = tl.load(xt_ptr + i * B + rb, mask=mb, other=0.0)
            wi = tl.load(wt_ptr + i * O + ro, mask=mo, other=0.0)
            d = tl.abs(xi[:, None] - wi[None, :])
            take = d > best  # strict: a tie keeps the earlier (lower) index
            best = tl.where(take, d, best)
            arg = tl.where(take, i, arg)
        offs = rb[:, None] * O + ro[None, :]
        mask = mb[:, None] & mo[None, :]
        tl.store(out_ptr + offs, best, mask=mask)
        tl.store(idx_ptr + offs, arg, mask=mask)

    @triton.jit
    def _fwd_p_kernel(xt_ptr, wt_ptr, out_ptr, B, O, I, p, BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr):
        rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        ro = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
        mb = rb < B
        mo = ro < O
        m = tl.zeros((BLOCK_B, BLOCK_O), dtype=tl.float32)
        for i in range(0, I):
            xi = tl.load(xt_ptr + i * B + rb, mask=mb, other=0.0)
            wi = tl.load(wt_ptr + i * O + ro, mask=mo, other=0.0)
            m = tl.maximum(m, tl.abs(xi[:, None] - wi[None, :]))
        scale = tl.where(m > 0, 1.0 / tl.where(m > 0, m, 1.0), 1.0)
        s = tl.zeros((BLOCK_B, BLOCK_O), dtype=tl.float32)
        for i in range(0, I):
            xi = tl.load(xt_ptr + i * B + rb, mask=mb, other=0.0)
            wi = tl.load(wt_ptr + i * O + ro, mask=mo, other=0.0)
            r = tl.abs(xi[:, None] - wi[None, :]) * scale  # ≤ 1 (up to an ulp): r^p cannot overflow
            s += tl.exp2(tl.log2(r) * p)  # r = 0 → exp2(−inf) = 0
        # s ≥ 1 where m > 0; m = 0 → s = 0 → 0^(1/p)·0 = 0
        y = m * tl.exp2(tl.log2(s) / p)
        offs = rb[:, None] * O + ro[None, :]
        tl.store(out_ptr + offs, y, mask=mb[:, None] & mo[None, :])

    @triton.jit
    def _dnorm(v, inv_norm, pm1):
        """sign(v)·(|v|/‖·‖)^(p−1), and 0 where v = 0 (also covers p = 1, where 0^0 would be NaN)."""
        t = tl.exp2(tl.log2(tl.abs(v) * inv_norm) * pm1)
        return tl.where(v > 0, t, tl.where(v < 0, -t, 0.0))

    @triton.jit
    def _bwd_p_x_kernel(
        x_ptr, w_ptr, ct_ptr, invt_ptr, gx_ptr, B, O, I, pm1, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr
    ):
        # grad_x[b, i] = Σ_o c[b, o]·dnorm(x[b, i] − w[o, i]); ct, invt: (O, B) so a step loads a contiguous row
        rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        mb = rb < B
        mk = rk < I
        mask = mb[:, None] & mk[None, :]
        xt = tl.load(x_ptr + rb[:, None] * I + rk[None, :], mask=mask, other=0.0)
        acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
        for o in range(0, O):
            wo = tl.load(w_ptr + o * I + rk, mask=mk, other=0.0)
            c = tl.load(ct_ptr + o * B + rb, mask=mb, other=0.0)
            inv = tl.load(invt_ptr + o * B + rb, mask=mb, other=1.0)
            acc += c[:, None] * _dnorm(xt - wo[None, :], inv[:, None], pm1)
        tl.store(gx_ptr + rb[:, None] * I + rk[None, :], acc, mask=mask)

    @triton.jit
    def _bwd_p_w_kernel(
        x_ptr, w_ptr, c_ptr, inv_ptr, gw_ptr, B, O, I, pm1, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr
    ):
        # grad_w[o, i] = −Σ_b c[b, o]·dnorm(x[b, i] − w[o, i]); c, inv: (B, O)
        ro = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
        rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        mo = ro < O
        mk = rk < I
        mask = mo[:, None] & mk[None, :]
        wt = tl.load(w_ptr + ro[:, None] * I + rk[None, :], mask=mask, other=0.0)
        acc = tl.zeros((BLOCK_O, BLOCK_K), dtype=tl.float32)
        for b in range(0, B):
            xb = tl.load(x_ptr + b * I + rk, mask=mk, other=0.0)
            c = tl.load(c_ptr + b * O + ro, mask=mo, other=0.0)
            inv = tl.load(inv_ptr + b * O + ro, mask=mo, other=1.0)
            acc += c[:, None] * _dnorm(xb[None, :] - wt, inv[:, None], pm1)
        tl.store(gw_ptr + ro[:, None] * I + rk[None, :], -acc, mask=mask)

    @triton.jit
    def _bwd_inf_kernel(
        x_ptr,
        w_ptr,
        idx_ptr,
        g_ptr,
        gx_ptr,
        gw_ptr,
        B,
        O,
        I,
        NEED_X: tl.constexpr,
        NEED_W: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < B * O
        b = offs // O
        o = offs % O
        k = tl.load(idx_ptr + offs, mask=mask, other=0)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        v = tl.load(x_ptr + b * I + k, mask=mask, other=0.0) - tl.load(w_ptr + o * I + k, mask=mask, other=0.0)
        s = tl.where(v > 0, g, tl.where(v < 0, -g, 0.0))
        if NEED_X:
            tl.atomic_add(gx_ptr + b * I + k, s, mask=mask, sem="relaxed")
        if NEED_W:
            tl.atomic_add(gw_ptr + o * I + k, -s, mask=mask, sem="relaxed")


#: True when the kernels above were built for Triton's CPU interpreter (TRITON_INTERPRET=1 when @triton.jit ran).
INTERPRET = triton is not None and type(_fwd_inf_kernel).__name__ == "InterpretedFunction"


def _launch() -> dict:
    """Launch options: the warps, and FMA contraction pinned on (Triton's default, which it warns may change)."""
    return {"num_warps": BLOCKS["num_warps"], "enable_fp_fusion": True}


def _device_ctx(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else _NullCtx()


class _NullCtx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _LpDistTriton(torch.autograd.Function):
    """The Triton counterpart of lp_dist._LpDist; same arguments (chunk_bytes is accepted and unused: nothing
    here is tiled through memory)."""

    @staticmethod
    def forward(ctx, x, weight, p, chunk_bytes=None):
        x = x.contiguous()
        weight = weight.contiguous()
        batch, inp = x.shape
        out = weight.shape[0]
        result = x.new_empty(batch, out)
        grid = (triton.cdiv(batch, BLOCKS["fwd_b"]), triton.cdiv(out, BLOCKS["fwd_o"]))
        kw = dict(BLOCK_B=BLOCKS["fwd_b"], BLOCK_O=BLOCKS["fwd_o"], **_launch())
        ctx.p = p
        if result.numel() == 0:  # nothing to launch (a grid of 0 programs); the chunked path returns (B, 0) too
            ctx.save_for_backward(x, weight, result)
            return result
        with _device_ctx(x):
            xt, wt = x.t().contiguous(), weight.t().contiguous()
            if math.isinf(p):
                index = torch.empty(batch, out, dtype=torch.int32, device=x.device)
                _fwd_inf_kernel[grid](xt, wt, result, index, batch, out, inp, **kw)
                ctx.save_for_backward(x, weight, index)
            else:
                _fwd_p_kernel[grid](xt, wt, result, batch, out, inp, float(p), **kw)
                ctx.save_for_backward(x, weight, result)
        return result

    @staticmethod
    def backward(ctx, grad):
        x, weight, saved = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        batch, inp = x.shape
        out = weight.shape[0]
        grad = grad.contiguous().to(x.dtype)
        grad_x = grad_w = None
        if grad.numel() == 0:
            return (torch.zeros_like(x) if need_x else None), (torch.zeros_like(weight) if need_w else None), None, None
        with _device_ctx(x):
            if math.isinf(ctx.p):
                grad_x = torch.zeros_like(x) if need_x else None
                grad_w = torch.zeros_like(weight) if need_w else None
                grid = (triton.cdiv(batch * out, BLOCKS["scatter"]),)
                # a gradient not needed gets x as a placeholder pointer: NEED_* compiles its store out
                _bwd_inf_kernel[grid](
                    x,
                    weight,
                    saved,
                    grad,
                    x if grad_x is None else grad_x,
                    x if grad_w is None else grad_w,
                    batch,
                    out,
                    inp,
                    NEED_X=need_x,
                    NEED_W=need_w,
                    BLOCK=BLOCKS["scatter"],
                    **_launch(),
                )
                return grad_x, grad_w, None, None
            norm = saved
            positive = norm > 0
            c = torch.where(positive, grad, torch.zeros_like(grad))
            inv = torch.where(positive, 1.0 / torch.where(positive, norm, torch.ones_like(norm)), torch.ones_like(norm))
            pm1 = float(ctx.p) - 1.0
            rows, k = BLOCKS["bwd_rows"], BLOCKS["bwd_k"]
            if need_x:
                grad_x = torch.empty_like(x)
                grid = (triton.cdiv(batch, rows), triton.cdiv(inp, k))
                _bwd_p_x_kernel[grid](
                    x,
                    weight,
                    c.t().contiguous(),
                    inv.t().contiguous(),
                    grad_x,
                    batch,
                    out,
                    inp,
                    pm1,
                    BLOCK_B=rows,
                    BLOCK_K=k,
                    **_launch(),
                )
            if need_w:
                grad_w = torch.empty_like(weight)
                grid = (triton.cdiv(out, rows), triton.cdiv(inp, k))
                _bwd_p_w_kernel[grid](
                    x, weight, c, inv, grad_w, batch, out, inp, pm1, BLOCK_O=rows, BLOCK_K=k, **_launch()
                )
        return grad_x, grad_w, None, None


def lp_dist(x: torch.Tensor, weight: torch.Tensor, p: float, chunk_bytes: int | None = None):
    """out[b, o] = ‖x[b] − weight[o]‖_p through the Triton kernels; the signature of `lp_dist.lp_dist`
    (chunk_bytes is ignored). x, weight: float32, CUDA (or CPU under TRITON_INTERPRET=1)."""
    if triton is None:
        raise RuntimeError("triton is not importable")
    p = float(p)
    if not p >= 1:  # also rejects NaN (the chunked path's dispatcher checks p before calling here too)
        raise ValueError(f"p must be >= 1 or inf, got {p!r}")
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"expected x (B, in) and weight (out, in), got {tuple(x.shape)} and {tuple(weight.shape)}")
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or x.device != weight.device:
        raise ValueError(
            f"expected float32 tensors on one device, got {x.dtype}/{x.device} and {weight.dtype}/{weight.device}"
        )
    if not (x.is_cuda or INTERPRET):
        raise ValueError("the Triton path needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    if x.shape[1] == 0:
        raise ValueError("in_features must be >= 1")
    if max(x.numel(), weight.numel(), x.shape[0] * weight.shape[0]) >= _INT32_LIMIT:
        raise ValueError("tensors of 2^31 elements or more need 64-bit offsets: use the chunked path")
    return _LpDistTriton.apply(x, weight, p, chunk_bytes)
