"""The Triton ℓp-dist kernels (methods/linf_dist_triton.py) against the chunked torch path (linf_dist._LpDist):
values, grad_x and grad_W at p = 8, p = ∞ (ties included), p = 1 and p = 1000, on shapes that do not divide the tiles.

The kernels run three ways here:
* on CUDA (skipped without a GPU): compiled, at the module's BLOCKS, and through linf_dist.lp_dist's dispatch;
* on the CPU through Triton's interpreter, in a subprocess (TRITON_INTERPRET=1 must be set before @triton.jit runs
  when methods.kernels.lp_dist_triton is imported): the same kernel source with 4-wide tiles on tiny shapes, so the
  masking, multi-tile and tie logic is tested without a GPU;
* compiled ahead of time for sm_90 (no GPU needed): what only the real compiler rejects (types, layouts).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from methods.kernels import lp_dist as ld

INF = float("inf")
ROOT = Path(__file__).resolve().parents[1]
NEEDS = ((True, True), (True, False), (False, True))  # which of x, W require grad

try:
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:  # pragma: no cover
    HAVE_TRITON = False

cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device: the compiled Triton kernels need one (the interpreter test covers their logic on CPU)",
)


def _case(b, o, i, kind, seed=0, device="cpu"):
    """x (b, i), W (o, i), an upstream gradient (b, o). "ties": small integers, so |x − w| ties everywhere and every
    sum is exact at p = ∞; otherwise Gaussian, with W[0] = x[0] (unless b = o = 1) so one pair sits at distance 0
    (y = 0, no gradient through it)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "ties":
        x = torch.randint(-2, 3, (b, i), generator=gen).float()
        w = torch.randint(-2, 3, (o, i), generator=gen).float()
        g = torch.randint(-3, 4, (b, o), generator=gen).float()
    else:
        x, w, g = (torch.randn(*s, generator=gen) for s in ((b, i), (o, i), (b, o)))
        if b * o > 1:
            w[0] = x[0]
    return x.to(device), w.to(device), g.to(device)


def _run(fn, x, w, p, g, need):
    x = x.clone().requires_grad_(need[0])
    w = w.clone().requires_grad_(need[1])
    out = fn(x, w, p)
    grads = iter(torch.autograd.grad(out, [t for t, n in zip((x, w), need) if n], g))
    return out.detach(), *(next(grads) if n else None for n in need)


def _chunked(x, w, p):
    """The reference: the chunked path; on the CPU (tiny shapes) with a budget of ~3 rows of W per tile, so it runs
    several tiles too, on CUDA at its default budget (thousands of tiny tiles would take seconds)."""
    budget = 3 * x.shape[1] * x.element_size() if x.device.type == "cpu" else ld._budget(None, x.device)
    return ld._LpDist.apply(x, w, p, budget)


def compare_with_chunked(cases, device, needs=NEEDS):
    """Assert the Triton path equals the chunked path on every (b, o, i, p, kind) case; returns the count checked."""
    from methods.kernels import lp_dist_triton as lt

    checked = 0
    for b, o, i, p, kind in cases:
        x, w, g = _case(b, o, i, kind, seed=b * 1000 + o + i, device=device)
        for need in needs:
            ours = _run(lt.lp_dist, x, w, p, g, need)
            ref = _run(_chunked, x, w, p, g, need)
            where = f"(b, o, i, p, kind, need) = {(b, o, i, p, kind, need)}"
            # p = ∞: the values are exact (the same |x − w|, the same max), and so are the gradients on integer data
            # (every scatter sum is exact); otherwise only the summation order differs there
            tol = dict(rtol=0, atol=0) if math.isinf(p) else dict(rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ours[0], ref[0], **tol, msg=lambda m: f"forward {where}: {m}")
            for name, a, e in zip(("grad_x", "grad_W"), ours[1:], ref[1:]):
                if e is None:
                    assert a is None, f"{name} returned though not required {where}"
                    continue
                assert e.abs().max() > 0, f"degenerate case: {name} is all zero {where}"
                if math.isinf(p):
                    gtol = dict(rtol=0, atol=0) if kind == "ties" else dict(rtol=1e-5, atol=1e-6)
                else:
                    # (|v|/y)^(p−1) turns y's float32 rounding into a relative error ≈ p·6e-8 in BOTH paths
                    # (both are ~3e-5 of the largest gradient from a float64 run at p = 1000)
                    gtol = dict(rtol=1e-4, atol=max(1e-5, p * 2.5e-7 * float(e.abs().max())))
                torch.testing.assert_close(a, e, **gtol, msg=lambda m: f"{name} {where}: {m}")
            checked += 1
    return checked


