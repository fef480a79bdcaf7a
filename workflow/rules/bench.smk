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


rule doctor:
    """Self-check of the device a job gets (python -m methods doctor): versions, bf16 / TF32, free memory, then each
    fast path against the plain one (certification fp32, compile / CUDA graphs, bf16; each method's training step;
    the Triton l-inf-dist kernels; DDP). Fails on a disagreement, naming the setting that turns the path off. Not
    part of the default target: run `snakemake doctor --profile workflow/profiles/slurm` on a compute node before a
    big submission; the report is logs/doctor.log, the same as JSON in bench/doctor.json. It asks for the train
    step's resources and placement (DDP checks NCCL where they give it two GPUs, else gloo)."""
    output:
        "bench/doctor.json",
    params:
        device=config["bench"]["device"],
    log:
        "logs/doctor.log",
    threads: mc.run_resource(config, None, "train", "threads")
    resources:
        **{
            mc.SLURM_KEYS[k]: mc.run_resource(config, None, "train", k) or ""
            for k in mc.slurm_keys_used(config, "train")
        },
        runtime=30,
        mem_mb=mc.run_resource(config, None, "train", "mem_mb"),
        gpu=0 if config["bench"]["device"] == "cpu" else (mc.run_resource(config, None, "train", "gpu") or 0),
    conda:
        "../envs/methods.yaml"
    shell:
        "python -m methods doctor --device {params.device} --out {output} --threads {threads} > {log} 2>&1"
