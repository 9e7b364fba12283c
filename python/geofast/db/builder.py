"""The builder: plan digest, resumable chunks, assembly and install, with a pluggable executor.

**Build protocol (resumable, never destroys a good database).** A build or add works in
``DIR.partial/`` (beside ``DIR``): ``state.json`` records the plan digest (source entries,
chunk size, dtype, mode, base database) and the backbone's probe embedding; every
``chunk_size`` source entries are encoded and committed as one atomically written chunk file
(``chunks/NNNNNNNN.npz``). An interrupted run (crash, Ctrl-C, SIGKILL) continues on the next
identical command with the first uncommitted chunk; if the source or options changed, the stale
chunks are discarded (with a message). When every chunk is committed the new database is
assembled in ``DIR.partial/db/`` (manifest last), then installed by renames: ``DIR → DIR.old``,
``DIR.partial/db → DIR``, then ``DIR.old`` and ``DIR.partial`` are removed. The next build or add
finishes a swap that was cut off between renames. Unreadable images are listed in
``failed.csv`` and never abort the run. A lock file stops two builds writing the same ``DIR``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from geofast._geofast import __version__
from geofast._io import atomic_write, atomic_write_text
from geofast.db.encode import PROBE_MIN_COSINE, backbone_info, probe_cosine, probe_embedding
from geofast.db.format import (
    _DTYPES,
    COORDS,
    EMBEDDINGS,
    FAILED,
    FORMAT,
    FORMAT_VERSION,
    INDEX,
    INDEX_BACKUP,
    JOURNAL,
    MANIFEST,
    META,
    META_KEYS,
    META_OFFSETS,
    NORMS,
    STATE,
    Event,
    Progress,
    _file_record,
    _fsync_dir,
    _HashingWriter,
    _is_flat,
    _now,
    _npy_file_record,
    _npy_header,
    _sample_sha256,
    _sibling,
    appendable_files,
    npy_layout,
)
from geofast.db.index import DEFAULT_TRAIN_SIZE, _default_search_params, _faiss, _new_faiss_index, _train_and_fill
from geofast.db.sources import NO_GPS_REASON, Entry, SourcePlan, read_exif_gps
from geofast.errors import DatabaseError, ImageError, ParameterError, ShapeError

if TYPE_CHECKING:
    from geofast.db.database import Database
    from geofast.models.clip import Backbone

DEFAULT_BATCH_SIZE = 32
DEFAULT_CHUNK_SIZE = 256
DEFAULT_DTYPE = "f16"
DEFAULT_INDEX = "Flat"


@dataclass
class BuildReport:
    """What a build or add did."""

    path: str
    rows: int  # rows in the database now
    added: int  # rows added by this run (new source entries encoded, including resumed chunks)
    failed: int  # unreadable images and rejected CSV rows
    no_gps: int  # photos skipped for lack of EXIF GPS
    duplicates: int  # add: photos already in the database (skipped)
    encoded: int  # images encoded by this process (not counting chunks resumed from a previous run)
    resumed_chunks: int
    chunks: int
    seconds: float
    encoder_seconds: float  # time inside the CLIP forward passes (the backbone probe included)
    loader_wait_seconds: float  # time the encoder waited for the image-loading threads
    failed_file: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _check_build_args(batch_size: int, chunk_size: int, dtype: str, workers: int | None = None) -> None:
    if workers is not None and workers < 1:
        raise ParameterError(f"workers must be >= 1, got {workers}", hint="e.g. --workers 4 (image-loading threads)")
    if batch_size < 1:
        raise ParameterError(f"batch_size must be >= 1, got {batch_size}", hint="e.g. --batch-size 32")
    if chunk_size < 1:
        raise ParameterError(f"chunk_size must be >= 1, got {chunk_size}", hint="e.g. --chunk-size 256")
    if dtype not in _DTYPES:
        raise ParameterError(
            f"dtype must be f16 or f32, got {dtype!r}", hint="use --dtype f16 (default, half the size) or --dtype f32"
        )


def _recover_swap(root: Path) -> None:
    """Finish an install cut off between its renames (see the module docstring)."""
    old, partial = _sibling(root, ".old"), _sibling(root, ".partial")
    staged = partial / "db"
    if not root.exists():
        if (staged / MANIFEST).is_file():
            os.replace(staged, root)
            # The chunks of that run are now installed: clear the work folder (keep the lock).
            for child in partial.iterdir():
                if child.name != "lock":
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        elif old.exists():
            os.replace(old, root)
        _fsync_dir(root.parent)
    if root.exists() and old.exists():
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# The builder: chunks, assembly, install
# ----------------------------------------------------------------------------------------------


def _image_key(image: str) -> int:
    return int.from_bytes(hashlib.blake2b(image.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")


def _save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))


def _csv_text(rows: Iterable[tuple[str, str]], *, header: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(["image", "reason"])
    writer.writerows(rows)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# In-place append (``add``): cost in proportion to the rows added
# ----------------------------------------------------------------------------------------------
#
# Protocol: (1) write JOURNAL (the old count and byte size of every appendable file) and
# hard-link index.faiss to INDEX_BACKUP; (2) append the new rows' bytes to every file, fsync;
# (3) rewrite the .npy headers in place (same 128 bytes: numpy pads the growth axis to 21
# digits); (4) write a new index.faiss by rename (non-flat); (5) commit the new manifest by
# rename; (6) remove JOURNAL and the backup. Crash before (5): the journal rolls every file back
# (truncate, old headers, old index) the next time the database is opened or grown; after (5):
# the journal is just removed.


def _appendable(base: Database, factory: str, dtype: str, n_new: int) -> bool:
    """Can ``base`` grow in place (files with per-segment checksums, room in the npy headers)?"""
    files = base.manifest["files"]
    if base.dtype != dtype or base.index_factory != factory:
        return False
    if any(name not in files or "segments" not in files[name] for name in appendable_files(base.manifest)):
        return False
    grown = npy_layout({**base.manifest, "count": len(base) + n_new})
    for name, (shape, dt) in grown.items():
        segs = files[name]["segments"]
        if not segs or len(_npy_header(shape, dt)) != int(segs[0][0]):
            return False
    return True


def _append_bytes(path: Path, start: int, chunks: Iterable[bytes | memoryview]) -> list[Any] | None:
    """Write ``chunks`` at byte ``start`` of ``path`` (dropping anything after it), fsync;
    the new segment ``[start, bytes, sha256]`` or None when nothing was written."""
    h = hashlib.sha256()
    n = 0
    with open(path, "r+b") as f:
        f.seek(start)
        f.truncate()
        for c in chunks:
            f.write(c)
            h.update(c)
            n += len(c) if isinstance(c, bytes) else c.nbytes
        f.flush()
        os.fsync(f.fileno())
    return [start, n, h.hexdigest()] if n else None


def _write_npy_header(path: Path, shape: tuple[int, ...], dtype: np.dtype[Any], length: int) -> None:
    head = _npy_header(shape, dtype)
    if len(head) != length:  # pragma: no cover - checked by _appendable
        raise DatabaseError(f"internal error: the .npy header of {path.name} would change size")
    with open(path, "r+b") as f:
        f.write(head)
        f.flush()
        os.fsync(f.fileno())


def _append(
    base: Database,
    *,
    n_new: int,
    emb_blocks: Iterable[np.ndarray],
    latlon: np.ndarray,
    norms: np.ndarray,
    meta_lines: Iterable[tuple[str, str]],
    failures: list[tuple[str, str]],
    manifest_extra: dict[str, Any],
    on_event: Event | None,
) -> None:
    """Grow ``base`` in place by ``n_new`` rows (see the protocol above; the caller holds the lock).
    ``norms`` are appended when the database keeps them (:data:`NORMS`)."""
    root = base.path
    old_m = base.manifest
    files = old_m["files"]
    old_count = len(base)
    dim = base.dim
    np_dtype = np.dtype(_DTYPES[base.dtype])
    has_index = not base.is_flat
    grown_files = appendable_files(old_m)
    old_bytes = {name: int(files[name]["bytes"]) for name in grown_files}
    journal = {"count": old_count, "bytes": old_bytes, "index": has_index}
    atomic_write_text(root / JOURNAL, json.dumps(journal))
    if has_index:
        (root / INDEX_BACKUP).unlink(missing_ok=True)
        os.link(root / INDEX, root / INDEX_BACKUP)
    _fsync_dir(root)
    segs: dict[str, list[Any] | None] = {}

    def emb_bytes() -> Iterator[memoryview]:
        written = 0
        for blk in emb_blocks:
            blk = np.ascontiguousarray(blk, dtype=np_dtype)
            if blk.ndim != 2 or blk.shape[1] != dim:
                raise ShapeError(f"embedding block of shape {blk.shape} does not have {dim} columns")
            written += blk.shape[0]
            yield blk.data.cast("B")
        if written != n_new:
            raise DatabaseError(f"internal error: appended {written} embeddings for {n_new} rows")

    segs[EMBEDDINGS] = _append_bytes(root / EMBEDDINGS, old_bytes[EMBEDDINGS], emb_bytes())
    ll = np.ascontiguousarray(latlon, dtype=np.float64).reshape(-1, 2)
    segs[COORDS] = _append_bytes(root / COORDS, old_bytes[COORDS], [ll.data.cast("B")] if ll.shape[0] else [])
    if NORMS in old_bytes:
        nv = np.ascontiguousarray(norms, dtype=np.float32).reshape(-1)
        if nv.shape[0] != n_new:
            raise DatabaseError(f"internal error: {nv.shape[0]} norms for {n_new} rows")
        segs[NORMS] = _append_bytes(root / NORMS, old_bytes[NORMS], [nv.data.cast("B")] if n_new else [])
    meta_start = old_bytes[META]
    ends: array[int] = array("Q")
    keys: array[int] = array("Q")
    pos = meta_start

    def meta_bytes() -> Iterator[bytes]:
        nonlocal pos
        for image, line in meta_lines:
            b = line.encode("utf-8") + b"\n"
            pos += len(b)
            ends.append(pos)
            keys.append(_image_key(image))
            yield b

    segs[META] = _append_bytes(root / META, meta_start, meta_bytes())
    if len(ends) != n_new:
        raise DatabaseError(f"internal error: appended {len(ends)} metadata lines for {n_new} rows")
    segs[META_OFFSETS] = _append_bytes(root / META_OFFSETS, old_bytes[META_OFFSETS], [bytes(ends)] if n_new else [])
    segs[META_KEYS] = _append_bytes(root / META_KEYS, old_bytes[META_KEYS], [bytes(keys)] if n_new else [])
    segs[FAILED] = _append_bytes(
        root / FAILED, old_bytes[FAILED], [_csv_text(failures, header=False).encode("utf-8")] if failures else []
    )
    new_m = {**old_m, "count": old_count + n_new}
    for name, (shape, dt) in npy_layout(new_m).items():
        _write_npy_header(root / name, shape, dt, int(files[name]["segments"][0][0]))
    records = {name: dict(rec) for name, rec in files.items()}
    for name in grown_files:
        rec = records[name]
        rec.pop("sha256", None)
        seg = segs.get(name)
        rec["segments"] = list(rec["segments"]) + ([seg] if seg is not None else [])
        rec["bytes"] = (root / name).stat().st_size
        rec["sample_sha256"] = _sample_sha256(root / name)
    if has_index:
        faiss = _faiss()
        index = faiss.read_index(str(root / INDEX_BACKUP))
        emb = np.memmap(
            root / EMBEDDINGS,
            dtype=np_dtype,
            mode="r",
            offset=int(files[EMBEDDINGS]["segments"][0][0]),
            shape=(old_count + n_new, dim),
        )
        _train_and_fill(index, emb, DEFAULT_TRAIN_SIZE, on_event, start=int(index.ntotal))
        del emb
        tmp = root / (INDEX + ".tmp")
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb") as fi:
            os.fsync(fi.fileno())
        os.replace(tmp, root / INDEX)
        records[INDEX] = _file_record(root / INDEX)
    _fsync_dir(root)
    manifest = {
        **old_m,
        **{k: v for k, v in manifest_extra.items() if k != "created"},
        "geofast_version": __version__,
        "updated": _now(),
        "count": old_count + n_new,
        "files": records,
    }
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    _fsync_dir(root)
    (root / JOURNAL).unlink(missing_ok=True)
    (root / INDEX_BACKUP).unlink(missing_ok=True)
    _fsync_dir(root)


def _recover_append(root: Path) -> None:
    """Finish or roll back an interrupted in-place append (the caller holds the lock)."""
    jpath = root / JOURNAL
    if not jpath.is_file():
        return
    try:
        journal = json.loads(jpath.read_text(encoding="utf-8"))
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        old_bytes = {str(k): int(v) for k, v in journal["bytes"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatabaseError(
            f"database {root}: cannot read the journal of an interrupted add ({e})",
            hint=f"rebuild the database: geofast db build SOURCE --out {root}",
        ) from e
    files = manifest.get("files", {})
    committed = any(int(files.get(name, {}).get("bytes", -1)) != size for name, size in old_bytes.items())
    backup = root / INDEX_BACKUP
    if not committed:
        for name, size in old_bytes.items():
            with open(root / name, "r+b") as f:
                f.truncate(size)
                f.flush()
                os.fsync(f.fileno())
        for name, (shape, dt) in npy_layout(manifest).items():
            _write_npy_header(root / name, shape, dt, int(files[name]["segments"][0][0]))
        if backup.exists():
            os.replace(backup, root / INDEX)
    (root / (INDEX + ".tmp")).unlink(missing_ok=True)
    backup.unlink(missing_ok=True)
    _fsync_dir(root)
    jpath.unlink()
    _fsync_dir(root)


def _recover_append_locked(root: Path) -> None:
    """:func:`_recover_append` under the database's build lock (refused while an add runs)."""
    with _Builder(root, mode="recover", on_event=None).locked():
        _recover_append(root)


