"""Model files: the trained weights plus the `info` needed to rebuild the model without the config.

Above the method registry (a model file names its method, whose `Hparams` and architecture rebuild the model), below
the stages that write (train) and read (certify) model files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .core import models
from .core.io import atomic_save
from .registry import get_method

REQUIRED_INFO = ("method", "dataset", "num_classes", "hparams", "epochs_done", "arch", "normalization")


def save_model(model: torch.nn.Module, info: dict, path: str | Path) -> None:
    missing = [k for k in REQUIRED_INFO if k not in info]
    if missing:
        raise ValueError(f"model info lacks {missing}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"format": 1, "state_dict": state, "info": info}, path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """(model in eval mode taking [0, 1] pixels, info dict) from a model file written by `save_model`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model file at {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "state_dict" not in blob or "info" not in blob:
        raise ValueError(f"{path} is not a model file of this harness (expected keys state_dict and info)")
    info = blob["info"]
    method = get_method(info["method"])
    model = models.for_method(method, method.Hparams(**info["hparams"]), info, info["dataset"])
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval(), info
