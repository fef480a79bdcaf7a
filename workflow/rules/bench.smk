rule bench:
    """Every workload on the reference procedure and on the fast path, side by side in one process (certification,
    each method's training step, the l-inf-dist layer and net, adaptive vs CERTIFY): bench/bench.csv and bench.md.
    Not part of the default target: `snakemake bench --cores 2` (config `bench.mode: full` on a GPU node). Its
    bench.csv feeds the planner: python -m methods plan --bench bench/bench.csv."""
    output:
        csv="bench/bench.csv",
        md="bench/bench.md",
    params:
        mode=f"--{config['bench']['mode']}",
        device=config["bench"]["device"],
    log:
        "logs/bench.log",
    threads: mc.run_resource(config, None, "certify", "threads")
    resources:
        runtime=60,
        gpu=0 if config["bench"]["device"] == "cpu" else (mc.run_resource(config, None, "certify", "gpu") or 0),
    conda:
        "../envs/methods.yaml"
    shell:
        "python -m methods bench {params.mode} --device {params.device} --out bench --threads {threads} > {log} 2>&1"
