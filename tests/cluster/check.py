"""Checks of the cluster smoke test (run by tests/cluster/run_slurm_smoke.sh; needs the test cluster's SLURM_CONF).

python tests/cluster/check.py jobs --dry-run DRY.txt --log SNAKEMAKE.log --workdir DIR
    Every job of the DAG but `all` ran as a SLURM job: for each rule, as many submissions ("Job i has been
    submitted with SLURM jobid j (log: ...)") as the dry run has jobs of that rule, each for other wildcards;
    the controller remembers each of those SLURM jobs as COMPLETED with exit code 0:0, with its StdOut the
    kept log file, in which Snakemake inside the job runs that rule and finishes it; no job but `all` ran as a
    local rule of the submitting Snakemake.
python tests/cluster/check.py summaries SLURM/summary.csv LOCAL/summary.csv
    Both summaries have the same rows and the same values, as written (text), in every column but the
    timing, device and path ones.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

#: The rules that must have run on the cluster at least once: the point of the test.
MUST_RUN = ("train", "train_select_best", "certify", "certify_best")
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.")
LOCALRULE = re.compile(r"^localrule (\w+):", re.MULTILINE)
#: summary.csv columns that differ between two correct runs: timings, device names, file paths.
VOLATILE = re.compile(r"sec|hours|time|device|file|path")
KEY = ["dataset", "run", "method", "seed", "certifier", "checkpoint"]


def fail(message: str) -> None:
    print(f"check: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def dry_run_counts(text: str) -> dict[str, int]:
    """{rule: jobs} from `snakemake -n --quiet rules` (its job-stats table)."""
    counts = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            counts[parts[0]] = int(parts[1])
    return counts


def ran_inside(job_log: str, rule: str) -> bool:
    """The SLURM log (the job's stdout, written by slurmd) shows Snakemake inside the job running `rule` and
    finishing it."""
    return (
        re.search(rf"^(local)?rule {re.escape(rule)}:$", job_log, re.MULTILINE) is not None
        and re.search(r"^Finished job(id:)? 0\b", job_log, re.MULTILINE) is not None
    )


def scontrol_job(jobid: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", jobid], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        fail(f"scontrol show job {jobid}: {out.stderr.strip()} (the controller forgot the job: MinJobAge too low?)")
    return dict(field.split("=", 1) for field in out.stdout.split() if "=" in field)


def check_jobs(dry_run: Path, log: Path, workdir: Path) -> None:
    expected = dry_run_counts(dry_run.read_text())
    expected.pop("all", None)  # the target rule: no shell command, always run by Snakemake itself
    if not expected:
        fail(f"no job counts in the dry run {dry_run}")
    for rule in MUST_RUN:
        if not expected.get(rule):
            fail(f"the smoke config has no {rule} job: it must exercise every train and certify rule")
    text = log.read_text(errors="replace")
    local = sorted(set(LOCALRULE.findall(text)) - {"all"})
    if local:
        fail(f"rules run locally, not through SLURM: {local}")

    logdir = (workdir / ".snakemake" / "slurm_logs").resolve()
    submitted: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for _, slurm_id, path in SUBMITTED.findall(text):
        path = Path(path) if Path(path).is_absolute() else workdir / path
        rel = Path(os.path.relpath(path.resolve(), logdir))  # rule_<name>/<wildcards>/<jobid>.log
        if not rel.parts[0].startswith("rule_") or len(rel.parts) != 3 or rel.name != f"{slurm_id}.log":
            fail(f"unexpected SLURM log path {path} for job {slurm_id}")
        submitted[rel.parts[0].removeprefix("rule_")].append((slurm_id, path))

    problems = []
    print(f"{'rule':<18} {'dry run':>7} {'SLURM jobs':>10} {'COMPLETED':>9} {'kept logs':>9}")
    for rule in sorted(set(expected) | set(submitted)):
        jobs = submitted.get(rule, [])
        completed = 0
        for slurm_id, path in jobs:
            info = scontrol_job(slurm_id)
            if (info.get("JobState"), info.get("ExitCode")) != ("COMPLETED", "0:0"):
                problems.append(
                    f"SLURM job {slurm_id} ({rule}): JobState={info.get('JobState')} ExitCode={info.get('ExitCode')}"
                )
            elif Path(info.get("StdOut", "")).resolve() != path.resolve():
                problems.append(f"SLURM job {slurm_id} ({rule}): StdOut={info.get('StdOut')}, expected {path}")
            elif not path.is_file():
                problems.append(f"SLURM job {slurm_id} ({rule}): its log {path} is missing")
            elif not ran_inside(path.read_text(errors="replace"), rule):
                problems.append(f"SLURM job {slurm_id} ({rule}): its log {path} does not show the rule finishing")
            else:
                completed += 1
        wildcards = Counter(path.parent.name for _, path in jobs)
        repeated = [w for w, n in wildcards.items() if n > 1]
        if repeated:
            problems.append(f"{rule}: submitted more than once for {repeated}")
        kept = len(list((logdir / f"rule_{rule}").glob("*/*.log")))
        print(f"{rule:<18} {expected.get(rule, 0):>7} {len(jobs):>10} {completed:>9} {kept:>9}")
        if not expected.get(rule, 0) == len(jobs) == completed == kept:
            problems.append(
                f"{rule}: {expected.get(rule, 0)} jobs in the dry run, {len(jobs)} submitted to SLURM, "
                f"{completed} completed there, {kept} SLURM logs kept"
            )
    if problems:
        fail("\n  ".join(["not every job ran as a SLURM job:", *problems]))
    total = sum(len(jobs) for jobs in submitted.values())
    print(f"check: OK: all {total} jobs of the DAG but `all` ran as SLURM jobs, each COMPLETED with exit code 0:0")


def check_summaries(slurm: Path, local: Path) -> None:
    import pandas as pd

    a, b = (pd.read_csv(p, dtype=str, keep_default_na=False) for p in (slurm, local))
    if list(a.columns) != list(b.columns):
        fail(f"summary columns differ:\n  SLURM: {list(a.columns)}\n  local: {list(b.columns)}")
    columns = [c for c in a.columns if not VOLATILE.search(c)]
    results = [c for c in columns if c in ("clean_acc", "acr") or c.startswith("certified_acc@")]
    if len(results) < 3 or not {"clean_acc", "acr"} <= set(results):
        fail(f"summary.csv lacks the result columns: {list(a.columns)}")
    a, b = (frame[columns].sort_values(KEY).reset_index(drop=True) for frame in (a, b))
    if len(a) != len(b) or not a[KEY].equals(b[KEY]):
        fail(f"the summaries have other rows:\nSLURM:\n{a[KEY].to_string()}\nlocal:\n{b[KEY].to_string()}")
    differ = a.ne(b)
    if differ.to_numpy().any():
        lines = [
            f"  {a.at[i, 'run']} {a.at[i, 'certifier']} {a.at[i, 'checkpoint']} {columns[j]}: "
            f"SLURM {a.iat[i, j]!r} != local {b.iat[i, j]!r}"
            for i, j in zip(*differ.to_numpy().nonzero())
        ]
        fail("summary.csv of the SLURM run differs from the local run's:\n" + "\n".join(lines))
    skipped = [c for c in pd.read_csv(slurm, nrows=0).columns if c not in columns]
    print(
        f"check: OK: summary.csv identical on {len(a)} rows × {len(columns)} columns "
        f"(results: {', '.join(results)}); not compared: {', '.join(skipped)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    jobs = sub.add_parser("jobs")
    jobs.add_argument("--dry-run", type=Path, required=True)
    jobs.add_argument("--log", type=Path, required=True)
    jobs.add_argument("--workdir", type=Path, required=True)
    summaries = sub.add_parser("summaries")
    summaries.add_argument("slurm", type=Path)
    summaries.add_argument("local", type=Path)
    args = parser.parse_args()
    if args.what == "jobs":
        check_jobs(args.dry_run, args.log, args.workdir)
    else:
        check_summaries(args.slurm, args.local)


if __name__ == "__main__":
    main()
