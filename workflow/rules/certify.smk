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


use rule certify as certify_best with:
    """The same certifier on the selected ("best") checkpoint of a run with train.select_best."""
    input:
        model="results/{dataset}/{run}/seed{seed}/model_best.pt",
    output:
        tsv="results/{dataset}/{run}/seed{seed}/certify-best/{certifier}.tsv",
        meta="results/{dataset}/{run}/seed{seed}/certify-best/{certifier}.json",
    log:
        "logs/certify-best/{dataset}/{run}/seed{seed}/{certifier}.log",
    benchmark:
        "logs/benchmarks/certify-best/{dataset}/{run}/seed{seed}/{certifier}.tsv"
