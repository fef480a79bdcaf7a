"""The bottom layer: what every stage and every method shares, knowing nothing of any of them.

interface (what a method module provides), errors, io (atomic writes, provenance, devices), paths (the project's
resources), tsv (the per-example file format), data, models (architectures), noise (Gaussian draws, the soft smoothed
classifier), adversary (frozen-eval attacks in ℓ∞: PGD, projection), collectives (what a train step needs of DDP).
Nothing here imports a module above it (the import-linter contract in pyproject.toml says so and the tests check it).
"""
