"""Prompts for retrieval-augmented geolocation (Img2Loc, SIGIR 2024; G3, NeurIPS 2024).

Img2Loc gives a multimodal LLM the coordinates of the N most similar and the N least similar
database photos (N = 16 by default) and asks for coordinates. G3 asks several prompts that
differ in how many references they hold (0, 5, 10, 15) and samples each several times at a
set temperature, then keeps the candidate that geo-verification prefers. Both are expressed
here as one *plan*: a list of prompts, one per reference count r, each holding the r nearest
and r farthest references available. Without an image database the references are GeoCLIP's
top-k candidates with their probabilities (and there are no farthest ones).

Every prompt asks for JSON ``{"latitude": float, "longitude": float}``; the parser
(:mod:`geofast.llm.parse`) accepts much more than that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["Reference", "PromptSpec", "ReferenceKind", "build_prompt", "plan_prompts", "ANSWER_FORMAT"]

ReferenceKind = Literal["database", "geoclip"]

ANSWER_FORMAT = '{"latitude": <float>, "longitude": <float>}'


@dataclass(frozen=True)
class Reference:
    """A reference location for the prompt: a database neighbour (``score`` = its similarity
    to the photo) or a GeoCLIP candidate (``score`` = its probability). ``row`` is the
    database row of a neighbour."""

    lat: float
    lon: float
    score: float | None = None
    row: int | None = None


@dataclass(frozen=True)
class PromptSpec:
    """One prompt of the plan. ``n_refs`` is the number of nearest references it holds; it
    names the candidates it yields (``"llm:p{n_refs}s{sample}"``)."""

    n_refs: int
    n_farthest: int
    text: str


def _fmt(ref: Reference, with_prob: bool) -> str:
    line = f"({ref.lat:.4f}, {ref.lon:.4f})"
    if with_prob and ref.score is not None:
        line += f" probability {ref.score:.3f}"
    return line


def build_prompt(
    nearest: Sequence[Reference] = (),
    farthest: Sequence[Reference] = (),
    kind: ReferenceKind = "database",
) -> str:
    """The text of one prompt holding ``nearest`` and ``farthest`` references (either may be empty)."""
    parts = [
        "You are an expert in photo geolocation. Look at the photo and estimate the GPS "
        "coordinates of the place where it was taken."
    ]
    if nearest:
        if kind == "geoclip":
            head = "An image-to-GPS retrieval model proposes these coordinates (latitude, longitude), most likely first:"
        else:
            head = (
                "For reference, photos that look similar to this one were taken at these "
                "coordinates (latitude, longitude), most similar first:"
            )
        parts.append(head + "\n" + "\n".join(_fmt(r, kind == "geoclip") for r in nearest))
    if farthest:
        parts.append(
            "Photos that look very different from this one were taken at these coordinates; "
            "the answer is probably far from them:\n" + "\n".join(_fmt(r, False) for r in farthest)
        )
    if nearest or farthest:
        parts.append(
            "Use the references as hints only; where the visual evidence (landmarks, signs, "
            "language, vegetation, architecture, road markings) disagrees with them, trust the photo."
        )
    parts.append("Answer with a single JSON object and nothing else, in exactly this form: " + ANSWER_FORMAT)
    return "\n\n".join(parts)


def plan_prompts(
    nearest: Sequence[Reference],
    farthest: Sequence[Reference],
    references: Sequence[int],
    kind: ReferenceKind = "database",
) -> list[PromptSpec]:
    """One prompt per reference count r in ``references`` with the first r of ``nearest`` and of
    ``farthest`` (fewer when fewer are available). Prompts that come out identical (e.g. r = 10
    and r = 15 with only 5 candidates) are asked once."""
    plan: list[PromptSpec] = []
    seen: set[str] = set()
    for r in references:
        nn = list(nearest[:r])
        ff = list(farthest[:r])
        text = build_prompt(nn, ff, kind)
        if text in seen:
            continue
        seen.add(text)
        plan.append(PromptSpec(len(nn), len(ff), text))
    return plan
