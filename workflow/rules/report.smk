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
        linf_radii=" ".join(str(r) for r in config["report"]["linf_radii"]),
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
        "python -m methods summarize --radii {params.radii} --linf-radii {params.linf_radii} --notes {params.notes:q}"
        " --out {output} {input.tsv}"
        " > {log} 2>&1"


rule report:
    """The l2 certified-accuracy-vs-radius figure (PNG, PDF), the accuracy and upper-envelope tables (md, tex, csv)."""
    input:
        summary="results/{dataset}/summary.csv",
        tsv=lambda wildcards: certify_outputs(wildcards.dataset),
    output:
        figure=multiext("figures/{dataset}/certified_accuracy", ".png", ".pdf"),
        accuracy=multiext("results/{dataset}/tables/certified_accuracy", ".md", ".tex", ".csv"),
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
        "python -m methods report --what l2 --summary {input.summary} --figures-dir figures/{wildcards.dataset}"
        " --tables-dir results/{wildcards.dataset}/tables --radius-max {params.radius_max} --title {params.title:q}"
        " > {log} 2>&1"


rule report_linf:
    """The l-inf accuracy-vs-radius figure (certified solid, empirical dashed) and the l-inf accuracy table."""
    input:
        summary="results/{dataset}/summary.csv",
        tsv=lambda wildcards: certify_outputs(wildcards.dataset),
    output:
        figure=multiext("figures/{dataset}/linf_accuracy", ".png", ".pdf"),
        accuracy=multiext("results/{dataset}/tables/linf_accuracy", ".md", ".tex", ".csv"),
    params:
        radius_max=config["report"]["linf_radius_max"],
        title=config["report"]["title"],
    log:
        "logs/report_linf/{dataset}.log",
    benchmark:
        "logs/benchmarks/report_linf/{dataset}.tsv"
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        "../envs/methods.yaml"
    shell:
        "python -m methods report --what linf --summary {input.summary} --figures-dir figures/{wildcards.dataset}"
        " --tables-dir results/{wildcards.dataset}/tables --radius-max {params.radius_max} --title {params.title:q}"
        " > {log} 2>&1"


rule timing:
    """The training-cost table of every run (sec/epoch, epochs, hours, device), both norms."""
    input:
        summary="results/{dataset}/summary.csv",
    output:
        multiext("results/{dataset}/tables/timing", ".md", ".tex", ".csv"),
    log:
        "logs/timing/{dataset}.log",
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        "../envs/methods.yaml"
    shell:
        "python -m methods report --what timing --summary {input.summary} --figures-dir figures/{wildcards.dataset}"
        " --tables-dir results/{wildcards.dataset}/tables > {log} 2>&1"
