"""Where the project's own resources live (the package is installed editable, so they sit beside it)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = REPO_ROOT / "config" / "config.yaml"
PUBLISHED_CSV = REPO_ROOT / "workflow" / "resources" / "published.csv"
