"""A chat client for any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server).

Built on ``openai.AsyncOpenAI``, whose own retry loop does the reliability work: it retries
connection errors, timeouts, 408/409/429 and 5xx responses up to ``max_retries`` times with
exponential backoff (0.5 s · 2^attempt, capped at 8 s, minus up to 25 % jitter) and honours a
server's ``Retry-After``/``retry-after-ms`` header up to 120 s. geofast adds what the client
does not have:

- a concurrency limit (an ``asyncio.Semaphore`` around every HTTP request, retries included);
- an on-disk response cache (:mod:`geofast.llm.cache`) consulted before the limit;
- a circuit breaker shared by the whole run (one client per run): when the endpoint cannot be
  reached or times out before any request has succeeded, or when ``breaker_failures``
  requests in a row have failed after earlier successes, the run stops with
  :class:`~geofast.errors.LLMError` and queued requests are never sent; authentication and
  unknown-model errors stop it at once. A short outage (fewer failures in a row) does not stop
  the run: the images it hit fall back to the retrieval answer, flagged;
- running totals of the run (:attr:`LLMClient.stats`: requests, tokens, failures; and the
  requests per second since the first request) for a progress display;
- token usage per request, summed by the caller.

The API key comes from ``GEOFAST_LLM_API_KEY`` or ``OPENAI_API_KEY`` (or the ``api_key``
argument of :class:`LLMClient` for library callers), never from the command line. A non-OpenAI
endpoint without a key gets a placeholder, as local servers accept any.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import urlparse

from geofast.errors import LLMError, ParameterError
from geofast.llm.cache import ResponseCache, request_key
from geofast.llm.image import EncodedImage

__all__ = [
    "API_KEY_ENV_VARS",
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "ChatAnswer",
    "LLMClient",
    "LLMConfig",
    "Usage",
    "resolve_api_key",
    "run_sync",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
#: Environment variables holding the API key, in order of precedence.
API_KEY_ENV_VARS = ("GEOFAST_LLM_API_KEY", "OPENAI_API_KEY")
BASE_URL_ENV_VARS = ("GEOFAST_LLM_BASE_URL", "OPENAI_BASE_URL")
MODEL_ENV_VAR = "GEOFAST_LLM_MODEL"
#: Sent to endpoints other than OpenAI's when no key is configured (local servers accept any).
NO_KEY_PLACEHOLDER = "sk-no-key-required"


#: Default seconds an image may spend in the LLM stage before its retrieval answer is used.
DEFAULT_DEADLINE_S = 180.0

T = TypeVar("T")


@dataclass(frozen=True)
class LLMConfig:
    """Everything the RAG stage needs to know about the LLM; one field per ``--llm-*`` option of
    the CLI (errors name the fields in ``GeofastError.params``; the CLI shows its flags).

    ``references`` lists the reference counts of the prompts (G3: ``(0, 5, 10, 15)``; Img2Loc:
    ``(16,)``); each prompt holds the first r of the ``nearest`` database neighbours (or GeoCLIP
    candidates) and the first r of the ``farthest`` neighbours, and is sampled ``samples``
    times at ``temperature``. ``base_url`` None means ``$GEOFAST_LLM_BASE_URL``,
    ``$OPENAI_BASE_URL`` or OpenAI's; ``model`` None means ``$GEOFAST_LLM_MODEL`` or
    ``gpt-4o-mini``. ``deadline_s`` bounds the time one image spends in the LLM stage (its
    requests, retries and waits for a free request slot); past it, the image's pending requests
    are cancelled and it gets its retrieval answer, flagged as a fallback.
    """

    base_url: str | None = None
    model: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 3
    concurrency: int = 8
    temperature: float = 0.7
    samples: int = 2
    references: tuple[int, ...] = (0, 5, 10, 15)
    nearest: int = 16
    farthest: int = 16
    image_max_side: int = 512
    max_tokens: int = 256
    cache: bool = True
    deadline_s: float = DEFAULT_DEADLINE_S

    def __post_init__(self) -> None:
        object.__setattr__(self, "references", tuple(int(r) for r in self.references))

        def bad(name: str, why: str) -> ParameterError:
            return ParameterError(
                f"LLM option {name}={getattr(self, name)!r}: {why}",
                hint=f"set {name} accordingly",
                params=(name,),
            )

        if not self.timeout_s > 0:
            raise bad("timeout_s", "the request timeout must be > 0 seconds")
        if not self.deadline_s > 0:
            raise bad("deadline_s", "the per-image deadline must be > 0 seconds")
        if self.max_retries < 0:
            raise bad("max_retries", "retries must be >= 0")
        if self.concurrency < 1:
            raise bad("concurrency", "at least one request must be allowed in flight")
        if not 0.0 <= self.temperature <= 2.0:
            raise bad("temperature", "temperature must lie in [0, 2]")
        if self.samples < 1:
            raise bad("samples", "at least one sample per prompt is needed")
        if self.samples > 1 and self.temperature == 0.0:
            raise bad("samples", "several samples at temperature 0 would be identical; raise the temperature")
        if not self.references or any(r < 0 for r in self.references):
            raise bad("references", "give one or more reference counts >= 0, e.g. 0,5,10,15")
        if self.nearest < 0 or self.farthest < 0:
            raise bad("nearest" if self.nearest < 0 else "farthest", "neighbour counts must be >= 0")
        if self.image_max_side < 16:
            raise bad("image_max_side", "the image must keep at least 16 px on its longest side")
        if self.max_tokens < 1:
            raise bad("max_tokens", "max_tokens must be >= 1")

    @classmethod
    def img2loc(cls, **overrides: Any) -> LLMConfig:
        """Img2Loc's recipe: one prompt with the 16 nearest and 16 farthest neighbours, one sample."""
        base: dict[str, Any] = {"references": (16,), "nearest": 16, "farthest": 16, "samples": 1}
        return cls(**{**base, **overrides})

    @classmethod
    def g3(cls, **overrides: Any) -> LLMConfig:
        """G3's recipe: prompts with 0, 5, 10 and 15 references, sampled at temperature 0.7."""
        base: dict[str, Any] = {"references": (0, 5, 10, 15), "samples": 2, "temperature": 0.7}
        return cls(**{**base, **overrides})

    def resolved_base_url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        for var in BASE_URL_ENV_VARS:
            value = os.environ.get(var)
            if value:
                return value.rstrip("/")
        return DEFAULT_BASE_URL

    def resolved_model(self) -> str:
        return self.model or os.environ.get(MODEL_ENV_VAR) or DEFAULT_MODEL

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Usage:
    """Tokens and requests of one image (or, summed with ``+``, of a whole run).

    ``requests`` counts answered HTTP requests (``retries`` of them were retried), ``cached``
    answers served from the cache (they cost no tokens), ``failed`` requests that gave up."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    requests: int = 0
    retries: int = 0
    cached: int = 0
    failed: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{k: getattr(self, k) + getattr(other, k) for k in asdict(self)})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def total(cls, usages: Any) -> Usage:
        """Sum of ``usages`` (Usage objects or the ``llm.usage`` dicts of predictions)."""
        out = cls()
        for u in usages:
            out = out + (u if isinstance(u, Usage) else cls(**{k: int(v) for k, v in u.items()}))
        return out


@dataclass
class ChatAnswer:
    """The reply to one request: its text (None when the request failed, ``error`` says why)."""

    content: str | None
    usage: Usage = field(default_factory=Usage)
    cached: bool = False
    error: str | None = None


def _is_openai(base_url: str) -> bool:
    host = urlparse(base_url).hostname or ""
    return host == "api.openai.com" or host.endswith(".openai.com")


def resolve_api_key(base_url: str, api_key: str | None = None) -> str:
    """``api_key``, else ``$GEOFAST_LLM_API_KEY``, else ``$OPENAI_API_KEY``; a placeholder for a
    non-OpenAI endpoint; :class:`LLMError` for OpenAI's endpoint without a key."""
    if api_key:
        return api_key
    for var in API_KEY_ENV_VARS:
        value = os.environ.get(var)
        if value:
            return value
    if _is_openai(base_url):
        raise LLMError(
            f"no API key for {base_url}",
            hint="export GEOFAST_LLM_API_KEY=... (or OPENAI_API_KEY); keys are never taken on the command line",
        )
    return NO_KEY_PLACEHOLDER


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code, also when an event loop is already
    running in this thread (Jupyter): then on a fresh loop in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="geofast-llm") as pool:
        return pool.submit(asyncio.run, coro).result()


