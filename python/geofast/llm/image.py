"""The image as the LLM sees it: downscaled to a longest side, JPEG, base64 data URL."""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from geofast.errors import ImageError

if TYPE_CHECKING:
    from PIL import Image as PILImage

#: What the RAG stage accepts as an image: a path or an already opened PIL image.
ImageLike = Union[str, "os.PathLike[str]", "PILImage.Image"]

__all__ = ["EncodedImage", "ImageLike", "encode_image", "image_name"]


@dataclass(frozen=True)
class EncodedImage:
    """A JPEG ready to send: its bytes, their SHA-256 (the cache key's image part), its size."""

    jpeg: bytes
    sha256: str
    width: int
    height: int

    @functools.cached_property
    def data_url(self) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(self.jpeg).decode("ascii")


def _load_image(image: ImageLike) -> PILImage.Image:
    """The image the project's way (:func:`geofast.images.load_image`): 8-bit RGB with its EXIF
    orientation applied (also for PIL images that still carry the tag), one-line
    :class:`~geofast.errors.ImageError` for a bad file."""
    from geofast.images import load_image

    return load_image(image)


def image_name(image: ImageLike, index: int) -> str:
    """The name a prediction reports for ``image``: its path, or ``<image N>`` for a PIL image."""
    from geofast.images import image_name as _name

    return _name(image, index)


def encode_image(image: ImageLike, max_side: int = 512, quality: int = 90) -> EncodedImage:
    """Downscale ``image`` so that its longest side is ``max_side`` px (never upscale) and encode
    it as RGB JPEG at ``quality``.

    Raises :class:`~geofast.errors.ImageError` if a path cannot be read.
    """
    from PIL import Image

    im = _load_image(image)
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageError(f"image has no pixels ({w}×{h})")
    longest = max(w, h)
    if longest > max_side:
        scale = max_side / longest
        size = (max_side, max(1, round(h * scale))) if w >= h else (max(1, round(w * scale)), max_side)
        # reducing_gap=1: an integer box reduction (area average) by the whole part of the
        # factor, then Lanczos over the rest; 10x faster than Lanczos all the way (1024 px:
        # 1.3 ms instead of 16 ms) and indistinguishable at the size the LLM sees.
        im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=1.0)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, optimize=False)
    jpeg = buf.getvalue()
    return EncodedImage(jpeg, hashlib.sha256(jpeg).hexdigest(), im.size[0], im.size[1])
