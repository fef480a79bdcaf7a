rule summarize:
    """One summary.csv row per run × certifier × seed: clean accuracy, ACR, certified accuracy at the radii, cost."""
    input:
        tsv=lambda wildcards: certify_outputs(wildcards.dataset),
        meta=lambda wildcards: certify_outputs(wildcards.dataset, "json"),
        train_logs=lambda wildcards: train_logs(wildcards.dataset),
    output:
        "results/{dataset}/summary.csv",
    params:
        radii=" ".join(str(r) for r in config["report"]["radii"]),
        notes=json.dumps(mc.notes_of(config), sort_keys=True),
    log:
        "logs/summarize/{dataset}.log",
    benchmark:
        "logs/benchmarks/summarize/{dataset}.tsv"
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        "../envs/methods.yaml"
    shell:
        "python -m methods summarize --radii {params.radii} --notes {params.notes:q} --out {output} {input.tsv}"
        " > {log} 2>&1"


rule report:
    """The certified-accuracy-vs-radius figure (PNG, PDF) and the accuracy and timing tables (md, tex, csv)."""
    input:
        summary="results/{dataset}/summary.csv",
        tsv=lambda wildcards: certify_outputs(wildcards.dataset),
    output:
        figure=multiext("figures/{dataset}/certified_accuracy", ".png", ".pdf"),
        accuracy=multiext("results/{dataset}/tables/certified_accuracy", ".md", ".tex", ".csv"),
        timing=multiext("results/{dataset}/tables/timing", ".md", ".tex", ".csv"),
        envelope=multiext("results/{dataset}/tables/envelope", ".md", ".tex", ".csv"),
    params:
        radius_max=config["report"]["radius_max"],
        title=config["report"]["title"],
    log:
        "logs/report/{dataset}.log",
    benchmark:
        "logs/benchmarks/report/{dataset}.tsv"
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        "../envs/methods.yaml"
    shell:
        "python -m methods report --summary {input.summary} --figures-dir figures/{wildcards.dataset}"
        " --tables-dir results/{wildcards.dataset}/tables --radius-max {params.radius_max} --title {params.title:q}"
        " > {log} 2>&1"
