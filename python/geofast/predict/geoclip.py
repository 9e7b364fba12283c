"""GeoCLIP / GeoMapCLIP prediction: image → ranked GPS candidates with probabilities.

The image embedding (CLIP ViT-L/14 → GeoCLIP MLP → L2 norm) is scored against every gallery
location embedding (cached once, see :mod:`geofast.gallery`) by ``Gallery``; the same scan
returns the log-sum-exp of ``logit_scale · score`` over the whole gallery, so the top-k softmax
probabilities are ``exp(logit_scale · s − lse)`` without a second pass.

Confidence is Prediction Density (Müller-Budack et al. / visloc) adapted to GeoCLIP: PD_r is the
total softmax probability of the gallery points within r km (great circle) of the top-1
prediction, r = 25 km; an image is *localizable* when PD_25 > 0.2.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from geofast._geofast import Gallery, haversine_matrix, swc
from geofast.constants import LOCALIZABLE_THRESHOLD, PD_RADIUS_KM
from geofast.errors import EmptyInputError, InputError, ParameterError, ShapeError
from geofast.images import ImageInput, as_image_items, iter_loaded_batches, load_image
from geofast.predict.duplicates import MERGE_MARGIN, DuplicateGroups, merge_exact, merge_scanned
from geofast.predict.types import Candidate, Prediction

if TYPE_CHECKING:
    from geofast.models.clip import Backbone
    from geofast.models.heads import Heads
    from geofast.places import PlaceIndex

DEFAULT_BATCH_SIZE = 16
#: ``Prediction.image`` of a text query is the query behind this prefix.
TEXT_PREFIX = "text: "


@dataclass
class GalleryData:
    """A gallery's coordinates, embeddings and the search structure over them."""

    latlon: np.ndarray  # (N, 2) float64
    embeddings: np.ndarray  # (N, 512) float32/float16, L2-normalised
    label: str
    search: Any = field(repr=False)  # Gallery
    built: bool = False
    _duplicates: DuplicateGroups | None = field(default=None, repr=False)
    _multi_embeddings: np.ndarray | None = field(default=None, repr=False)

    @property
    def duplicates(self) -> DuplicateGroups:
        """The exact-duplicate coordinate groups of this gallery (computed once)."""
        if self._duplicates is None:
            self._duplicates = DuplicateGroups.build(self.latlon)
        return self._duplicates

    @property
    def multi_embeddings(self) -> np.ndarray:
        """float32 embeddings of the canonical rows of the multi-row duplicate groups."""
        if self._multi_embeddings is None:
            self._multi_embeddings = np.asarray(self.embeddings[self.duplicates.multi], dtype=np.float32)
        return self._multi_embeddings


#: Memory budget of one block of the query × gallery distance matrix in :func:`prediction_density`.
PD_BLOCK_BYTES = 32 << 20


