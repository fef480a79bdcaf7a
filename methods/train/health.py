"""Does a run train at all? A run whose training accuracy sits at chance (a constant prediction) or whose loss stops
moving finishes like any other and certifies like any other: a constant classifier is even "certified" at every radius
it predicts the right class for. This watches the per-epoch log, warns in it naming the epoch, and says at the end
whether the run collapsed, so run.json, the model file, summary.csv and every table and figure can carry the flag.

Rules (from epoch WARMUP on, the first epochs being allowed to sit at chance):
- at chance: training accuracy within CHANCE_MARGIN of 1 / classes (a constant prediction scores the frequency of
  its class, ≈ 1 / classes on these balanced datasets);
- flat loss: the loss moved by less than FLAT_TOLERANCE (relative) over the last FLAT_EPOCHS epochs.
The run is marked *collapsed* when its last epoch is at chance; epochs at chance it recovered from are recorded too.
"""

from __future__ import annotations

WARMUP = 3
CHANCE_MARGIN = 0.05
FLAT_EPOCHS = 3
FLAT_TOLERANCE = 1e-4


def new_health() -> dict:
    return {"at_chance": [], "flat_loss": []}


def check_health(health: dict, rows: list[dict], num_classes: int) -> str:
    """Fold the newest epoch of `rows` into `health` (in place); a warning for the log, or ""."""
    row, epoch = rows[-1], len(rows)
    if epoch < WARMUP:
        return ""
    warnings = []
    chance = 1.0 / num_classes
    if float(row["accuracy"]) <= chance + CHANCE_MARGIN:
        health["at_chance"].append(epoch)
        warnings.append(f"epoch {epoch}: training accuracy {float(row['accuracy']):.4f} is at chance "
                        f"(1/{num_classes} = {chance:.3f}): a constant prediction?")  # fmt: skip
    if epoch > FLAT_EPOCHS:
        before, now = float(rows[-1 - FLAT_EPOCHS]["loss"]), float(row["loss"])
        if abs(now - before) <= FLAT_TOLERANCE * max(abs(before), 1e-12):
            health["flat_loss"].append(epoch)
            warnings.append(f"epoch {epoch}: the loss has not moved over {FLAT_EPOCHS} epochs ({before:.6g} -> "
                            f"{now:.6g})")  # fmt: skip
    return "; ".join(warnings)


def _spans(epochs: list[int]) -> str:
    spans, start = [], None
    for i, e in enumerate(epochs):
        if start is None:
            start = e
        if i + 1 == len(epochs) or epochs[i + 1] != e + 1:
            spans.append(f"{start}" if start == e else f"{start}-{e}")
            start = None
    return ", ".join(spans)


def health_summary(health: dict, epochs: int) -> str:
    """ "" for a healthy run; else one line saying what went wrong, starting with "collapsed" when the last epoch is
    still at chance (the flag the report carries)."""
    at_chance, flat = health["at_chance"], health["flat_loss"]
    if at_chance and at_chance[-1] == epochs:
        return f"collapsed: training accuracy at chance in epochs {_spans(at_chance)}, to the end"
    parts = []
    if at_chance:
        parts.append(f"training accuracy at chance in epochs {_spans(at_chance)}, then recovered")
    if flat and flat[-1] == epochs:
        parts.append(f"loss flat in epochs {_spans(flat)}, to the end")
    return "; ".join(parts)
