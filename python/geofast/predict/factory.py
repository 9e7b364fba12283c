"""One place that turns a method name and its options into a ready predictor.

``geofast locate`` and ``geofast eval`` both call :func:`make_predictor`, so every method
(``geoclip``, ``swc``, ``geoclip+swc``, ``rag``) behaves the same in both. Cheap checks
(:meth:`MethodOptions.check`) run before the slow model load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geofast.errors import InputError, ParameterError
from geofast.predict.types import Predictor

if TYPE_CHECKING:
    from geofast.db import Database
    from geofast.llm import LLMConfig

METHODS = ("geoclip", "swc", "geoclip+swc", "rag")


@dataclass
class MethodOptions:
    """Everything that selects and configures a prediction method."""

    method: str = "geoclip"
    model: str = "geoclip"
    clip: str | None = None
    device: str | None = None
    gallery: str | os.PathLike[str] | None = None
    region: str | None = None
    db: str | os.PathLike[str] | None = None
    swc_k: int = 10
    eps_km: float = 1.0
    cell_km: float = 25.0
    confidence: bool = True
    llm: LLMConfig | None = None
    merge_duplicates: bool = True  # False: GeoCLIP's raw candidate list (a coordinate may repeat)
    precision: str | None = None  # the image encoder's: fp32, int8, bf16 (None: fp16 on CUDA, else fp32)

    def check(self) -> Database | None:
        """Validate the combination and open the database (if any) before any model loads."""
        from geofast.gallery import parse_region

        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}", hint=f"choose one of: {', '.join(METHODS)}", params=("method",))
        if self.eps_km <= 0:
            raise ParameterError(f"eps_km must be > 0, got {self.eps_km}", params=("eps_km",))
        if self.cell_km <= 0:
            raise ParameterError(f"cell_km must be > 0, got {self.cell_km}", params=("cell_km",))
        if self.db is None and self.method == "geoclip+swc":
            raise InputError(
                "method geoclip+swc needs an image database",
                hint="pass db, a database folder made with `geofast db build`",
                params=("method", "db"),
            )
        if self.db is not None and self.method == "geoclip":
            raise InputError(
                "db is used by method swc, geoclip+swc or rag",
                hint="set method swc (or geoclip+swc, rag)",
                params=("db", "method"),
            )
        if self.method == "geoclip+swc" and not self.confidence:
            raise InputError(
                "method geoclip+swc needs GeoCLIP's heads", hint="turn confidence on", params=("method", "confidence")
            )
        if self.method == "rag":
            from geofast.llm import LLMConfig
            from geofast.llm.client import resolve_api_key

            if self.llm is None:
                self.llm = LLMConfig()
            resolve_api_key(self.llm.resolved_base_url())  # a missing key fails before the model load
        parse_region(self.region)
        if self.db is None:
            return None
        from geofast.db import Database

        return Database.open(self.db)

    def answer_settings(self, database: Database | None, top_k: int) -> dict[str, Any]:
        """What decides the answers of a run (``opts.check()``'s database): method, model, backbone,
        gallery, region, database and the options the method uses, with paths made absolute. Not
        the device, batch size or LLM transport (timeouts, retries, concurrency, cache).
        ``geofast eval`` records it with its predictions and resumes only the same settings."""

        def where(p: str | os.PathLike[str] | None) -> str | None:
            if p is None:
                return None
            q = Path(p).expanduser()
            return str(q.resolve()) if q.exists() else str(p)

        from geofast.models.clip import DEFAULT_CLIP

        backbone = self.clip_for(database) or os.environ.get("GEOFAST_CLIP", "").strip() or DEFAULT_CLIP
        out: dict[str, Any] = {
            "method": self.method,
            "model": where(self.model),
            "backbone": where(backbone),
            "gallery": where(self.gallery),
            "region": self.region,
            "db": where(self.db),
            "top_k": top_k,
            "merge_duplicates": self.merge_duplicates,
        }
        if database is not None:
            out["db_rows"] = len(database)
        if self.method in ("swc", "geoclip+swc"):
            out["eps_km"] = self.eps_km
            if database is not None:
                out["swc_k"] = self.swc_k
        if self.method == "geoclip+swc":
            out["cell_km"] = self.cell_km
        if self.method == "rag" and self.llm is not None:
            c = self.llm
            out["llm"] = {
                "base_url": c.resolved_base_url(),
                "model": c.resolved_model(),
                "references": list(c.references),
                "samples": c.samples,
                "temperature": c.temperature,
                "nearest": c.nearest,
                "farthest": c.farthest,
                "image_max_side": c.image_max_side,
                "max_tokens": c.max_tokens,
            }
        return out

    def clip_for(self, database: Database | None) -> str | None:
        """``--clip``, else (when ``$GEOFAST_CLIP`` is unset) the backbone a database was built with."""
        if self.clip is not None or database is None or os.environ.get("GEOFAST_CLIP", "").strip():
            return self.clip
        recorded = database.backbone_source
        if recorded and (Path(recorded).expanduser().is_dir() or not Path(recorded).expanduser().is_absolute()):
            return str(recorded)
        return None


def make_predictor(opts: MethodOptions, database: Database | None, *, progress: bool = True) -> Predictor:
    """Load the models ``opts`` needs and return the :class:`Predictor` for ``opts.method``.

    ``database`` is ``opts.check()``'s. This is the one place that maps a method name to a
    predictor class; callers pass ``top_k``, ``batch_size`` and ``places`` to ``predict``.
    """
    from geofast.predict.geoclip import GeoclipPredictor, Geolocator

    clip = opts.clip_for(database)

    def geolocator() -> Geolocator:
        return Geolocator.from_pretrained(
            opts.model,
            clip=clip,
            device=opts.device,
            gallery=opts.gallery,
            region=opts.region,
            progress=progress,
            precision=opts.precision,
        )

    if opts.method == "rag":
        from geofast.predict.rag import RagPredictor

        loc = geolocator()
        if database is not None:
            database.check_backbone(loc.backbone)
        return RagPredictor(loc, database=database, config=opts.llm, merge_duplicates=opts.merge_duplicates)
    if database is None:
        return GeoclipPredictor(geolocator(), method=opts.method, swc_eps_km=opts.eps_km, merge_duplicates=opts.merge_duplicates)
    from geofast.predict.swc import SwcPredictor

    swc_loc: Any = None
    if opts.confidence:
        swc_loc = geolocator()
        backbone = swc_loc.backbone
    else:
        from geofast.models.clip import load_backbone

        backbone = load_backbone(clip, opts.device, precision=opts.precision)
    return SwcPredictor(
        database,
        backbone,
        geolocator=swc_loc,
        k=opts.swc_k,
        eps_km=opts.eps_km,
        cell_km=opts.cell_km,
        method=opts.method,
        merge_duplicates=opts.merge_duplicates,
    )
