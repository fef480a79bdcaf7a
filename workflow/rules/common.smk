"""Config validation and the helpers the rules share."""

import re
import sys

import methods.certify.registry as mc_certifiers
import methods.report.figures as mc_figures

try:
    config.update(mc.validate(config))
except mc.ConfigError as exc:
    raise SystemExit(f"error: {exc}") from None

# Rules run `python -m methods ...`: make that the interpreter running Snakemake (it has `methods` installed),
# also when Snakemake is called as .venv/bin/snakemake without activating the environment. Jobs inherit PATH
# (SLURM jobs too, with --export=ALL); a conda deployment prepends its own environment instead.
_search_path = os.environ["PATH"]
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + _search_path

RUNS = mc.runs_of(config)  # (dataset, run, seed)
DATASETS = sorted({dataset for dataset, _, _ in RUNS})
SPECS = {(run, seed): mc.resolve_run(config, run, seed) for _, run, seed in RUNS}  # resolved once, at parse time
#: Runs that also keep a "best" checkpoint (train.select_best): rule train_select_best trains them, and every
#: certifier evaluates both model.pt (last epoch) and model_best.pt (into certify-best/).
SELECT_BEST = sorted({run for (run, _), spec in SPECS.items() if spec["train"]["select_best"]})
#: Runs whose certifications are split into certify.shards jobs each (rules certify_shard + merge_certify_shards).
SHARDED = sorted({run for (run, _), spec in SPECS.items() if spec["certify"]["shards"] > 1})


def _one_of(names):
    """A regex matching exactly these run names (one that matches nothing when there are none)."""
    return "(?:" + "|".join(re.escape(name) for name in names) + ")" if names else "(?!)"


_SELECT_BEST_RE = _one_of(SELECT_BEST)
_SHARDED_RE = _one_of(SHARDED)


wildcard_constraints:
    dataset=r"[^/]+",
    run=r"[^/]+",
    seed=r"\d+",
    certifier=r"[a-z0-9_-]+",
    sigma=r"[0-9.]+",
    method=r"[a-z_]+",


def run_spec(wildcards, drop=()):
    """The resolved spec of one (run, seed), as canonical JSON: a change to it reruns the step."""
    key = (wildcards.run, int(wildcards.seed))
    if key not in SPECS:
        raise ValueError(f"run {wildcards.run} with seed {wildcards.seed} is not in the config")
    spec = SPECS[key]
    if spec["dataset"] != wildcards.dataset:
        raise ValueError(f"run {wildcards.run} is a {spec['dataset']} run, not {wildcards.dataset}")
    return mc.spec_json({k: v for k, v in spec.items() if k not in drop})


def certify_spec(wildcards):
    """The spec with only the certify settings this certifier reads (methods/certify/registry.py)."""
    key = (wildcards.run, int(wildcards.seed))
    run_spec(wildcards)  # checks the run, seed and dataset
    return mc.spec_json(mc_certifiers.certifier_spec(SPECS[key], wildcards.certifier))


def shard_files(wildcards, ext="tsv"):
    """The shard files that merge into one certification of a sharded run."""
    shards = SPECS[wildcards.run, int(wildcards.seed)]["certify"]["shards"]
    folder = f"results/{wildcards.dataset}/{wildcards.run}/seed{wildcards.seed}/{wildcards.folder}/shards"
    return [f"{folder}/{wildcards.certifier}.{i}of{shards}.{ext}" for i in range(shards)]


def train_launcher(wildcards):
    """`python`, or `torchrun` with one process per `train.processes` (DistributedDataParallel, methods/train/distributed.py)."""
    processes = SPECS[wildcards.run, int(wildcards.seed)]["train"]["processes"]
    return "python" if processes == 1 else f"torchrun --standalone --nproc_per_node={processes}"


def train_spec(wildcards):
    """The spec without its certify settings: changing n or alpha recertifies but never retrains."""
    return run_spec(wildcards, drop=("certify",))