# ----------------------------------------------------------------------------------------------
# The executor interface: how batches of source entries become embeddings
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchJob:
    """One batch of source entries to encode. ``rows`` are entry indices of the (deduplicated)
    plan, ascending; ``entries`` the matching :class:`Entry` objects (so a job is self-contained
    and can be shipped to another process); ``last_in_chunk``: the builder commits the chunk
    after this batch."""

    chunk: int
    rows: tuple[int, ...]
    entries: tuple[Entry, ...]
    last_in_chunk: bool


@dataclass
class PreparedBatch:
    """A loaded and preprocessed batch: the rows that loaded, their pixel tensor and positions."""

    job: BatchJob
    rows: list[int]  # entry indices of the rows of ``pixels``
    pixels: Any  # CLIP pixel tensor (B, 3, H, W), or None when no image of the batch loaded
    latlon: list[tuple[float, float]]
    failures: list[tuple[int, str]]  # (row, reason): unreadable images
    no_gps: list[int]  # rows of folder sources without EXIF GPS


@dataclass
class EncodedBatch:
    """An executor's result for one :class:`BatchJob`. ``features`` are the backbone's raw
    outputs ``(len(rows), D)`` float32 (not normalised: the builder normalises and rejects zero or
    non-finite rows, identically for every executor)."""

    job: BatchJob
    rows: list[int]
    features: np.ndarray | None
    latlon: list[tuple[float, float]]
    failures: list[tuple[int, str]]
    no_gps: list[int]
    encoder_seconds: float = 0.0  # time inside the backbone's forward pass
    wait_seconds: float = 0.0  # time the encoder waited for loaded images


