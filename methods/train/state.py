"""The resume state of a training run, saved so that a corrupted file never resumes into a different model.

Each save writes `state/checkpoint.pt` atomically and beside it `checkpoint.pt.sha256`, the file's digest; the
previous state (and its digest) is kept as `checkpoint.prev.pt`. Loading checks the digest: a state that does not
match it, or that torch cannot read (truncated, garbage), is moved aside as `*.corrupt` with a message, and the
previous good state is tried next; with none left, training starts over. A state written before digests existed
loads as it is.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.io import atomic_save, atomic_write_text, sha256_file

PREVIOUS = "checkpoint.prev.pt"


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save(state: dict, path: Path) -> None:
    """Write `state` (atomically) and its digest; the state it replaces becomes the previous one."""
    path = Path(path)
    if path.exists():
        previous = path.with_name(PREVIOUS)
        path.replace(previous)
        if _digest_path(path).exists():
            _digest_path(path).replace(_digest_path(previous))
        else:
            _digest_path(previous).unlink(missing_ok=True)
    atomic_save(state, path)
    atomic_write_text(_digest_path(path), sha256_file(path) + "\n")


def _read(path: Path, device) -> dict:
    """The state at `path`, or ValueError saying why it cannot be trusted."""
    digest = _digest_path(path)
    if digest.exists() and digest.read_text().strip() != sha256_file(path):
        raise ValueError("its sha256 does not match the one recorded when it was written")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a truncated zip, garbage bytes, a pickle torch refuses: all mean "not a state"
        raise ValueError(f"torch cannot read it ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or "fingerprint" not in state:
        raise ValueError("it is not a resume state of this harness")
    return state


def load(path: Path, device, log=print, move_aside: bool = True) -> dict | None:
    """The newest trustworthy state (the current one, else the previous one), or None; every state that fails its
    check is moved aside with a message saying so (by one process: under DDP the others only skip it)."""
    path = Path(path)
    for candidate in (path, path.with_name(PREVIOUS)):
        if not candidate.exists():
            continue
        try:
            return _read(candidate, device)
        except ValueError as why:
            if not move_aside:
                continue
            corrupt = candidate.with_name(candidate.name + ".corrupt")
            candidate.replace(corrupt)
            _digest_path(candidate).unlink(missing_ok=True)
            log(f"the resume state {candidate} is corrupted ({why}); moved it to {corrupt}", flush=True)
    return None
