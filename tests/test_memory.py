"""methods.core.memory: with glibc's thresholds raised, freed 16 MiB blocks are reused instead of being returned to
the kernel and faulted in again (what cost a digits certify job a third of its time)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)

ALLOCATE_FIVE_TIMES = """
import resource, sys, torch
from methods.core.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for mib in (1, 4, 16):  # the heap grows pass by pass, as a job's does; two tensors alive at once, as in a layer
    n = mib * 2**18
    x = torch.ones(n); y = torch.ones(n); del x, y
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        x = torch.ones(n); y = torch.ones(n); del x; del y
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", ALLOCATE_FIVE_TIMES, mode], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


def test_freed_large_blocks_are_reused_not_faulted_in_again():
    pages = 5 * 2 * 16 * 2**20 // 4096  # five passes of two 16 MiB tensors
    default, keep = _page_faults("default"), _page_faults("keep")
    # glibc's own dynamic threshold reuses some blocks (how many varies); raised thresholds reuse all of them
    assert keep <= pages // 10 < default, (keep, default)
