import methods.core.paths as mc_paths

PUBLISHED_CSV = str(mc_paths.PUBLISHED_CSV)
# the package's copy: the one the steps read
CLAIMS_CSV = str(mc_paths.REPO_ROOT / "workflow" / "resources" / "claims.csv")


rule summarize:
    """One summary.csv row per run × certifier × checkpoint × seed: clean accuracy, ACR, accuracy at the radii,
    cost, and the published settings the run reproduces."""
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
        published=json.dumps(mc.published_of(config), sort_keys=True),
    log:
        "logs/summarize/{dataset}.log",
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        "../envs/methods.yaml"
    shell:
        "python -m methods summarize --radii {params.radii} --linf-radii {params.linf_radii} --notes {params.notes:q}"
        " --published {params.published:q} --out {output} {input.tsv}"
        " > {log} 2>&1"


rule report:
    """The l2 certified-accuracy-vs-radius figure of every run (PNG, PDF), the accuracy, upper-envelope and
    certification-cost tables."""
    input:
        summary="results/{dataset}/summary.csv",
        tsv=lambda wildcards: certify_outputs(wildcards.dataset),
    output:
        png=report(
            "figures/{dataset}/certified_accuracy.png",
            caption="../report/certified_accuracy.rst",
            category="{dataset}",
            subcategory="l2",
        ),
        pdf="figures/{dataset}/certified_accuracy.pdf",
        accuracy=multiext("results/{dataset}/tables/certified_accuracy", ".md", ".tex"),
        accuracy_csv=report(
            "results/{dataset}/tables/certified_accuracy.csv",
            caption="../report/certified_accuracy_table.rst",
            category="{dataset}",
            subcategory="l2",
        ),
        envelope=multiext("results/{dataset}/tables/envelope", ".md", ".tex"),
        envelope_csv=report(
            "results/{dataset}/tables/envelope.csv",
            caption="../report/envelope_table.rst",
            category="{dataset}",
            subcategory="l2",
        ),
        cost=multiext("results/{dataset}/tables/certification_cost", ".md", ".tex"),
        cost_csv=report(
            "results/{dataset}/tables/certification_cost.csv",
            caption="../report/certification_cost.rst",
            category="{dataset}",
            subcategory="l2",
        ),
    params:
        radius_max=config["report"]["radius_max"],
        title=config["report"]["title"],
    log:
        "logs/report/{dataset}.log",
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


rule figure_sigma:
    """Every method at one sigma (CERTIFY; a method's envelope where it has several runs), the published points of
    the runs' settings as markers: Cohen's and MACER's figures."""
    input:
        summary="results/{dataset}/summary.csv",
        tsv=lambda wildcards: certify_outputs(wildcards.dataset),
        published=PUBLISHED_CSV,
    output:
        png=report(
            "figures/{dataset}/certified_accuracy_sigma{sigma}.png",
            caption="../report/figure_sigma.rst",
            category="{dataset}",
            subcategory="l2",
        ),
        pdf="figures/{dataset}/certified_accuracy_sigma{sigma}.pdf",
    params:
        radius_max=config["report"]["radius_max"],
        title=config["report"]["title"],
    log:
        "logs/figure_sigma/{dataset}/{sigma}.log",
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        "../envs/methods.yaml"
    shell:
        "python -m methods report --what sigma --sigma {wildcards.sigma} --summary {input.summary}"
        " --figures-dir figures/{wildcards.dataset} --tables-dir results/{wildcards.dataset}/tables"
        " --radius-max {params.radius_max} --title {params.title:q} > {log} 2>&1"


rule figure_sweep:
    """One method across its sigmas and their envelope (Cohen's figure), with the published envelope as markers."""
    input:
        summary="results/{dataset}/summary.csv",
        tsv=lambda wildcards: certify_outputs(wildcards.dataset),
        published=PUBLISHED_CSV,
    output:
        png=report(
            "figures/{dataset}/sigma_sweep_{method}.png",
            caption="../report/figure_sweep.rst",
            category="{dataset}",
            subcategory="l2",
        ),
        pdf="figures/{dataset}/sigma_sweep_{method}.pdf",
    params:
        radius_max=config["report"]["radius_max"],
        title=config["report"]["title"],
    log:
        "logs/figure_sweep/{dataset}/{method}.log",
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        "../envs/methods.yaml"
    shell:
        "python -m methods report --what sweep --method {wildcards.method} --summary {input.summary}"
        " --figures-dir figures/{wildcards.dataset} --tables-dir results/{wildcards.dataset}/tables"
        " --radius-max {params.radius_max} --title {params.title:q} > {log} 2>&1"


