"""Creates, extends, repairs and fills a cache, in batches of clips.

Crash safety comes from write order: a clip's features and masks are written before its
``status``, and the Zarr store replaces chunk files atomically, so a process killed at
any moment leaves every clip either finished (status ok/error, all arrays written) or
pending (status empty, picked up by the next run).

Exclusion comes from the job, not from here: one process per cache opens it with
:meth:`CacheWriter.open` (the pipeline holds ``cache_schema.lock`` around it). In a
distributed job that process is rank 0; the other ranks :meth:`CacheWriter.attach` to the
store and may write only the rows of the chunks they were given, so that no two processes
ever rewrite the same chunk file. Only :meth:`open` creates, resizes, repairs or writes
attributes.

A ragged (v2) cache appends each clip's steps to the step block of its chunk of rows
(``cache_schema.ragged``), then writes its per-clip arrays, ``step_offset`` and
``step_count`` among them, and ``status`` last; a rank owns the blocks of its chunks.
"""

from __future__ import annotations

import datetime as _dt
import logging
from importlib import metadata
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np

from .integrity import ALL_CHUNKS_STORED, ChunkDamage, find_damage
from .ragged import STEP_CHUNK, append_steps, create_block, live_counts, n_blocks, trim_unreferenced
from .lock import CacheWriteError
from .errors import InvalidInput
from .keys import storable_text
from .schema import (
    ARRAY_BY_NAME,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_PENDING,
    UNKNOWN_SIZE,
    UNLABELLED,
    CacheConfig,
    CacheConfigMismatch,
    CacheSchemaError,
    ClipEntry,
    ClipRecord,
    STEP_FIELDS,
    clip_arrays,
    record_arrays,
)
from .identity import WRITER_SIDES, feature_identity_differences, identity_informational_differences
from .storage import Backend, open_backend

logger = logging.getLogger(__name__)

_VERSIONED_PACKAGES = ("torch", "timm", "transformers", "av", "zarr", "h5py", "numpy")


def package_versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _check_zarr_target(path: Path, fmt: str | None) -> None:
    """Refuse to turn a file or someone's non-empty folder into a cache."""
    if fmt == "hdf5" or (fmt is None and path.suffix.lower() in (".h5", ".hdf5")):
        return
    if path.is_file():
        raise CacheSchemaError(f"{path} is a file; a Zarr cache is a directory")
    if path.is_dir() and not (path / "zarr.json").exists() and any(path.iterdir()):
        raise CacheSchemaError(f"{path} is a non-empty folder that is not a Zarr cache; choose another --out")


