"""The result types every predictor returns, and the one protocol every predictor implements.

A :class:`Prediction` is fully typed: renderers (table, JSON, GeoJSON, map, HTTP) read its
fields, never an untyped side dictionary. Its JSON form is :func:`geofast.output.prediction_json`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from geofast.images import ImageInput


@dataclass(frozen=True)
class Candidate:
    """One candidate location for an image.

    ``prob`` is a softmax probability over a gallery (GeoCLIP); ``score`` is a similarity used to
    rank candidates that have no probability (SwC clusters, LLM answers after geo-verification).
    ``source`` says where the candidate came from: ``"geoclip"``, ``"swc"``, ``"db"``,
    ``"llm"``, ``"llm:p5s2"`` (prompt with 5 references, sample 2), ...
    """

    lat: float
    lon: float
    prob: float | None = None
    score: float | None = None
    source: str = "geoclip"
    place: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Neighbour:
    """A database photo retrieved for an image: its row, path, similarity and location."""

    id: int
    image: str | None
    similarity: float
    lat: float
    lon: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Cell:
    """The search cell of ``geoclip+swc``: GeoCLIP's top-1 and the radius searched around it."""

    lat: float
    lon: float
    radius_km: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LLMTrace:
    """What the LLM stage of ``rag`` did for one image."""

    model: str
    usage: dict[str, int] = field(default_factory=dict)  # tokens, requests, retries, cached, failed
    answers: int = 0  # parsed, valid LLM answers
    unparsed: int = 0  # replies with no usable coordinates
    errors: list[str] = field(default_factory=list)  # requests that failed (after retries)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Prediction:
    """The answer for one image: the best location first, then every ranked candidate.

    ``confidence`` is the Prediction-Density score PD_25 (total probability of gallery points
    within 25 km of the top-1) when a GeoCLIP softmax is available; ``localizable`` is
    ``confidence > 0.2``. ``error`` is set (and ``candidates`` empty) when the image could not
    be processed; the other images of a batch are unaffected. ``fallback`` marks an answer that
    is not the method's own (e.g. GeoCLIP's top-1 when SwC found no database photo, or the
    retrieval answer when the LLM failed); ``fallback_reason`` says why.
    """

    image: str
    lat: float | None = None
    lon: float | None = None
    prob: float | None = None
    candidates: list[Candidate] = field(default_factory=list)
    confidence: float | None = None
    localizable: bool | None = None
    method: str = "geoclip"
    place: str | None = None  # place name of (lat, lon)
    fallback: bool = False
    fallback_reason: str | None = None
    error: str | None = None
    members: list[int] | None = None  # SwC: indices (into the neighbours / candidates) of the winning cluster
    neighbours: list[Neighbour] | None = None  # database photos retrieved (nearest first)
    farthest: list[Neighbour] | None = None  # rag: the least similar database photos used in the prompt
    cell: Cell | None = None  # geoclip+swc
    llm: LLMTrace | None = None  # rag

    @property
    def ok(self) -> bool:
        return self.error is None


ProgressFn = Callable[[int], None]


@runtime_checkable
class Predictor(Protocol):
    """What every prediction method implements (geoclip, swc, geoclip+swc, rag, trained models).

    ``predict`` takes image paths, folders, globs or PIL images and returns one
    :class:`Prediction` per image, in order; an unreadable image gets a Prediction with
    ``error`` set and never fails the others. ``on_progress(n)`` is called as images finish.
    """

    method: str

    def predict(
        self,
        images: Sequence[ImageInput],
        *,
        top_k: int = 5,
        batch_size: int = 16,
        places: bool = True,
        on_progress: ProgressFn | None = None,
    ) -> list[Prediction]: ...
