"""Creates, extends and fills a cache, in batches of clips.

Crash safety comes from write order, not from locks: a clip's features and masks are
written before its ``status``, and the Zarr store replaces chunk files atomically, so a
process killed at any moment leaves every clip either finished (status ok/error, all
arrays written) or pending (status empty, picked up by the next run).
"""

from __future__ import annotations

import datetime as _dt
import logging
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .schema import (
    ARRAY_BY_NAME,
    ARRAYS,
    IDENTITY_ARRAYS,
    RECORD_ARRAYS,
    SCHEMA_VERSION,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_PENDING,
    CacheConfig,
    CacheConfigMismatch,
    CacheSchemaError,
    ClipEntry,
    ClipRecord,
    identity_differences,
)
from .storage import Backend, open_backend
from .validate import scan_chunks

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


class CacheWriter:
    """Write side of a cache. Open it with :meth:`open`; it never changes the
    configuration of an existing cache."""

    def __init__(self, backend: Backend, config: CacheConfig, entries: dict[str, ClipEntry]) -> None:
        self.backend = backend
        self.config = config
        keys = backend.read("key")
        self._row = {str(k): i for i, k in enumerate(keys)}
        self._entries = entries

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
    ) -> "CacheWriter":
        """Create the cache, or reopen it to resume or extend it with new clips.

        Raises :class:`CacheConfigMismatch` when the cache on disk was made with another
        configuration: features of two configurations are never mixed.
        """
        path = Path(path)
        if fmt == "zarr" and path.exists() and path.is_file():
            raise CacheSchemaError(f"{path} is a file; a Zarr cache is a directory")
        backend = open_backend(path, "a", fmt)
        attrs = backend.get_attrs()
        by_key = {e.key: e for e in entries}
        if len(by_key) != len(entries):
            raise ValueError("manifest has duplicate keys; keys must be unique paths relative to the root")
        if not attrs:
            cls._create(backend, config, list(entries), chunk_clips, info or {})
        else:
            cls._check_identity(path, attrs, config)
        writer = cls(backend, config, by_key)
        writer._repair_unreadable()
        writer._extend([e for e in entries if e.key not in writer._row])
        return writer

    @staticmethod
    def _create(backend: Backend, config: CacheConfig, entries: list[ClipEntry], chunk_clips: int, info: dict) -> None:
        n = len(entries)
        for spec in ARRAYS:
            backend.create(spec.name, spec.shape(n, config), spec.numpy_dtype(config), chunk_clips, spec.fill)
        if n:
            rows = np.arange(n)
            backend.write("key", rows, np.array([e.key for e in entries], dtype=object))
            backend.write("group", rows, np.array([e.group or e.key for e in entries], dtype=object))
            backend.write("label", rows, np.array([e.label for e in entries], dtype=np.int16))
        backend.set_attrs(
            {
                **config.identity(),
                "created": _now(),
                "package_versions": package_versions(),
                "complete": False,
                **info,
            }
        )

    @staticmethod
    def _check_identity(path: Path, attrs: dict[str, Any], config: CacheConfig) -> None:
        version = attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise CacheSchemaError(
                f"{path} has schema version {version!r}, this code writes {SCHEMA_VERSION}; "
                "extract into a new cache path"
            )
        found = {k: attrs.get(k) for k in config.identity()}
        diffs = identity_differences(config.identity(), found)
        if diffs:
            raise CacheConfigMismatch(
                f"{path} was extracted with another configuration, and features of two "
                "configurations are never mixed:\n  " + "\n  ".join(diffs) + "\n"
                "Use another --out path, or the options the cache was made with (see `cli.py cache info`)."
            )

    def _extend(self, new: list[ClipEntry]) -> None:
        if not new:
            return
        n0 = len(self._row)
        n1 = n0 + len(new)
        for spec in ARRAYS:
            self.backend.resize(spec.name, n1)
        rows = np.arange(n0, n1)
        self.backend.write("key", rows, np.array([e.key for e in new], dtype=object))
        self.backend.write("group", rows, np.array([e.group or e.key for e in new], dtype=object))
        self.backend.write("label", rows, np.array([e.label for e in new], dtype=np.int16))
        for i, e in zip(rows, new):
            self._row[e.key] = int(i)
        self.backend.set_attrs({"complete": False})
        logger.info("extended cache with %d new clips (%d in all)", len(new), n1)

    def _repair_unreadable(self) -> None:
        """Reset clips whose chunks cannot be read (a deleted or truncated chunk file) to
        pending, so that the run re-extracts them instead of trusting them."""
        broken = scan_chunks(self.backend)
        if not broken:
            return
        n = len(self._row)
        rows: set[int] = set()
        for name, slices in broken.items():
            for sl in slices:
                rows.update(range(sl.start, sl.stop))
                spec = ARRAY_BY_NAME[name]
                shape = spec.shape(sl.stop - sl.start, self.config)
                if name in IDENTITY_ARRAYS:
                    vals = self._identity_values(name, sl)
                else:
                    vals = np.full(shape, spec.fill, dtype=spec.numpy_dtype(self.config))
                self.backend.write_slice(name, sl, vals)
        rows_a = np.array(sorted(r for r in rows if r < n))
        self.backend.write("status", rows_a, np.array([STATUS_PENDING] * len(rows_a), dtype=object))
        logger.warning("%d clips had unreadable chunks and will be extracted again", len(rows_a))

    def _identity_values(self, name: str, sl: slice) -> np.ndarray:
        keys = [k for k, i in sorted(self._row.items(), key=lambda kv: kv[1])][sl]
        entries = [self._entries.get(k) for k in keys]
        if any(e is None for e in entries) or len(keys) != sl.stop - sl.start:
            raise CacheSchemaError(
                f"the {name!r} array of {self.backend.path} is damaged for rows {sl.start}-{sl.stop - 1} "
                "and the manifest cannot restore it; extract into a new cache"
            )
        if name == "label":
            return np.array([e.label for e in entries], dtype=np.int16)
        if name == "group":
            return np.array([e.group or e.key for e in entries], dtype=object)
        return np.array(keys, dtype=object)

    # -- state -------------------------------------------------------------------
    def row_of(self, key: str) -> int:
        return self._row[key]

    def statuses(self) -> np.ndarray:
        return self.backend.read("status")

    def todo(self, keys: Sequence[str], retry_errors: bool = False) -> list[str]:
        """Keys among ``keys`` that still need extracting (pending, or failed if asked)."""
        status = self.statuses()
        redo = {STATUS_PENDING, STATUS_ERROR} if retry_errors else {STATUS_PENDING}
        return [k for k in keys if status[self._row[k]] in redo]

    # -- writing -----------------------------------------------------------------
    def write(self, records: Sequence[ClipRecord]) -> None:
        """Write a batch of finished clips; ``status`` goes last (see module doc)."""
        if not records:
            return
        for r in records:
            if r.status not in (STATUS_OK, STATUS_ERROR):
                raise ValueError(f"record for {r.key} has status {r.status!r}; only ok/error can be written")
        rows = np.array([self._row[r.key] for r in records], dtype=np.int64)
        row_dicts = [r.as_row(self.config) for r in records]
        for name in RECORD_ARRAYS:
            values = [d[name] for d in row_dicts]
            arr = np.array(values, dtype=object) if ARRAY_BY_NAME[name].dtype == "str" else np.stack(values)
            self.backend.write(name, rows, arr)
        flush = getattr(self.backend, "flush", None)
        if flush:
            flush()

    def finish(self, summary: dict[str, Any] | None = None) -> dict[str, int]:
        """Record completion (when nothing is pending) and the status counts."""
        status = self.statuses()
        counts = {
            "ok": int(np.sum(status == STATUS_OK)),
            "error": int(np.sum(status == STATUS_ERROR)),
            "pending": int(np.sum(status == STATUS_PENDING)),
        }
        self.backend.set_attrs({"complete": counts["pending"] == 0, "updated": _now(), "counts": counts, **(summary or {})})
        return counts

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