class CacheWriter:
    """Write side of a cache. Open it with :meth:`open` (or :meth:`attach` on the other
    ranks of a distributed job); it never changes the configuration of an existing cache."""

    def __init__(self, backend: Backend, config: CacheConfig, rows: dict[str, int],
                 owned_chunks: Collection[int] | None = None, attached: bool = False) -> None:
        self.backend = backend
        self.config = config
        self._row = dict(rows)
        self._chunk_rows = backend.chunk_rows("status")
        # None: this writer may write any row. Otherwise the chunk indices it may write.
        self._owned = None if owned_chunks is None else frozenset(owned_chunks)
        self._attached = attached
        self._specs = clip_arrays(config.ragged)  # the arrays with one row per clip

    # -- opening -----------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path,
        config: CacheConfig,
        entries: Sequence[ClipEntry],
        fmt: str | None = None,
        chunk_clips: int = 32,
        info: dict[str, Any] | None = None,
        step_chunk: int = STEP_CHUNK,
    ) -> "CacheWriter":
        """Create the cache, or reopen it to resume, repair or extend it with new clips.
        ``step_chunk`` (ragged caches: steps per chunk of a block array) applies to a new
        cache; an existing one keeps what it recorded.

        Raises :class:`CacheConfigMismatch` when the cache on disk was made with another
        configuration: features of two configurations are never mixed.
        """
        path = Path(path)
        _check_zarr_target(path, fmt)
        by_key = {e.key: e for e in entries}
        if len(by_key) != len(entries):
            raise InvalidInput("manifest has duplicate keys; keys must be unique paths relative to the root")
        try:
            backend = open_backend(path, "a", fmt)
        except OSError as exc:
            raise CacheWriteError(f"cannot create the cache at {path}: {exc}; choose an --out you can write to") from exc
        try:
            attrs = backend.get_attrs()
            if not attrs:
                cls._create(backend, config, list(entries), chunk_clips, info or {}, step_chunk)
            else:
                cls._check_identity(path, attrs, config)
                discarded = backend.discard_interrupted_writes()
                if discarded:
                    logger.info("removed %d temporary files of writes a killed run never finished", discarded)
                _equalise_lengths(backend, config)
                _add_optional_arrays(backend, config)
                if info:  # descriptive only (dataset, root): the latest run's are the true ones
                    backend.set_attrs(info)
            writer = cls(backend, config, _read_rows(backend))
            writer._repair(find_damage(backend), by_key)
            writer._extend([e for e in entries if e.key not in writer._row])
            writer._trim_free_tail()
            if config.ragged:
                writer._ensure_blocks()
                writer._trim_steps()
        except OSError as exc:
            backend.close()
            raise CacheWriteError(f"cannot write the cache at {path}: {exc}; free space or choose another --out") from exc
        except BaseException:
            backend.close()
            raise
        return writer

    @classmethod
    def attach(cls, path: str | Path, config: CacheConfig, rows: dict[str, int],
               owned_chunks: Collection[int], fmt: str | None = None) -> "CacheWriter":
        """Join a cache that another process (rank 0) opened, to write the rows of
        ``owned_chunks`` only. ``rows`` maps this writer's keys to their rows, as rank 0
        planned them, so that nothing here depends on re-reading what rank 0 just wrote."""
        path = Path(path)
        backend = open_backend(path, "r+", fmt)
        try:
            cls._check_identity(path, backend.get_attrs(), config, warn=False)  # rank 0 warned
        except BaseException:
            backend.close()
            raise
        return cls(backend, config, rows, owned_chunks=owned_chunks, attached=True)

    @staticmethod
    def _create(backend: Backend, config: CacheConfig, entries: list[ClipEntry], chunk_clips: int, info: dict,
                step_chunk: int = STEP_CHUNK) -> None:
        specs = clip_arrays(config.ragged)
        names = set(backend.names())
        foreign = names - {a.name for a in specs}
        if foreign:
            raise CacheSchemaError(
                f"{backend.path} holds arrays {sorted(foreign)} but no cache attributes; it is not an AVAR "
                "feature cache: choose another --out"
            )
        for spec in specs:  # arrays of an interrupted creation (no attributes yet) are recreated
            backend.create(spec.name, spec.shape(0, config), spec.numpy_dtype(config), chunk_clips, spec.fill)
        ragged = {"step_chunk": max(1, int(step_chunk))} if config.ragged else {}
        backend.set_attrs(
            {
                **config.identity(),
                "created": _now(),
                "package_versions": package_versions(),
                "complete": False,
                ALL_CHUNKS_STORED: True,
                **ragged,
                **info,
            }
        )

    @staticmethod
    def _check_identity(path: Path, attrs: dict[str, Any], config: CacheConfig, warn: bool = True) -> None:
        version = attrs.get("schema_version")
        if version != config.schema_version:
            raise CacheSchemaError(
                f"{path} has schema version {version!r}, and a cache of {config.layout.describe()} is written with "
                f"version {config.schema_version}; extract into a new cache path"
            )
        requested = config.identity()
        recorded = {k: attrs.get(k) for k in requested}
        diffs = feature_identity_differences(requested, recorded, WRITER_SIDES)
        if diffs:
            raise CacheConfigMismatch(
                f"{path} was extracted with another configuration, and features of two "
                "configurations are never mixed:\n  " + "\n  ".join(diffs) + "\n"
                "Use another --out path, or the options the cache was made with (see `cli.py cache info`)."
            )
        for line in identity_informational_differences(requested, recorded, WRITER_SIDES) if warn else ():
            logger.warning("%s: %s (the features are the same; the cache keeps what it recorded)", path, line)

    def _extend(self, new: list[ClipEntry]) -> None:
        """Give new clips rows: free rows first (rows without a key, left by a run killed
        while extending or by a repaired key chunk), then new rows at the end."""
        if not new:
            return
        for e in new:  # checked before any write: a half-added row would be left without a key
            for what, text in (("key", e.key), ("group", e.group)):
                if storable_text(text) != text:
                    raise InvalidInput(f"the clip {storable_text(e.key)!r} has a {what} that is not valid UTF-8 "
                                       "text; make keys with cache_schema.key_from_relpath")
        free = self._free_rows()
        n0 = self.backend.shape("key")[0]
        n1 = n0 + max(0, len(new) - len(free))
        if n1 > n0:
            # ``key`` last: it defines how many rows the cache has, so a run killed in
            # this loop leaves longer arrays (ignored by readers and validate), never
            # rows without data (_equalise_lengths finishes the job on reopen)
            for spec in sorted(self._specs, key=lambda a: a.name == "key"):
                self.backend.resize(spec.name, n1)
        rows = np.array(sorted(free)[: len(new)] + list(range(n0, n1)), dtype=np.int64)
        # status first: it stores the status chunk of every row (integrity's evidence)
        self.backend.write("status", rows, np.array([STATUS_PENDING] * len(rows), dtype=object))
        self.backend.write("group", rows, np.array([e.group or e.key for e in new], dtype=object))
        self.backend.write("label", rows, np.array([e.label for e in new], dtype=np.int16))
        self.backend.write("key", rows, np.array([e.key for e in new], dtype=object))
        for i, e in zip(rows, new):
            self._row[e.key] = int(i)
        self.backend.set_attrs({"complete": False})
        logger.info("extended cache with %d new clips (%d in all)", len(new), len(self._row))

    def _trim_free_tail(self) -> None:
        """Drop free rows at the end (left by a run killed while adding clips, or by
        clips that left the dataset before they got a key), so that no keyless row stays.
        ``key`` is shrunk first: a run killed in here leaves longer arrays, which readers
        ignore and the next open equalises."""
        keys = self.backend.read("key")
        n = len(keys)
        while n and keys[n - 1] == "":
            n -= 1
        if n == len(keys):
            return
        for spec in sorted(self._specs, key=lambda a: a.name != "key"):
            self.backend.resize(spec.name, n)
        logger.info("removed %d rows without a clip at the end of the cache", len(keys) - n)

    def _free_rows(self) -> list[int]:
        keys = self.backend.read("key")
        return [int(i) for i in np.flatnonzero(keys == "")]

    def _repair(self, damage: list[ChunkDamage], entries: dict[str, ClipEntry]) -> None:
        """Make every damaged chunk (see ``integrity``) trustworthy again: its clips go
        back to pending and are extracted again. Group and label chunks are restored from
        the manifest when it knows every key; rows whose key is lost become free rows."""
        if not damage:
            return
        steps = [d for d in damage if d.unit == "steps"]
        damage = [d for d in damage if d.unit != "steps"]
        reset_rows = sorted({r for d in steps for r in d.affected})
        if reset_rows:  # clips whose steps a damaged block chunk held: pending, status first
            idx = np.array(reset_rows, dtype=np.int64)
            for name in ("status", *(n for n in record_arrays(True) if n != "status")):
                self._fill_rows(name, idx)
        for d in steps:  # the chunk itself becomes readable again (fill: no clip uses it now)
            if not self.backend.has(d.array):
                block = int(d.array.split("/")[1][1:])
                create_block(self.backend, self.config, block, self._step_chunk())
            elif d.start < d.stop <= self.backend.shape(d.array)[0]:  # not steps past the array's end
                field = d.array.rsplit("/", 1)[1]
                spec = ARRAY_BY_NAME[field]
                self.backend.write_slice(d.array, d.rows, np.full(spec.shape(d.stop - d.start, self.config),
                                                                  spec.fill, dtype=spec.numpy_dtype(self.config)))
        if steps:
            self.backend.set_attrs({"complete": False})
            logger.warning("%d damaged step chunks repaired: %d clips will be extracted again (%s)", len(steps),
                           len(reset_rows), "; ".join(d.describe() for d in steps[:5]) + (" ..." if len(steps) > 5 else ""))
        if not damage:
            return
        reset: dict[int, slice] = {}
        restore: dict[tuple[str, int], slice] = {}
        free: dict[int, slice] = {}
        for d in damage:
            if d.array == "key":
                free[d.start] = d.rows
            elif d.array in ("group", "label"):
                keys = self._keys_of(d.rows)
                if keys is not None and all(k in entries for k in keys if k):
                    restore[(d.array, d.start)] = d.rows
                else:
                    free[d.start] = d.rows
            else:
                reset[d.start] = d.rows
        reset.update(free)
        for sl in reset.values():  # status first, so that a crash in here leaves them pending
            self._fill("status", sl)
        for sl in reset.values():
            for name in record_arrays(self.config.ragged):
                if name != "status":
                    self._fill(name, sl)
        for (name, _), sl in restore.items():
            self.backend.write_slice(name, sl, _identity_values(name, self._keys_of(sl) or [], entries))
        for sl in free.values():
            for name in ("group", "label", "key"):
                self._fill(name, sl)
        self._row = _read_rows(self.backend)
        self.backend.set_attrs({"complete": False})
        n = sum(sl.stop - sl.start for sl in reset.values())
        logger.warning("%d damaged chunks repaired: %d clips will be extracted again (%s)", len(damage), n,
                       "; ".join(d.describe() for d in damage[:5]) + (" ..." if len(damage) > 5 else ""))

    def _keys_of(self, sl: slice) -> list[str] | None:
        try:
            return [str(k) for k in self.backend.read("key", sl)]
        except Exception:
            return None

    def _fill(self, name: str, sl: slice) -> None:
        spec = ARRAY_BY_NAME[name]
        shape = spec.shape(sl.stop - sl.start, self.config)
        self.backend.write_slice(name, sl, np.full(shape, spec.fill, dtype=spec.numpy_dtype(self.config)))

    def _fill_rows(self, name: str, rows: np.ndarray) -> None:
        spec = ARRAY_BY_NAME[name]
        values = np.full(spec.shape(len(rows), self.config), spec.fill, dtype=spec.numpy_dtype(self.config))
        self.backend.write(name, rows, values)

    # -- ragged (v2) step blocks ---------------------------------------------------
    def _step_chunk(self) -> int:
        return int(self.backend.get_attrs().get("step_chunk") or STEP_CHUNK)

    def _ensure_blocks(self) -> None:
        """Every chunk of clip rows has its step block, created here by the process that
        opened the cache, so that an attached rank only resizes and writes its own."""
        step_chunk = self._step_chunk()
        for b in range(n_blocks(self.backend.shape("key")[0], self._chunk_rows)):
            create_block(self.backend, self.config, b, step_chunk)

    def _trim_steps(self) -> int:
        """Drop the steps no finished clip references from each block's tail (module doc)."""
        counts = live_counts(self.backend.read("status"), self.backend.read("step_count"))
        return trim_unreferenced(self.backend, self.backend.read("step_offset"), counts, self._chunk_rows)

    def _append_steps(self, rows: np.ndarray, row_dicts: list[dict[str, Any]]) -> None:
        """Append the batch's steps to their blocks and give each row its ``step_offset``
        (inside its block) and ``step_count``."""
        blocks = rows // self._chunk_rows
        for b in dict.fromkeys(blocks.tolist()):
            members = [i for i in range(len(rows)) if blocks[i] == b]
            values = {f: np.concatenate([row_dicts[i][f] for i in members]) for f in STEP_FIELDS}
            start = append_steps(self.backend, int(b), values)
            for i in members:
                count = len(row_dicts[i]["step_time"])
                row_dicts[i]["step_offset"] = np.int64(start if count else 0)
                row_dicts[i]["step_count"] = np.int32(count)
                start += count

    def restrict_to(self, owned_chunks: Collection[int]) -> None:
        """From now on write only rows of these chunks (rank 0's own shard)."""
        self._owned = frozenset(owned_chunks)

    # -- state -------------------------------------------------------------------
    @property
    def chunk_rows(self) -> int:
        """Rows per chunk: the unit of work a distributed job hands to one rank."""
        return self._chunk_rows

    def row_of(self, key: str) -> int:
        return self._row[key]

    def statuses(self) -> np.ndarray:
        return self.backend.read("status")

    def todo(self, keys: Sequence[str], retry_errors: bool = False) -> list[str]:
        """Keys among ``keys`` that still need extracting (pending, or failed if asked)."""
        status = self.statuses()
        redo = {STATUS_PENDING, STATUS_ERROR} if retry_errors else {STATUS_PENDING}
        return [k for k in keys if status[self._row[k]] in redo]

    def recorded_sources(self, keys: Sequence[str]) -> dict[str, tuple[int, float]]:
        """(size, mtime) of the source file of each finished clip among ``keys`` as it was
        when the clip was extracted, where that is known (caches before ``source_size``
        existed, and clips whose file could not be looked at, are left out)."""
        status = self.statuses()
        size, mtime = self.backend.read("source_size"), self.backend.read("source_mtime")
        out = {}
        for k in keys:
            r = self._row[k]
            if status[r] != STATUS_PENDING and size[r] != UNKNOWN_SIZE:
                out[k] = (int(size[r]), float(mtime[r]))
        return out

    def counts(self) -> dict[str, int]:
        """Status counts over the clips (free rows, which hold no clip, are not pending)."""
        status = self.statuses()[: self.backend.shape("key")[0]]
        free = self.backend.read("key") == ""
        out = {
            "ok": int(np.sum(status == STATUS_OK)),
            "error": int(np.sum(status == STATUS_ERROR)),
            "pending": int(np.sum((status == STATUS_PENDING) & ~free)),
        }
        if free.any():
            out["free_rows"] = int(free.sum())
        return out

    # -- writing -----------------------------------------------------------------
    def write(self, records: Sequence[ClipRecord]) -> None:
        """Write a batch of finished clips; ``status`` goes last (see module doc).

        Raises :class:`CacheWriteError` when the storage refuses (disk full, read-only):
        the clips written before stay finished and valid."""
        if not records:
            return
        for r in records:
            if r.status not in (STATUS_OK, STATUS_ERROR):
                raise ValueError(f"record for {r.key} has status {r.status!r}; only ok/error can be written")
        rows = np.array([self._row[r.key] for r in records], dtype=np.int64)
        self._check_owned(rows)
        row_dicts = [r.as_row(self.config) for r in records]
        try:
            if self.config.ragged:
                finished = rows[self.backend.read("status", rows) != STATUS_PENDING]
                if len(finished):  # extracted again: pending while its offset and count change
                    self._fill_rows("status", finished)
                self._append_steps(rows, row_dicts)
            for name in record_arrays(self.config.ragged):
                if name == "status":
                    self._before_status(rows)
                values = [d[name] for d in row_dicts]
                arr = np.array(values, dtype=object) if ARRAY_BY_NAME[name].dtype == "str" else np.stack(values)
                self.backend.write(name, rows, arr)
            flush = getattr(self.backend, "flush", None)
            if flush:
                flush()
        except OSError as exc:
            raise CacheWriteError(f"writing to the cache {self.backend.path} failed: {exc}") from exc

    def _before_status(self, rows: np.ndarray) -> None:
        """Called between a batch's features and its status: the one moment at which a
        crash must leave the batch pending. A seam for fault-injection tests only."""

    def _check_owned(self, rows: np.ndarray) -> None:
        if self._owned is None:
            return
        chunks = set((rows // self._chunk_rows).tolist())
        if not chunks <= self._owned:
            raise RuntimeError(
                f"internal error: this rank would write chunks {sorted(chunks - self._owned)} that belong to "
                "another rank (two writers of one chunk lose each other's clips); please report it"
            )

    def finish(self, summary: dict[str, Any] | None = None) -> dict[str, int]:
        """Record completion (when nothing is pending) and the status counts."""
        if self._attached:
            raise RuntimeError("only the process that opened the cache (rank 0) records completion")
        counts = self.counts()
        self.backend.set_attrs({"complete": counts["pending"] == 0, "updated": _now(), "counts": counts, **(summary or {})})
        return counts

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _identity_values(name: str, keys: list[str], entries: dict[str, ClipEntry]) -> np.ndarray:
    """The ``group`` or ``label`` column of ``keys`` from the manifest (free rows: fill)."""
    if name == "label":
        return np.array([entries[k].label if k else UNLABELLED for k in keys], dtype=np.int16)
    return np.array([(entries[k].group or k) if k else "" for k in keys], dtype=object)


def _read_rows(backend: Backend) -> dict[str, int]:
    keys = backend.read("key")
    rows: dict[str, int] = {}
    for i, k in enumerate(keys):
        k = str(k)
        if not k:
            continue  # a free row
        if k in rows:
            raise CacheSchemaError(
                f"{backend.path} has the key {k!r} in rows {rows[k]} and {i}; it is damaged beyond repair: "
                "extract into a new cache"
            )
        rows[k] = i
    return rows


def _add_optional_arrays(backend: Backend, config: CacheConfig) -> None:
    """Give a cache made before an optional array existed that array, holding its fill
    value (unknown) for every row. Every chunk is stored, so that integrity does not
    take the new array's chunks for deleted ones."""
    names = set(backend.names())
    n = backend.shape("key")[0]
    for spec in clip_arrays(config.ragged):
        if spec.optional and spec.name not in names:
            backend.create(spec.name, spec.shape(n, config), spec.numpy_dtype(config), backend.chunk_rows("status"),
                           spec.fill)
            if n:
                backend.write_slice(spec.name, slice(0, n),
                                    np.full(spec.shape(n, config), spec.fill, dtype=spec.numpy_dtype(config)))
            logger.info("%s: added the array %s (unknown for the clips extracted before)", backend.path, spec.name)


def _equalise_lengths(backend: Backend, config: CacheConfig) -> None:
    """A run killed while adding rows can leave arrays of different lengths (each resize
    is its own metadata write). Bring them all to the longest; the added rows are free."""
    names = set(backend.names())
    lengths = {a.name: backend.shape(a.name)[0] for a in clip_arrays(config.ragged) if a.name in names}
    if len(set(lengths.values())) <= 1:
        return
    n = max(lengths.values())
    for name, length in lengths.items():
        if length < n:
            backend.resize(name, n)
    logger.warning("arrays had different lengths (a run was killed while adding clips); all now have %d rows", n)
