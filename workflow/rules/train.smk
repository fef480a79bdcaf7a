rule train:
    """Train one run at one seed with the shared loop (methods/train.py); resumes from <run dir>/state."""
    output:
        model="results/{dataset}/{run}/seed{seed}/model.pt",
        log_tsv="results/{dataset}/{run}/seed{seed}/train_log.tsv",
    params:
        spec=train_spec,
        out=lambda wildcards, output: os.path.dirname(output.model),
    log:
        "logs/train/{dataset}/{run}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/train/{dataset}/{run}/seed{seed}.tsv"
    threads: res("train", "threads")
    resources:
        mem_mb=res("train", "mem_mb"),
        runtime=res("train", "runtime"),
        gpu=res("train", "gpu"),
    conda:
        "../envs/methods.yaml"
    shell:
        "python -m methods train --spec {params.spec:q} --out {params.out} --threads {threads} --no-progress"
        " > {log} 2>&1"
