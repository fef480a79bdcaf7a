"""Cost of one ℓ∞-dist layer (forward + backward) at paper size, against what the naive broadcast would hold.

    python -m methods.bench.linf_layer [--batch 512] [--width 5120] [--p inf 8] [--chunk-mb MB] [--device cpu]
                                      [--triton-only]

Each p runs in a fresh subprocess so its peak memory is its own: on CPU the growth of ru_maxrss over a baseline
taken after x and W exist (and after a warm-up call), on CUDA torch.cuda.max_memory_allocated over the same
baseline. The naive layer would need batch × out × in × 4 bytes for one float32 temporary (512 × 5120² ≈ 54 GB).
On a CPU shared with other jobs, use --threads 1: torch's 2-thread kernels slowed 5× when another process held a
core (OpenMP threads waiting on a descheduled sibling), single-threaded ones did not. These runs measure the chunked
torch path (METHODS_LINF_TRITON=0 in the child).

`triton_vs_chunked` (and the CLI, on CUDA) compares the Triton kernels of methods/kernels/lp_dist_triton.py with the
chunked path on the same GPU: forward + backward seconds and peak memory growth, one subprocess per path and p.
Without CUDA it returns no rows and the CLI prints "Triton path needs CUDA: skipped".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch
from methods.kernels.lp_dist import _budget, lp_dist, plan_chunks
batch, width, p, chunk, device, reps, threads = json.loads(sys.argv[1])
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(0)
x = torch.randn(batch, width, device=device, requires_grad=True)
w = torch.randn(width, width, device=device, requires_grad=True)
lp_dist(x[:2], w[:16], p, chunk).sum().backward()  # warm up kernels and the allocator
x.grad = w.grad = None
cuda = device.startswith("cuda")
def sync():
    if cuda:
        torch.cuda.synchronize()
def peak():
    return torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
sync()
if cuda:
    torch.cuda.reset_peak_memory_stats()
base = peak()
fwd = bwd = 0.0
for _ in range(reps):
    t0 = time.perf_counter(); out = lp_dist(x, w, p, chunk); sync()
    t1 = time.perf_counter(); out.backward(torch.ones_like(out)); sync()
    fwd += t1 - t0; bwd += time.perf_counter() - t1
    x.grad = w.grad = None
budget = _budget(chunk, x.device)
tile = plan_chunks(batch, width, width, 4, budget, 1)
print(json.dumps(dict(p=p, fwd_s=fwd / reps, bwd_s=bwd / reps, peak_growth_bytes=peak() - base,
                      budget_bytes=budget, tile=tile, threads=torch.get_num_threads())))
"""


def run(batch: int, width: int, p: float, chunk_bytes, device: str, reps: int, threads: int = 0) -> dict:
    args = json.dumps([batch, width, p, chunk_bytes, device, reps, threads])
    env = {**os.environ, "METHODS_LINF_TRITON": "0"}  # the chunked path, on CUDA too
    out = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


PATH_CHILD = r"""
import json, sys, time
import torch
from methods.core.io import device_name
from methods.kernels import lp_dist as lp_dist_op, lp_dist_triton
batch, width, p, device, reps, path = json.loads(sys.argv[1])
if path == "fast":
    fn = lp_dist_triton.lp_dist
else:
    lp_dist_op.USE_TRITON = False
    fn = lp_dist_op.lp_dist
torch.manual_seed(0)
dev = torch.device(device)
x = torch.randn(batch, width, device=dev, requires_grad=True)
w = torch.randn(width, width, device=dev, requires_grad=True)
def step():
    out = fn(x, w, p)
    out.backward(torch.ones_like(out))
    x.grad = w.grad = None
step()  # full size: Triton specialises its compiled kernels on the sizes, so a small warm-up would not do
torch.cuda.synchronize(dev)
torch.cuda.reset_peak_memory_stats(dev)
base = torch.cuda.memory_allocated(dev)
t0 = time.perf_counter()
for _ in range(reps):
    step()
torch.cuda.synchronize(dev)
seconds = (time.perf_counter() - t0) / reps
print(json.dumps(dict(seconds=seconds, peak_mem_mb=(torch.cuda.max_memory_allocated(dev) - base) / 2**20,
                      device=device_name(dev))))
"""


def triton_vs_chunked(
    batch: int = 512, width: int = 5120, p: float = float("inf"), device: str = "cuda", reps: int = 3
) -> list[dict]:
    """One ℓp-dist layer (in = out = width, float32) forward + backward, the chunked torch path ("reference") and
    the Triton kernels ("fast"), each in a fresh subprocess after one untimed full-size call: rows with workload,
    path, device, seconds (mean per forward + backward over `reps`), peak_mem_mb (growth of
    torch.cuda.max_memory_allocated over the memory held once x and W exist, MiB). [] when `device` is not a CUDA
    device or CUDA is unavailable (the Triton path needs CUDA)."""
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return []
    rows = []
    for path in ("reference", "fast"):
        args = json.dumps([batch, width, float(p), str(device), reps, path])
        out = subprocess.run([sys.executable, "-c", PATH_CHILD, args], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(
            dict(
                workload=f"lp_dist fwd+bwd: p={float(p):g}, batch={batch}, in=out={width}",
                path=path,
                device=r["device"],
                seconds=r["seconds"],
                peak_mem_mb=r["peak_mem_mb"],
            )
        )
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--width", type=int, default=5120, help="in = out features")
    ap.add_argument("--p", type=float, nargs="+", default=[float("inf"), 8.0])
    ap.add_argument("--chunk-mb", type=float, default=None, help="tile budget (default: per device)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default; 1 is steadier on a shared machine)",
    )
    ap.add_argument(
        "--triton-only",
        action="store_true",
        help="only the Triton-vs-chunked comparison (CUDA), not the --device run of the chunked path",
    )
    args = ap.parse_args(argv)
    chunk = None if args.chunk_mb is None else int(args.chunk_mb * 2**20)
    naive = args.batch * args.width * args.width * 4
    print(
        f"one layer, batch {args.batch}, in = out = {args.width}, float32, {args.device}; "
        f"naive B×out×in temporary: {naive / 1e9:.1f} GB ({naive / 2**30:.1f} GiB)"
    )
    for p in [] if args.triton_only else args.p:
        r = run(args.batch, args.width, p, chunk, args.device, args.reps, args.threads)
        print(
            f"p = {p:g}: forward {r['fwd_s']:.2f} s, backward {r['bwd_s']:.2f} s, "
            f"total {r['fwd_s'] + r['bwd_s']:.2f} s; peak memory growth {r['peak_growth_bytes'] / 2**20:.0f} MiB "
            f"(tile budget {r['budget_bytes'] / 2**20:.0f} MiB, tile {r['tile'][0]}×{r['tile'][1]}×{args.width}, "
            f"{r['threads']} threads); naive / measured = {naive / max(r['peak_growth_bytes'], 1):.0f}×"
        )
    if not _cuda_available():
        print("Triton path needs CUDA: skipped")
        return
    device = args.device if args.device.startswith("cuda") else "cuda"
    for p in args.p:
        rows = triton_vs_chunked(args.batch, args.width, p, device, max(args.reps, 1))
        ref, fast = rows
        for r in rows:
            print(
                f"p = {p:g}, {r['path']:<9} ({'chunked torch' if r['path'] == 'reference' else 'Triton'}): "
                f"forward + backward {r['seconds']:.3f} s, peak memory growth {r['peak_mem_mb']:.0f} MiB "
                f"({r['device']})"
            )
        print(f"p = {p:g}: Triton / chunked time = {fast['seconds'] / ref['seconds']:.2f}×")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
