"""Cost of one ℓ∞-dist layer (forward + backward) at paper size, against what the naive broadcast would hold.

    python -m methods.linf_dist_bench [--batch 512] [--width 5120] [--p inf 8] [--chunk-mb MB] [--device cpu]

Each p runs in a fresh subprocess so its peak memory is its own: on CPU the growth of ru_maxrss over a baseline
taken after x and W exist (and after a warm-up call), on CUDA torch.cuda.max_memory_allocated over the same
baseline. The naive layer would need batch × out × in × 4 bytes for one float32 temporary (512 × 5120² ≈ 54 GB).
On a CPU shared with other jobs, use --threads 1: torch's 2-thread kernels slowed 5× when another process held a
core (OpenMP threads waiting on a descheduled sibling), single-threaded ones did not.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch
from methods.linf_dist import _budget, lp_dist, plan_chunks
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
    out = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--width", type=int, default=5120, help="in = out features")
    ap.add_argument("--p", type=float, nargs="+", default=[float("inf"), 8.0])
    ap.add_argument("--chunk-mb", type=float, default=None, help="tile budget (default: per device)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default; 1 is steadier on a shared machine)")
    args = ap.parse_args(argv)
    chunk = None if args.chunk_mb is None else int(args.chunk_mb * 2**20)
    naive = args.batch * args.width * args.width * 4
    print(f"one layer, batch {args.batch}, in = out = {args.width}, float32, {args.device}; "
          f"naive B×out×in temporary: {naive / 1e9:.1f} GB ({naive / 2**30:.1f} GiB)")
    for p in args.p:
        r = run(args.batch, args.width, p, chunk, args.device, args.reps, args.threads)
        print(f"p = {p:g}: forward {r['fwd_s']:.2f} s, backward {r['bwd_s']:.2f} s, "
              f"total {r['fwd_s'] + r['bwd_s']:.2f} s; peak memory growth {r['peak_growth_bytes'] / 2**20:.0f} MiB "
              f"(tile budget {r['budget_bytes'] / 2**20:.0f} MiB, tile {r['tile'][0]}×{r['tile'][1]}×{args.width}, "
              f"{r['threads']} threads); naive / measured = {naive / max(r['peak_growth_bytes'], 1):.0f}×")


if __name__ == "__main__":
    main()
