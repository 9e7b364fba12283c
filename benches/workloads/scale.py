"""Growth benchmark: how each end-to-end cost grows with the number of rows N.

Synthetic but realistic data, generated in blocks (memory bounded whatever N):

* **embeddings** (768-d, L2-normalised, float16) drawn as a mixture of 2,000 cluster centres plus
  noise (cosine ≈ 0.6 to the centre), as CLIP embeddings cluster by content, not uniform noise;
* **coordinates** clustered like Flickr photos: 85 % from 400 city-sized Gaussians (σ 3–20 km)
  centred on points of GeoCLIP's MP-16 gallery (real photo locations), whose sizes follow Zipf's law (the largest city holds ~13 % of all photos: 130K rows within
  25 km at N = 1M, the worst case of ``geoclip+swc``), 15 % uniform on the sphere; each
  embedding cluster belongs to one city, so that visual neighbours are geographic neighbours.

For each N (full: 100K, 1M and 4.7M — MP-16's size; ``--quick``: 10K and 100K) it measures, each
with its peak RSS (``VmHWM`` of a child process, reset between costs with ``clear_refs``):

* ``eval --predictions`` of N predictions, end to end through the CLI (interpreter start, CSV
  read, scoring, rendering) in a subprocess;
* ``db build`` planning of an N-row CSV (the source planner, in a subprocess);
* flat search (k = 10), ``swc`` and ``geoclip+swc`` per image (``SwcPredictor.predict_embeddings``
  on the memory-mapped database built by ``Database.from_arrays``), and the 16 nearest + 16
  farthest neighbours of the RAG prompt per image;
* IVF (``IVF{√N},Flat``; ``SQ8`` codes above 2M rows; trained on 40 rows per list) recall@10 against the exact search, and its time per image, at several
  ``nprobe``.

:func:`growth_rows` returns the per-N table with, for each cost, the ratio of its growth to the
growth of N (≤ 1: at most linear).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benches.harness import Skip, Workload

DIM = 768
N_CLUSTERS = 2000
N_CITIES = 400
CITY_SHARE = 0.85
BLOCK = 65_536
QUERIES = 16  # images per batch, as ``locate --batch-size 16``
IVF_QUERIES = 64
NPROBES = (1, 4, 16, 64)
FULL_SIZES = (100_000, 1_000_000, 4_700_000)
QUICK_SIZES = (10_000, 100_000)

#: Results per N, filled as the workloads run (read by :func:`growth_rows`).
MEASURED: dict[int, dict[str, Any]] = {}
_ROOT: Path | None = None


def _root() -> Path:
    """One temporary folder per process, under ``$GEOFAST_SCALE_DIR`` or the cache, removed at exit."""
    global _ROOT
    if _ROOT is None:
        from geofast.cache import cache_root

        base = Path(os.environ.get("GEOFAST_SCALE_DIR", "") or cache_root() / "bench")
        base.mkdir(parents=True, exist_ok=True)
        _ROOT = Path(tempfile.mkdtemp(prefix="scale-", dir=base))
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


def _db_api() -> tuple[Any, Any]:
    """(Database, plan_source) from the ``geofast.db`` package, or the older single module."""
    import importlib

    try:
        mod = importlib.import_module("geofast.db")
    except ImportError:
        mod = importlib.import_module("geofast.database")
    return mod.Database, mod.plan_source


# -- synthetic data ---------------------------------------------------------------------------------


class Synthetic:
    """The generator: cluster centres, cities and the per-row draw (deterministic per block)."""

    def __init__(self, seed: int = 0, places: np.ndarray | None = None) -> None:
        rng = np.random.default_rng(seed)
        c = rng.standard_normal((N_CLUSTERS, DIM)).astype(np.float32)
        self.centres = c / np.linalg.norm(c, axis=1, keepdims=True)
        if places is not None:
            # City centres at real photo locations (e.g. GeoCLIP's MP-16 gallery).
            self.cities = np.asarray(places, dtype=np.float64)[rng.choice(len(places), N_CITIES, replace=False)]
        else:
            # More in the northern mid-latitudes, as Flickr's photos are.
            lat = np.degrees(np.arcsin(np.clip(rng.normal(0.55, 0.3, N_CITIES), -0.95, 0.95)))
            self.cities = np.column_stack([lat, rng.uniform(-180, 180, N_CITIES)])
        w = 1.0 / np.arange(1, N_CITIES + 1)
        self.city_p = w / w.sum()
        self.sigma_km = rng.uniform(3.0, 20.0, N_CITIES)
        self.seed = seed

    def block(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start .. start + n``: (embeddings (n, 768) float16, latlon (n, 2) float64)."""
        rng = np.random.default_rng([self.seed, start])
        in_city = rng.random(n) < CITY_SHARE
        city = rng.choice(N_CITIES, n, p=self.city_p)
        sig = (self.sigma_km[city] / 111.2)[:, None]
        ll = self.cities[city] + rng.standard_normal((n, 2)) * sig
        ll[:, 1] /= 1.0  # small σ: the longitude stretch at high latitude is irrelevant here
        uni = np.column_stack([np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)])
        ll = np.where(in_city[:, None], ll, uni)
        ll[:, 0] = np.clip(ll[:, 0], -90.0, 90.0)
        ll[:, 1] = (ll[:, 1] + 180.0) % 360.0 - 180.0
        # Each city owns the clusters c ≡ city (mod N_CITIES); other photos any cluster.
        own = city + N_CITIES * rng.integers(0, N_CLUSTERS // N_CITIES, n)
        cluster = np.where(in_city, own, rng.integers(0, N_CLUSTERS, n))
        e = self.centres[cluster] + rng.standard_normal((n, DIM), dtype=np.float32) * np.float32(1.3 / math.sqrt(DIM))
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        return e.astype(np.float16), ll


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def build_databases(n: int, gen: Synthetic, folder: Path) -> dict[str, Any]:
    """The flat N-row database (``Database.from_arrays`` from a memory-mapped array written in
    blocks) and an IVF database over the same vectors; the coordinates are returned."""
    Database, _ = _db_api()
    need = 2 * n * DIM * 2 + n * 200 + (1 << 30)
    if _free_bytes(folder) < need:
        raise Skip(f"N = {n:,} needs {need / 2**30:.1f} GiB free in {folder} (set GEOFAST_SCALE_DIR)")
    raw = folder / "raw.npy"
    arr = np.lib.format.open_memmap(raw, mode="w+", dtype=np.float16, shape=(n, DIM))
    latlon = np.empty((n, 2))
    t0 = time.perf_counter()
    for s in range(0, n, BLOCK):
        e, ll = gen.block(s, min(BLOCK, n - s))
        arr[s : s + e.shape[0]] = e
        latlon[s : s + e.shape[0]] = ll
    arr.flush()
    del arr
    gen_s = time.perf_counter() - t0
    emb = np.load(raw, mmap_mode="r")
    t0 = time.perf_counter()
    Database.from_arrays(folder / "flat", emb, latlon, normalize=False)
    flat_s = time.perf_counter() - t0
    nlist = int(2 ** round(math.log2(math.sqrt(n))))
    t0 = time.perf_counter()
    # IVF,Flat keeps a float32 copy of every vector in memory (14 GB at 4.7M rows): above 2M rows
    # the lists hold 8-bit scalar-quantised codes instead (re-ranked exactly by Database.search).
    codes = "Flat" if n <= 2_000_000 else "SQ8"
    Database.from_arrays(folder / "ivf", emb, latlon, normalize=False, index=f"IVF{nlist},{codes}", train_size=min(n, 40 * nlist))
    ivf_s = time.perf_counter() - t0
    del emb
    raw.unlink()
    return {"latlon": latlon, "generate_s": gen_s, "from_arrays_s": flat_s, "ivf_build_s": ivf_s, "nlist": nlist}


def write_predictions_csv(path: Path, latlon: np.ndarray, seed: int = 1) -> None:
    """An N-row predictions file as ``geofast eval`` writes it (0.1 % failed rows), in blocks."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    n = int(latlon.shape[0])
    rng = np.random.default_rng(seed)
    fields = ["image", "lat", "lon", "pred_lat", "pred_lon", "prob", "confidence", "method", "error"]
    schema = pa.schema([(f, pa.string()) for f in fields])
    with pacsv.CSVWriter(path, schema) as w:
        for s in range(0, n, BLOCK):
            t = latlon[s : s + BLOCK]
            m = t.shape[0]
            err_km = np.power(10.0, rng.uniform(-1.0, 3.5, m))
            p = t + rng.standard_normal((m, 2)) * (err_km / 111.2)[:, None]
            p[:, 0] = np.clip(p[:, 0], -90, 90)
            p[:, 1] = (p[:, 1] + 180) % 360 - 180
            failed = rng.random(m) < 0.001

            def txt(a: np.ndarray) -> pa.Array:
                return pa.array(a.astype(np.float64)).cast(pa.string())

            cols = [
                pa.array([f"photos/{i:08d}.jpg" for i in range(s, s + m)]),
                txt(t[:, 0]),
                txt(t[:, 1]),
                pc.if_else(pa.array(failed), "", txt(p[:, 0])),
                pc.if_else(pa.array(failed), "", txt(p[:, 1])),
                txt(np.asarray(rng.random(m))),
                txt(np.asarray(rng.random(m))),
                pa.array(["geoclip"] * m),
                pa.array(np.where(failed, "photo: corrupt image", "")),
            ]
            w.write_table(pa.table(cols, schema=schema))


def write_source_csv(path: Path, latlon: np.ndarray) -> None:
    """An N-row ``db build`` source CSV (``image,lat,lon``; paths relative to the CSV)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    schema = pa.schema([("image", pa.string()), ("lat", pa.string()), ("lon", pa.string())])
    with pacsv.CSVWriter(path, schema) as w:
        for s in range(0, latlon.shape[0], BLOCK):
            t = latlon[s : s + BLOCK]
            cols = [
                pa.array([f"photos/{i // 1000:05d}/{i:08d}.jpg" for i in range(s, s + t.shape[0])]),
                pa.array(t[:, 0]).cast(pa.string()),
                pa.array(t[:, 1]).cast(pa.string()),
            ]
            w.write_table(pa.table(cols, schema=schema))


# -- child processes ---------------------------------------------------------------------------------

_HWM = r"""
def hwm_kb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
"""

_CLI_CHILD = (
    _HWM
    + r"""
import json, sys
out, args = sys.argv[1], sys.argv[2:]
from geofast.cli import main
rc = main(args)
json.dump({"rc": rc, "maxrss_kb": hwm_kb()}, open(out, "w"))
"""
)

_PLAN_CHILD = (
    _HWM
    + r"""
import json, sys, time
out, source = sys.argv[1], sys.argv[2]
try:
    from geofast.db import plan_source
    where = "geofast.db.plan_source"
except ImportError:
    from geofast.database import plan_source
    where = "geofast.database.plan_source"
t0 = time.perf_counter()
plan = plan_source(source)
t = time.perf_counter() - t0
json.dump({"seconds": t, "rows": len(plan.entries), "maxrss_kb": hwm_kb(), "planner": where}, open(out, "w"))
"""
)

_SEARCH_CHILD = (
    _HWM
    + r"""
import json, sys, time
import numpy as np
out, flat_dir, ivf_dir, qfile, gfile, clip = sys.argv[1:7]
nprobes = [int(x) for x in sys.argv[7].split(",")]
try:
    from geofast.db import Database
except ImportError:
    from geofast.database import Database
from geofast.predict.geoclip import Geolocator
from geofast.predict.swc import SwcPredictor

res = {}
loc = Geolocator.from_pretrained("geoclip", clip=clip, device="cpu", progress=False)
db = Database.open(flat_dir, verify=False)
q = np.load(qfile)
g = np.load(gfile)
names = [f"q{i}" for i in range(q.shape[0])]
pred = SwcPredictor(db, loc.backbone, geolocator=loc, check_backbone=False)
res["baseline_kb"] = hwm_kb()
res["clear_refs"] = reset_hwm()

def measure(name, fn, reps=2):
    fn()  # warm-up: page cache, first-touch
    reset_hwm()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        r = fn()
        best = min(best, time.perf_counter() - t0)
    res[name] = {"seconds": best, "per_image_s": best / q.shape[0], "maxrss_kb": hwm_kb()}
    return r

exact = measure("flat_search", lambda: db.search(q, 10))
measure("swc", lambda: pred.predict_embeddings(q, None, names, method="swc", places=False))
cell = measure("geoclip_swc", lambda: pred.predict_embeddings(q, g, names, method="geoclip+swc", places=False))
res["geoclip_swc"]["cell_rows_max"] = int(max(db.within((p.cell.lat, p.cell.lon), p.cell.radius_km).shape[0] for p in cell if p.cell))
measure("rag_refs", lambda: (db.search(q, 16), db.farthest(q, 16)))

ivf = Database.open(ivf_dir, verify=False)
iq = np.load(qfile.replace(".npy", "-ivf.npy"))
truth = db.search(iq, 10).ids
res["ivf"] = {}
for p in nprobes:
    ivf.set_search_params(f"nprobe={p}")
    ivf.search(iq[:4], 10)
    reset_hwm()
    t0 = time.perf_counter()
    got = ivf.search(iq, 10).ids
    t = time.perf_counter() - t0
    recall = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(got, truth)]))
    res["ivf"][str(p)] = {"recall_at_10": recall, "per_image_s": t / iq.shape[0], "maxrss_kb": hwm_kb()}
json.dump(res, open(out, "w"))
"""
)


def _child(script: str, args: list[str], timeout: float = 3600.0) -> tuple[dict[str, Any], float]:
    """Run ``script`` in a fresh interpreter; its JSON report and the wall time seen from here."""
    out = _root() / f"child-{time.monotonic_ns()}.json"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", script, str(out), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"benchmark child failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    data = json.loads(out.read_text())
    out.unlink()
    return data, wall


def _queries(gen: Synthetic, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Query images: new photos from the same distribution as the database (a block no database
    row comes from), as float32 embeddings, and their true coordinates."""
    e, ll = gen.block(10**12 + seed, count)
    q = e.astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q, ll


def measure_n(n: int, clip_dir: Path) -> dict[str, Any]:
    """Every cost at N rows (the data is generated, measured and deleted here)."""
    from geofast.predict.geoclip import Geolocator

    folder = _root() / f"n{n}"
    folder.mkdir(parents=True, exist_ok=True)
    loc = Geolocator.from_pretrained("geoclip", clip=clip_dir, device="cpu", progress=False)
    gen = Synthetic(0, places=loc.gallery.latlon)
    try:
        built = build_databases(n, gen, folder)
        latlon = built.pop("latlon")
        out: dict[str, Any] = {"n": n, **built}

        pcsv = folder / "predictions.csv"
        write_predictions_csv(pcsv, latlon)
        rep, wall = _child(_CLI_CHILD, ["eval", "--predictions", str(pcsv), "--json"])
        if rep["rc"] != 0:
            raise RuntimeError(f"geofast eval --predictions failed with exit {rep['rc']}")
        out["eval_scoring"] = {"seconds": wall, "maxrss_kb": rep["maxrss_kb"], "csv_bytes": pcsv.stat().st_size}
        pcsv.unlink()

        scsv = folder / "source.csv"
        write_source_csv(scsv, latlon)
        rep, _ = _child(_PLAN_CHILD, [str(scsv)])
        if rep["rows"] != n:
            raise RuntimeError(f"planning found {rep['rows']} rows in an {n}-row CSV")
        out["db_plan"] = rep
        scsv.unlink()

        q, qll = _queries(gen, QUERIES, 11)
        qll[0] = gen.cities[0]  # one image of the largest city: the largest geoclip+swc cell
        # GeoCLIP image embeddings pointing near each query's true place (location embedding +
        # noise), so that geoclip+swc searches the query's (often large) city cell.
        g = loc.encode_locations(qll).astype(np.float32)
        g += np.random.default_rng(3).standard_normal(g.shape).astype(np.float32) * np.float32(0.02)
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        iq, _ = _queries(gen, IVF_QUERIES, 12)
        qfile = folder / "q.npy"
        np.save(qfile, q)
        np.save(folder / "q-ivf.npy", iq)
        np.save(folder / "g.npy", g)
        rep, _ = _child(
            _SEARCH_CHILD,
            [
                str(folder / "flat"),
                str(folder / "ivf"),
                str(qfile),
                str(folder / "g.npy"),
                str(clip_dir),
                ",".join(map(str, NPROBES)),
            ],
        )
        out.update(rep)
        out["db_bytes"] = n * DIM * 2
        return out
    finally:
        del loc
        shutil.rmtree(folder, ignore_errors=True)


# -- report -------------------------------------------------------------------------------------------

#: (key, label) of the costs in the growth table.
COSTS: tuple[tuple[str, str], ...] = (
    ("eval_scoring", "eval --predictions (CLI, end to end)"),
    ("db_plan", "db build planning (N-row CSV)"),
    ("flat_search", "flat search k=10, per image"),
    ("swc", "swc, per image"),
    ("geoclip_swc", "geoclip+swc, per image"),
    ("rag_refs", "16 nearest + 16 farthest, per image"),
)


def _seconds(rec: dict[str, Any], key: str) -> float | None:
    v = rec.get(key)
    if not isinstance(v, dict):
        return None
    s = v.get("per_image_s", v.get("seconds"))
    return float(s) if s is not None else None


def growth_rows() -> list[dict[str, Any]]:
    """One row per cost (and per IVF nprobe): for each N its time and peak RSS, and the growth of
    the time between consecutive sizes divided by the growth of N (≤ 1 means at most linear)."""
    sizes = sorted(MEASURED)
    rows: list[dict[str, Any]] = []
    keys = list(COSTS)
    probes = sorted({p for n in sizes for p in MEASURED[n].get("ivf", {})}, key=int)
    keys += [(f"ivf:{p}", f"IVF nprobe={p}, per image") for p in probes]
    for key, label in keys:
        cells = []
        for n in sizes:
            rec = MEASURED[n]
            if key.startswith("ivf:"):
                v = rec.get("ivf", {}).get(key[4:])
                s = None if v is None else float(v["per_image_s"])
                rss = None if v is None else int(v["maxrss_kb"]) * 1024
                extra = None if v is None else f"recall@10 {v['recall_at_10']:.3f}"
            else:
                s = _seconds(rec, key)
                v = rec.get(key)
                rss = int(v["maxrss_kb"]) * 1024 if isinstance(v, dict) and "maxrss_kb" in v else None
                extra = f"cell ≤ {v['cell_rows_max']:,} rows" if isinstance(v, dict) and "cell_rows_max" in v else None
            cells.append({"n": n, "seconds": s, "peak_rss_bytes": rss, "extra": extra})
        growth: list[float | None] = []
        for a, b in zip(cells, cells[1:]):
            sa, sb = a["seconds"], b["seconds"]
            if isinstance(sa, float) and isinstance(sb, float) and sa > 0:
                growth.append((sb / sa) / (int(b["n"]) / int(a["n"])))  # type: ignore[arg-type]
            else:
                growth.append(None)
        rows.append({"cost": label, "key": key, "cells": cells, "growth_vs_n": growth})
    return rows


def workloads(quick: bool) -> list[Workload]:
    """One workload per (cost, N); the first of each N measures everything at that N."""
    from benches.workloads.e2e import random_clip

    sizes: tuple[int, ...] = QUICK_SIZES if quick else FULL_SIZES
    only = os.environ.get("GEOFAST_SCALE_SIZES", "").strip()
    if only:
        sizes = tuple(int(float(x)) for x in only.split(",") if x.strip())

    def setup_for(n: int) -> Any:
        def setup() -> dict[str, Any]:
            if n not in MEASURED:
                MEASURED[n] = measure_n(n, random_clip(False))
            return MEASURED[n]

        return setup

    out: list[Workload] = []
    for n in sizes:
        for key, label in COSTS:

            def seconds(rec: dict[str, Any], key: str = key) -> float:
                s = _seconds(rec, key)
                return float("nan") if s is None else s

            def note(rec: dict[str, Any], key: str = key) -> str:
                v = rec.get(key, {})
                rss = v.get("maxrss_kb") if isinstance(v, dict) else None
                return f"peak RSS {float(rss) / 2**20:.2f} GiB" if isinstance(rss, (int, float)) else ""

            out.append(
                Workload(
                    name=f"scale {label} @ N={n:,}",
                    kernel=f"scale:{key}",
                    anchor="-",
                    setup=setup_for(n),
                    run_geofast=lambda s: None,
                    run_anchor=None,
                    geofast_seconds=seconds,
                    check=lambda s, _g, _a, note=note: note(s),  # type: ignore[misc]
                    repeat=1,
                )
            )
    return out


__all__ = ["MEASURED", "Synthetic", "build_databases", "growth_rows", "measure_n", "workloads"]
