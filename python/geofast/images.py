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
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

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

ImageInput = str | os.PathLike | Image.Image


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


def load_image(image: ImageInput, *, limit_pixels: int | None = None) -> Image.Image:
    """Open ``image`` (a path or a PIL image) as an 8-bit RGB PIL image with EXIF orientation applied.

    Raises :class:`~geofast.errors.ImageError` with a one-line message naming the file and the
    problem; never anything else for a bad file.
    """
    limit = max_pixels() if limit_pixels is None else limit_pixels
    if isinstance(image, Image.Image):
        name = image_name(image)
        im = image
    else:
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
            im = Image.open(io.BytesIO(path.read_bytes()))
        except UnidentifiedImageError as e:
            raise ImageError(f"{name}: not an image PIL can read") from e
        except Image.DecompressionBombError as e:
            raise ImageError(
                f"{name}: too many pixels (possible decompression bomb)",
                hint=f"raise the limit with {MAX_PIXELS_ENV}=<pixels> if the file is trusted",
            ) from e
        except OSError as e:
            raise ImageError(f"{name}: cannot read ({e.strerror or e})") from e
    try:
        pixels = im.width * im.height
        if pixels > limit:
            raise ImageError(
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
            rgb = _to_rgb(im)
            rgb.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: too many pixels (possible decompression bomb)") from e
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        detail = str(e) or type(e).__name__
        if "truncated" in detail.lower():
            raise ImageError(f"{name}: truncated file ({detail})") from e
        raise ImageError(f"{name}: corrupt image ({detail})") from e
    return rgb


def expand_images(sources: Iterable[str | os.PathLike[str]], *, recursive: bool = True) -> list[str]:
    """Expand files, folders (their image files, sorted) and glob patterns into a list of paths.

    Explicitly named files are kept even if their suffix is unusual (they are checked when read);
    a name that matches nothing raises :class:`ImageError`.
    """
    out: list[str] = []
    for source in sources:
        text = os.fspath(source)
        path = Path(text)
        if path.is_dir():
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


def encode_jpeg(im: Image.Image, *, max_side: int | None = None, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB image, downscaled (Lanczos) so its longest side is at most ``max_side``."""
    if max_side is not None and max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


__all__ = [
    "IMAGE_SUFFIXES",
    "ImageInput",
    "encode_jpeg",
    "expand_images",
    "image_name",
    "default_loader_threads",
    "iter_loaded",
    "iter_loaded_batches",
    "load_image",
    "max_pixels",
]
