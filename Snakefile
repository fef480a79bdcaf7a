"""Train → certify → summarize → report, for every run × seed of the config.

    snakemake --cores 2                                   # the default smoke experiment (config/config.yaml)
    snakemake -n --configfile config/cifar10.yaml         # the paper DAG, dry run
    snakemake --profile workflow/profiles/slurm --configfile config/cifar10.yaml   # on a SLURM cluster

Every rule runs `python -m methods <step>`, which a user can also run by hand. The rules are in workflow/rules/.
"""

import json
import os

from snakemake.utils import min_version

import methods.config as mc

min_version("8.20")

if not workflow.overwrite_configfiles:  # --configfile replaces the default instead of merging into it

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


envvars:
    "PATH",


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/certify.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/bench.smk"


rule all:
    input:
        [path for dataset in DATASETS for path in report_outputs(dataset)],
    default_target: True