def _text_of(content: Any) -> str | None:
    """The text of a message's content: a string, or (some servers) a list of text parts."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") if isinstance(p, dict) else getattr(p, "text", "") for p in content]
        return "".join(str(p) for p in parts if p) or None
    return None


_SSL_CONTEXT: Any = None


def _ssl_context() -> Any:
    """One verifying TLS context for the process (certifi's CA bundle when installed), for
    plain-http endpoints: they need no TLS, but httpx loads a CA bundle for every client
    (~80 ms on every call of the RAG stage). It only matters if such an endpoint redirects to
    https, and then it verifies certificates as usual."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        import ssl

        try:
            import certifi

            cafile: str | None = certifi.where()
        except ImportError:  # pragma: no cover - certifi comes with httpx
            cafile = None
        _SSL_CONTEXT = ssl.create_default_context(cafile=cafile)
    return _SSL_CONTEXT


def _error_message(e: BaseException) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else err
        if msg:
            return str(msg).strip().splitlines()[0][:300]
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


class LLMClient:
    """Asks one OpenAI-compatible endpoint about images, with a concurrency limit and a cache.

    Use it inside an event loop as an async context manager::

        async with LLMClient(config) as llm:
            answer = await llm.ask(prompt, encoded_image, sample=0)

    ``cache`` overrides the default :class:`ResponseCache` (``$GEOFAST_CACHE/llm``); it is
    ignored when ``config.cache`` is false. ``api_key`` is for library callers; the CLI reads
    the environment only.
    """

    def __init__(
        self,
        config: LLMConfig | None = None,
        *,
        api_key: str | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.config = config if config is not None else LLMConfig()
        self.base_url = self.config.resolved_base_url()
        self.model = self.config.resolved_model()
        self._api_key = resolve_api_key(self.base_url, api_key)
        self.cache: ResponseCache | None = None
        if self.config.cache:
            self.cache = cache if cache is not None else ResponseCache()
        self._client: Any = None
        self._loop: Any = None
        self._sem: asyncio.Semaphore | None = None
        self._succeeded = False
        self._fatal: LLMError | None = None
        #: Failed requests in a row since the last answer; the breaker opens at ``breaker_failures``.
        self.breaker_failures = max(8, 2 * self.config.concurrency)
        self._streak = 0
        self._last_error = ""
        #: Running totals of this client's run (all sessions): requests, tokens, failures, cache hits.
        self.stats = Usage()
        self._first_request_at: float | None = None

    def __repr__(self) -> str:
        return f"LLMClient(base_url={self.base_url!r}, model={self.model!r}, cache={self.cache!r})"

    async def __aenter__(self) -> LLMClient:
        """Open the HTTP client on this event loop. The breaker and the totals are the run's:
        they carry over from one ``async with`` to the next (one client per run, used batch by
        batch); :meth:`reset` starts a new run."""
        import openai

        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            return self
        if self._client is not None:  # opened on another (finished) loop: its connections are gone
            self._client = None
        extra: dict[str, Any] = {}
        if urlparse(self.base_url).scheme == "http":
            extra["http_client"] = openai.DefaultAsyncHttpxClient(verify=_ssl_context())
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self._api_key,
            timeout=self.config.timeout_s,
            max_retries=self.config.max_retries,
            **extra,
        )
        self._sem = asyncio.Semaphore(self.config.concurrency)
        self._loop = loop
        return self

    def reset(self) -> None:
        """Forget the breaker state and the totals (a new run with the same client)."""
        self._succeeded = False
        self._fatal = None
        self._streak = 0
        self._last_error = ""
        self.stats = Usage()
        self._first_request_at = None

    @property
    def fatal(self) -> LLMError | None:
        """The error that stopped the run, if the breaker is open."""
        return self._fatal

    def requests_per_second(self) -> float:
        """Answered and failed requests per second since the first request of the run."""
        import time

        if self._first_request_at is None:
            return 0.0
        elapsed = time.monotonic() - self._first_request_at
        done = self.stats.requests + self.stats.failed
        return done / elapsed if elapsed > 0 else 0.0

    def _count(self, usage: Usage) -> None:
        self.stats = self.stats + usage

    def _failed(self, error: str) -> ChatAnswer:
        """A request that failed after the client's retries: counted towards the breaker."""
        usage = Usage(failed=1)
        self._count(usage)
        self._streak += 1
        self._last_error = error
        if self._streak >= self.breaker_failures and self._fatal is None:
            self._fatal = LLMError(
                f"{self.base_url} is failing: {self._streak} requests in a row failed "
                f"(last error: {error}); stopped sending requests",
                hint="check that the server behind base_url is running, then rerun (answers so far are cached)",
                params=("base_url",),
            )
        return ChatAnswer(None, usage, error=error)

    def cancelled(self, n: int = 1) -> None:
        """Count ``n`` requests abandoned at an image's deadline as failures of the endpoint."""
        for _ in range(n):
            self._failed("deadline exceeded")

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
            self._loop = None

    def key(self, prompt: str, image: EncodedImage, sample: int) -> str:
        """The cache key of one request."""
        return request_key(
            base_url=self.base_url,
            model=self.model,
            prompt=prompt,
            image_sha256=image.sha256,
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
            sample=sample,
        )

    def messages(self, prompt: str, image: EncodedImage) -> list[dict[str, Any]]:
        """The chat messages of one request: the prompt text and the image as a data URL."""
        return [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": prompt},
                    {"type": "image_url", "image_url": {"url": image.data_url}},
                ],
            }
        ]

    def _answer_error(self, error: str) -> ChatAnswer:
        """A request the endpoint answered with an error about the request itself (HTTP 400, a
        body that is not a completion): counted as failed, but the endpoint is up."""
        usage = Usage(failed=1)
        self._count(usage)
        return ChatAnswer(None, usage, error=error)

    def _stop(self, message: str, hint: str, params: tuple[str, ...] = ()) -> LLMError:
        """Remember a configuration error so that queued requests fail without being sent."""
        self._fatal = LLMError(message, hint=hint, params=params)
        return self._fatal

    async def ask(self, prompt: str, image: EncodedImage, sample: int = 0) -> ChatAnswer:
        """One sample of ``prompt`` about ``image``: from the cache, else from the endpoint.

        Transient failures that survive the client's retries come back as a
        :class:`ChatAnswer` with ``error`` set; configuration problems raise :class:`LLMError`.
        """
        if self._client is None or self._sem is None:
            raise RuntimeError("LLMClient.ask() outside `async with LLMClient(...)`")
        key = self.key(prompt, image, sample) if self.cache is not None else ""
        if self.cache is not None:
            record = self.cache.get(key)
            if record is not None:
                self._count(Usage(cached=1))
                return ChatAnswer(record["content"], Usage(cached=1), cached=True)

        import time

        import openai

        cfg = self.config
        async with self._sem:
            if self._fatal is not None:  # the breaker is open: nothing more is sent
                raise self._fatal
            if self._first_request_at is None:
                self._first_request_at = time.monotonic()
            try:
                raw = await self._client.chat.completions.with_raw_response.create(
                    model=self.model,
                    messages=self.messages(prompt, image),
                    temperature=cfg.temperature,
                    max_tokens=cfg.max_tokens,
                )
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise self._stop(
                    f"{self.base_url} rejected the API key (HTTP {e.status_code}): {_error_message(e)}",
                    hint="set GEOFAST_LLM_API_KEY (or OPENAI_API_KEY) to a key this endpoint accepts",
                ) from None
            except openai.NotFoundError as e:
                raise self._stop(
                    f"{self.base_url} does not serve {self.model!r} or has no chat endpoint (HTTP 404): {_error_message(e)}",
                    hint="set model to one the server serves, and check base_url (it usually ends in /v1)",
                    params=("model", "base_url"),
                ) from None
            except openai.APITimeoutError:
                msg = f"timed out after {cfg.timeout_s:g} s ({cfg.max_retries} retries)"
                if not self._succeeded:
                    raise self._stop(
                        f"request to {self.base_url} {msg}",
                        hint="raise timeout_s or lower concurrency",
                        params=("timeout_s", "concurrency"),
                    ) from None
                return self._failed(msg)
            except openai.APIConnectionError as e:
                msg = f"cannot connect to {self.base_url}: {_error_message(e.__cause__ or e)}"
                if not self._succeeded:
                    raise self._stop(msg, hint="check base_url and that the server is running", params=("base_url",)) from None
                return self._failed(msg)
            except openai.APIStatusError as e:
                if e.status_code >= 500 or e.status_code in (408, 429):
                    return self._failed(f"HTTP {e.status_code}: {_error_message(e)}")
                return self._answer_error(f"HTTP {e.status_code}: {_error_message(e)}")
            except openai.APIError as e:
                return self._answer_error(f"bad response: {_error_message(e)}")
            try:
                response = raw.parse()
            except Exception as e:
                return self._answer_error(f"bad response: {type(e).__name__}: {_error_message(e)}")

        self._succeeded = True
        self._streak = 0
        choices = getattr(response, "choices", None) or []
        message = getattr(choices[0], "message", None) if choices else None
        content = _text_of(getattr(message, "content", None))
        u = getattr(response, "usage", None)
        usage = Usage(
            prompt_tokens=int(getattr(u, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(u, "completion_tokens", 0) or 0),
            total_tokens=int(getattr(u, "total_tokens", 0) or 0),
            requests=1,
            retries=int(getattr(raw, "retries_taken", 0) or 0),
        )
        self._count(usage)
        if content is None:
            return ChatAnswer(None, usage, error="empty reply")
        if self.cache is not None:
            await asyncio.to_thread(self.cache.put, key, content, usage.as_dict(), self.model)
        return ChatAnswer(content, usage)
