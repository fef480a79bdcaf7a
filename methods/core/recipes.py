"""Settings several methods' PAPER entries share, written once: the CIFAR-10 normalization statistics of the
backward-smoothing and Fast AT repositories, and the training recipe the backward-smoothing repository gives every
method it compares (backward smoothing's baselines TRADES-10, Fast TRADES and its Fast AT; METHODS.md §5, §7.4).
"""

from __future__ import annotations

#: CIFAR-10 per-channel mean and std the backward-smoothing and Fast AT repositories normalize with.
CIFAR10_NORMALIZATION = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))

#: The BS repository's recipe for its baselines, in this project's `train:` keys: SGD lr 0.1, momentum 0.9, wd 5e-4,
#: batch 128, 100 epochs, lr ×0.1 at 50 % and 75 % of the iterations (stepped per iteration, as its MultiStepLR is),
#: and the best epoch by PGD-20 (ε 0.031, step 0.0078) on the first 2,560 test images (§7.0).
BACKWARD_SMOOTHING_RECIPE = dict(
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    weight_decay=5e-4,
    batch_size=128,
    epochs=100,
    schedule="multistep",
    schedule_step="iteration",
    milestone_fractions=[0.5, 0.75],
    gamma=0.1,
    augment=True,
    select_best=dict(eps=0.031, step_size=0.0078, steps=20, loss="ce", images=2560),
)
