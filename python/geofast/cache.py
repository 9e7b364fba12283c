"""geofast's on-disk cache folder: ``$GEOFAST_CACHE``, default ``~/.cache/geofast``."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "GEOFAST_CACHE"


def cache_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder (not created here)."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "geofast"
