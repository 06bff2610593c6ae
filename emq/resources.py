"""Files that ship inside the emq package (model weights in emq/assets)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def asset_path(name: str) -> Path:
    """A file in emq/assets (installed packages keep it on disk: package data is not zipped)."""
    return Path(str(resources.files("emq") / "assets" / name))
