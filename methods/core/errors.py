"""The errors a user is meant to read: one line, naming what to fix (the CLI prints them without a traceback)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config that cannot run. The message names the field and says what is wrong."""


class DatasetNotFound(FileNotFoundError):
    """A dataset's files are not where the config says; the message names the path and the config key."""


def one_line(exc: BaseException) -> str:
    """`Type: message` on one line, at most 300 characters, for warnings and records of an error that was handled
    (a torch.compile failure the fast paths fell back from): dynamo's messages run to dozens of lines and often put
    the cause on the second (`backend='inductor' raised:` / the cause)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    return f"{type(exc).__name__}: {text}"[:300]


class InputError(ValueError):
    """A file the step reads is not what it should be (corrupted, truncated, from another run); the message names it."""


class LockError(RuntimeError):
    """Another process holds the output this step would write."""
