"""Train → certify → summarize → report, for every run × seed of the config.

    snakemake --cores 2                                   # the default smoke experiment (config/config.yaml)
    snakemake -n --configfile config/cifar10.yaml         # the paper DAG, dry run
    snakemake --profile workflow/profiles/slurm --configfile config/cifar10.yaml   # on a SLURM cluster

Every rule runs `python -m methods <step>`, which a user can also run by hand.
"""
import os
import sys

from snakemake.utils import min_version

import methods.config as mc

min_version("8.20")

if not workflow.overwrite_configfiles:  # --configfile replaces the default instead of merging into it
    configfile: os.path.join(workflow.basedir, "config", "config.yaml")

try:
    config.update(mc.validate(config))
except mc.ConfigError as exc:
    raise SystemExit(f"error: {exc}") from None

PY = sys.executable  # the interpreter that has `methods` installed (the one running Snakemake)
RUNS = mc.runs_of(config)  # (dataset, run, seed)
DATASETS = sorted({dataset for dataset, _, _ in RUNS})


wildcard_constraints:
    dataset=r"[^/]+",
    run=r"[^/]+",
    seed=r"\d+",
    certifier=r"[a-z0-9_-]+",


def run_spec(wildcards):
    """The resolved spec of one (run, seed), as canonical JSON: a change to it reruns the step."""
    spec = mc.resolve_run(config, wildcards.run, int(wildcards.seed))
    if spec["dataset"] != wildcards.dataset:
        raise ValueError(f"run {wildcards.run} is a {spec['dataset']} run, not {wildcards.dataset}")
    return mc.spec_json(spec)


def certify_outputs(dataset, ext="tsv"):
    return [
        f"results/{d}/{run}/seed{seed}/certify/{certifier}.{ext}"
        for d, run, seed in RUNS
        if d == dataset
        for certifier in mc.resolve_run(config, run, seed)["certify"]["certifiers"]
    ]


def train_logs(dataset):
    return [f"results/{d}/{run}/seed{seed}/train_log.tsv" for d, run, seed in RUNS if d == dataset]


def res(step, key):
    return config["resources"][step][key]


include: "workflow/rules/train.smk"
include: "workflow/rules/certify.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        expand("results/{dataset}/summary.csv", dataset=DATASETS),
        expand("figures/{dataset}/certified_accuracy.{ext}", dataset=DATASETS, ext=("png", "pdf")),
        expand(
            "results/{dataset}/tables/{table}.{ext}",
            dataset=DATASETS,
            table=("certified_accuracy", "timing"),
            ext=("md", "tex", "csv"),
        ),
    default_target: True