class Executor(Protocol):
    """Turns batches of source entries into embeddings. The builder owns everything else (plan,
    digest, chunks, resume, assembly, install), so every executor gives the same database.

    ``encode(jobs)`` must yield exactly one :class:`EncodedBatch` per job, **in the order of**
    ``jobs`` (the builder commits a chunk after its ``last_in_chunk`` batch); it may work ahead.
    A bad image must never raise: it goes to ``failures`` as ``(row, reason)``. The backbone
    must be the one whose probe embedding the builder recorded (the builder checks the driver's
    backbone; remote executors check their workers'). :func:`prepare_batch` and
    :func:`encode_prepared` are the two halves of the local pipeline, for reuse."""

    def start(self, backbone: Backbone, probe: np.ndarray) -> None:
        """Called once before anything is written, with the driver's backbone and its probe
        embedding: connect, check the workers (version, backbone), or raise."""
        ...

    def encode(self, jobs: Iterable[BatchJob]) -> Iterator[EncodedBatch]: ...


def prepare_batch(job: BatchJob, preprocess: Callable[[list[Any]], Any]) -> PreparedBatch:
    """Load and preprocess a batch (EXIF GPS first for entries without a position), never raising
    for a bad image. ``preprocess`` is the backbone's (PIL images → pixel tensor)."""
    from geofast.images import load_image

    ok_rows: list[int] = []
    images: list[Any] = []
    latlon: list[tuple[float, float]] = []
    failures: list[tuple[int, str]] = []
    no_gps: list[int] = []
    for r, e in zip(job.rows, job.entries):
        try:
            if e.lat is None or e.lon is None:
                gps = read_exif_gps(e.image)
                if gps is None:
                    no_gps.append(r)
                    continue
            else:
                gps = (e.lat, e.lon)
            im = load_image(e.image)
        except ImageError as err:
            failures.append((r, str(err)))
            continue
        except Exception as err:
            failures.append((r, f"{e.image}: {type(err).__name__}: {err}"))
            continue
        ok_rows.append(r)
        images.append(im)
        latlon.append(gps)
    pixels = None
    if images:
        try:
            pixels = preprocess(images)
        except Exception:
            import torch

            by_row = dict(zip(job.rows, job.entries))
            keep, keep_ll, tensors = [], [], []
            for r, im, ll in zip(ok_rows, images, latlon):
                try:
                    tensors.append(preprocess([im]))
                    keep.append(r)
                    keep_ll.append(ll)
                except Exception as err:
                    failures.append((r, f"{by_row[r].image}: cannot preprocess ({type(err).__name__}: {err})"))
            ok_rows, latlon = keep, keep_ll
            pixels = torch.cat(tensors) if tensors else None
    return PreparedBatch(job=job, rows=ok_rows, pixels=pixels, latlon=latlon, failures=failures, no_gps=no_gps)


