rule certify:
    """Certify one trained run's test subset with one certifier; writes the per-example TSV (methods/certify.py)."""
    input:
        model="results/{dataset}/{run}/seed{seed}/model.pt",
    output:
        tsv="results/{dataset}/{run}/seed{seed}/certify/{certifier}.tsv",
        meta="results/{dataset}/{run}/seed{seed}/certify/{certifier}.json",
    params:
        spec=certify_spec,
    log:
        "logs/certify/{dataset}/{run}/seed{seed}/{certifier}.log",
    benchmark:
        "logs/benchmarks/certify/{dataset}/{run}/seed{seed}/{certifier}.tsv"
    threads: res("certify", "threads")
    resources:
        mem_mb=res("certify", "mem_mb"),
        runtime=res("certify", "runtime"),
        gpu=res("certify", "gpu"),
    conda:
        "../envs/methods.yaml"
    shell:
        "python -m methods certify --spec {params.spec:q} --checkpoint {input.model} --certifier {wildcards.certifier}"
        " --out {output.tsv} --threads {threads} --no-progress > {log} 2>&1"
