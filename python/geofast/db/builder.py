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

This module runs a build or add from start to end (:class:`_Builder`); the parts it drives live
beside it, each importing only the ones below it: :mod:`geofast.db.executor` (batches →
embeddings), :mod:`geofast.db.resume` (the work folder: lock, state, chunks, the encoding loop),
:mod:`geofast.db.writer` (assembly and install), :mod:`geofast.db.append` (in-place growth under a
journal) and :mod:`geofast.db.index` (FAISS). An existing database enters only as
:class:`~geofast.db.format.BaseDatabase`: :mod:`geofast.db.database` calls the builder, never the
reverse.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geofast.db.append import _append, _appendable, _recover_append
from geofast.db.encode import backbone_info, probe_embedding

# The executor interface lives in geofast.db.executor; these names stay importable from here.
from geofast.db.executor import (
    BatchJob,
    EncodedBatch,
    Executor,
    LocalExecutor,
    PreparedBatch,
    encode_prepared,
    prepare_batch,
)
from geofast.db.format import _DTYPES, FAILED, META, BaseDatabase, Progress, _is_flat, _now
from geofast.db.index import _new_faiss_index, check_index_rows
from geofast.db.resume import WorkFolder
from geofast.db.sources import NO_GPS_REASON, SourcePlan
from geofast.db.writer import assemble, check_replaceable, install
from geofast.errors import DatabaseError, ParameterError

if TYPE_CHECKING:
    from geofast.models.clip import Backbone

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_DTYPE",
    "DEFAULT_INDEX",
    "BatchJob",
    "BuildReport",
    "EncodedBatch",
    "Executor",
    "LocalExecutor",
    "PreparedBatch",
    "encode_prepared",
    "prepare_batch",
]

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


def _recover_append_locked(root: Path) -> None:
    """:func:`_recover_append` under the database's build lock (refused while an add runs)."""
    with _Builder(root, mode="recover", on_event=None).locked():
        _recover_append(root)


class _Builder(WorkFolder):
    """A build or add of one database: its work folder (:class:`WorkFolder`) plus the run that
    encodes, assembles and installs."""

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
        base: BaseDatabase | None = None,
        workers: int | None = None,
        executor: Executor | None = None,
    ) -> BuildReport:
        """Encode (with ``executor``, default :class:`LocalExecutor` over ``backbone`` with
        ``workers`` loader threads), assemble and install (the caller holds :meth:`locked`).
        ``backbone`` (or ``clip``/``device``) is always loaded here: its probe embedding
        fingerprints the build."""
        t_start = time.perf_counter()
        factory = "Flat" if _is_flat(index) else index
        if base is None:
            check_replaceable(self.root)  # before the (slow) backbone load
        if backbone is None:
            from geofast.models.clip import load_backbone

            backbone = load_backbone(clip, device, precision=precision)
        t_probe = time.perf_counter()
        probe = probe_embedding(backbone)
        probe_s = time.perf_counter() - t_probe
        dim = int(probe.shape[0])
        if not _is_flat(factory):
            _new_faiss_index(factory, dim)  # fail on a bad factory string before encoding
            if base is None:  # a new index is trained: refuse one the source cannot train before writing anything
                check_index_rows(factory, dim, len(plan), counted=f" (the photos of {plan.source})", train_size=train_size)
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
            self.discard()  # nothing worth resuming: every chunk is empty
            shown = "; ".join(f"{Path(a).name}: {b}" for a, b in failures[:3])
            raise DatabaseError(
                f"no photo of {plan.source} could be added ({n_failed} unreadable or invalid, {no_gps} without GPS)"
                + (f": {shown}" if shown else ""),
                hint="check the source (a CSV image,lat,lon or a folder of photos with EXIF GPS)",
            )
        if not _is_flat(factory) and base is None and new_count < len(plan):
            try:  # fewer photos encoded than planned: is the index still trainable?
                check_index_rows(factory, dim, new_count, counted=f" ({len(plan) - new_count:,} of the source's photos failed)")
            except ParameterError:
                self.discard()  # fewer photos than IVF lists: cheap to encode again, no half-written folder
                raise
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
                base.release()
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
        self.assemble_or_clean(
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
            base.release()  # drop references to the old memmaps before the swap
        self.install()
        report.seconds = time.perf_counter() - t_start
        return report

    # -- assembly and install ------------------------------------------------------------------
    def assemble_or_clean(self, **kw: Any) -> None:
        """Write the complete new database into ``DIR.partial/db`` (:func:`geofast.db.writer.assemble`
        with ``kw``); on an error, remove the half-written staged database (the committed chunks
        stay: the next identical command resumes from them)."""
        try:
            assemble(self.staged, on_event=self._say, **kw)
        except Exception:
            shutil.rmtree(self.staged, ignore_errors=True)
            raise

    def install(self) -> None:
        """Swap the staged database into place: ``DIR → DIR.old``, ``staged → DIR``, clean up."""
        install(self.root, self.staged)
        self.discard()