# ------------------------------------------------------------------------------------------------ CPU: interpreter

INTERPRETER_CASES = [
    (5, 7, 9, 8.0, "randn"),  # 2 × 2 forward tiles, 3 backward k-tiles with 4-wide blocks: edges everywhere
    (5, 7, 9, INF, "randn"),
    (6, 5, 10, INF, "ties"),  # first-argmax tie rule, exactly
    (6, 5, 10, 8.0, "ties"),
    (3, 6, 5, 1.0, "randn"),  # p = 1: ∂ = sign(v), and 0^0 must not leak a NaN
    (2, 3, 4, 1000.0, "randn"),  # the max-scaling keeps r^1000 finite
    (1, 1, 1, INF, "randn"),
]


def _interpreter_main():
    """Run in a subprocess with TRITON_INTERPRET=1 and METHODS_LINF_TRITON=0; prints a JSON summary."""
    import numpy as np

    from methods.kernels import lp_dist_triton as lt

    assert lt.INTERPRET, "the kernels were not built for the interpreter"
    assert not lt.available(torch.zeros(2, 2)), "the interpreter must never be picked by the dispatch"
    lt.BLOCKS.update(fwd_b=4, fwd_o=4, bwd_rows=4, bwd_k=4, scatter=8)
    with np.errstate(divide="ignore", invalid="ignore"):  # log2(0) = −inf is intended (→ exp2 → 0)
        checked = compare_with_chunked(INTERPRETER_CASES[:2], "cpu")  # every requires_grad combination, p = 8, ∞
        checked += compare_with_chunked(INTERPRETER_CASES[2:], "cpu", needs=NEEDS[:1])
    print(json.dumps({"checked": checked, "use_triton": ld.USE_TRITON}))


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_interpreter_kernels_match_the_chunked_path_on_cpu():
    env = {**os.environ, "TRITON_INTERPRET": "1", "METHODS_LINF_TRITON": "0"}
    code = "import sys; sys.path.insert(0, 'tests'); import test_linf_dist_triton as t; t._interpreter_main()"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"interpreter run failed:\n{out.stdout}\n{out.stderr[-4000:]}"
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["checked"] == 2 * len(NEEDS) + len(INTERPRETER_CASES) - 2
    assert summary["use_triton"] is False  # METHODS_LINF_TRITON=0 turns the dispatch off


