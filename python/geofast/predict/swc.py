"""Search-within-Cell over an image database (Müller-Budack et al., visloc ICMR 2021 / MMM 2022).

``swc`` (the visloc predictor): the photo's L2-normalised CLIP embedding is searched in a
:class:`~geofast.db.Database`; its ``k`` = 10 nearest neighbours (inner product) are
clustered by ``swc_batch`` — DBSCAN with eps = 1 km, min_samples = 1, haversine on R = 6371 km
— and the answer is the spherical centroid (re-normalised mean of unit vectors, weights
``similarity ** weight_exponent``, default equal weights) of the largest cluster (ties: the
cluster holding the most similar neighbour).

``geoclip+swc`` (Search-within-Cell in the original sense): a classifier picks the cell, the
database is searched inside it. Here GeoCLIP's top-1 gallery point is the centre of a cell of
radius ``cell_km`` (default 25 km, the PD radius); the ``k`` database photos inside the cell most
similar to the query are clustered as above. **Fallback:** when no database photo lies inside
the cell, the answer is GeoCLIP's top-1 itself, with ``Prediction.fallback = True`` and
``Prediction.fallback_reason``.

Confidence: when GeoCLIP's heads are loaded (a :class:`~geofast.predict.geoclip.Geolocator`
shares the CLIP backbone, so each photo runs through ViT-L/14 once), ``confidence`` is GeoCLIP's
Prediction Density PD_25 — the total GeoCLIP softmax probability of gallery points within 25 km —
taken around the *SwC answer*; ``localizable`` = PD_25 > 0.2. Without the heads both are None.

GeoCLIP candidates (``geoclip+swc``) merge gallery points that share coordinates, as
``Geolocator.predict`` does; ``merge_duplicates=False`` keeps the raw list.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geofast._geofast import swc, swc_batch
from geofast.constants import HAVERSINE_RADIUS_KM
from geofast.db import Database, Neighbours, normalize_rows
from geofast.errors import InputError, ParameterError
from geofast.images import ImageInput, as_image_items
from geofast.predict.geoclip import LOCALIZABLE_THRESHOLD, predict_in_batches, prediction_density
from geofast.predict.types import Candidate, Cell, Neighbour, Prediction

if TYPE_CHECKING:
    from geofast.models.clip import Backbone
    from geofast.places import PlaceIndex
    from geofast.predict.geoclip import Geolocator

DEFAULT_K = 10
DEFAULT_EPS_KM = 1.0
DEFAULT_CELL_KM = 25.0
#: Haversine radius of SwC's DBSCAN (visloc uses R = 6371 km).
METHODS = ("swc", "geoclip+swc")


class SwcPredictor:
    """Locate photos by Search-within-Cell in an image database.

    >>> pred = SwcPredictor.load("photos.db", clip="/models/clip-vit-large-patch14")  # doctest: +SKIP
    >>> pred.predict(["query.jpg"])[0].lat                                            # doctest: +SKIP
    """

    def __init__(
        self,
        database: Database,
        backbone: Backbone,
        *,
        geolocator: Geolocator | None = None,
        k: int = DEFAULT_K,
        eps_km: float = DEFAULT_EPS_KM,
        min_samples: int = 1,
        weight_exponent: float = 0.0,
        cell_km: float = DEFAULT_CELL_KM,
        check_backbone: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        method: str = "swc",
        merge_duplicates: bool = True,
    ) -> None:
        _check_params(k, eps_km, min_samples, cell_km)
        if method not in METHODS:
            raise InputError(f"unknown method {method!r} for SwcPredictor", hint=f"use one of {', '.join(METHODS)}")
        self.method = method
        if check_backbone:
            database.check_backbone(backbone)
        self.database = database
        self.backbone = backbone
        self.geolocator = geolocator
        self.k = int(k)
        self.eps_km = float(eps_km)
        self.min_samples = int(min_samples)
        self.weight_exponent = float(weight_exponent)
        self.cell_km = float(cell_km)
        self.merge_duplicates = merge_duplicates
        self._cache_dir = cache_dir
        self._places: PlaceIndex | None = None

    @classmethod
    def load(
        cls,
        database: str | os.PathLike[str] | Database,
        *,
        clip: str | os.PathLike[str] | None = None,
        device: str | None = None,
        geoclip: str | None = "geoclip",
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
        verify: bool | None = None,
        precision: str | None = None,
        **params: Any,
    ) -> SwcPredictor:
        """Open the database, load the CLIP backbone (``clip``; default ``$GEOFAST_CLIP``, else the
        backbone recorded in the database) and, unless ``geoclip=None``, the GeoCLIP model of that
        name (``"geoclip"``/``"geomapclip"``) for PD confidence and ``geoclip+swc``."""
        db = database if isinstance(database, Database) else Database.open(database, verify=verify)
        if clip is None and not os.environ.get("GEOFAST_CLIP", "").strip() and db.backbone_source:
            recorded = db.backbone_source
            if Path(recorded).expanduser().is_dir() or not Path(recorded).expanduser().is_absolute():
                clip = recorded
        if geoclip is not None:
            from geofast.predict.geoclip import Geolocator

            loc = Geolocator.from_pretrained(
                geoclip, clip=clip, device=device, cache_dir=cache_dir, progress=progress, precision=precision
            )
            return cls(db, loc.backbone, geolocator=loc, cache_dir=cache_dir, **params)
        from geofast.models.clip import load_backbone

        return cls(db, load_backbone(clip, device, precision=precision, cache_dir=cache_dir), cache_dir=cache_dir, **params)

    # -- encoding -----------------------------------------------------------------------------------
    def embed(self, images: Sequence[Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """(database query embeddings (B, D) float32, GeoCLIP embeddings (B, 512) or None) of RGB
        PIL images, from one backbone forward pass."""
        if self.geolocator is not None:
            g, q = self.geolocator.embed_pil(images, with_clip=True)
            assert q is not None
            return q, g
        feats = self.backbone.encode(self.backbone.preprocess(images))
        return normalize_rows(feats.cpu().numpy(), "CLIP features"), None

    def places(self) -> PlaceIndex:
        if self.geolocator is not None:
            return self.geolocator.places()
        if self._places is None:
            from geofast.places import PlaceIndex

            self._places = PlaceIndex.load(self._cache_dir)
        return self._places

    # -- prediction -----------------------------------------------------------------------------------
    def predict(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        top_k: int = 5,
        batch_size: int = 16,
        places: bool = True,
        on_progress: Callable[[int], None] | None = None,
        method: str | None = None,
    ) -> list[Prediction]:
        """Predict locations for images (paths, PIL images, folders or globs). An unreadable
        image gets a Prediction with ``error`` set; the rest are still located. ``top_k`` is the
        number of GeoCLIP candidates listed for ``geoclip+swc``. ``method`` overrides the
        predictor's own (``swc`` or ``geoclip+swc``) for this call."""
        method = self.method if method is None else method
        if method not in METHODS:
            raise InputError(f"unknown method {method!r} for SwcPredictor", hint=f"use one of {', '.join(METHODS)}")
        if method == "geoclip+swc" and self.geolocator is None:
            raise InputError("geoclip+swc needs GeoCLIP's heads", hint="load the predictor with geoclip='geoclip'")
        if top_k < 1:
            raise ParameterError(f"top_k must be >= 1, got {top_k}")

        def run(names: list[str], ims: list[Any]) -> list[Prediction]:
            q, g = self.embed(ims)
            return self.predict_embeddings(q, g, names, method=method, top_k=top_k, places=places)

        return predict_in_batches(as_image_items(images), batch_size, method, run, on_progress)

    def predict_embeddings(
        self,
        query: np.ndarray,
        geo_query: np.ndarray | None,
        names: Sequence[str],
        *,
        method: str = "swc",
        top_k: int = 5,
        places: bool = True,
    ) -> list[Prediction]:
        """Predictions from precomputed embeddings: ``query`` (B, D) CLIP (database space),
        ``geo_query`` (B, 512) GeoCLIP image embeddings or None (then no confidence)."""
        q = normalize_rows(query, "query embeddings")
        b = q.shape[0]
        if len(names) != b:
            raise InputError(f"{len(names)} names for {b} embeddings")
        geo = None
        if geo_query is not None and self.geolocator is not None:
            geo = self.geolocator.search_embeddings(
                np.asarray(geo_query, dtype=np.float32), top_k, merge_duplicates=self.merge_duplicates
            )
        if method == "geoclip+swc":
            if geo is None:
                raise InputError("geoclip+swc needs GeoCLIP embeddings and heads")
            return self._within_cell(q, names, geo, np.asarray(geo_query, dtype=np.float32), places)

        k = min(self.k, len(self.database))
        nb = self.database.search(q, k, normalize=False)
        lat, lon, members = swc_batch(
            nb.latlon,
            nb.sims,
            eps_km=self.eps_km,
            min_samples=self.min_samples,
            weight_exponent=self.weight_exponent,
            radius_km=HAVERSINE_RADIUS_KM,
        )
        answer = np.column_stack([lat, lon])
        pd = self._pd(geo_query, answer, geo)
        labels = self._labels(answer, nb, places)
        out = []
        for i in range(b):
            member_idx = np.flatnonzero(members[i])
            out.append(
                self._prediction(
                    names[i],
                    "swc",
                    answer[i],
                    pd[i] if pd is not None else None,
                    _take(nb, i),
                    member_idx,
                    labels[i] if labels else None,
                    places,
                )
            )
        return out

    def _within_cell(
        self, q: np.ndarray, names: Sequence[str], geo: Any, geo_query: np.ndarray, places: bool
    ) -> list[Prediction]:
        assert self.geolocator is not None
        idx, probs, _pd_top1, _lse = geo
        gallery = self.geolocator.gallery
        out: list[Prediction] = []
        answers = np.empty((q.shape[0], 2))
        found: list[tuple[Neighbours, np.ndarray] | None] = []
        for i in range(q.shape[0]):
            center = gallery.latlon[idx[i, 0]]
            rows = self.database.within(center, self.cell_km)
            if rows.shape[0] == 0:
                answers[i] = center
                found.append(None)
                continue
            nb = self.database.search_rows(q[i], rows, self.k, normalize=False)
            lat, lon, members = swc(
                nb.latlon[0],
                nb.sims[0],
                eps_km=self.eps_km,
                min_samples=self.min_samples,
                weight_exponent=self.weight_exponent,
                radius_km=HAVERSINE_RADIUS_KM,
            )
            answers[i] = (lat, lon)
            found.append((nb, np.asarray(members, dtype=np.int64)))
        pd = self._pd(geo_query, answers, geo)
        cand_ll = gallery.latlon[idx]
        for i in range(q.shape[0]):
            labels = [p.label() for p in self.places().nearest(np.vstack([answers[i : i + 1], cand_ll[i]]))] if places else None
            cands = [
                Candidate(
                    lat=float(a),
                    lon=float(o),
                    prob=float(p),
                    source=self.geolocator.name,
                    place=labels[j + 1] if labels else None,
                )
                for j, ((a, o), p) in enumerate(zip(cand_ll[i].tolist(), probs[i].tolist()))
            ]
            hit = found[i]
            pred = Prediction(
                image=names[i],
                lat=float(answers[i, 0]),
                lon=float(answers[i, 1]),
                prob=None,
                candidates=cands,
                confidence=float(pd[i]) if pd is not None else None,
                localizable=bool(pd[i] > LOCALIZABLE_THRESHOLD) if pd is not None else None,
                method="geoclip+swc",
            )
            pred.cell = Cell(lat=float(cand_ll[i, 0, 0]), lon=float(cand_ll[i, 0, 1]), radius_km=self.cell_km)
            if labels:
                pred.place = labels[0]
            if hit is None:
                pred.fallback = True
                pred.prob = float(probs[i, 0])
                pred.fallback_reason = f"no database photo within {self.cell_km:g} km of GeoCLIP's top-1"
                pred.neighbours = []
            else:
                nb, members = hit
                pred.members = [int(m) for m in members]
                pred.neighbours = self._neighbour_list(_take(nb, 0))
            out.append(pred)
        return out

    # -- helpers ----------------------------------------------------------------------------------------
    def _pd(self, geo_query: np.ndarray | None, answers: np.ndarray, geo: Any) -> np.ndarray | None:
        if geo is None or geo_query is None or self.geolocator is None:
            return None
        _, _, _, lse = geo
        return prediction_density(
            np.asarray(geo_query, dtype=np.float32), answers, self.geolocator.gallery, self.geolocator.logit_scale, lse
        )

    def _labels(self, answers: np.ndarray, nb: Neighbours, places: bool) -> list[list[str]] | None:
        if not places:
            return None
        b, k = nb.ids.shape
        pts = np.concatenate([answers[:, None, :], nb.latlon], axis=1).reshape(-1, 2)
        flat = [p.label() for p in self.places().nearest(pts)]
        return [flat[i * (k + 1) : (i + 1) * (k + 1)] for i in range(b)]

    def _neighbour_list(self, nb: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[Neighbour]:
        sims, latlon, ids = nb
        metas = self.database.meta(ids)
        return [
            Neighbour(id=int(i), image=m.get("image"), similarity=float(s), lat=float(ll[0]), lon=float(ll[1]))
            for i, s, ll, m in zip(ids.tolist(), sims.tolist(), latlon, metas)
        ]

    def _prediction(
        self,
        name: str,
        method: str,
        answer: np.ndarray,
        pd: float | None,
        nb: tuple[np.ndarray, np.ndarray, np.ndarray],
        members: np.ndarray,
        labels: list[str] | None,
        places: bool,
    ) -> Prediction:
        sims, latlon, _ids = nb
        cands = [
            Candidate(lat=float(a), lon=float(o), score=float(s), source="db", place=labels[j + 1] if labels else None)
            for j, ((a, o), s) in enumerate(zip(latlon.tolist(), sims.tolist()))
        ]
        pred = Prediction(
            image=name,
            lat=float(answer[0]),
            lon=float(answer[1]),
            prob=None,
            candidates=cands,
            confidence=None if pd is None else float(pd),
            localizable=None if pd is None else bool(pd > LOCALIZABLE_THRESHOLD),
            method=method,
        )
        pred.members = [int(m) for m in members]
        pred.neighbours = self._neighbour_list(nb)
        if labels:
            pred.place = labels[0]
        return pred


def _take(nb: Neighbours, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return nb.sims[i], nb.latlon[i], nb.ids[i]


def _check_params(k: int, eps_km: float, min_samples: int, cell_km: float) -> None:
    if k < 1:
        raise ParameterError(f"k must be >= 1, got {k}", params=("k",))
    if not eps_km > 0:
        raise ParameterError(f"eps_km must be > 0, got {eps_km}")
    if min_samples < 1:
        raise ParameterError(f"min_samples must be >= 1, got {min_samples}")
    if not cell_km > 0:
        raise ParameterError(f"cell_km must be > 0, got {cell_km}")


__all__ = ["DEFAULT_CELL_KM", "DEFAULT_EPS_KM", "DEFAULT_K", "METHODS", "SwcPredictor"]
