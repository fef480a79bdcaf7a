"""The errors a user is meant to read: one line, naming what to fix (the CLI prints them without a traceback)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config that cannot run. The message names the field and says what is wrong."""


class DatasetNotFound(FileNotFoundError):
    """A dataset's files are not where the config says; the message names the path and the config key."""