# ------------------------------------------------------------------------------------------------ CPU: compiler


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_kernels_compile_for_an_nvidia_gpu_ahead_of_time():
    """Lower every kernel to a cubin for sm_90 at the module's BLOCKS: no GPU needed, only Triton's bundled ptxas."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e:  # pragma: no cover - an older Triton
        pytest.skip(f"this Triton has no ahead-of-time API: {e}")
    from methods.kernels import lp_dist_triton as lt

    if lt.triton is None:  # a CPU-only machine skips the import: ask for it (METHODS_LINF_TRITON=1)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("METHODS_LINF_TRITON", "1")
            lt = importlib.reload(lt)
    if lt.INTERPRET:
        pytest.skip("TRITON_INTERPRET is set: the kernels are interpreted functions")
    b = lt.BLOCKS
    kernels = [
        (lt._fwd_inf_kernel, dict(BLOCK_B=b["fwd_b"], BLOCK_O=b["fwd_o"])),
        (lt._fwd_p_kernel, dict(BLOCK_B=b["fwd_b"], BLOCK_O=b["fwd_o"])),
        (lt._bwd_p_x_kernel, dict(BLOCK_B=b["bwd_rows"], BLOCK_K=b["bwd_k"])),
        (lt._bwd_p_w_kernel, dict(BLOCK_O=b["bwd_rows"], BLOCK_K=b["bwd_k"])),
        (lt._bwd_inf_kernel, dict(NEED_X=True, NEED_W=True, BLOCK=b["scatter"])),
    ]
    for fn, constexprs in kernels:
        signature = {
            a: "constexpr"
            if a in constexprs
            else ("*i32" if a == "idx_ptr" else "*fp32")
            if a.endswith("_ptr")
            else "fp32"
            if a in ("p", "pm1")
            else "i32"
            for a in fn.arg_names
        }
        compiled = triton.compile(
            ASTSource(fn=fn, signature=signature, constexprs=constexprs),
            target=GPUTarget("cuda", 90, 32),
            options=lt._launch(),
        )
        assert compiled.asm.get("cubin"), f"{fn.__name__}: no cubin"


def test_available_only_for_cuda_float32():
    from methods.kernels import lp_dist_triton as lt

    assert not lt.available(torch.zeros(3, 4))  # CPU
    assert not lt.available("not a tensor")
    if torch.cuda.is_available() and HAVE_TRITON:
        x = torch.zeros(3, 4, device="cuda")
        assert lt.available(x) and lt.available(x, torch.zeros(5, 4, device="cuda"))
        assert not lt.available(x.double()) and not lt.available(x, torch.zeros(5, 4, device="cuda").double())


# ------------------------------------------------------------------------------------------------ CUDA

CUDA_CASES = [
    (b, o, i, p, "randn")
    for b, o, i in [(1, 1, 1), (3, 5, 7), (70, 130, 67), (64, 64, 64), (129, 65, 300), (257, 200, 1000)]
    for p in (8.0, INF)
]
CUDA_CASES += [
    (100, 90, 50, INF, "ties"),
    (65, 130, 33, INF, "ties"),
    (100, 90, 50, 8.0, "ties"),
    (40, 50, 60, 1.0, "randn"),
    (40, 50, 60, 1000.0, "randn"),
]


@cuda
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_cuda_kernels_match_the_chunked_path():
    assert compare_with_chunked(CUDA_CASES, "cuda", needs=NEEDS[:1]) == len(CUDA_CASES)
    assert compare_with_chunked([(70, 130, 67, p, "randn") for p in (8.0, INF)], "cuda", needs=NEEDS[1:]) == 4


@cuda
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_cuda_dispatch_and_switch(monkeypatch):
    from methods.kernels import lp_dist_triton as lt

    calls = []
    real = lt._LpDistTriton.apply
    monkeypatch.setattr(lt._LpDistTriton, "apply", lambda *a: calls.append(1) or real(*a))
    x, w, g = _case(9, 10, 11, "randn", device="cuda")
    monkeypatch.setattr(ld, "USE_TRITON", True)
    fast = _run(ld.lp_dist, x, w, INF, g, NEEDS[0])
    assert len(calls) == 1
    ld.lp_dist(x.double(), w.double(), INF)  # float64: chunked
    monkeypatch.setattr(ld, "USE_TRITON", False)
    slow = _run(ld.lp_dist, x, w, INF, g, NEEDS[0])
    assert len(calls) == 1
    for a, e in zip(fast, slow):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


@cuda
@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_cuda_model_gradients_match_with_and_without_triton(monkeypatch):
    """The v2 MLP (identity init, mean shift) end to end: the loss gradient of every parameter, both paths."""
    torch.manual_seed(0)
    model = ld.LinfDistMLP((3, 4, 4), 10, 4, 96, (0.5, 0.5, 0.5), 0.2).cuda().train()
    xb = torch.rand(33, 3, 4, 4, device="cuda")
    grads = {}
    for use in (True, False):
        monkeypatch.setattr(ld, "USE_TRITON", use)
        for p in (8.0, INF):
            model.set_p(p)
            model.zero_grad()
            model(xb).square().mean().backward()
            grads[use, p] = [q.grad.clone() for q in model.parameters() if q.grad is not None]
    for p in (8.0, INF):
        for a, e in zip(grads[True, p], grads[False, p]):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)
