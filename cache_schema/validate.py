"""Checks a cache against the schema and names the clips that cannot be trusted.

A pending clip (interrupted before its status was written) is not a defect: the next
extract run completes it. A clip that claims ``ok`` but whose data is unreadable, missing
(a deleted chunk file), non-finite or inconsistent is. What counts as a damaged chunk is
defined once, in ``integrity``, and shared with the writer that repairs it.

An HDF5 cache that another process is writing cannot be read at all (HDF5 locks the file):
:func:`validate` then raises ``CacheLocked`` saying so, because nothing about the file can be
known, and calling it a defect would invite deleting a good file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .ragged import block_array, n_blocks
from .schema import (
    ARRAY_BY_NAME,
    SCHEMA_VERSIONS,
    STEP_FIELDS,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_PENDING,
    STATUSES,
    CacheConfig,
    CacheError,
    clip_arrays,
)
from .integrity import find_damage, unreadable_chunks
from .lock import CacheLocked
from .storage import Backend, iter_chunks, open_backend


@dataclass
class ValidationReport:
    problems: list[str] = field(default_factory=list)
    broken_keys: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def scan_chunks(backend: Backend) -> dict[str, list[slice]]:
    """Row ranges of every chunk that fails to read, per array (kept for callers of the
    earlier API; :func:`cache_schema.integrity.find_damage` also finds deleted chunks)."""
    return unreadable_chunks(backend)


def validate(path: str | Path) -> ValidationReport:
    report = ValidationReport()
    try:
        backend = open_backend(Path(path), "r")
    except CacheLocked:  # an HDF5 file being written cannot be read: not a defect, nothing is known
        raise
    except (CacheError, FileNotFoundError) as exc:
        report.problems.append(str(exc))
        return report
    try:
        _validate(backend, report)
    finally:
        backend.close()
    return report


def _validate(backend: Backend, report: ValidationReport) -> None:
    p = report.problems
    attrs = backend.get_attrs()
    if attrs.get("schema_version") not in SCHEMA_VERSIONS:
        p.append(f"schema_version is {attrs.get('schema_version')!r}, expected one of {SCHEMA_VERSIONS}")
        return
    try:
        config = CacheConfig.from_attrs(attrs)
    except (CacheError, ValueError) as exc:
        p.append(str(exc))
        return
    names = set(backend.names())
    specs = clip_arrays(config.ragged)
    missing = [a.name for a in specs if a.name not in names and not a.optional]
    if missing:
        p.append(f"missing arrays: {', '.join(missing)}")
        return
    n = backend.shape("key")[0]  # the key array is resized last: it says how many rows exist
    for spec in (a for a in specs if a.name in names):  # an absent optional array: an older cache
        want = spec.shape(n, config)
        got = backend.shape(spec.name)
        if got[1:] != want[1:] or got[0] < n:  # longer: a run killed while adding rows; harmless
            p.append(f"array {spec.name} has shape {got}, expected {want}")
        want_dtype = "str" if spec.dtype == "str" else spec.numpy_dtype(config).name
        if backend.dtype(spec.name) != want_dtype:
            p.append(f"array {spec.name} has dtype {backend.dtype(spec.name)}, expected {want_dtype}")
    if p:
        return

    broken_rows: set[int] = set()
    for damage in find_damage(backend):
        p.append(damage.describe())
        broken_rows.update(damage.affected)
    keys = _safe_read(backend, "key", n, "")
    status = _safe_read(backend, "status", n, STATUS_PENDING)

    bad_status = sorted({s for s in status if s not in STATUSES})
    if bad_status:
        p.append(f"unknown status values: {bad_status}")
    free = (keys == "") & (status == STATUS_PENDING)  # a free row holds no clip (see below)
    report.counts = {
        "ok": int(np.sum(status == STATUS_OK)),
        "error": int(np.sum(status == STATUS_ERROR)),
        "pending": int(np.sum((status == STATUS_PENDING) & ~free)),
        "total": int(n - free.sum()),
    }
    named = [k for k in keys.tolist() if k]  # a row without a key is free (an interrupted extension)
    if len(set(named)) != len(named):
        p.append("duplicate keys")
    for row in np.flatnonzero((keys == "") & (status != STATUS_PENDING)):
        p.append(f"row {row}: a finished clip without a key")
        broken_rows.add(int(row))

    if config.ragged:
        _validate_blocks(backend, config, keys, status, broken_rows, p)
        report.broken_keys = [str(keys[r]) if keys[r] else f"row {r}" for r in sorted(broken_rows)]
        return
    # Per-clip consistency, chunk by chunk so that memory stays bounded.
    chunk = max(1, backend.chunk_rows("video"))
    for sl in iter_chunks(n, chunk):
        rows = [r for r in range(sl.start, sl.stop) if r not in broken_rows]
        if not rows:
            continue
        idx = np.array(rows)
        st = status[idx]
        if not np.any(st != STATUS_PENDING):
            continue
        d = {name: backend.read(name, idx) for name in
             ("video", "audio", "video_mask", "audio_mask", "duration", "step_time", "error", "label")}
        for j, row in enumerate(rows):
            why = _clip_problem(st[j], {k: v[j] for k, v in d.items()}, config)
            if why:
                p.append(f"clip {keys[row]!r}: {why}")
                broken_rows.add(row)
    report.broken_keys = [str(keys[r]) if keys[r] else f"row {r}" for r in sorted(broken_rows)]


def _safe_read(backend: Backend, name: str, n: int, fill: str) -> np.ndarray:
    """Read a text array chunk by chunk, filling unreadable chunks, so that one damaged
    chunk does not hide the names of all other clips."""
    out = np.array([fill] * n, dtype=object)
    for sl in iter_chunks(n, backend.chunk_rows(name)):
        try:
            out[sl] = backend.read(name, sl)
        except Exception:
            pass
    return out


def _clip_problem(status: str, c: dict, config: CacheConfig) -> str | None:
    if status == STATUS_ERROR:
        if not c["error"]:
            return "status error without a reason"
        return None
    if status != STATUS_OK:
        return None
    if not (-1 <= int(c["label"]) < len(config.class_names)):
        return f"label {int(c['label'])} outside the {len(config.class_names)} classes"
    for mod in ("video", "audio"):
        x = np.asarray(c[mod], dtype=np.float32)
        m = np.asarray(c[f"{mod}_mask"], dtype=bool)
        if not np.all(np.isfinite(x)):
            return f"non-finite {mod} features"
        if np.any(x[~m] != 0):
            return f"{mod} features present where {mod}_mask is false"
    if not (np.any(c["video_mask"]) or np.any(c["audio_mask"])):
        return "status ok but neither modality is present"
    dur = float(c["duration"])
    t = np.asarray(c["step_time"], dtype=np.float64)
    if not dur > 0:
        return f"duration {dur} is not positive"
    if np.any(np.diff(t) <= 0) and len(t) > 1:
        return "step times do not increase"
    if t[0] < 0 or t[-1] > dur + 1e-6:
        return "step times fall outside the clip"
    return None


def _validate_blocks(backend: Backend, config: CacheConfig, keys: np.ndarray, status: np.ndarray,
                     broken_rows: set[int], p: list[str]) -> None:
    """A ragged (v2) cache's steps, block by block (memory: one block at a time): each
    finished clip's offset and count lie inside its block, an ``ok`` clip has exactly the
    steps the grid gives its duration, and its steps pass the checks of a dense clip."""
    n = len(keys)
    chunk_rows = backend.chunk_rows("status")
    for b in range(n_blocks(n, chunk_rows)):
        rows = [r for r in range(b * chunk_rows, min(n, (b + 1) * chunk_rows))
                if r not in broken_rows and status[r] != STATUS_PENDING]
        if not rows:
            continue
        idx = np.array(rows)
        c = {name: backend.read(name, idx) for name in ("step_offset", "step_count", "duration", "error", "label")}
        lengths, data = [], {}
        for field in STEP_FIELDS:
            name = block_array(b, field)
            if not backend.has(name):
                lengths.append(0)
                continue
            spec = ARRAY_BY_NAME[field]
            want = spec.shape(backend.shape(name)[0], config)
            want_dtype = spec.numpy_dtype(config).name
            if backend.shape(name)[1:] != want[1:] or backend.dtype(name) != want_dtype:
                p.append(f"array {name} has shape {backend.shape(name)} and dtype {backend.dtype(name)}, expected "
                         f"{('S', *want[1:])} and {want_dtype}")
                lengths.append(0)
                continue
            lengths.append(backend.shape(name)[0])
        length = min(lengths)
        ok = [j for j, r in enumerate(rows) if status[r] == STATUS_OK]
        if ok and length:
            lo = max(0, min(int(c["step_offset"][j]) for j in ok))
            hi = min(length, max(int(c["step_offset"][j]) + int(c["step_count"][j]) for j in ok))
            data = {f: (lo, backend.read(block_array(b, f), slice(lo, max(lo, hi)))) for f in STEP_FIELDS}
        for j, row in enumerate(rows):
            why = _ragged_clip_problem(status[row], {k: v[j] for k, v in c.items()}, length, data, config)
            if why:
                p.append(f"clip {keys[row]!r}: {why}")
                broken_rows.add(row)


def _ragged_clip_problem(status: str, c: dict, length: int, data: dict, config: CacheConfig) -> str | None:
    offset, count = int(c["step_offset"]), int(c["step_count"])
    if status == STATUS_ERROR:
        if count != 0:
            return f"status error with step_count {count} (a failed clip has no steps)"
        return _clip_problem(status, c, config)
    if status != STATUS_OK:
        return None
    if count <= 0:
        return f"status ok but step_count is {count}: every ok clip has steps"
    if offset < 0 or offset + count > length:
        return f"steps {offset}-{offset + count - 1} lie outside its step block of {length} steps"
    dur = float(c["duration"])
    if not dur > 0:
        return f"duration {dur} is not positive"
    want = config.layout.count(dur)
    if count != want:
        return f"step_count {count}, but {config.layout.describe()} give a clip of {dur:g} s {want} steps"
    steps = {f: data[f][1][offset - data[f][0]: offset - data[f][0] + count] for f in STEP_FIELDS}
    return _clip_problem(status, {**c, **steps}, config)
