"""Image databases: geotagged photo embeddings for Search-within-Cell and RAG retrieval.

A database is a folder built from a user's own geotagged photos — a CSV (``image,lat,lon``; paths
relative to the CSV's folder; extra columns kept as metadata) or a folder of photos whose EXIF GPS
gives the location — holding one L2-normalised CLIP image embedding per photo::

    DIR/manifest.json     written last: the commit point. Format, geofast version, backbone
                          (source, config digest, probe embedding), dim, dtype, count, index,
                          sources, and for every file its size, sha256 and sampled sha256.
    DIR/embeddings.npy    (N, D) float16 (default) or float32, C order: memory-mapped on open.
    DIR/coords.npy        (N, 2) float64 latitude, longitude in degrees.
    DIR/norms.npy         (N,) float32 norm of each photo's CLIP feature before normalisation:
                          row × norm is the raw feature GeoCLIP's image MLP takes (training).
    DIR/meta.jsonl        one JSON object per row: {"image": absolute path, <extra CSV columns>}.
    DIR/failed.csv        image,reason — unreadable photos, photos without GPS, bad CSV rows.
    DIR/index.faiss       only for non-flat FAISS indexes (``index="IVF4096,SQ8"``, ``"HNSW32"``).

Row ids are stable: ``add`` appends, so ids of existing rows never change.

The package, one concern per module (imports point down):

* :mod:`geofast.db.format` — file names, ``.npy`` headers, checksums, the manifest;
* :mod:`geofast.db.sources` — CSV files, folders of photos, EXIF GPS → :class:`SourcePlan`;
* :mod:`geofast.db.encode` — L2 normalisation, CLIP encoding, the backbone probe;
* :mod:`geofast.db.index` — FAISS index factory, parameters, training;
* :mod:`geofast.db.executor` — the encoding pipeline (:class:`Executor`: ``encode(jobs)`` yields one
  :class:`EncodedBatch` per :class:`BatchJob`, in order; :class:`LocalExecutor` is this machine's
  loader threads + backbone);
* :mod:`geofast.db.resume` — the work folder of a run (lock, plan digest, committed chunks);
* :mod:`geofast.db.writer` — assembly of a complete database folder and its install by renames;
* :mod:`geofast.db.append` — in-place growth of a database by ``add``, under a journal;
* :mod:`geofast.db.builder` — a build or add from start to end, driving the modules above;
* :mod:`geofast.db.ray_executor` — :class:`~geofast.db.ray_executor.RayExecutor`, the same jobs on
  a Ray cluster (Ray Data decode tasks + encoder actors; Ray imported only when used);
* :mod:`geofast.db.database` — :class:`Database` (open, check, search, metadata, build/add).

**Search.** Flat databases (the default, FAISS ``IndexFlatIP`` semantics: exact maximum inner
product) are scanned by ``gf.Gallery`` directly over the read-only memory map of
``embeddings.npy`` — zero copies; peak memory is the file's pages plus a small constant. Other
indexes are FAISS indexes trained on a sample (``DEFAULT_TRAIN_SIZE`` rows, fixed seed) whose
shortlist of ``rerank × k`` candidates is re-scored exactly against the stored embeddings.
:meth:`Database.farthest` is the search of the negated queries (Img2Loc's dissimilar references).

**Build protocol** (resumable, never destroys a good database): see :mod:`geofast.db.builder`.

**Checks on open.** Manifest present and parseable, format version known, every file present
with the recorded size, ``.npy`` headers agree with the manifest's count/dim/dtype, coordinates
valid, and checksums: full sha256 of every file when the data is at most
``FULL_VERIFY_BYTES`` (or ``verify=True``), otherwise a sha256 of 64 evenly spaced 64 KiB
blocks (catches most damage without reading gigabytes). With a backbone, the embedding of a fixed
synthetic probe image is recomputed and compared with the one stored at build time (cosine ≥
``PROBE_MIN_COSINE``), which catches a wrong ``--clip`` cheaply and robustly. Every failure is
a :class:`~geofast.errors.DatabaseError` whose hint says how to repair.
"""

from __future__ import annotations

from geofast.db.builder import BuildReport
from geofast.db.database import Database, Neighbours
from geofast.db.encode import PROBE_MIN_COSINE, encode_pil, normalize_rows, probe_embedding, probe_image
from geofast.db.executor import BatchJob, EncodedBatch, Executor, LocalExecutor, PreparedBatch, encode_prepared, prepare_batch
from geofast.db.format import COORDS, EMBEDDINGS, FAILED, FULL_VERIFY_BYTES, INDEX, MANIFEST, META
from geofast.db.sources import (
    NO_GPS_REASON,
    Entry,
    SourcePlan,
    gps_to_degrees,
    plan_source,
    read_csv_source,
    read_exif_gps,
    scan_folder_source,
)

__all__ = [
    "COORDS",
    "EMBEDDINGS",
    "FAILED",
    "FULL_VERIFY_BYTES",
    "INDEX",
    "MANIFEST",
    "META",
    "NO_GPS_REASON",
    "PROBE_MIN_COSINE",
    "BatchJob",
    "BuildReport",
    "EncodedBatch",
    "Executor",
    "LocalExecutor",
    "PreparedBatch",
    "encode_prepared",
    "prepare_batch",
    "Database",
    "Entry",
    "Neighbours",
    "SourcePlan",
    "encode_pil",
    "gps_to_degrees",
    "normalize_rows",
    "plan_source",
    "probe_embedding",
    "probe_image",
    "read_csv_source",
    "read_exif_gps",
    "scan_folder_source",
]
