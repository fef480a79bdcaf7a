rule train:
    """Train one run at one seed with the shared loop (methods/train/loop.py); resumes from <run dir>/state."""
    wildcard_constraints:
        run=rf"(?!{_SELECT_BEST_RE}/)[^/]+",
    output:
        model="results/{dataset}/{run}/seed{seed}/model.pt",
        log_tsv="results/{dataset}/{run}/seed{seed}/train_log.tsv",
    params:
        spec=train_spec,
        out=lambda wildcards, output: os.path.dirname(output.model),
        launcher=train_launcher,
    log:
        "logs/train/{dataset}/{run}/seed{seed}.log",
    # Models first: every certification waits on one. Depth-first, the default DAG trained its last model after
    # 220 of 300 s and certified it alone on one of its 2 cores.
    priority: 1
    threads: res("train", "threads")
    resources:
        **slurm_placement("train"),
        mem_mb=res("train", "mem_mb"),
        runtime=res("train", "runtime"),
        gpu=res("train", "gpu"),
    conda:
        "../envs/methods.yaml"
    shell:
        "{params.launcher} -m methods train --spec {params.spec:q} --out {params.out} --threads {threads} --no-progress"
        " > {log} 2>&1"


use rule train as train_select_best with:
    """The same, for a run with train.select_best: it also writes the selected epoch's weights to model_best.pt."""
    wildcard_constraints:
        run=_SELECT_BEST_RE,
    output:
        model="results/{dataset}/{run}/seed{seed}/model.pt",
        best="results/{dataset}/{run}/seed{seed}/model_best.pt",
        log_tsv="results/{dataset}/{run}/seed{seed}/train_log.tsv",
