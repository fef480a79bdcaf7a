rule certify:
    """Certify one trained run's test subset with one certifier; writes the per-example TSV (methods/certify/step.py)."""
    wildcard_constraints:
        run=rf"(?!{_SHARDED_RE}/)[^/]+",
    input:
        model="results/{dataset}/{run}/seed{seed}/model.pt",
    output:
        tsv="results/{dataset}/{run}/seed{seed}/certify/{certifier}.tsv",
        meta="results/{dataset}/{run}/seed{seed}/certify/{certifier}.json",
    params:
        spec=certify_spec,
    log:
        "logs/certify/{dataset}/{run}/seed{seed}/{certifier}.log",
    threads: res("certify", "threads")
    resources:
        **slurm_placement("certify"),
        mem_mb=res("certify", "mem_mb"),
        runtime=res("certify", "runtime"),
        gpu=res("certify", "gpu"),
    conda:
        "../envs/methods.yaml"
    shell:
        "python -m methods certify --spec {params.spec:q} --checkpoint {input.model} --certifier {wildcards.certifier}"
        " --out {output.tsv} --threads {threads} --no-progress > {log} 2>&1"


use rule certify as certify_best with:
    """The same certifier on the selected ("best") checkpoint of a run with train.select_best."""
    wildcard_constraints:
        run=rf"(?!{_SHARDED_RE}/)[^/]+",
    input:
        model="results/{dataset}/{run}/seed{seed}/model_best.pt",
    output:
        tsv="results/{dataset}/{run}/seed{seed}/certify-best/{certifier}.tsv",
        meta="results/{dataset}/{run}/seed{seed}/certify-best/{certifier}.json",
    log:
        "logs/certify-best/{dataset}/{run}/seed{seed}/{certifier}.log",


rule certify_shard:
    """One shard (every shards-th image of the subset) of a sharded run's certification, last or best checkpoint."""
    wildcard_constraints:
        run=_SHARDED_RE,
        folder="certify|certify-best",
        shard=r"\d+",
        shards=r"\d+",
    input:
        model=lambda wildcards: f"results/{wildcards.dataset}/{wildcards.run}/seed{wildcards.seed}/"
        + ("model_best.pt" if wildcards.folder == "certify-best" else "model.pt"),
    output:
        tsv="results/{dataset}/{run}/seed{seed}/{folder}/shards/{certifier}.{shard}of{shards}.tsv",
        meta="results/{dataset}/{run}/seed{seed}/{folder}/shards/{certifier}.{shard}of{shards}.json",
    params:
        spec=certify_spec,
    log:
        "logs/{folder}/{dataset}/{run}/seed{seed}/{certifier}.{shard}of{shards}.log",
    threads: res("certify", "threads")
    resources:
        **slurm_placement("certify"),
        mem_mb=res("certify", "mem_mb"),
        runtime=res("certify", "runtime"),
        gpu=res("certify", "gpu"),
    conda:
        "../envs/methods.yaml"
    shell:
        "python -m methods certify --spec {params.spec:q} --checkpoint {input.model} --certifier {wildcards.certifier}"
        " --shard {wildcards.shard}/{wildcards.shards} --out {output.tsv} --threads {threads} --no-progress"
        " > {log} 2>&1"


rule merge_certify_shards:
    """A sharded certification's TSV and sidecar, its shards merged in dataset-index order."""
    wildcard_constraints:
        run=_SHARDED_RE,
        folder="certify|certify-best",
    input:
        tsv=shard_files,
        meta=lambda wildcards: shard_files(wildcards, "json"),
    output:
        tsv="results/{dataset}/{run}/seed{seed}/{folder}/{certifier}.tsv",
        meta="results/{dataset}/{run}/seed{seed}/{folder}/{certifier}.json",
    log:
        "logs/{folder}/{dataset}/{run}/seed{seed}/{certifier}.merge.log",
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        "../envs/methods.yaml"
    shell:
        "python -m methods merge --out {output.tsv} {input.tsv} > {log} 2>&1"
