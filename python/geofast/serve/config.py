"""Everything ``geofast serve`` is configured with, in one dataclass (no CLI flag names here)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from geofast.errors import ParameterError
from geofast.predict.factory import MethodOptions

#: Environment variable holding the API key clients must send.
API_KEY_ENV = "GEOFAST_API_KEY"

#: Image formats accepted by ``POST /v1/locate`` (PIL format names). Anything else PIL could
#: open (EPS, PDF, PSD, ...) is refused with 415 before it is decoded.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


@dataclass
class ServeConfig:
    """Settings of one server: where it listens, which method it runs and every limit.

    ``method`` holds the prediction method and model options (as for ``locate``); the rest are
    the server's own. Sizes are bytes, times are milliseconds or seconds as their names say.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    method: MethodOptions = field(default_factory=MethodOptions)
    #: Images in one forward pass (requests are coalesced up to this many images).
    max_batch: int = 16
    #: How long the worker waits for more requests once it holds one, to fill a batch.
    max_wait_ms: float = 10.0
    #: Requests waiting for the inference worker; one more is answered 503 + Retry-After.
    queue_size: int = 64
    #: Threads that decode uploaded images (the model itself runs in one inference worker).
    workers: int = 2
    #: Seconds a request may take from arrival to answer before it is answered 504.
    deadline_s: float = 60.0
    #: Largest request body in bytes (413 beyond it, checked before the body is read).
    max_body_bytes: int = 64 * 1024 * 1024
    #: Images in one request.
    max_images: int = 32
    #: Pixels (width × height) of one image, read from its header before decoding.
    max_pixels: int = 40_000_000
    #: Candidates per image a client may ask for.
    max_top_k: int = 100
    #: Coordinates in one ``/v1/locations/embed`` request.
    max_locations: int = 1_000
    accepted_formats: tuple[str, ...] = ACCEPTED_FORMATS
    #: Require no API key even when listening beyond loopback (explicit opt-out).
    no_auth: bool = False
    #: Origins allowed by CORS (empty: CORS off).
    cors_origins: tuple[str, ...] = ()
    #: Fetch image URLs sent in ``urls`` (off by default: the server would reach the network).
    allow_urls: bool = False
    #: Also fetch URLs that resolve to loopback, private or link-local addresses.
    allow_private_urls: bool = False
    #: Bytes one fetched URL may have, and seconds it may take.
    url_max_bytes: int = 20 * 1024 * 1024
    url_timeout_s: float = 10.0
    #: Text queries in one request.
    max_texts: int = 32
    #: The API key; ``None`` reads ``$GEOFAST_API_KEY`` (an empty value means no key).
    api_key: str | None = None
    #: Name places (GeoNames) in the answers, as ``geofast locate`` does by default.
    places: bool = True
    #: More host names answered in ``Host`` besides the bound address (DNS-rebinding guard).
    allowed_hosts: tuple[str, ...] = ()
    #: Decoded pixels in flight across all requests (each image counts width × height until it is
    #: reduced to what CLIP sees); at least ``max_pixels``.
    max_decoded_pixels: int = 48_000_000
    #: Simultaneous connections (and requests); beyond, uvicorn answers 503.
    max_connections: int = 128
    #: Seconds a connection may take to send a complete request head (slowloris guard).
    header_timeout_s: float = 10.0
    #: Seconds an idle keep-alive connection stays open.
    keep_alive_s: float = 5.0
    #: Show the absolute paths of database neighbours (default: relative to the database's
    #: folder when below it, else the file name only).
    neighbour_paths: bool = False

    def __post_init__(self) -> None:
        for name in (
            "max_batch",
            "queue_size",
            "workers",
            "max_images",
            "max_pixels",
            "max_top_k",
            "max_body_bytes",
            "max_locations",
            "max_decoded_pixels",
            "max_connections",
        ):
            if getattr(self, name) < 1:
                raise ParameterError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ParameterError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.deadline_s <= 0:
            raise ParameterError(f"deadline_s must be > 0, got {self.deadline_s}")
        for name in ("header_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise ParameterError(f"{name} must be > 0, got {getattr(self, name)}")
        self.max_decoded_pixels = max(self.max_decoded_pixels, self.max_pixels)
        if not 0 < self.port < 65536:
            raise ParameterError(f"port must be in 1..65535, got {self.port}")

    def resolved_api_key(self) -> str | None:
        """The key clients must send: ``api_key``, else ``$GEOFAST_API_KEY``; ``None`` if neither is set."""
        key = self.api_key if self.api_key is not None else os.environ.get(API_KEY_ENV, "")
        key = key.strip()
        if key and (not key.isascii() or not key.isprintable()):
            raise ParameterError(
                f"{API_KEY_ENV} holds characters other than printable ASCII, which no HTTP header can carry",
                hint="use a key of letters, digits and punctuation, e.g. from: python -c 'import secrets; print(secrets.token_urlsafe())'",
            )
        return key or None

    @property
    def loopback(self) -> bool:
        return is_loopback_host(self.host)
