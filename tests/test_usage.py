"""methods/core/usage.py: a job's own resource record (what Snakemake's benchmark files held, measured for free)."""

from __future__ import annotations

import subprocess
import sys
import time

from methods.core.usage import usage, usage_line


def test_usage_counts_wall_cpu_and_the_peak_of_an_allocation():
    started = time.perf_counter()
    before = usage(started)
    block = bytearray(256 * 2**20)  # 256 MB, touched so that it is resident
    block[::4096] = b"x" * len(block[::4096])
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # 0.3 s of CPU
        pass
    time.sleep(0.2)
    after = usage(started)
    assert after["wall_s"] >= 0.5 and after["wall_s"] >= before["wall_s"] + 0.5
    assert after["user_s"] + after["system_s"] >= before["user_s"] + before["system_s"] + 0.3
    assert after["max_rss_mb"] >= 256
    del block


def test_a_cli_step_ends_its_log_with_the_line_and_an_expected_error_stays_one_line(tmp_path):
    shard = tmp_path / "s.tsv"
    shard.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0.1\n")
    out = subprocess.run([sys.executable, "-m", "methods", "merge", "--out", str(tmp_path / "m.tsv"), str(shard)],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("resources: merge wall ") and "max RSS" in last
    out = subprocess.run([sys.executable, "-m", "methods", "merge", "--out", str(tmp_path / "m.tsv"),
                          str(tmp_path / "missing.tsv")], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2 and out.stderr.startswith("error: ") and out.stderr.count("\n") == 1
    assert usage_line(time.perf_counter(), "x").startswith("resources: x wall 0.0 s, cpu ")
