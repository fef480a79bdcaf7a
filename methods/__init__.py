"""Reproducibility harness for certified and robust training.

One module per method (cohen.py, ...), shared machinery beside them (data, models, train, smoothing, report).
Every step is runnable by hand: ``python -m methods train|certify|summarize|report --help``.
Imports are lazy so that `import methods` (done by the Snakefile at parse time) stays cheap.
"""


def load_checkpoint(path, device="cpu"):
    """(model in eval mode, info) from a trained model file; see methods.checkpoint."""
    from .checkpoint import load_checkpoint as _load

    return _load(path, device)


__all__ = ["load_checkpoint"]
