"""geofast's exception hierarchy.

Everything geofast raises on purpose derives from :class:`GeofastError`. Problems with an
argument (bad coordinates, wrong shapes, k out of range, ...) are also :class:`ValueError`, so
``except ValueError`` keeps working for callers that do not know geofast. The Rust extension
maps its one core error enum onto these classes (``rust/py/errors.rs``).
"""

from __future__ import annotations

__all__ = [
    "GeofastError",
    "InputError",
    "ShapeError",
    "CoordinateError",
    "EmptyInputError",
    "ParameterError",
    "TooLargeError",
    "ImageError",
    "ModelError",
    "CacheError",
    "DatabaseError",
    "LLMError",
    "TrainingError",
    "ClusterError",
]


class GeofastError(Exception):
    """Base class of every error geofast raises on purpose."""

    #: A one-line suggestion the CLI prints under the message, when there is one.
    hint: str | None = None
    #: The library parameters the message names (``"eps_km"``, ``"method"``): a front end shows
    #: them as its own option names (the CLI writes ``--eps-km``), so the library never needs to
    #: know flags.
    params: tuple[str, ...] = ()

    def __init__(self, message: str, *, hint: str | None = None, params: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint
        if params:
            self.params = tuple(params)


class InputError(GeofastError, ValueError):
    """An argument is invalid."""


class ShapeError(InputError):
    """An array has the wrong shape, or two arrays disagree in a dimension."""


class CoordinateError(InputError):
    """A coordinate is NaN/inf or outside |lat| <= 90, |lon| <= 180 (degrees, latitude first)."""


class EmptyInputError(InputError):
    """An input that must hold data is empty."""


class ParameterError(InputError):
    """A scalar argument is out of its domain (k < 1, eps <= 0, ...)."""


class TooLargeError(InputError):
    """A request would need more memory than it can reasonably be given."""


class ImageError(GeofastError):
    """An image cannot be read or decoded (missing, corrupt, truncated, not an image, too large)."""


class ModelError(GeofastError):
    """A model or its weights cannot be found or loaded (e.g. no CLIP backbone available)."""


class CacheError(GeofastError):
    """A cache file cannot be written or is unusable."""


class DatabaseError(GeofastError):
    """An image database is missing, incomplete, corrupt or does not match the model."""


class LLMError(GeofastError):
    """The LLM endpoint cannot be used (configuration, authentication, repeated failures)."""


class TrainingError(GeofastError):
    """A training run cannot start or continue (a missing dependency, its run folder, its checkpoint)."""


class ClusterError(GeofastError):
    """A Ray cluster cannot run the work: Ray missing, address unreachable, too few GPUs, or
    workers with another geofast version or backbone."""