def encode_prepared(backbone: Backbone, batch: PreparedBatch, wait_seconds: float = 0.0) -> EncodedBatch:
    """Run the backbone on a prepared batch (the encoder half of the pipeline)."""
    feats = None
    enc_s = 0.0
    if batch.pixels is not None:
        t0 = time.perf_counter()
        feats = np.asarray(backbone.encode(batch.pixels).cpu().numpy(), dtype=np.float32)
        enc_s = time.perf_counter() - t0
    return EncodedBatch(
        job=batch.job,
        rows=batch.rows if feats is not None else [],
        features=feats,
        latlon=batch.latlon if feats is not None else [],
        failures=batch.failures,
        no_gps=batch.no_gps,
        encoder_seconds=enc_s,
        wait_seconds=wait_seconds,
    )


class LocalExecutor:
    """This machine: ``workers`` threads load and preprocess the next batches (PIL decoding
    releases the GIL) while the backbone encodes the current one; results in order."""

    def __init__(self, backbone: Backbone, workers: int | None = None) -> None:
        self.backbone = backbone
        self.workers = _loader_workers(workers, backbone)

    def start(self, backbone: Backbone, probe: np.ndarray) -> None:
        """Nothing to check: this executor encodes with the driver's backbone itself."""

    def encode(self, jobs: Iterable[BatchJob]) -> Iterator[EncodedBatch]:
        from concurrent.futures import Future, ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="geofast-db-load")
        preprocess = self.backbone.preprocess
        try:
            pending: deque[Future[PreparedBatch]] = deque()
            it = iter(jobs)
            for job in it:
                pending.append(pool.submit(prepare_batch, job, preprocess))
                if len(pending) >= self.workers + 1:
                    break
            while pending:
                t_wait = time.perf_counter()
                batch = pending.popleft().result()
                wait_s = time.perf_counter() - t_wait
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(prepare_batch, nxt, preprocess))
                yield encode_prepared(self.backbone, batch, wait_s)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _ChunkAccumulator:
    rows: list[int] = field(default_factory=list)
    emb: list[np.ndarray] = field(default_factory=list)
    norms: list[np.ndarray] = field(default_factory=list)
    latlon: list[tuple[float, float]] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    no_gps: list[int] = field(default_factory=list)


