"""Reproducibility harness for certified and robust training, by stage of the DAG.

    cohen.py salman.py macer.py feng.py backward_smoothing.py linf_dist.py   one module per method
    registry.py      every method by name (one entry per method)       checkpoint.py   model files
    config.py        configs: schema, cross-field rules, run specs      __main__.py     the CLI
    core/            what every stage and method shares (data, models, noise, io, the TSV format, ...)
    kernels/         the ℓp-distance op (chunked torch, Triton)
    train/  certify/  report/  bench/   one sub-package per stage; certify/registry.py names every certifier

Every step is runnable by hand: ``python -m methods train|certify|summarize|report --help``.
The public names below are imported on first use, so that `import methods.config` (the Snakefile's, at parse time)
does not pay for the certify stage.
"""

from __future__ import annotations

import importlib

#: public name -> the module that defines it
_EXPORTS = {"load_checkpoint": "methods.checkpoint", "Smooth": "methods.certify.smoothing"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'methods' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
