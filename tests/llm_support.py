"""Helpers for the LLM/RAG tests: synthetic images, a location encoder built from real numbers,
and an image database over faiss (the reference for nearest-neighbour search)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from geofast.predict.types import Candidate, Prediction


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def jpeg_size(data: bytes) -> tuple[str | None, tuple[int, int]]:
    with Image.open(io.BytesIO(data)) as im:
        return im.format, im.size


def unit_vectors(latlon: np.ndarray) -> np.ndarray:
    lat = np.radians(np.asarray(latlon, dtype=np.float64)[:, 0])
    lon = np.radians(np.asarray(latlon, dtype=np.float64)[:, 1])
    return np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])


class SphereEncoder:
    """A location encoder from real numbers: unit vectors on the sphere through a fixed
    projection with orthonormal rows (3 → dim), so the cosine of two encodings equals the
    cosine of the central angle between the two places."""

    def __init__(self, dim: int = 64, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.normal(size=(dim, 3)))
        self.proj = q.T  # (3, dim), orthonormal rows
        self.calls = 0

    def encode_locations(self, latlon: np.ndarray) -> np.ndarray:
        self.calls += 1
        out = unit_vectors(latlon) @ self.proj
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out.astype(np.float32)

    def image_embedding(self, lat: float, lon: float, noise: float = 0.0, seed: int = 1) -> np.ndarray:
        e = self.encode_locations(np.array([[lat, lon]]))[0].astype(np.float64)
        e += noise * np.random.default_rng(seed).normal(size=e.shape)
        return (e / np.linalg.norm(e)).astype(np.float32)


class FaissDatabase:
    """An image database over a faiss ``IndexFlatIP``: the NeighbourSource protocol."""

    def __init__(self, embeddings: np.ndarray, latlon: np.ndarray) -> None:
        import faiss

        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.latlon = np.asarray(latlon, dtype=np.float64)
        self.index = faiss.IndexFlatIP(self.embeddings.shape[1])
        self.index.add(self.embeddings)
        self.calls: list[tuple[np.ndarray, int]] = []

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def search(self, embeddings: np.ndarray, k: int):
        q = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.calls.append((q.copy(), k))
        sims, ids = self.index.search(q, k)
        return sims, self.latlon[ids], ids


def geoclip_prediction(name: str, cands: list[tuple[float, float]], probs: list[float] | None = None) -> Prediction:
    probs = probs if probs is not None else [1.0 / len(cands)] * len(cands)
    cs = [Candidate(lat, lon, prob=p) for (lat, lon), p in zip(cands, probs, strict=True)]
    return Prediction(image=name, lat=cs[0].lat, lon=cs[0].lon, prob=cs[0].prob, candidates=cs, confidence=0.4, localizable=True)
