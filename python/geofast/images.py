"""Reading photos robustly.

Every image goes through :func:`load_image`: EXIF orientation applied, converted to 8-bit RGB the
way GeoCLIP's ``predict()`` does (``Image.convert("RGB")``), with one-line
:class:`~geofast.errors.ImageError` messages for everything that can go wrong with a file —
missing, empty, not an image, corrupt or truncated, too many pixels (decompression bomb) — so a
batch can report the bad file and carry on with the rest.

Formats needing more than ``convert("RGB")``:

* 16-bit and 32-bit integer greyscale (``I;16*``, ``I``) are scaled to 8 bits by their full
  range (``convert`` would clip everything above 255 to white);
* float greyscale (``F``) is clipped to [0, 1] and scaled when its maximum is ≤ 1, else clipped to [0, 255];
* palette images with transparency go through RGBA first (no PIL warning, same pixels);
* animated GIF/PNG/WebP use their first frame.

Images on the web (:func:`load_url`, or an ``http(s)://`` string / :class:`ImageURL` anywhere an
image is accepted) are fetched with a byte cap and a deadline, and only from public addresses
unless private ones are explicitly allowed: the host is resolved, every address checked
(loopback, private, link-local, multicast, reserved, shared and unspecified ranges are refused),
and the connection goes to the checked address (the ``Host`` header and TLS server name stay
the URL's), so a DNS answer that changes between the check and the connection cannot redirect
the request. Redirects are followed by hand, each hop checked the same way. Proxies from the
environment are ignored (a proxy would make the connection instead of the checked address).
One deadline bounds the whole fetch: name resolution (the system resolver runs in a helper
thread that is abandoned at the deadline), connecting, TLS, every header and body byte, every
redirect — an origin that sends its headers one byte at a time is cut at the deadline.

Extreme aspect ratios: CLIP resizes the *shortest* side to 224 before it keeps the central
224 × 224 square, so a 1 × 30,000 image would become a 224 × 6.7 M-pixel intermediate (gigabytes
from a 100-byte file). Every decoded image whose long side exceeds :data:`MAX_ASPECT` × its short
side is therefore centre-cropped to that ratio (:func:`clip_view`): the part CLIP keeps is the
central square, which the crop contains, so the answer is what CLIP would see of the full image.
"""

from __future__ import annotations

import io
import ipaddress
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from geofast.errors import ImageError

#: File name suffixes treated as images when a folder or glob is expanded.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".jfif", ".avif"}
)

#: Default pixel limit (width × height). Larger files are refused as possible decompression bombs.
DEFAULT_MAX_PIXELS = 178_956_970  # PIL's hard limit (2 × Image.MAX_IMAGE_PIXELS)
MAX_PIXELS_ENV = "GEOFAST_MAX_IMAGE_PIXELS"

#: The longest side of a decoded image may be at most this many times its shortest side; beyond,
#: the image is centre-cropped to this ratio (see :func:`clip_view`). Panoramas up to 16:1 are untouched.
MAX_ASPECT = 16

#: Defaults for images fetched from URLs.
DEFAULT_URL_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_URL_TIMEOUT_S = 15.0
MAX_REDIRECTS = 5
_URL_SCHEMES = ("http", "https")
_REDIRECT_CODES = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class ImageURL:
    """An image on the web and how it may be fetched (see :func:`load_url`)."""

    url: str
    max_bytes: int = DEFAULT_URL_MAX_BYTES
    timeout_s: float = DEFAULT_URL_TIMEOUT_S
    allow_private: bool = False

    def __str__(self) -> str:
        return self.url


ImageInput = str | os.PathLike | Image.Image | ImageURL


def is_url(text: object) -> bool:
    """Whether ``text`` is a string that names a URL (``scheme://...``) rather than a file."""
    if not isinstance(text, str) or "://" not in text:
        return False
    scheme = text.split("://", 1)[0]
    return len(scheme) > 1 and scheme.isascii() and scheme.isalpha()  # "C://" is a Windows path


