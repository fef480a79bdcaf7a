"""Atomic writes and provenance: a killed step never leaves a half-written file, and every output says how it was
made."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch

from .errors import LockError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write) -> None:
    """Call write(file_object) on a temporary file beside `path`, then rename it over `path` (atomic on POSIX). The
    file gets the mode any other file of the run would (0666 less the umask): mkstemp creates it 0600, which a
    shared cluster directory's group could not read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj, path: str | Path) -> None:
    """torch.save, atomically."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode()))


def sha256_file(path: str | Path) -> str:
    """The file's sha256 (hex), read in 1 MB blocks: what run.json and the certify sidecars record of a model file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RunLock:
    """An exclusive lock on one output (a run directory, a certify TSV) for the life of a `with` block: a second
    process that would write the same files stops at once with a message naming the first, instead of interleaving
    its rows or epochs with it. `fcntl.flock` on `<path>.lock`: released by the kernel when the holder exits, even on
    kill -9, so a stale lock file never blocks a rerun."""

    def __init__(self, path: str | Path, what: str):
        self.path, self.what, self.fh = Path(str(path) + ".lock"), what, None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another process"
            self.fh.close()
            raise LockError(f"{self.what} is in use by {holder} (lock {self.path}): wait for it to finish, or stop it "
                            f"and rerun") from None  # fmt: skip
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()
        return False


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(device: torch.device) -> dict:
    """What produced an output: code version, packages, machine, device, time."""
    versions = {}
    for pkg in ("torch", "torchvision", "numpy", "scipy", "statsmodels", "snakemake"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {
        "git_commit": git_commit(),
        "versions": versions,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "device": str(device),
        "device_name": device_name(device),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def spec_json(spec: dict) -> str:
    """Canonical JSON of a run spec: stable key order, so Snakemake (and a resume check) sees a change only when
    something changed."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def write_json(path: str | Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def select_device(name: str = "auto") -> torch.device:
    """'auto' = CUDA when present, else CPU; anything else is taken as given (and checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available (use --device cpu)")
    return device


@contextlib.contextmanager
def allow_tf32(enabled: bool, device: torch.device):
    """TF32 matmuls and cuDNN convolutions on CUDA as `enabled` says, restored afterwards. PyTorch's defaults
    (convolutions in TF32 on Ampere and later, matmuls not) are not the fp32 the papers computed in, so the steps pin
    them from their config (`train.tf32`, `certify.tf32`, default false) and record the setting."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings measure the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