def certify_outputs(dataset, ext="tsv"):
    """Every per-example file of a dataset: one per run × seed × configured certifier × checkpoint (the last
    epoch's in certify/, the selected one's in certify-best/ where the run selects one)."""
    return [
        f"results/{d}/{run}/seed{seed}/{folder}/{certifier}.{ext}"
        for d, run, seed in RUNS
        if d == dataset
        for folder in (("certify", "certify-best") if run in SELECT_BEST else ("certify",))
        for certifier in SPECS[run, seed]["certify"]["certifiers"]
    ]


def norms(dataset):
    """The norms ("l2", "linf") the dataset's certifiers evaluate: which report rules the DAG needs."""
    return sorted(
        {
            mc_certifiers.CERTIFIERS[certifier].norm
            for d, run, seed in RUNS
            if d == dataset
            for certifier in SPECS[run, seed]["certify"]["certifiers"]
        }
    )


def certify_sigmas(dataset):
    """{method: sigmas} of the dataset's runs certified with CERTIFY: the per-sigma and sigma-sweep figures."""
    out = {}
    for d, run, seed in RUNS:
        spec = SPECS[run, seed]
        if d == dataset and "cohen" in spec["certify"]["certifiers"]:
            out.setdefault(spec["method"], set()).add(spec["certify"]["sigma"])
    return out


def paper_figures(dataset):
    """figures/<dataset>/certified_accuracy_sigma<s> and sigma_sweep_<method>, PNG and PDF."""
    sigmas = certify_sigmas(dataset)
    stems = mc_figures.l2_figure_stems(
        [s for ss in sigmas.values() for s in ss], [m for m, ss in sigmas.items() if len(ss) > 1]
    )
    return [f"figures/{dataset}/{stem}.{ext}" for stem in stems for ext in ("png", "pdf")]


def report_outputs(dataset):
    """Figures and tables of one dataset: the l2 ones, the l-inf ones, whichever it has, the timing table, the
    reproduced-vs-published table, the claims table and the cost of robustness."""
    out = [f"results/{dataset}/summary.csv"] + [
        f"results/{dataset}/tables/{t}.{e}"
        for e in ("md", "tex", "csv")
        for t in ("timing", "reproduced_vs_published", "claims", "cost_robustness")
    ]
    out += [f"figures/{dataset}/cost_robustness.{e}" for e in ("png", "pdf")]
    out += paper_figures(dataset)
    if "l2" in norms(dataset):
        out += [f"figures/{dataset}/certified_accuracy.{e}" for e in ("png", "pdf")]
        out += [
            f"results/{dataset}/tables/{t}.{e}"
            for t in ("certified_accuracy", "envelope")
            for e in ("md", "tex", "csv")
        ]
    if "linf" in norms(dataset):
        out += [f"figures/{dataset}/linf_accuracy.{e}" for e in ("png", "pdf")]
        out += [f"results/{dataset}/tables/linf_accuracy.{e}" for e in ("md", "tex", "csv")]
    return out


def train_logs(dataset):
    return [f"results/{d}/{run}/seed{seed}/train_log.tsv" for d, run, seed in RUNS if d == dataset]


def slurm_placement(step):
    """Keyword resources slurm_partition / slurm_account / gpu_model for `step`'s rules, only for the keys the
    config sets (config `resources.<step>.partition` etc., per run where a run overrides): an unset key leaves the
    SLURM profile's default-resources in force. A run without its own value falls back to the config's, else to
    the empty string (the plugin then omits the option). For the per-run steps, train and certify."""
    return {
        mc.SLURM_KEYS[key]: lambda wildcards, key=key: mc.run_resource(config, wildcards.run, step, key) or ""
        for key in mc.slurm_keys_used(config, step)
    }


def res(step, key):
    """A job's request (threads, mem_mb, runtime in minutes, gpu): the run's `resources.<step>` where it sets one,
    else the config's `resources.<step>`. Per-run jobs get a function of the wildcards, the report steps a value."""
    if step == "report":
        return mc.run_resource(config, None, step, key)
    return lambda wildcards: mc.run_resource(config, wildcards.run, step, key)