class _Builder:
    def __init__(self, root: Path, *, mode: str, on_event: Event | None) -> None:
        self.root = root
        self.mode = mode
        self.partial = _sibling(root, ".partial")
        self.chunks = self.partial / "chunks"
        self.staged = self.partial / "db"
        self.on_event = on_event

    def _say(self, msg: str) -> None:
        if self.on_event is not None:
            self.on_event(msg)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.partial.mkdir(parents=True, exist_ok=True)
        lock_path = self.partial / "lock"
        f = open(lock_path, "a+b")
        try:
            try:
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:  # pragma: no cover - not POSIX: no lock
                pass
            except OSError as e:
                raise DatabaseError(
                    f"another geofast process is building {self.root}",
                    hint=f"wait for it to finish (or remove {self.partial} if no build is running)",
                ) from e
            yield
        finally:
            f.close()
            with contextlib.suppress(OSError):
                if self.partial.is_dir() and [c.name for c in self.partial.iterdir()] == ["lock"]:
                    (self.partial / "lock").unlink()
                    self.partial.rmdir()

    # -- the whole run ---------------------------------------------------------------------------
    def run(
        self,
        plan: SourcePlan,
        *,
        clip: str | os.PathLike[str] | None,
        backbone: Backbone | None,
        device: str | None,
        batch_size: int,
        precision: str | None = None,
        dtype: str,
        index: str,
        chunk_size: int,
        train_size: int,
        on_progress: Progress | None,
        base: Database | None = None,
        workers: int | None = None,
        executor: Executor | None = None,
    ) -> BuildReport:
        """Encode (with ``executor``, default :class:`LocalExecutor` over ``backbone`` with
        ``workers`` loader threads), assemble and install (the caller holds :meth:`locked`).
        ``backbone`` (or ``clip``/``device``) is always loaded here: its probe embedding
        fingerprints the build."""
        t_start = time.perf_counter()
        factory = "Flat" if _is_flat(index) else index
        if backbone is None:
            from geofast.models.clip import load_backbone

            backbone = load_backbone(clip, device, precision=precision)
        t_probe = time.perf_counter()
        probe = probe_embedding(backbone)
        probe_s = time.perf_counter() - t_probe
        dim = int(probe.shape[0])
        if not _is_flat(factory):
            _new_faiss_index(factory, dim)  # fail on a bad factory string before encoding
        duplicates = 0
        if base is not None:
            base.check_backbone(backbone, probe=probe, adding=True)
            keep = base.missing_images(plan.images)
            duplicates = len(plan) - int(keep.shape[0])
            if duplicates:
                plan = plan.subset(keep)
        if executor is None:
            executor = LocalExecutor(backbone, workers)
        executor.start(backbone, probe)  # before anything is written: a remote executor checks its workers
        n = len(plan.entries)
        n_chunks = (n + chunk_size - 1) // chunk_size
        digest = self._plan_digest(plan, chunk_size, dtype, dim, base)
        done = self._prepare_state(plan.source, digest, probe, n_chunks, chunk_size, n)
        resumed = len(done)
        if resumed:
            self._say(f"resuming: {resumed} of {n_chunks} chunks already encoded")
        if on_progress is not None:
            on_progress(sum(min(chunk_size, n - c * chunk_size) for c in done), n)
        encoded, enc_s, wait_s = self._encode(
            plan,
            executor,
            done,
            n_chunks,
            chunk_size,
            batch_size,
            dtype,
            dim,
            digest,
            on_progress,
        )

        # -- assemble: small arrays now, embeddings streamed chunk by chunk ----------------------
        heads = [self._chunk_head(c, digest, chunk_size, n) for c in range(n_chunks)]
        if any(h is None for h in heads):  # pragma: no cover - chunks are written atomically
            raise DatabaseError(f"a chunk file in {self.chunks} is unreadable", hint="rerun the same command to redo it")
        parts = [h for h in heads if h is not None]
        new_count = sum(int(p["rows"].shape[0]) for p in parts)
        failures: list[tuple[str, str]] = list(plan.rejected)
        no_gps = 0
        for p in parts:
            for r, reason in zip(p["fail_rows"].tolist(), p["fail_reasons"].tolist()):
                failures.append((plan.entries[r].image, str(reason)))
            for r in p["nogps_rows"].tolist():
                failures.append((plan.entries[r].image, NO_GPS_REASON))
            no_gps += int(p["nogps_rows"].shape[0])
        n_failed = len(failures) - no_gps
        base_count = len(base) if base is not None else 0
        report = BuildReport(
            path=str(self.root),
            rows=base_count + new_count,
            added=new_count,
            failed=n_failed,
            no_gps=no_gps,
            duplicates=duplicates,
            encoded=encoded,
            resumed_chunks=resumed,
            chunks=n_chunks,
            seconds=0.0,
            encoder_seconds=enc_s + probe_s,
            loader_wait_seconds=wait_s,
            failed_file=str(self.root / FAILED),
        )
        if new_count == 0 and base is None:
            shown = "; ".join(f"{Path(a).name}: {b}" for a, b in failures[:3])
            raise DatabaseError(
                f"no photo of {plan.source} could be added ({n_failed} unreadable or invalid, {no_gps} without GPS)"
                + (f": {shown}" if shown else ""),
                hint="check the source (a CSV image,lat,lon or a folder of photos with EXIF GPS)",
            )
        if new_count == 0 and base is not None and not failures:
            self._say("nothing new to add")
            self.discard()
            report.seconds = time.perf_counter() - t_start
            return report
        latlon_new = np.concatenate([p["latlon"] for p in parts]) if parts else np.zeros((0, 2))
        latlon = latlon_new if base is None else np.concatenate([np.asarray(base.latlon), latlon_new])
        norms_new = np.concatenate([p["norms"] for p in parts]) if parts else np.zeros(0, dtype=np.float32)
        # A database created without norms (from unnormalised arrays) stays without them.
        norms = (
            norms_new if base is None else (None if base.norms is None else np.concatenate([np.asarray(base.norms), norms_new]))
        )

        def emb_blocks() -> Iterator[np.ndarray]:
            if base is not None:
                for s in range(0, base_count, 65536):
                    yield np.asarray(base.embeddings[s : s + 65536])
            for c in range(n_chunks):
                with np.load(self._chunk_path(c), allow_pickle=False) as z:
                    emb = z["emb"]
                if emb.shape[0]:
                    yield emb

        def new_meta_lines() -> Iterator[tuple[str, str]]:
            for p in parts:
                for r in p["rows"].tolist():
                    yield plan.images[r], json.dumps({"image": plan.images[r], **plan.meta(r)}, ensure_ascii=False)

        def meta_lines() -> Iterator[tuple[str, str]]:
            if base is not None:
                with open(base.path / META, encoding="utf-8") as f:
                    for line in f:
                        if line.strip():
                            yield json.loads(line)["image"], line.rstrip("\n")
            yield from new_meta_lines()

        def new_emb_blocks() -> Iterator[np.ndarray]:
            for c in range(n_chunks):
                with np.load(self._chunk_path(c), allow_pickle=False) as z:
                    emb = z["emb"]
                if emb.shape[0]:
                    yield emb

        src_record = {
            "source": plan.source,
            "kind": plan.kind,
            "added": int(new_count),
            "failed": int(n_failed),
            "no_gps": int(no_gps),
            "duplicates": int(duplicates),
            "precision": str(backbone.precision),
            "date": _now(),
        }
        base_m = base.manifest if base is not None else {}
        record = backbone_info(backbone, probe)
        if base is not None and base.precision not in (None, record["precision"]) and base_m.get("backbone"):
            # Rows of another precision were admitted (probe within PRECISION_MIN_COSINE): the
            # database keeps the precision and probe of its first rows; each source says its own.
            record = dict(base_m["backbone"])
        manifest_extra: dict[str, Any] = {
            "backbone": record,
            "sources": list(base_m.get("sources", [])) + [src_record],
            "failed": int(base_m.get("failed", 0)) + n_failed,
            "no_gps": int(base_m.get("no_gps", 0)) + no_gps,
            "columns": sorted(set(base_m.get("columns", [])) | set(plan.columns)),
        }
        if base is not None:
            manifest_extra["created"] = base_m.get("created")
            if _appendable(base, factory, dtype, new_count):
                base._gallery = None
                base._faiss_index = None
                self._say(f"appending {new_count:,} rows to {self.root}")
                _append(
                    base,
                    n_new=new_count,
                    emb_blocks=new_emb_blocks(),
                    latlon=latlon_new,
                    norms=norms_new,
                    meta_lines=new_meta_lines(),
                    failures=failures,
                    manifest_extra=manifest_extra,
                    on_event=self._say,
                )
                self.discard()
                report.seconds = time.perf_counter() - t_start
                return report
        all_failures = (base.failures() if base is not None else []) + failures
        self.assemble(
            n_rows=base_count + new_count,
            dim=dim,
            dtype=dtype,
            factory=factory,
            emb_blocks=emb_blocks(),
            latlon=latlon,
            norms=lambda: norms,
            meta_lines=meta_lines(),
            failures=all_failures,
            manifest_extra=manifest_extra,
            train_size=train_size,
            base=base,
        )
        if base is not None:
            base._gallery = None  # drop references to the old memmaps before the swap
            base._faiss_index = None
        self.install()
        report.seconds = time.perf_counter() - t_start
        return report

    # -- state -------------------------------------------------------------------------------------
    def _plan_digest(self, plan: SourcePlan, chunk_size: int, dtype: str, dim: int, base: Database | None) -> str:
        h = hashlib.sha256()
        head = {
            "mode": self.mode,
            "source": plan.source,
            "kind": plan.kind,
            "chunk_size": chunk_size,
            "dtype": dtype,
            "dim": dim,
            "format": FORMAT_VERSION,
            "base": hashlib.sha256((base.path / MANIFEST).read_bytes()).hexdigest() if base is not None else None,
        }
        h.update(json.dumps(head, sort_keys=True).encode())
        h.update(plan.digest.encode())  # the source's content (and the dedup selection of an add)
        h.update(str(len(plan)).encode())
        return h.hexdigest()

    def _prepare_state(self, source: str, digest: str, probe: np.ndarray, n_chunks: int, chunk_size: int, n: int) -> set[int]:
        """Keep the committed chunks of an identical interrupted run; otherwise start afresh."""
        if self.staged.exists():
            shutil.rmtree(self.staged)
        state_path = self.partial / STATE
        state: dict[str, Any] | None = None
        if state_path.is_file():
            try:
                state = json.loads(state_path.read_text())
            except (OSError, ValueError):
                state = None
        reusable = (
            state is not None
            and state.get("digest") == digest
            and probe_cosine(state.get("probe") or [], probe) >= PROBE_MIN_COSINE
        )
        if state is not None and not reusable and self.chunks.exists() and any(self.chunks.iterdir()):
            if state.get("mode") != self.mode:
                raise DatabaseError(
                    f"{self.partial} holds an interrupted geofast db {state.get('mode')} of {state.get('source')}",
                    hint=f"finish it by rerunning that command, or delete {self.partial} to discard it",
                )
            self._say("the source, options or backbone changed since the interrupted run: starting over")
        if not reusable:
            if self.chunks.exists():
                shutil.rmtree(self.chunks)
            self.chunks.mkdir(parents=True)
            atomic_write_text(
                state_path,
                json.dumps({"digest": digest, "mode": self.mode, "source": source, "probe": probe.tolist(), "created": _now()}),
            )
            return set()
        return {c for c in range(n_chunks) if self._chunk_head(c, digest, chunk_size, n) is not None}

    def discard(self) -> None:
        """Remove the work folder (nothing to install)."""
        for child in list(self.partial.iterdir()) if self.partial.exists() else []:
            if child.name == "lock":
                continue
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (self.partial / "lock").unlink()
            self.partial.rmdir()

    def _chunk_path(self, c: int) -> Path:
        return self.chunks / f"{c:08d}.npz"

    def _chunk_head(self, c: int, digest: str, chunk_size: int, n: int) -> dict[str, np.ndarray] | None:
        """A committed chunk's small arrays (not its embeddings), or None if absent or foreign."""
        path = self._chunk_path(c)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["digest"]) != digest:
                    return None
                part = {k: z[k] for k in ("rows", "latlon", "norms", "fail_rows", "fail_reasons", "nogps_rows")}
        except (OSError, ValueError, KeyError, EOFError):
            return None
        lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
        rows = part["rows"]
        ok = (
            part["latlon"].shape == (rows.shape[0], 2)
            and part["norms"].shape == (rows.shape[0],)
            and bool(((rows >= lo) & (rows < hi)).all())
        )
        return part if ok else None

    def _write_chunk(self, c: int, digest: str, acc: _ChunkAccumulator, dim: int, dtype: str) -> None:
        np_dtype = _DTYPES[dtype]
        rows = np.asarray(acc.rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")  # batches arrive in order; keep rows ascending anyway
        emb = np.concatenate(acc.emb)[order].astype(np_dtype) if acc.emb else np.zeros((0, dim), dtype=np_dtype)
        failures = sorted(acc.failures)
        arrays = {
            "digest": np.array(digest),
            "rows": rows[order],
            "emb": emb,
            "norms": (np.concatenate(acc.norms) if acc.norms else np.zeros(0, dtype=np.float32))[order],
            "latlon": np.asarray(acc.latlon, dtype=np.float64).reshape(-1, 2)[order],
            "fail_rows": np.asarray([r for r, _ in failures], dtype=np.int64),
            "fail_reasons": np.asarray([s for _, s in failures], dtype=np.str_) if failures else np.zeros(0, dtype="<U1"),
            "nogps_rows": np.asarray(sorted(acc.no_gps), dtype=np.int64),
        }
        atomic_write(self._chunk_path(c), lambda f: np.savez(f, allow_pickle=False, **arrays))

    # -- encoding ----------------------------------------------------------------------------------
    def _jobs(self, plan: SourcePlan, todo: list[int], chunk_size: int, batch_size: int) -> Iterator[BatchJob]:
        n = len(plan.entries)
        for c in todo:
            lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
            starts = list(range(lo, hi, batch_size))
            for j, s in enumerate(starts):
                rows = tuple(range(s, min(hi, s + batch_size)))
                yield BatchJob(c, rows, tuple(plan.entries[r] for r in rows), j == len(starts) - 1)

    def _encode(
        self,
        plan: SourcePlan,
        executor: Executor,
        done: set[int],
        n_chunks: int,
        chunk_size: int,
        batch_size: int,
        dtype: str,
        dim: int,
        digest: str,
        on_progress: Progress | None,
    ) -> tuple[int, float, float]:
        """Encode every chunk not in ``done`` with ``executor`` (results in order), normalise, and
        commit each chunk after its last batch. Returns (images encoded, seconds inside the
        encoder, seconds the encoder waited for images)."""
        n = len(plan.entries)
        todo = [c for c in range(n_chunks) if c not in done]
        if not todo:
            return 0, 0.0, 0.0
        progressed = sum(min(chunk_size, n - c * chunk_size) for c in done)
        encoded = 0
        enc_s = wait_s = 0.0
        acc = _ChunkAccumulator()
        results = executor.encode(self._jobs(plan, todo, chunk_size, batch_size))
        try:
            for batch in results:
                enc_s += batch.encoder_seconds
                wait_s += batch.wait_seconds
                feats = batch.features
                if feats is not None and len(batch.rows):
                    encoded += len(batch.rows)
                    norms = np.linalg.norm(feats.astype(np.float64), axis=1)
                    good = np.isfinite(norms) & (norms > 0)
                    for i in np.flatnonzero(~good):
                        batch.failures.append((batch.rows[i], "the backbone gave a zero or non-finite embedding"))
                    sel = np.flatnonzero(good)
                    if sel.shape[0]:
                        acc.emb.append((feats[sel] / norms[sel, None]).astype(np.float32))
                        acc.norms.append(norms[sel].astype(np.float32))
                        acc.rows.extend(batch.rows[i] for i in sel)
                        acc.latlon.extend(batch.latlon[i] for i in sel)
                acc.failures.extend(batch.failures)
                acc.no_gps.extend(batch.no_gps)
                if batch.job.last_in_chunk:
                    self._write_chunk(batch.job.chunk, digest, acc, dim, dtype)
                    progressed += min(chunk_size, n - batch.job.chunk * chunk_size)
                    acc = _ChunkAccumulator()
                    if on_progress is not None:
                        on_progress(progressed, n)
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
        return encoded, enc_s, wait_s

    # -- assembly and install ------------------------------------------------------------------
    def assemble(
        self,
        *,
        n_rows: int,
        dim: int,
        dtype: str,
        factory: str,
        emb_blocks: Iterable[np.ndarray],
        latlon: np.ndarray,
        norms: Callable[[], np.ndarray | None],
        meta_lines: Iterable[tuple[str, str]],
        failures: list[tuple[str, str]],
        manifest_extra: dict[str, Any],
        train_size: int,
        base: Database | None,
    ) -> None:
        """Write the complete new database into ``DIR.partial/db`` (manifest last). ``norms()``
        (called once the embeddings are written) gives the feature norms, or None to keep none."""
        if self.staged.exists():
            shutil.rmtree(self.staged)
        self.staged.mkdir(parents=True)
        np_dtype = np.dtype(_DTYPES[dtype])
        records: dict[str, dict[str, Any]] = {}

        # embeddings.npy, streamed
        path = self.staged / EMBEDDINGS
        written = 0
        header = _npy_header((n_rows, dim), np_dtype)
        data_h = hashlib.sha256()
        with open(path, "wb") as f:
            w = _HashingWriter(f)
            w.write(header)
            for blk in emb_blocks:
                blk = np.ascontiguousarray(blk, dtype=np_dtype)
                if blk.ndim != 2 or blk.shape[1] != dim:
                    raise ShapeError(f"embedding block of shape {blk.shape} does not have {dim} columns")
                mv = blk.data.cast("B")
                w.write(mv)
                data_h.update(mv)
                written += blk.shape[0]
            f.flush()
            os.fsync(f.fileno())
        if written != n_rows:
            raise DatabaseError(f"internal error: wrote {written} embeddings for {n_rows} rows")
        records[EMBEDDINGS] = _file_record(path, w.h.hexdigest(), [[len(header), w.size - len(header), data_h.hexdigest()]])

        # coords.npy
        ll = np.ascontiguousarray(latlon, dtype=np.float64)
        if ll.shape != (n_rows, 2):
            raise DatabaseError(f"internal error: {ll.shape} coordinates for {n_rows} rows")
        path = self.staged / COORDS
        atomic_write(path, lambda f: np.save(f, ll, allow_pickle=False))
        records[COORDS] = _npy_file_record(path)

        # norms.npy
        nv = norms()
        if nv is not None:
            nv = np.ascontiguousarray(nv, dtype=np.float32)
            if nv.shape != (n_rows,):
                raise DatabaseError(f"internal error: {nv.shape} norms for {n_rows} rows")
            path = self.staged / NORMS
            atomic_write(path, lambda f: np.save(f, nv, allow_pickle=False))
            records[NORMS] = _npy_file_record(path)

        # meta.jsonl, with its row-offset and image-key indexes
        path = self.staged / META
        ends: array[int] = array("Q")
        keys: array[int] = array("Q")
        with open(path, "wb") as f:
            w = _HashingWriter(f)
            for image, line in meta_lines:
                w.write(line.encode("utf-8") + b"\n")
                ends.append(w.size)
                keys.append(_image_key(image))
            f.flush()
            os.fsync(f.fileno())
        lines = len(ends)
        if lines != n_rows:
            raise DatabaseError(f"internal error: wrote {lines} metadata lines for {n_rows} rows")
        records[META] = _file_record(path, w.h.hexdigest(), [[0, w.size, w.h.hexdigest()]])
        offsets = np.concatenate([np.zeros(1, np.uint64), np.frombuffer(ends, dtype=np.uint64)])
        key_arr = np.frombuffer(keys, dtype=np.uint64) if lines else np.zeros(0, np.uint64)
        for name, arr in ((META_OFFSETS, offsets), (META_KEYS, key_arr)):
            _save_npy(self.staged / name, arr)
            records[name] = _npy_file_record(self.staged / name)

        # failed.csv
        path = self.staged / FAILED
        atomic_write_text(path, _csv_text(failures, header=True))
        records[FAILED] = _file_record(path, segments=[])
        records[FAILED]["segments"] = [[0, records[FAILED]["bytes"], records[FAILED]["sha256"]]]

        # index.faiss (non-flat)
        index_info: dict[str, Any] = {"factory": factory, "metric": "inner_product"}
        if not _is_flat(factory):
            faiss = _faiss()
            emb = np.load(self.staged / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
            if base is not None and not base.is_flat and base.index_factory == factory:
                index = faiss.read_index(str(base.path / INDEX))  # trained: only add the new rows
                _train_and_fill(index, emb, train_size, self._say, start=index.ntotal)
                params = base.manifest["index"].get("search_params", "")
                trained_on = base.manifest["index"].get("trained_on")
            else:
                index = _new_faiss_index(factory, dim)
                _train_and_fill(index, emb, train_size, self._say)
                params = _default_search_params(factory, index)
                trained_on = min(n_rows, train_size)
            del emb
            path = self.staged / INDEX
            faiss.write_index(index, str(path))
            with open(path, "rb") as fi:
                os.fsync(fi.fileno())
            records[INDEX] = _file_record(path)
            index_info.update(search_params=params, trained_on=trained_on)

        now = _now()
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "geofast_version": __version__,
            "created": manifest_extra.get("created") or now,
            "updated": now,
            "count": int(n_rows),
            "dim": int(dim),
            "dtype": dtype,
            "index": index_info,
            **{k: v for k, v in manifest_extra.items() if k != "created"},
            "files": records,
        }
        _fsync_dir(self.staged)
        atomic_write_text(self.staged / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        _fsync_dir(self.staged)

    def install(self) -> None:
        """Swap the staged database into place: ``DIR → DIR.old``, ``staged → DIR``, clean up."""
        old = _sibling(self.root, ".old")
        if old.exists():
            shutil.rmtree(old)
        if self.root.exists():
            os.replace(self.root, old)
        os.replace(self.staged, self.root)
        _fsync_dir(self.root.parent)
        shutil.rmtree(old, ignore_errors=True)
        self.discard()


def _loader_workers(workers: int | None, backbone: Backbone) -> int:
    if workers is not None:
        if workers < 1:
            raise ParameterError(f"workers must be >= 1, got {workers}")
        return int(workers)
    device = getattr(getattr(backbone, "device", None), "type", "cpu")
    if device == "cpu":
        return 1
    return max(1, min(8, (os.cpu_count() or 2) - 1))
