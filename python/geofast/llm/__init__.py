"""The LLM stage of retrieval-augmented geolocation (Img2Loc / G3).

- :mod:`~geofast.llm.client`: :class:`LLMConfig`, :class:`LLMClient` (any OpenAI-compatible
  chat endpoint: timeouts, retries with backoff, concurrency limit, cache, token usage);
- :mod:`~geofast.llm.prompts`: Img2Loc/G3 prompt plans from database neighbours or GeoCLIP candidates;
- :mod:`~geofast.llm.parse`: :func:`parse_latlon`, a robust reader of coordinate answers;
- :mod:`~geofast.llm.cache`: :class:`ResponseCache` under ``$GEOFAST_CACHE/llm``;
- :mod:`~geofast.llm.image`: :func:`encode_image` (downscaled JPEG, data URL);
- the scriptable local chat server for tests is :mod:`geofast.testing.openai_stub`.

The orchestration (references → prompts → answers → geo-verification) is
:func:`geofast.predict.rag.predict_rag`.
"""

from __future__ import annotations

from geofast.llm.cache import ResponseCache, default_cache_dir, request_key
from geofast.llm.client import (
    API_KEY_ENV_VARS,
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    ChatAnswer,
    LLMClient,
    LLMConfig,
    Usage,
    resolve_api_key,
    run_sync,
)
from geofast.llm.image import EncodedImage, ImageLike, encode_image
from geofast.llm.parse import parse_coordinate, parse_latlon, valid_latlon
from geofast.llm.prompts import ANSWER_FORMAT, PromptSpec, Reference, build_prompt, plan_prompts

__all__ = [
    "ANSWER_FORMAT",
    "API_KEY_ENV_VARS",
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "ChatAnswer",
    "EncodedImage",
    "ImageLike",
    "LLMClient",
    "LLMConfig",
    "PromptSpec",
    "Reference",
    "ResponseCache",
    "Usage",
    "build_prompt",
    "default_cache_dir",
    "encode_image",
    "parse_coordinate",
    "parse_latlon",
    "plan_prompts",
    "request_key",
    "resolve_api_key",
    "run_sync",
    "valid_latlon",
]
