"""Model files: the trained weights plus the `info` needed to rebuild the model without the config.

Above the method registry (a model file names its method, whose `Hparams` and architecture rebuild the model), below
the stages that write (train) and read (certify) model files. Each file carries a checksum of its own weights and
info, verified on load: a file with flipped bytes (a bad disk, a bad copy) is refused with an error naming it, never
certified as a different model. Files written before the checksum existed load unchecked.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .core import models
from .core.errors import InputError
from .core.io import atomic_save
from .registry import get_method

REQUIRED_INFO = ("method", "dataset", "num_classes", "hparams", "epochs_done", "arch", "normalization")


def content_digest(state: dict[str, torch.Tensor], info: dict) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes (in name order) and the info as canonical JSON."""
    digest = hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_model(model: torch.nn.Module, info: dict, path: str | Path) -> None:
    missing = [k for k in REQUIRED_INFO if k not in info]
    if missing:
        raise ValueError(f"model info lacks {missing}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"format": 1, "state_dict": state, "info": info, "checksum": content_digest(state, info)}, path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """(model in eval mode taking [0, 1] pixels, info dict) from a model file written by `save_model`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, garbage, another format: torch's messages do not name the file
        raise InputError(f"{path} is not a readable model file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'})") from None  # fmt: skip
    if not isinstance(blob, dict) or "state_dict" not in blob or "info" not in blob:
        raise InputError(f"{path} is not a model file of this harness (expected keys state_dict and info)")
    info = blob["info"]
    if "checksum" in blob and blob["checksum"] != content_digest(blob["state_dict"], info):
        raise InputError(f"{path} is corrupted: its weights no longer match the checksum written with them (retrain "
                         f"the run, or restore the file)")  # fmt: skip
    method = get_method(info["method"])
    model = models.for_method(method, method.Hparams(**info["hparams"]), info, info["dataset"])
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval(), info
