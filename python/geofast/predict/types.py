"""The result types every predictor returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
        return {k: v for k, v in asdict(self).items()}


@dataclass
class Prediction:
    """The answer for one image: the best location first, then every ranked candidate.

    ``confidence`` is the Prediction-Density score PD_25 (total probability of gallery points
    within 25 km of the top-1) when a GeoCLIP softmax is available; ``localizable`` is
    ``confidence > 0.2``. ``error`` is set (and ``candidates`` empty) when the image could not
    be processed; the other images of a batch are unaffected.
    """

    image: str
    lat: float | None = None
    lon: float | None = None
    prob: float | None = None
    candidates: list[Candidate] = field(default_factory=list)
    confidence: float | None = None
    localizable: bool | None = None
    method: str = "geoclip"
    fallback: bool = False
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None
