"""The work folder of a resumable build or add (``DIR.partial``): the lock, ``state.json`` (the
plan digest and the backbone's probe), the committed chunks and the encoding loop that writes them
(see :mod:`geofast.db.builder` for the protocol).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geofast._io import atomic_write, atomic_write_text
from geofast.db.encode import PROBE_MIN_COSINE, probe_cosine
from geofast.db.executor import BatchJob, Executor
from geofast.db.format import _DTYPES, FORMAT_VERSION, MANIFEST, STATE, BaseDatabase, Event, Progress, _now, _sibling
from geofast.db.sources import SourcePlan
from geofast.errors import DatabaseError


@dataclass
class _ChunkAccumulator:
    rows: list[int] = field(default_factory=list)
    emb: list[np.ndarray] = field(default_factory=list)
    norms: list[np.ndarray] = field(default_factory=list)
    latlon: list[tuple[float, float]] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    no_gps: list[int] = field(default_factory=list)


class WorkFolder:
    """``DIR.partial`` beside the database ``DIR``: ``lock``, ``state.json``, ``chunks/`` and the
    staged database ``db/``."""

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
                    hint="wait for it to finish (its lock is released when that process ends; "
                    f"{self.partial} holds its work, do not delete it)",
                ) from e
            yield
        finally:
            f.close()
            with contextlib.suppress(OSError):
                if self.partial.is_dir() and [c.name for c in self.partial.iterdir()] == ["lock"]:
                    (self.partial / "lock").unlink()
                    self.partial.rmdir()

    # -- state -------------------------------------------------------------------------------------
    def _plan_digest(self, plan: SourcePlan, chunk_size: int, dtype: str, dim: int, base: BaseDatabase | None) -> str:
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