class PixelLimitError(ImageError):
    """An image has more pixels than allowed (a possible decompression bomb), found before decoding."""


def max_pixels() -> int:
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value > 0:
            return value
    return DEFAULT_MAX_PIXELS


def image_name(image: ImageInput, index: int = 0) -> str:
    """A display name for an image input (its path, or ``<image N>`` for in-memory images)."""
    if isinstance(image, ImageURL):
        return image.url
    if isinstance(image, Image.Image):
        filename = getattr(image, "filename", "") or ""
        return str(filename) if filename else f"<image {index}>"
    return os.fspath(image)


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else float(max(arr.max(initial=0.0), 1.0))
        if mode == "I" and top <= 255.0:
            top = 255.0
        arr8 = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        arr8 = np.clip(np.nan_to_num(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def clip_view(im: Image.Image) -> Image.Image:
    """``im`` centre-cropped so that its long side is at most :data:`MAX_ASPECT` times its short
    side (``im`` itself when it already is). CLIP keeps only the central square of the short
    side, which the crop contains: what the backbone sees is the same, without the giant
    intermediate its shortest-side resize would build for a 1 × 30,000 image."""
    w, h = im.size
    short, long = min(w, h), max(w, h)
    if short < 1 or long <= MAX_ASPECT * short:
        return im
    keep = MAX_ASPECT * short
    if w > h:
        left = (w - keep) // 2
        return im.crop((left, 0, left + keep, h))
    top = (h - keep) // 2
    return im.crop((0, top, w, top + keep))


def load_image(image: ImageInput, *, limit_pixels: int | None = None) -> Image.Image:
    """Open ``image`` (a path, a URL, an :class:`ImageURL` or a PIL image) as an 8-bit RGB PIL
    image with EXIF orientation applied.

    Raises :class:`~geofast.errors.ImageError` with a one-line message naming the file and the
    problem; never anything else for a bad file. A URL string is fetched with the defaults of
    :func:`load_url` (public addresses only).
    """
    limit = max_pixels() if limit_pixels is None else limit_pixels
    if isinstance(image, ImageURL):
        return load_url(
            image.url,
            max_bytes=image.max_bytes,
            timeout_s=image.timeout_s,
            allow_private=image.allow_private,
            limit_pixels=limit,
        )
    if is_url(image):
        return load_url(str(image), limit_pixels=limit)
    if isinstance(image, Image.Image):
        return _decode(image, image_name(image), limit)
    path = Path(os.fspath(image))
    name = str(path)
    if not path.exists():
        raise ImageError(f"{name}: no such file", hint="check the path")
    if path.is_dir():
        raise ImageError(f"{name}: is a folder, not an image")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ImageError(f"{name}: cannot read ({e.strerror or e})") from e
    if size == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")
    try:
        # Read the bytes first: no file handle outlives this call, whatever the format.
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{name}: cannot read ({e.strerror or e})") from e
    return _decode(_open_bytes(data, name), name, limit)


def _open_bytes(data: bytes, name: str, formats: Sequence[str] | None = None) -> Image.Image:
    allowed: list[str] | None = None
    if formats is not None:
        Image.init()  # register every plugin: PIL loads the rarer ones (MPO, ...) lazily
        allowed = [f.upper() for f in formats if f.upper() in Image.OPEN]
    try:
        return Image.open(io.BytesIO(data), formats=allowed)
    except UnidentifiedImageError as e:
        if formats is not None:
            raise ImageError(f"{name}: not an image in an accepted format ({', '.join(formats)})") from e
        raise ImageError(f"{name}: not an image PIL can read") from e
    except Image.DecompressionBombError as e:
        raise PixelLimitError(
            f"{name}: too many pixels (possible decompression bomb)",
            hint=f"raise the limit with {MAX_PIXELS_ENV}=<pixels> if the file is trusted",
        ) from e
    except OSError as e:
        raise ImageError(f"{name}: cannot read ({e.strerror or e})") from e


def open_image_bytes(data: bytes, name: str) -> Image.Image:
    """Open an encoded image held in memory *without decoding its pixels* (PIL reads the header
    only): the result's ``format``, ``width`` and ``height`` can be checked before any decoding."""
    if len(data) == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")
    return _open_bytes(data, name)


def load_image_bytes(data: bytes | Image.Image, name: str, *, limit_pixels: int | None = None) -> Image.Image:
    """:func:`load_image` for an encoded image held in memory (an upload, a download), or for
    the not-yet-decoded result of :func:`open_image_bytes`: the same checks, messages and pixels
    as reading the same bytes from a file."""
    limit = max_pixels() if limit_pixels is None else limit_pixels
    im = data if isinstance(data, Image.Image) else open_image_bytes(data, name)
    return _decode(im, name, limit)


def _decode(im: Image.Image, name: str, limit: int) -> Image.Image:
    try:
        pixels = im.width * im.height
        if pixels > limit:
            raise PixelLimitError(
                f"{name}: {im.width}×{im.height} = {pixels:,} pixels exceeds the limit of {limit:,} "
                "(possible decompression bomb)",
                hint=f"raise the limit with {MAX_PIXELS_ENV}=<pixels> if the file is trusted",
            )
        if getattr(im, "is_animated", False):
            im.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
            im = ImageOps.exif_transpose(im) or im
            im = clip_view(im)  # before the RGB conversion: the full-size pixels are dropped at once
            rgb = _to_rgb(im)
            rgb.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise PixelLimitError(f"{name}: too many pixels (possible decompression bomb)") from e
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        detail = str(e) or type(e).__name__
        if "truncated" in detail.lower():
            raise ImageError(f"{name}: truncated file ({detail})") from e
        raise ImageError(f"{name}: corrupt image ({detail})") from e
    return rgb


# -- images on the web ------------------------------------------------------------------------------
def address_refused(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``ip`` may not be fetched without ``allow_private`` (``None``: a public address)."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return address_refused(mapped)
        if ip.teredo is not None:
            return "a Teredo tunnel address"
    checks = (
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_unspecified", "an unspecified address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    )
    for attr, why in checks:
        if getattr(ip, attr):
            return why
    if not ip.is_global:
        return "not a public address"
    return None


class _FetchTimeout(ImageError):
    """The fetch of a URL passed its deadline."""


def _timed_out(url: str, timeout_s: float) -> _FetchTimeout:
    return _FetchTimeout(f"{url}: timed out after {timeout_s:g} s", hint="try again or raise the timeout")


def _getaddrinfo(host: str, port: int, deadline: float) -> list[Any]:
    """``socket.getaddrinfo`` bounded by ``deadline`` (time.monotonic() seconds): the system
    resolver has no timeout of its own, so it runs in a daemon thread that is abandoned (and
    ends on its own) when the deadline passes; ``TimeoutError`` then."""
    if deadline - time.monotonic() <= 0:
        raise TimeoutError
    box: dict[str, Any] = {}
    done = threading.Event()

    def resolve() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except BaseException as e:
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=resolve, name="geofast-resolve", daemon=True).start()
    if not done.wait(max(0.0, deadline - time.monotonic())):
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return list(box["infos"])


def _resolve_checked(url: str, host: str, port: int, allow_private: bool, deadline: float, timeout_s: float) -> str:
    """The address to connect to for ``host``: every address it resolves to must be allowed."""
    try:
        infos = _getaddrinfo(host, port, deadline)
    except TimeoutError:
        raise _timed_out(url, timeout_s) from None
    except (socket.gaierror, UnicodeError, OSError) as e:
        raise ImageError(f"{url}: cannot resolve host {host!r}", hint="check the URL and the network") from e
    addresses: list[str] = []
    for info in infos:
        addr = str(info[4][0]).split("%", 1)[0]
        if addr not in addresses:
            addresses.append(addr)
    if not addresses:
        raise ImageError(f"{url}: cannot resolve host {host!r}", hint="check the URL and the network")
    if not allow_private:
        for addr in addresses:
            why = address_refused(ipaddress.ip_address(addr))
            if why is not None:
                raise ImageError(
                    f"{url}: refused: {host} resolves to {addr}, {why}",
                    hint="only public addresses are fetched unless private addresses are explicitly allowed",
                )
    return addresses[0]


def load_url(
    url: str,
    *,
    max_bytes: int = DEFAULT_URL_MAX_BYTES,
    timeout_s: float = DEFAULT_URL_TIMEOUT_S,
    allow_private: bool = False,
    limit_pixels: int | None = None,
    formats: Sequence[str] | None = None,
) -> Image.Image:
    """Fetch an image over http(s) and open it like :func:`load_image`.

    ``formats`` (PIL format names) restricts the decoders tried on the fetched bytes.

    At most ``max_bytes`` are read (a larger body is refused, whether announced by
    ``Content-Length`` or not); the whole fetch, redirects included, must finish within
    ``timeout_s``. Without ``allow_private`` hosts resolving to loopback, private, link-local,
    multicast or otherwise non-public addresses are refused, at every redirect hop, and the
    connection is made to the address that was checked. Every failure is an
    :class:`~geofast.errors.ImageError` with a one-line message.
    """
    limit = max_pixels() if limit_pixels is None else limit_pixels
    data = fetch_url_bytes(url, max_bytes=max_bytes, timeout_s=timeout_s, allow_private=allow_private)
    return _decode(_open_bytes(data, url, formats), url, limit)


def fetch_url_bytes(
    url: str, *, max_bytes: int = DEFAULT_URL_MAX_BYTES, timeout_s: float = DEFAULT_URL_TIMEOUT_S, allow_private: bool = False
) -> bytes:
    """The body of an http(s) URL, fetched under the rules of :func:`load_url` (size cap, one
    deadline for everything, address checks at every hop), not decoded."""
    import httpx

    if max_bytes < 1:
        raise ImageError(f"{url}: the size limit must be at least 1 byte, got {max_bytes}")
    if not timeout_s > 0:
        raise ImageError(f"{url}: the timeout must be > 0 s, got {timeout_s}")
    deadline = time.monotonic() + timeout_s
    current = url
    with httpx.Client(transport=_deadline_transport(deadline), trust_env=False, follow_redirects=False) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            target, headers, extensions = _pinned_request(current, allow_private, deadline, timeout_s)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _timed_out(url, timeout_s)
            try:
                with client.stream(
                    "GET", target, headers=headers, extensions=extensions, timeout=httpx.Timeout(remaining)
                ) as response:
                    if response.status_code in _REDIRECT_CODES:
                        location = response.headers.get("location")
                        if not location:
                            raise ImageError(f"{url}: HTTP {response.status_code} redirect without a Location")
                        current = urljoin(current, location)
                        continue
                    if response.status_code != 200:
                        raise ImageError(f"{url}: HTTP {response.status_code} {response.reason_phrase}".rstrip())
                    data = _read_capped(url, response, max_bytes, deadline, timeout_s)
            except httpx.TimeoutException as e:
                raise _timed_out(url, timeout_s) from e
            except httpx.HTTPError as e:
                detail = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ImageError(f"{url}: cannot fetch ({detail})", hint="check the URL and the network") from e
            if not data:
                raise ImageError(f"{url}: empty response (0 bytes)")
            return data
    raise ImageError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _deadline_transport(deadline: float) -> Any:
    """An httpx transport whose every socket operation (connect, TLS, each read and write) waits
    at most until ``deadline``: httpx's own timeouts are per operation, so an origin sending a
    byte every second would never trip them."""
    import httpcore
    import httpx

    class Stream(httpcore.NetworkStream):
        def __init__(self, inner: httpcore.NetworkStream) -> None:
            self.inner = inner

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return self.inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            self.inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

        def close(self) -> None:
            self.inner.close()

        def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
            return Stream(self.inner.start_tls(ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)))

        def get_extra_info(self, info: str) -> Any:
            return self.inner.get_extra_info(info)

    class Backend(httpcore.SyncBackend):
        def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Any = None,
        ) -> httpcore.NetworkStream:
            inner = super().connect_tcp(host, port, _left(timeout, httpcore.ConnectTimeout), local_address, socket_options)
            return Stream(inner)

    def _left(timeout: float | None, error: type[Exception]) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise error("the fetch passed its deadline")
        return left if timeout is None else min(timeout, left)

    transport = httpx.HTTPTransport(verify=True, trust_env=False)
    # The transport's connection pool, rebuilt with the deadline-bound network backend (same
    # TLS context; httpx has no public argument for a network backend).
    pool = transport._pool
    transport._pool = httpcore.ConnectionPool(ssl_context=pool._ssl_context, network_backend=Backend())
    return transport


