"""On-disk cache of LLM responses, so that a rerun does not pay again.

One JSON file per request under ``$GEOFAST_CACHE/llm`` (default ``~/.cache/geofast/llm``),
named by the SHA-256 of the request's identity: endpoint, model, prompt text, the SHA-256 of
the JPEG that was sent, temperature, max_tokens and the sample index (so the samples of one
prompt stay distinct). Files are written atomically (temp file + fsync + rename); a file that
does not parse or does not carry its own key is treated as missing and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from geofast._io import atomic_write_text

__all__ = ["ResponseCache", "default_cache_dir", "request_key"]

#: Bump when the meaning of a cached record changes.
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$GEOFAST_CACHE/llm``, or ``~/.cache/geofast/llm`` (:func:`geofast.cache.cache_root`)."""
    from geofast.cache import cache_root

    return cache_root() / "llm"


def request_key(
    *,
    base_url: str,
    model: str,
    prompt: str,
    image_sha256: str,
    temperature: float,
    max_tokens: int,
    sample: int,
) -> str:
    """The hex SHA-256 that names one request's cache entry."""
    material = {
        "v": CACHE_VERSION,
        "base_url": base_url.rstrip("/"),
        "model": model,
        "prompt": prompt,
        "image_sha256": image_sha256,
        "temperature": float(temperature),
        "max_tokens": int(max_tokens),
        "sample": int(sample),
    }
    blob = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """A folder of cached responses. ``get``/``put`` by :func:`request_key`."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self._warned = False

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored record for ``key``, or None if absent or unusable."""
        try:
            raw = self.path(key).read_bytes()
        except OSError:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(record, dict) or record.get("key") != key or not isinstance(record.get("content"), str):
            return None
        return record

    def put(self, key: str, content: str, usage: dict[str, int] | None, model: str | None) -> None:
        """Store one response. A cache that cannot be written costs a warning, never the answer."""
        record = {"key": key, "content": content, "usage": usage or {}, "model": model}
        try:
            atomic_write_text(self.path(key), json.dumps(record, ensure_ascii=False))
        except OSError as e:
            if not self._warned:
                self._warned = True
                warnings.warn(f"cannot write the LLM cache under {self.directory}: {e}", stacklevel=2)

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.directory)!r})"
