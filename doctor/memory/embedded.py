"""Configs of well-known models shipped with the package (offline; sources in configs/SOURCES.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).parent / "configs"


def embedded_config(model_id: str) -> dict[str, Any] | None:
    """The config.json embedded in this package for a well-known hub id (offline), or None."""
    path = CONFIG_DIR / (model_id.replace("/", "__") + ".json")
    if not path.is_file():
        return None
    return json.loads(path.read_text())
