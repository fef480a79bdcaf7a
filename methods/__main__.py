"""`python -m methods <step>`: the commands the Snakemake rules run, also usable by hand to debug one step.

    python -m methods train   --configfile config/config.yaml --run cohen-0.25 --seed 0
    python -m methods certify --configfile config/config.yaml --run cohen-0.25 --seed 0
    python -m methods summarize --radii 0 0.25 0.5 --out results/digits/summary.csv results/digits/*/seed*/certify/*.tsv
    python -m methods report  --summary results/digits/summary.csv --figures-dir figures/digits \\
                              --tables-dir results/digits/tables

Rules pass the resolved run spec as --spec JSON instead of --configfile/--run; both resolve through methods.config.
Each command imports its stage when it runs, for start-up time (every rule starts Python, and a train job need not
load scipy or matplotlib); the CLI is the top layer, so the import contract holds either way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .core.errors import ConfigError, DatasetNotFound, InputError, LockError
from .core.memory import keep_freed_memory
from .core.usage import usage_line


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", help="resolved run spec as JSON (what the Snakemake rules pass)")
    p.add_argument("--configfile", help="config YAML (default: config/config.yaml); with --run")
    p.add_argument("--run", help="run name in the config")
    p.add_argument("--seed", type=int, help="seed (default: the run's first seed)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _spec(args) -> dict:
    if args.spec:
        return json.loads(args.spec)
    from . import config

    if not args.run:
        raise ConfigError("give --spec, or --run NAME (with --configfile, default config/config.yaml)")
    cfg = config.load(args.configfile)
    seed = args.seed
    if seed is None:
        run = cfg["runs"].get(args.run, {})
        seed = run.get("seeds", cfg["seeds"])[0]
    return config.resolve_run(cfg, args.run, seed)


def _shard(text: str) -> tuple[int, int]:
    """--shard I/N, checked: 0 <= I < N."""
    try:
        shard, shards = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must be I/N (shard I of N, from 0), got {text!r}") from None
    if not 0 <= shard < shards:
        raise ConfigError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return shard, shards


def _run_dir(spec: dict) -> Path:
    return Path("results") / spec["dataset"] / spec["run"] / f"seed{spec['seed']}"


def _setup_threads(args) -> None:
    """The job's threads, shared among torchrun's processes where there are several (WORLD_SIZE)."""
    if args.threads:
        import torch

        torch.set_num_threads(max(1, args.threads // int(os.environ.get("WORLD_SIZE", "1"))))


def cmd_train(args) -> None:
    from .train.loop import train

    spec = _spec(args)
    _setup_threads(args)
    out = Path(args.out) if args.out else _run_dir(spec)
    path = train(spec, out, device=args.device, progress=not args.no_progress)
    print(f"wrote {path}")


def cmd_certify(args) -> None:
    from .certify.step import certify_run

    spec = _spec(args)
    _setup_threads(args)
    run_dir = _run_dir(spec)
    checkpoint = Path(args.checkpoint) if args.checkpoint else run_dir / "model.pt"
    out = Path(args.out) if args.out else run_dir / "certify" / f"{args.certifier}.tsv"
    shard, shards = _shard(args.shard) if args.shard else (0, 1)
    path = certify_run(
        checkpoint,
        spec,
        out,
        args.certifier,
        device=args.device,
        shard=shard,
        shards=shards,
        progress=not args.no_progress,
    )
    print(f"wrote {path}")


def cmd_merge(args) -> None:
    from .certify.step import merge_shards

    print(f"wrote {merge_shards(args.shards, args.out)}")


def cmd_summarize(args) -> None:
    from .report.summary import summarize

    summary = summarize(
        args.tsv,
        args.radii,
        args.out,
        json.loads(args.notes) if args.notes else None,
        args.linf_radii,
        json.loads(args.published) if args.published else None,
    )
    print(f"wrote {args.out} ({len(summary)} rows)")


def cmd_report(args) -> None:
    from .report.build import report

    for path in report(
        args.summary,
        args.figures_dir,
        args.tables_dir,
        args.radius_max,
        args.title,
        tuple(args.what),
        args.published_csv,
        args.sigma,
        args.method,
    ):
        print(f"wrote {path}")


def cmd_rebuild(args) -> None:
    from .report.build import rebuild

    for path in rebuild(
        args.results,
        args.figures,
        args.radii,
        args.linf_radii,
        args.radius_max,
        args.linf_radius_max,
        args.title,
        json.loads(args.notes) if args.notes else None,
        json.loads(args.published) if args.published else None,
        args.published_csv,
    ):
        print(f"wrote {path}")


def cmd_import_tsv(args) -> None:
    from .report.imported import import_tsv

    out = import_tsv(args.file, args.results, args.dataset, args.run, args.method, args.certifier, args.sigma, args.n,
                     args.alpha, args.source, args.start, args.skip, args.count, args.compare_with or [])  # fmt: skip
    print(f"wrote {out} and its sidecar (published: true)")


def cmd_plan(args) -> None:
    import pandas as pd

    from . import config
    from .bench.plan import plan, summary
    from .report.published import load as load_published
    from .report.tables import markdown as markdown_table

    jobs = plan(config.load(args.configfile), load_published(), pd.read_csv(args.bench) if args.bench else None)
    if args.out:
        jobs.to_csv(args.out, index=False)
    totals = summary(jobs)
    print(markdown_table(totals, ".1f"))
    known = jobs["hours"].notna()
    print(
        f"total: {jobs.loc[known, 'gpu_hours'].sum():,.0f} GPU-hours ({jobs.loc[known, 'hours'].sum():,.0f} job-hours)"
        f" over {int(known.sum())} of {len(jobs)} jobs"
        + (
            f"; {int((~known).sum())} jobs without a rate (see `source`{' in ' + args.out if args.out else ''})"
            if (~known).any()
            else ""
        )
    )


def cmd_bench(args) -> None:
    from .bench.benchmark import bench, markdown
    from .core.io import select_device

    _setup_threads(args)
    frame = bench(quick=not args.full, device=args.device, out=args.out, only=args.only)
    print(markdown(frame, not args.full, select_device(args.device)))
    print(f"wrote {Path(args.out) / 'bench.csv'} and {Path(args.out) / 'bench.md'}")


def cmd_bench_train(args) -> None:
    from . import config
    from .bench.train_cost import bench as bench_train
    from .bench.train_cost import format_rows

    cfg = config.load(args.configfile)
    specs = []
    for name in args.run:
        spec = config.resolve_run(cfg, name, 0)
        if args.batch_size:
            spec["train"]["batch_size"] = args.batch_size
        specs.append(spec)
    _setup_threads(args)
    print(format_rows(bench_train(specs, args.dataset or specs[0]["dataset"], args.steps, args.warmup, args.device)))


def cmd_doctor(args) -> None:
    from .bench.doctor import doctor

    _setup_threads(args)
    if not doctor(device=args.device, quick=args.quick, out=args.out, only=args.only).ok:
        raise SystemExit(1)  # a check failed: the report above names the setting that turns its path off


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m methods", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="step", required=True)

    p = sub.add_parser("train", help="train one run (resumes from <out>/state if present)")
    _add_spec_args(p)
    p.add_argument("--out", help="run directory (default: results/<dataset>/<run>/seed<seed>)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("certify", help="certify a trained run's test subset, write the per-example TSV")
    _add_spec_args(p)
    p.add_argument("--checkpoint", help="model file (default: <run dir>/model.pt)")
    p.add_argument(
        "--certifier",
        default="cohen",
        help="cohen = Cohen's CERTIFY (default); t-certify(-grid) = Feng et al.'s two-sided certificate; "
        "linf-margin, linf-interval = l-inf-dist certificates; pgd20, pgd100, cw-pgd100, autoattack = "
        "empirical l-inf radii on the config's eps_grid (see the schema)",
    )
    p.add_argument("--out", help="TSV to write (default: <run dir>/certify/<certifier>.tsv)")
    p.add_argument("--shard", help="I/N: certify only shard I (0-based) of N of the subset")
    p.set_defaults(func=cmd_certify)

    p = sub.add_parser("merge", help="merge shard TSVs in dataset-index order")
    p.add_argument("--out", required=True)
    p.add_argument("shards", nargs="+")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("summarize", help="summary.csv from per-example TSVs")
    p.add_argument("--radii", type=float, nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--linf-radii", type=float, nargs="+", help="l-inf radii (pixels) of the l-inf rows' columns")
    p.add_argument("--notes", help='JSON {"run": "caveat", ...}: the config\'s run notes, footnoted in the tables')
    p.add_argument(
        "--published",
        help='JSON {"run": [{"paper", "dataset", "setting"}, ...]}: the config\'s '
        "published references, compared in the reproduced-vs-published table",
    )
    p.add_argument("tsv", nargs="+", help="results/<dataset>/<run>/seed<s>/certify/<certifier>.tsv files")
    p.set_defaults(func=cmd_summarize)

    p = sub.add_parser("report", help="figure (PNG + PDF) and tables (Markdown, LaTeX, CSV) from summary.csv")
    p.add_argument("--summary", required=True)
    p.add_argument("--figures-dir", required=True)
    p.add_argument("--tables-dir", required=True)
    p.add_argument("--radius-max", type=float, default=1.5)
    p.add_argument("--title", default="")
    p.add_argument(
        "--what",
        nargs="+",
        choices=["l2", "sigma", "sweep", "linf", "timing", "published", "claims", "cost"],
        default=["l2", "timing"],
        help="l2: certified_accuracy figure + tables; sigma: one figure per --sigma, every method, with "
        "the published points; sweep: one sigma-sweep figure per --method; linf: linf_accuracy "
        "figure + table (--radius-max is then the l-inf axis); timing: the timing table; published: "
        "the reproduced-vs-published table",
    )
    p.add_argument("--sigma", type=float, nargs="+", help="the sigmas of --what sigma (default: all)")
    p.add_argument("--method", nargs="+", help="the methods of --what sweep (default: all with a sigma sweep)")
    p.add_argument("--published-csv", help="published numbers (default workflow/resources/published.csv)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("rebuild", help="every summary, figure and table from an existing results/ tree (no training)")
    p.add_argument("--results", default="results")
    p.add_argument("--figures", default="figures")
    p.add_argument("--radii", type=float, nargs="+", required=True)
    p.add_argument("--linf-radii", type=float, nargs="+", required=True)
    p.add_argument("--radius-max", type=float, default=1.5)
    p.add_argument("--linf-radius-max", type=float, default=0.1)
    p.add_argument("--title", default="")
    p.add_argument("--notes", help="as summarize --notes")
    p.add_argument("--published", help="as summarize --published")
    p.add_argument("--published-csv", help="published numbers (default workflow/resources/published.csv)")
    p.set_defaults(func=cmd_rebuild)

    p = sub.add_parser("import-tsv", help="a paper's own per-example file into results/, as a published reference")
    p.add_argument("file")
    p.add_argument("--dataset", required=True)
    p.add_argument("--method", required=True, help="the method that trained the published model (cohen, salman, ...)")
    p.add_argument("--certifier", default="cohen", help="the certifier that wrote it (default cohen: CERTIFY)")
    p.add_argument("--sigma", type=float)
    p.add_argument("--n", type=int, help="estimation draws of the published certification")
    p.add_argument("--alpha", type=float)
    p.add_argument("--source", required=True, help="where the file comes from (repository and path)")
    p.add_argument("--run", required=True, help="the name it gets under results/<dataset>/")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--skip", type=int, default=1)
    p.add_argument("--count", type=int, help="images the file should hold (a shorter file: said in its sidecar)")
    p.add_argument("--compare-with", action="append", help="our run to compare with image by image (repeat)")
    p.add_argument("--results", default="results")
    p.set_defaults(func=cmd_import_tsv)

    p = sub.add_parser("plan", help="expected GPU-hours of every train and certify job of a config, and the total")
    p.add_argument("--configfile", default=None, help="config (default: config/config.yaml)")
    p.add_argument("--bench", help="measured rates (bench.csv: workload, path, sec_per_epoch, sec_per_image)")
    p.add_argument("--out", help="write the per-job plan as CSV")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("bench-train", help="sec/batch and sec/epoch of several runs' training steps, side by side")
    p.add_argument("--configfile", help="config YAML (default: config/config.yaml)")
    p.add_argument("--run", action="append", required=True, help="run name (repeat; the first is the baseline)")
    p.add_argument("--dataset", help="shape to time on (e.g. synthetic-cifar10; default: the run's dataset)")
    p.add_argument("--batch-size", type=int, help="override the runs' batch size")
    p.add_argument("--steps", type=int, default=3, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_bench_train)

    p = sub.add_parser(
        "bench",
        help="each workload on the reference procedure and on the fast path, side by side (bench.csv, bench.md)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CPU-sized workloads, minutes on 2 cores (the default)")
    size.add_argument("--full", action="store_true", help="paper-sized workloads (meant for a GPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="bench", help="directory for bench.csv and bench.md")
    p.add_argument(
        "--only",
        nargs="+",
        choices=["certify", "train", "linf", "adaptive", "precision"],
        help="a subset of the parts (precision: fp32 vs bf16 training and certification; in --full, else opt-in)",
    )
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "doctor",
        help="self-check of this machine's device: versions, bf16/TF32, free memory, and each fast path against the "
        "plain one (run it first on a new GPU; exits non-zero on a failure)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--quick", action="store_true", help="smaller checks (CI runs --device cpu --quick)")
    p.add_argument("--out", help="also write the report as JSON")
    p.add_argument("--only", nargs="+", help="only the checks whose name contains one of these words")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_doctor)

    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or METHODS_DEBUG=1)")
    started = time.perf_counter()  # before the step imports its stage: a job's resource line counts its imports
    args = parser.parse_args(argv)
    keep_freed_memory()  # a CPU job's large activations are reused, not faulted in again every pass
    try:
        args.func(args)
    except (ConfigError, DatasetNotFound, FileNotFoundError, InputError, LockError) as exc:
        # expected failures: one line naming what to fix; the traceback with --debug or METHODS_DEBUG=1
        if args.debug or os.environ.get("METHODS_DEBUG") == "1":
            raise
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    print(usage_line(started, args.step), file=sys.stderr)  # the job's own resource record: its log's last line
    return 0


if __name__ == "__main__":
    sys.exit(main())
