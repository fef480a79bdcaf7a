"""What a job used, measured by the job itself at its end: wall and CPU seconds and peak memory, one log line.

Snakemake's `benchmark:` directive measures the same from outside by sampling the job's process tree every 0.5 s
for its first 15 s (psutil's memory_full_info reads /proc/<pid>/smaps: ≈20 ms of CPU a process, a torch process has
thousands of mappings); on the default DAG's 5-20 s jobs that cost Snakemake ≈35 CPU-s of a 5-minute run on 2 cores.
The kernel's own accounting (getrusage) costs nothing and covers children (torchrun workers, data loaders) too.
"""

from __future__ import annotations

import resource
import sys
import time

#: ru_maxrss is in kilobytes on Linux, in bytes on macOS.
_MAXRSS_BYTES = 1 if sys.platform == "darwin" else 1024


def usage(started: float) -> dict:
    """Wall seconds since `started` (time.perf_counter()), CPU seconds (user, system) of this process and its
    reaped children, and the peak resident set of the largest of them, in MB."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall_s": round(time.perf_counter() - started, 3),
        "user_s": round(own.ru_utime + children.ru_utime, 3),
        "system_s": round(own.ru_stime + children.ru_stime, 3),
        "max_rss_mb": round(max(own.ru_maxrss, children.ru_maxrss) * _MAXRSS_BYTES / 2**20, 1),
    }


def usage_line(started: float, step: str) -> str:
    """`resources: <step> wall 12.3 s, cpu 11.8 s user + 0.6 s system, max RSS 712.4 MB`: the last line of a job's
    log."""
    u = usage(started)
    return (f"resources: {step} wall {u['wall_s']:.1f} s, cpu {u['user_s']:.1f} s user + {u['system_s']:.1f} s "
            f"system, max RSS {u['max_rss_mb']:.1f} MB")  # fmt: skip