rule report_linf:
    """The l-inf accuracy-vs-radius figure (certified solid, empirical dashed, published points as markers) and the
    l-inf accuracy table."""
    input:
        summary="results/{dataset}/summary.csv",
        tsv=lambda wildcards: certify_outputs(wildcards.dataset),
        published=PUBLISHED_CSV,
    output:
        png=report(
            "figures/{dataset}/linf_accuracy.png",
            caption="../report/linf_accuracy.rst",
            category="{dataset}",
            subcategory="l-inf",
        ),
        pdf="figures/{dataset}/linf_accuracy.pdf",
        accuracy=multiext("results/{dataset}/tables/linf_accuracy", ".md", ".tex"),
        accuracy_csv=report(
            "results/{dataset}/tables/linf_accuracy.csv",
            caption="../report/linf_accuracy_table.rst",
            category="{dataset}",
            subcategory="l-inf",
        ),
    params:
        radius_max=config["report"]["linf_radius_max"],
        title=config["report"]["title"],
    log:
        "logs/report_linf/{dataset}.log",
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
    """The training-cost table of every run (sec/epoch, epochs, hours, device), both norms, beside the papers' own
    timings and hardware (MACER's Table 3)."""
    input:
        summary="results/{dataset}/summary.csv",
        published=PUBLISHED_CSV,
    output:
        multiext("results/{dataset}/tables/timing", ".md", ".tex"),
        csv=report(
            "results/{dataset}/tables/timing.csv",
            caption="../report/timing.rst",
            category="{dataset}",
            subcategory="cost",
        ),
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


rule compare:
    """Reproduced vs published: each number the runs' published settings report, with the reproduced value, its
    interval, the difference and a flag (methods/report/compare.py)."""
    input:
        summary="results/{dataset}/summary.csv",
        tsv=lambda wildcards: certify_outputs(wildcards.dataset),
        published=PUBLISHED_CSV,
    output:
        multiext("results/{dataset}/tables/reproduced_vs_published", ".md", ".tex"),
        csv=report(
            "results/{dataset}/tables/reproduced_vs_published.csv",
            caption="../report/published.rst",
            category="{dataset}",
            subcategory="published",
        ),
    log:
        "logs/compare/{dataset}.log",
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        "../envs/methods.yaml"
    shell:
        "python -m methods report --what published --summary {input.summary}"
        " --figures-dir figures/{wildcards.dataset} --tables-dir results/{wildcards.dataset}/tables > {log} 2>&1"


rule claims:
    """The papers' claims checked on this dataset's runs: paired differences over the same test images with a
    bootstrap interval, and the verdict it gives (methods/report/claims.py, workflow/resources/claims.csv)."""
    input:
        summary="results/{dataset}/summary.csv",
        tsv=lambda wildcards: certify_outputs(wildcards.dataset),
        claims=CLAIMS_CSV,
    output:
        multiext("results/{dataset}/tables/claims", ".md", ".tex"),
        csv=report(
            "results/{dataset}/tables/claims.csv",
            caption="../report/claims.rst",
            category="{dataset}",
            subcategory="claims",
        ),
    log:
        "logs/claims/{dataset}.log",
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        "../envs/methods.yaml"
    shell:
        "python -m methods report --what claims --summary {input.summary}"
        " --figures-dir figures/{wildcards.dataset} --tables-dir results/{wildcards.dataset}/tables > {log} 2>&1"


rule cost:
    """Robustness against training cost, every method of the dataset at once (methods/report/cost.py)."""
    input:
        summary="results/{dataset}/summary.csv",
        tsv=lambda wildcards: certify_outputs(wildcards.dataset),
        logs=lambda wildcards: train_logs(wildcards.dataset),
    output:
        multiext("results/{dataset}/tables/cost_robustness", ".md", ".tex", ".csv"),
        png=report(
            "figures/{dataset}/cost_robustness.png",
            caption="../report/cost_robustness.rst",
            category="{dataset}",
            subcategory="cost",
        ),
        pdf="figures/{dataset}/cost_robustness.pdf",
    params:
        title=config["report"]["title"],
    log:
        "logs/cost/{dataset}.log",
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        "../envs/methods.yaml"
    shell:
        "python -m methods report --what cost --summary {input.summary} --title {params.title:q}"
        " --figures-dir figures/{wildcards.dataset} --tables-dir results/{wildcards.dataset}/tables > {log} 2>&1"


rule figures:
    """`snakemake figures --nolock`: every summary, figure and table again from the results/ tree as it is (copied
    from a cluster, say). No inputs and no outputs, so it never trains or certifies: it reads what is there. Run it
    with --nolock: Snakemake's exit removes .snakemake/locks whole, a running DAG's locks included."""
    params:
        radii=" ".join(str(r) for r in config["report"]["radii"]),
        linf_radii=" ".join(str(r) for r in config["report"]["linf_radii"]),
        radius_max=config["report"]["radius_max"],
        linf_radius_max=config["report"]["linf_radius_max"],
        title=config["report"]["title"],
        notes=json.dumps(mc.notes_of(config), sort_keys=True),
        published=json.dumps(mc.published_of(config), sort_keys=True),
    log:
        "logs/figures.log",
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        "../envs/methods.yaml"
    shell:
        "python -m methods rebuild --results results --figures figures --radii {params.radii}"
        " --linf-radii {params.linf_radii} --radius-max {params.radius_max} --linf-radius-max {params.linf_radius_max}"
        " --title {params.title:q} --notes {params.notes:q} --published {params.published:q} > {log} 2>&1"