def prediction_density(
    query: np.ndarray,
    top1_latlon: np.ndarray,
    gallery: GalleryData,
    scale: float,
    lse: np.ndarray,
    radius_km: float = PD_RADIUS_KM,
    *,
    block_bytes: int = PD_BLOCK_BYTES,
) -> np.ndarray:
    """PD_r for each query: softmax mass of gallery points within ``radius_km`` of its top-1.

    The distances are computed for blocks of queries (``block_bytes`` of float64 per block, at
    least one query), so memory does not depend on how many queries are passed at once; each
    query's value is the same whatever the block size."""
    n = int(query.shape[0])
    if n == 0:
        return np.zeros(0)
    n_gallery = int(gallery.latlon.shape[0])
    rows = max(1, int(block_bytes) // max(1, 8 * n_gallery))
    out = np.empty(n)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        dist = haversine_matrix(top1_latlon[start:stop], gallery.latlon)
        for b in range(start, stop):
            near = np.flatnonzero(dist[b - start] <= radius_km)
            s = np.asarray(gallery.embeddings[near], dtype=np.float32) @ query[b].astype(np.float32)
            out[b] = float(np.exp(scale * s.astype(np.float64) - lse[b]).sum())
        del dist
    return np.minimum(out, 1.0)


class Geolocator:
    """Locate photos with GeoCLIP (``"geoclip"``) or GeoMapCLIP (``"geomapclip"``).

    >>> loc = Geolocator.from_pretrained("geoclip", clip="/models/clip-vit-large-patch14")  # doctest: +SKIP
    >>> loc.predict(["photo.jpg"], top_k=5)[0].lat                                           # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        backbone: Backbone,
        heads: Heads,
        gallery: GalleryData,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.backbone = backbone
        self.heads = heads
        self.gallery = gallery
        self._cache_dir = cache_dir
        self._places: PlaceIndex | None = None
        heads.image.to(backbone.device)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name: str | os.PathLike[str] = "geoclip",
        clip: str | os.PathLike[str] | None = None,
        device: str | None = None,
        gallery: str | os.PathLike[str] | np.ndarray | None = None,
        *,
        region: str | Sequence[float] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_dtype: str = "f32",
        progress: bool = True,
        precision: str | None = None,
    ) -> Geolocator:
        """Load a pretrained model: CLIP backbone (``clip``, ``$GEOFAST_CLIP``, the backbone a model
        folder records, or the hub id), the model's trained heads, and its gallery (default, a
        CSV/.npy file, or an ``(N, 2)`` array), optionally restricted to ``region`` = (lat_min,
        lon_min, lat_max, lon_max). ``name``: "geoclip", "geomapclip", a ``geofast train`` run
        folder, a model folder in ``geoclip``'s release format, or a hub id of one. ``precision``:
        the image encoder's arithmetic, fp32 (CPU default), int8 (CPU), bf16 (CPUs with native
        bf16) or fp16 (CUDA default); see :mod:`geofast.models.precision`."""
        from geofast.models import load_model_parts

        backbone, loaded = load_model_parts(name, clip=clip, device=device, precision=precision, cache_dir=cache_dir)
        heads = loaded.heads
        gal = build_gallery(
            heads, loaded.default_gallery, gallery, region=region, cache_dir=cache_dir, cache_dtype=cache_dtype, progress=progress
        )
        return cls(heads.name, backbone, heads, gal, cache_dir=cache_dir)

    # -- encoders -----------------------------------------------------------------------------
    @property
    def logit_scale(self) -> float:
        return self.heads.logit_scale

    def _embed_pil(self, images: Sequence[Any]) -> np.ndarray:
        return self.embed_pil(images)[0]

    def embed_pil(self, images: Sequence[Any], *, with_clip: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """One backbone forward for RGB PIL images: (GeoCLIP embeddings (B, 512), and with
        ``with_clip`` the L2-normalised CLIP features (B, 768) an image database is searched
        with), both float32."""
        import torch

        pixels = self.backbone.preprocess(images)
        feats = self.backbone.encode(pixels)
        with torch.inference_mode():
            emb = self.heads.image(feats.to(next(self.heads.image.parameters()).device).float())
            emb = torch.nn.functional.normalize(emb, dim=1)
            clip = torch.nn.functional.normalize(feats.float(), dim=1).cpu().numpy() if with_clip else None
        return emb.cpu().numpy().astype(np.float32, copy=False), clip

    def encode_images(self, images: Sequence[ImageInput], *, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """L2-normalised float32 GeoCLIP image embeddings ``(N, 512)``; raises ``ImageError`` on a bad image."""
        items = list(images)
        out = np.empty((len(items), 512), dtype=np.float32)
        for start in range(0, len(items), max(1, batch_size)):
            chunk = [load_image(x) for x in items[start : start + batch_size]]
            out[start : start + len(chunk)] = self._embed_pil(chunk)
        return out

    def encode_clip(self, images: Sequence[ImageInput], *, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """L2-normalised float32 CLIP image features ``(N, 768)``: the backbone's
        ``get_image_features`` before GeoCLIP's head, the space a geofast image database stores and
        :meth:`geofast.db.Database.search` takes (``encode_images`` returns GeoCLIP's 512-d space).
        Same preprocessing as :meth:`predict`; raises ``ImageError`` on a bad image.

        Example: ``db.search(loc.encode_clip(["photo.jpg"]), k=10)``."""
        items = list(images)
        out: np.ndarray | None = None
        for start in range(0, len(items), max(1, batch_size)):
            chunk = [load_image(x) for x in items[start : start + batch_size]]
            _, clip = self.embed_pil(chunk, with_clip=True)
            assert clip is not None
            if out is None:
                out = np.empty((len(items), clip.shape[1]), dtype=np.float32)
            out[start : start + len(chunk)] = clip
        return out if out is not None else np.empty((0, 768), dtype=np.float32)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """L2-normalised float32 GeoCLIP embeddings ``(N, 512)`` of text queries: CLIP's text
        features (768-d, the text tower is loaded on first use) through GeoCLIP's image head,
        which reads CLIP's shared image–text space."""
        import torch

        items = _check_texts(texts)
        out = np.empty((len(items), 512), dtype=np.float32)
        for start in range(0, len(items), max(1, batch_size)):
            chunk = items[start : start + batch_size]
            feats = self.backbone.encode_text(chunk)
            with torch.inference_mode():
                emb = self.heads.image(feats.to(next(self.heads.image.parameters()).device).float())
                emb = torch.nn.functional.normalize(emb, dim=1)
            out[start : start + len(chunk)] = emb.cpu().numpy()
        return out

    def encode_locations(self, latlon: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """L2-normalised float32 GeoCLIP location embeddings ``(N, 512)`` of ``(N, 2)`` degrees."""
        arr = np.asarray(latlon, dtype=np.float64)
        if arr.ndim == 1 and arr.shape == (2,):
            arr = arr[None, :]
        return self.heads.location.encode(arr)

    # -- prediction ---------------------------------------------------------------------------
    def places(self) -> PlaceIndex:
        if self._places is None:
            from geofast.places import PlaceIndex

            self._places = PlaceIndex.load(self._cache_dir)
        return self._places

    def search_embeddings(
        self, embeddings: np.ndarray, top_k: int, *, merge_duplicates: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Top-k gallery indices, their probabilities, the PD_25 confidence and the lse per query.

        With ``merge_duplicates`` (default) gallery rows that share coordinates are one candidate
        (its canonical row, probabilities summed, ranked by the sum; see
        :mod:`geofast.predict.duplicates`), and fewer than ``top_k`` columns come back only when
        the gallery has fewer distinct coordinates. Without it: the reference's raw top-k rows.
        PD_25 is taken around the returned top-1 (duplicates of it lie within 0 km, so merging
        changes it only when the merged top-1 is another place).
        """
        scale = self.logit_scale
        emb = np.asarray(embeddings, dtype=np.float32)
        if merge_duplicates and self.gallery.duplicates.has_duplicates:
            idx, probs, lse = self._search_merged(emb, top_k, scale)
        else:
            scores, idx, lse = self.gallery.search.search(emb, top_k, lse_scale=scale)
            probs = np.exp(scale * scores.astype(np.float64) - lse[:, None])
        top1 = self.gallery.latlon[idx[:, 0]]
        pd = prediction_density(emb, top1, self.gallery, scale, lse)
        return idx, probs, pd, lse

    def _search_merged(self, emb: np.ndarray, top_k: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Merged top-k (see :mod:`geofast.predict.duplicates`): scan top_k + margin and merge;
        queries whose merged list is not yet provably complete get the exact sums of every
        multi-row group (one matrix product for all of them), and a deeper scan if still needed."""
        groups = self.gallery.duplicates
        n = self.gallery.latlon.shape[0]
        want = min(top_k, groups.n_distinct)
        b = emb.shape[0]
        out_idx = np.empty((b, want), dtype=np.int64)
        out_prob = np.empty((b, want), dtype=np.float64)
        lse = np.empty(b, dtype=np.float64)
        todo = np.arange(b)
        k = min(n, top_k + MERGE_MARGIN)
        while todo.size:
            scores, idx, row_lse = self.gallery.search.search(emb[todo], k, lse_scale=scale)
            probs = np.exp(scale * scores.astype(np.float64) - row_lse[:, None])
            lse[todo] = row_lse
            pending: list[tuple[int, np.ndarray, np.ndarray, float]] = []
            for j, q in enumerate(todo.tolist()):
                rows, vals, certain = merge_scanned(idx[j], probs[j], groups, top_k, k >= n)
                if certain:
                    out_idx[q], out_prob[q] = rows[:want], vals[:want]
                else:
                    pending.append((q, rows, vals, float(probs[j, -1])))
            retry: list[int] = []
            if pending:
                queries = np.asarray([q for q, *_ in pending], dtype=np.int64)
                multi = self._multi_probs(emb[queries], lse[queries])
                for (q, rows, vals, p_last), mp in zip(pending, multi):
                    merged = merge_exact(rows, vals, p_last, groups, top_k, mp)
                    if merged is None:
                        retry.append(q)
                    else:
                        out_idx[q], out_prob[q] = merged
            todo = np.asarray(retry, dtype=np.int64)
            k = min(n, k * 4)
        return out_idx, out_prob, lse

    def _multi_probs(self, queries: np.ndarray, lse: np.ndarray) -> np.ndarray:
        """Exact summed probability ``(B, M)`` of every multi-row duplicate group for each query."""
        groups = self.gallery.duplicates
        s = (queries.astype(np.float32) @ self.gallery.multi_embeddings.T).astype(np.float64)
        return np.exp(self.logit_scale * s - lse[:, None]) * groups.size[groups.multi][None, :]

    def predict(
        self,
        images: ImageInput | Iterable[ImageInput],
        top_k: int = 5,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        method: str = "geoclip",
        swc_eps_km: float = 1.0,
        places: bool = True,
        on_progress: Callable[[int], None] | None = None,
        merge_duplicates: bool = True,
    ) -> list[Prediction]:
        """Predict locations for images (paths, URLs, PIL images, folders or globs).

        Each image gets a :class:`Prediction`; an image that cannot be read gets one with
        ``error`` set and the rest are still located. ``method="swc"`` replaces the top-1 by
        Search-within-Cell over the top-k candidates weighted by probability.
        ``merge_duplicates=False`` keeps the reference's raw top-k, where a gallery coordinate
        listed twice can appear twice.
        """
        if method not in ("geoclip", "swc"):
            raise InputError(f"unknown method {method!r} for Geolocator.predict", hint="use geoclip or swc")
        if top_k < 1:
            raise ParameterError(f"top_k must be >= 1, got {top_k}")
        return predict_in_batches(
            as_image_items(images),
            batch_size,
            method,
            lambda names, ims: self.predict_embeddings(
                self._embed_pil(ims),
                names,
                top_k,
                method=method,
                swc_eps_km=swc_eps_km,
                places=places,
                merge_duplicates=merge_duplicates,
            ),
            on_progress,
        )

    def predict_text(
        self,
        texts: Sequence[str],
        top_k: int = 5,
        *,
        places: bool = True,
        merge_duplicates: bool = True,
        method: str = "geoclip",
        swc_eps_km: float = 1.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[Prediction]:
        """Locate text descriptions ("a harbour with red wooden houses") as GeoCLIP's paper does:
        CLIP's text features → GeoCLIP's image head → the gallery. Same outputs as for photos;
        ``Prediction.image`` is the query prefixed with ``"text: "``."""
        if method not in ("geoclip", "swc"):
            raise InputError(f"unknown method {method!r} for Geolocator.predict_text", hint="use geoclip or swc")
        items = _check_texts(texts)
        return self.predict_embeddings(
            self.encode_texts(items, batch_size=batch_size),
            [TEXT_PREFIX + t for t in items],
            top_k,
            method=method,
            swc_eps_km=swc_eps_km,
            places=places,
            merge_duplicates=merge_duplicates,
        )

    def predict_embeddings(
        self,
        embeddings: np.ndarray,
        names: Sequence[str],
        top_k: int = 5,
        *,
        method: str = "geoclip",
        swc_eps_km: float = 1.0,
        places: bool = True,
        merge_duplicates: bool = True,
    ) -> list[Prediction]:
        """Predictions from precomputed GeoCLIP image embeddings ``(B, 512)`` (``encode_images``,
        ``encode_texts``)."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(names):
            raise ShapeError(f"embeddings must have shape ({len(names)}, 512) for {len(names)} names, got {emb.shape}")
        if emb.shape[0] == 0:
            return []
        if top_k < 1:
            raise ParameterError(f"top_k must be >= 1, got {top_k}", params=("top_k",))
        n_gallery = self.gallery.latlon.shape[0]
        if top_k > n_gallery:
            raise ParameterError(
                f"top_k {top_k} is more than the {n_gallery:,} points of the gallery",
                hint=f"set top_k to {n_gallery:,} or less",
                params=("top_k",),
            )
        idx, probs, pd, _ = self.search_embeddings(emb, top_k, merge_duplicates=merge_duplicates)
        return [
            self._prediction(name, idx[k], probs[k], float(pd[k]), method, swc_eps_km, places) for k, name in enumerate(names)
        ]

    def _prediction(
        self,
        name: str,
        idx: np.ndarray,
        probs: np.ndarray,
        pd: float,
        method: str,
        swc_eps_km: float,
        with_places: bool,
    ) -> Prediction:
        latlon = self.gallery.latlon[idx]
        labels: list[str | None] = [None] * len(idx)
        if with_places:
            labels = [p.label() for p in self.places().nearest(latlon)]
        cands = [
            Candidate(lat=float(a), lon=float(b), prob=float(p), source=self.name, place=lab)
            for (a, b), p, lab in zip(latlon.tolist(), probs.tolist(), labels)
        ]
        pred = Prediction(
            image=name,
            lat=cands[0].lat,
            lon=cands[0].lon,
            prob=cands[0].prob,
            candidates=cands,
            confidence=pd,
            localizable=pd > LOCALIZABLE_THRESHOLD,
            method=method,
        )
        if method == "swc":
            lat, lon, members = swc(latlon, probs, eps_km=swc_eps_km, weight_exponent=1.0)
            pred.lat, pred.lon = float(lat), float(lon)
            pred.prob = float(probs[members].sum())
            pred.members = [int(m) for m in members]
        return pred


class GeoclipPredictor:
    """The :class:`~geofast.predict.types.Predictor` for ``geoclip`` (softmax top-k over the
    gallery) and gallery-only ``swc`` (Search-within-Cell over GeoCLIP's top-k, weighted by
    probability) on one :class:`Geolocator`. ``merge_duplicates=False`` keeps the reference's
    raw candidate list (a gallery coordinate listed twice can appear twice)."""

    def __init__(
        self, geolocator: Geolocator, *, method: str = "geoclip", swc_eps_km: float = 1.0, merge_duplicates: bool = True
    ) -> None:
        if method not in ("geoclip", "swc"):
            raise InputError(f"unknown method {method!r} for GeoclipPredictor", hint="use geoclip or swc")
        self.geolocator = geolocator
        self.method = method
        self.swc_eps_km = swc_eps_km
        self.merge_duplicates = merge_duplicates

    def predict(
        self,
        images: Sequence[ImageInput],
        *,
        top_k: int = 5,
        batch_size: int = DEFAULT_BATCH_SIZE,
        places: bool = True,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[Prediction]:
        return self.geolocator.predict(
            images,
            top_k,
            batch_size=batch_size,
            method=self.method,
            swc_eps_km=self.swc_eps_km,
            places=places,
            on_progress=on_progress,
            merge_duplicates=self.merge_duplicates,
        )

    def predict_text(
        self, texts: Sequence[str], *, top_k: int = 5, batch_size: int = DEFAULT_BATCH_SIZE, places: bool = True
    ) -> list[Prediction]:
        """Text queries, with this predictor's method and duplicate handling (:meth:`Geolocator.predict_text`)."""
        return self.geolocator.predict_text(
            texts,
            top_k,
            places=places,
            merge_duplicates=self.merge_duplicates,
            method=self.method,
            swc_eps_km=self.swc_eps_km,
            batch_size=batch_size,
        )


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    items = [str(t).strip() for t in texts]
    if any(not t for t in items):
        raise InputError("a text query is empty", hint="describe the place in words, e.g. 'a harbour with red wooden houses'")
    return items


def predict_in_batches(
    items: Sequence[ImageInput],
    batch_size: int,
    method: str,
    predict: Callable[[list[str], list[Any]], list[Prediction]],
    on_progress: Callable[[int], None] | None = None,
    *,
    loader_threads: int | None = None,
    first_index: int = 0,
) -> list[Prediction]:
    """Load ``items`` batch by batch and call ``predict(names, rgb_images)`` on the readable ones;
    an unreadable image becomes a Prediction carrying its error, in its place.

    The next batch is decoded in background threads (:func:`geofast.images.iter_loaded_batches`)
    while ``predict`` runs on the current one; at most two batches of images are held."""
    results: list[Prediction] = []
    for loaded in iter_loaded_batches(items, batch_size, threads=loader_threads, first_index=first_index):
        good = [(name, im) for _, name, im, _ in loaded if im is not None]
        located = iter(predict([n for n, _ in good], [im for _, im in good]) if good else [])
        del good
        for _, name, im, err in loaded:
            results.append(next(located) if im is not None else Prediction(image=name, method=method, error=str(err)))
        n = len(loaded)
        del loaded
        if on_progress is not None:
            on_progress(n)
    return results


def build_gallery(
    heads: Heads,
    default_gallery: os.PathLike[str],
    gallery: str | os.PathLike[str] | np.ndarray | None,
    *,
    region: str | Sequence[float] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_dtype: str = "f32",
    progress: bool = True,
) -> GalleryData:
    """Coordinates + cached embeddings + a ``Gallery`` for a model's gallery choice."""
    from geofast.gallery import EmbeddingCache, check_latlon_array, parse_region, read_gallery_file, region_mask

    if gallery is None:
        latlon = read_gallery_file(default_gallery)
        label = f"{heads.name} default ({os.path.basename(default_gallery)})"
    elif isinstance(gallery, np.ndarray):
        latlon = check_latlon_array(gallery, "gallery")
        label = f"array of {latlon.shape[0]} points"
    else:
        latlon = read_gallery_file(gallery)
        label = os.fspath(gallery)
    if latlon.shape[0] == 0:
        raise EmptyInputError("the gallery is empty")
    # GeoCLIP holds its gallery as float32; encode exactly those coordinates.
    enc_latlon = latlon.astype(np.float32).astype(np.float64)
    cache = EmbeddingCache.default(cache_dir)
    emb, built = cache.get_or_build(
        heads.name,
        heads.location_digest,
        enc_latlon,
        cache_dtype,
        lambda pts, advance: heads.location.encode(pts, progress=advance),
        label=label,
        progress=progress,
    )
    if region is not None:
        box = parse_region(region) if isinstance(region, str) else parse_region(",".join(str(v) for v in region))
        assert box is not None
        mask = region_mask(latlon, box)
        if not mask.any():
            raise InputError(
                f"no gallery point lies inside the region {box}",
                hint="widen region, or build a regional gallery with gf.fibonacci_lattice",
                params=("region",),
            )
        latlon = latlon[mask]
        emb = np.ascontiguousarray(emb[mask])
        emb.setflags(write=False)
    search = Gallery(emb, dtype="f16" if emb.dtype == np.float16 else "f32")
    return GalleryData(latlon=latlon, embeddings=emb, label=label, search=search, built=built)
