"""Every method by name: the one place a new method is registered (one module + one entry here).

What a method module must define is `methods/core/interface.py`'s contract; tests/test_registry.py generates its
tests from this table (finite loss, one step moves the weights, `Hparams` defaults = `PAPER[DEFAULTS]`, a model
file round-trips), so a method is tested the moment it is registered here. The table imports the method modules,
so everything above it (checkpoints, train, certify, report, config) may look a method up by the name a config or a
model file gives, and nothing below it needs to know the methods exist.
"""

from __future__ import annotations

from types import ModuleType

from . import backward_smoothing, cohen, fast_at, fast_at_bs, feng, linf_dist, macer, salman, trades
from .core.interface import THREAT_MODELS

#: method name (as written in configs and model files) -> module
METHODS: dict[str, ModuleType] = {
    "cohen": cohen,
    "salman": salman,
    "macer": macer,
    "feng": feng,
    "linf_dist": linf_dist,
    "backward_smoothing": backward_smoothing,
    "trades": trades,
    "fast_at": fast_at,
    "fast_at_bs": fast_at_bs,
}


def get_method(name: str) -> ModuleType:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    module = METHODS[name]
    assert module.THREAT_MODEL in THREAT_MODELS, module.__name__
    return module
