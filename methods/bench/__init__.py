"""The bench stage: what things cost, measured side by side (benchmark: reference procedures vs the fast paths;
train_cost: each method's training step; linf_layer: the ℓp-dist op) and planned (plan: GPU-hours of a config).

    python -m methods bench [--quick | --full]; python -m methods plan --configfile config/cifar10.yaml
"""
