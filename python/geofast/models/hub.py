"""Files from the Hugging Face hub: the local cache first, the network only when allowed."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from geofast.errors import ModelError


def snapshot(repo_id: str, patterns: Sequence[str], *, what: str, hint: str) -> Path:
    """A local folder with the files of ``repo_id`` matching ``patterns``: from the cache, else
    downloaded (unless ``HF_HUB_OFFLINE`` is set). ``what`` names the thing in the error."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id, allow_patterns=list(patterns), local_files_only=True))
    except Exception as cached_error:
        if os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0"):
            raise ModelError(
                f"no {what}: {repo_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set", hint=hint
            ) from cached_error
    try:
        return Path(snapshot_download(repo_id=repo_id, allow_patterns=list(patterns)))
    except Exception as e:
        raise ModelError(f"no {what}: {repo_id!r} is neither cached nor downloadable ({type(e).__name__})", hint=hint) from e
