"""The train stage: one training loop for every method (loop), what a run trains with (build), the fast path
(fast, device_data), multi-process training (distributed) and best-epoch selection (selection).

    python -m methods train --run cohen-0.25 --seed 0     (what the Snakemake rule `train` runs)
"""