def _pinned_request(
    url: str, allow_private: bool, deadline: float, timeout_s: float
) -> tuple[str, dict[str, str], dict[str, str]]:
    """(URL with the checked address as host, Host header, TLS server name) for one hop."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ImageError(f"{url}: not a valid URL ({e})") from e
    scheme = parts.scheme.lower()
    if scheme not in _URL_SCHEMES:
        raise ImageError(f"{url}: only http and https URLs are fetched, not {scheme or 'this'}")
    host = parts.hostname
    if not host:
        raise ImageError(f"{url}: the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ImageError(f"{url}: URLs with credentials are not fetched")
    default_port = 443 if scheme == "https" else 80
    address = _resolve_checked(url, host, port or default_port, allow_private, deadline, timeout_s)
    shown = f"[{address}]" if ":" in address else address
    netloc = f"{shown}:{port}" if port else shown
    target = parts._replace(scheme=scheme, netloc=netloc, fragment="").geturl()
    host_header = (f"[{host}]" if ":" in host else host) + (f":{port}" if port and port != default_port else "")
    extensions = {"sni_hostname": host} if scheme == "https" else {}
    return target, {"Host": host_header, "Accept": "image/*"}, extensions


def _read_capped(url: str, response: object, max_bytes: int, deadline: float, timeout_s: float) -> bytes:
    import httpx

    assert isinstance(response, httpx.Response)
    too_large = f"{url}: larger than the limit of {max_bytes:,} bytes"
    declared = response.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise ImageError(f"{too_large} ({int(declared):,} bytes announced)", hint="raise the size limit if the file is trusted")
    buf = bytearray()
    for chunk in response.iter_bytes():
        buf.extend(chunk)
        if len(buf) > max_bytes:
            raise ImageError(too_large, hint="raise the size limit if the file is trusted")
        if time.monotonic() > deadline:
            raise _timed_out(url, timeout_s)
    return bytes(buf)


def expand_images(sources: Iterable[str | os.PathLike[str]], *, recursive: bool = True) -> list[str]:
    """Expand files, folders (their image files, sorted) and glob patterns into a list of paths.

    Explicitly named files are kept even if their suffix is unusual (they are checked when read),
    so are URLs (fetched when read); a name that matches nothing raises :class:`ImageError`.
    """
    out: list[str] = []
    for source in sources:
        text = os.fspath(source)
        path = Path(text)
        if is_url(text):
            out.append(text)  # fetched when read
        elif path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(str(p) for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            out.extend(found)
        elif path.exists():
            out.append(text)
        elif any(ch in text for ch in "*?["):
            import glob

            matches = sorted(m for m in glob.glob(text, recursive=True) if Path(m).is_file())
            if not matches:
                raise ImageError(f"{text}: the pattern matches no file")
            out.extend(matches)
        else:
            raise ImageError(f"{text}: no such file or folder", hint="check the path")
    return out


def iter_loaded(
    images: Sequence[ImageInput],
) -> Iterator[tuple[int, str, Image.Image | None, ImageError | None]]:
    """Yield ``(index, name, image or None, error or None)`` for each input, never raising for a bad file."""
    for i, item in enumerate(images):
        name = image_name(item, i)
        try:
            yield i, name, load_image(item), None
        except ImageError as e:
            yield i, name, None, e


Loaded = tuple[int, str, Image.Image | None, ImageError | None]

#: Environment variable overriding the number of image-decoding threads of :func:`iter_loaded_batches`.
LOADER_THREADS_ENV = "GEOFAST_LOADER_THREADS"


def default_loader_threads() -> int:
    """Decoding threads: ``$GEOFAST_LOADER_THREADS``, else one per spare core (at most 4, at least 1)."""
    raw = os.environ.get(LOADER_THREADS_ENV, "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _load_one(i: int, item: ImageInput) -> Loaded:
    name = image_name(item, i)
    try:
        return i, name, load_image(item), None
    except ImageError as e:
        return i, name, None, e


def iter_loaded_batches(
    images: Sequence[ImageInput],
    batch_size: int,
    *,
    threads: int | None = None,
    first_index: int = 0,
) -> Iterator[list[Loaded]]:
    """Yield the inputs batch by batch as ``(index, name, image or None, error or None)`` lists, in
    order, never raising for a bad file (as :func:`iter_loaded`).

    The next batch is decoded by a small thread pool (PIL releases the GIL) while the caller
    works on the current one, so at most two batches of decoded images exist at a time. Stopping
    the iteration early cancels the decoding not yet started. Indices (and the names of
    in-memory images, ``<image N>``) count from ``first_index``."""
    from concurrent.futures import Future, ThreadPoolExecutor

    size = max(1, int(batch_size))
    starts = list(range(0, len(images), size))
    if not starts:
        return
    pool = ThreadPoolExecutor(max_workers=threads or default_loader_threads(), thread_name_prefix="geofast-decode")

    def submit(start: int) -> list[Future[Loaded]]:
        return [pool.submit(_load_one, first_index + i, images[i]) for i in range(start, min(len(images), start + size))]

    try:
        ahead = submit(starts[0])
        for k in range(len(starts)):
            current = ahead
            ahead = submit(starts[k + 1]) if k + 1 < len(starts) else []
            batch = [f.result() for f in current]
            del current
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def as_image_items(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """One image or many → a flat list: folders and globs expanded (once, here), PIL images and
    URLs kept as they are. A path that does not exist (or a pattern matching nothing) is kept
    too: reading it fails for that item alone (``Prediction.error``), as in the CLI."""

    if isinstance(images, (str, os.PathLike, Image.Image, ImageURL)):
        images = [images]
    items: list[ImageInput] = []
    for x in images:
        if isinstance(x, (Image.Image, ImageURL)):
            items.append(x)
            continue
        try:
            items.extend(expand_images([x]))
        except ImageError:
            items.append(x)
    return items


__all__ = [
    "DEFAULT_URL_MAX_BYTES",
    "DEFAULT_URL_TIMEOUT_S",
    "IMAGE_SUFFIXES",
    "ImageInput",
    "ImageURL",
    "PixelLimitError",
    "address_refused",
    "is_url",
    "load_url",
    "fetch_url_bytes",
    "as_image_items",
    "clip_view",
    "MAX_ASPECT",
    "expand_images",
    "image_name",
    "default_loader_threads",
    "iter_loaded",
    "iter_loaded_batches",
    "load_image",
    "load_image_bytes",
    "max_pixels",
    "open_image_bytes",
]
