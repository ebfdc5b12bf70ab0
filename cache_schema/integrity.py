"""Which chunks of a cache cannot be trusted: ``validate`` reports them and the writer
repairs them (resets their clips to pending), so both must agree on one definition.

Two kinds of damage:

* **unreadable**: the chunk file exists but does not decode (truncated, overwritten).
  Zarr replaces chunk files atomically, so no interrupted write can produce this; it is
  always damage.
* **missing**: the chunk file is gone although finished clips need it (deleted by hand,
  lost by a copy or sync tool). Zarr reads a missing chunk as fill values, so without
  this check a deleted feature chunk would read back as zeros under ``status=ok``.

A missing chunk only counts when there is evidence that its rows held finished clips:
their status says ok/error, or (when the status chunk itself is gone) another record
array of those rows was written. Rows that were never finished lose nothing when a chunk
is missing; this is also the state a run killed while adding rows leaves behind, which
must stay valid.

In a ragged (v2) cache the step blocks (``cache_schema.ragged``) are checked the same
way, along their step axis: a block chunk that is unreadable, missing, or past the end of
its array puts back to pending exactly the ``ok`` clips whose steps it holds. Steps that no
finished clip references (a killed batch's tail) lose nothing when their chunk is missing.

The missing-chunk check needs every written chunk to be stored, fill-only ones included
(``storage`` does so, and the writer marks such caches with :data:`ALL_CHUNKS_STORED`).
Caches without the mark are only checked for unreadable chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ragged import block_array, live_counts, n_blocks
from .schema import IDENTITY_ARRAYS, STATUS_PENDING, STEP_FIELDS, ArraySpec, clip_arrays, is_ragged_attrs
from .storage import Backend, iter_chunks

ALL_CHUNKS_STORED = "all_chunks_stored"
# Arrays the writer stores for every row as soon as the row exists.
ALWAYS_STORED = (*IDENTITY_ARRAYS, "status")


@dataclass(frozen=True)
class ChunkDamage:
    array: str
    start: int
    stop: int
    kind: str  # "unreadable" | "missing"
    affected: tuple[int, ...]  # rows whose data this damage makes untrustworthy
    # "rows" (a per-clip array), or "steps": a step block's array, ``start``/``stop``
    # along its step axis (a whole array that is gone: ``start == stop == 0``)
    unit: str = "rows"

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)

    def describe(self) -> str:
        if self.unit == "steps" and self.start == self.stop:
            return f"array {self.array} is missing (its clips {list(self.affected)[:8]} have no steps)"
        verb = "is unreadable" if self.kind == "unreadable" else "is missing (its file was deleted)"
        return f"array {self.array}: chunk of {self.unit} {self.start}-{self.stop - 1} {verb}"


def clip_specs(backend: Backend) -> tuple[ArraySpec, ...]:
    """The per-clip arrays of this cache's layout (v1: all of them)."""
    return clip_arrays(is_ragged_attrs(backend.get_attrs()))


def unreadable_chunks(backend: Backend) -> dict[str, list[slice]]:
    """Row ranges of every chunk that fails to read, per array (missing arrays excluded)."""
    broken: dict[str, list[slice]] = {}
    names = set(backend.names())
    for spec in clip_specs(backend):
        if spec.name not in names:
            continue
        n = backend.shape(spec.name)[0]
        for sl in iter_chunks(n, backend.chunk_rows(spec.name)):
            try:
                backend.read(spec.name, sl)
            except Exception:  # any codec/IO failure means the chunk is damaged
                broken.setdefault(spec.name, []).append(sl)
    return broken


def find_damage(backend: Backend) -> list[ChunkDamage]:
    """Every chunk that is unreadable, or missing while finished clips need it."""
    names = set(backend.names())
    unreadable = unreadable_chunks(backend)
    out = [
        ChunkDamage(name, sl.start, sl.stop, "unreadable", tuple(range(sl.start, sl.stop)))
        for name, slices in unreadable.items() for sl in slices
    ]
    all_stored = bool(backend.get_attrs().get(ALL_CHUNKS_STORED))
    if is_ragged_attrs(backend.get_attrs()) and set(ALWAYS_STORED) <= names:
        out += _block_damage(backend, unreadable, all_stored)
    if not all_stored or not set(ALWAYS_STORED) <= names:
        return sorted(out, key=lambda d: (d.unit, d.start, d.array))
    # Rows exist up to the key array's length (the writer resizes it last); longer arrays
    # are a run killed while adding rows, and their extra rows hold nothing yet.
    n = backend.shape("key")[0]
    missing = {
        spec.name: [slice(sl.start, min(sl.stop, n)) for sl in backend.missing_chunks(spec.name) if sl.start < n]
        for spec in clip_specs(backend) if spec.name in names
    }
    finished = _finished_evidence(backend, n, unreadable, missing)
    for name, slices in missing.items():
        for sl in slices:
            rows = tuple(int(r) for r in np.flatnonzero(finished[sl]) + sl.start)
            if rows:
                out.append(ChunkDamage(name, sl.start, sl.stop, "missing", rows))
    return sorted(out, key=lambda d: (d.unit, d.start, d.array))


def _rows_mask(n: int, slices: list[slice]) -> np.ndarray:
    m = np.zeros(n, bool)
    for sl in slices:
        m[sl] = True
    return m


def _finished_evidence(backend: Backend, n: int, unreadable: dict[str, list[slice]],
                       missing: dict[str, list[slice]]) -> np.ndarray:
    """Per row: was this clip ever finished (so that its chunks must all exist)?"""
    status_lost = _rows_mask(n, unreadable.get("status", []) + missing.get("status", []))
    status_lost[min(n, backend.shape("status")[0]):] = True
    finished = np.zeros(n, bool)
    for sl in iter_chunks(n, backend.chunk_rows("status")):
        if status_lost[sl].any():
            continue
        finished[sl] = backend.read("status", sl) != STATUS_PENDING
    if status_lost.any():  # the status is gone: any other record array written says finished
        written = np.zeros(n, bool)
        for spec in clip_specs(backend):
            if spec.name in ALWAYS_STORED or spec.name not in missing:
                continue
            present = ~_rows_mask(n, missing[spec.name])
            present[backend.shape(spec.name)[0]:] = False
            written |= present
        finished |= status_lost & written
    return finished


def _readable_rows(backend: Backend, name: str, n: int, unreadable: dict[str, list[slice]],
                   fill: object) -> tuple[np.ndarray, np.ndarray]:
    """An array's first ``n`` rows, and which of them could be read (a damaged chunk's rows
    are reset by the per-clip damage, so the blocks need not judge them)."""
    out = np.full(n, fill, dtype=object if isinstance(fill, str) else np.asarray(fill).dtype)
    if name not in backend.names():
        return out, np.zeros(n, bool)
    ok = ~_rows_mask(n, unreadable.get(name, []))
    ok[min(n, backend.shape(name)[0]):] = False
    for sl in iter_chunks(n, backend.chunk_rows(name)):
        if ok[sl].all():
            out[sl] = backend.read(name, sl)
    return out, ok


def _block_damage(backend: Backend, unreadable: dict[str, list[slice]], all_stored: bool) -> list[ChunkDamage]:
    """Damage of the step blocks (module doc): each chunk of a block array that cannot be
    read, or (in a cache that stores every chunk) is missing while an ``ok`` clip's steps
    lie in it, and steps that finished clips reference past the end of an array."""
    n = backend.shape("key")[0]
    chunk_rows = backend.chunk_rows("status")
    status, ok_s = _readable_rows(backend, "status", n, unreadable, STATUS_PENDING)
    offsets, ok_o = _readable_rows(backend, "step_offset", n, unreadable, np.int64(0))
    counts, ok_c = _readable_rows(backend, "step_count", n, unreadable, np.int64(0))
    live = live_counts(np.where(ok_s & ok_o & ok_c, status, STATUS_PENDING), counts.astype(np.int64))
    offsets = offsets.astype(np.int64)
    out: list[ChunkDamage] = []
    for b in range(n_blocks(n, chunk_rows)):
        rows = np.arange(b * chunk_rows, min(n, (b + 1) * chunk_rows))
        rows = rows[live[rows] > 0]
        start, stop = offsets[rows], offsets[rows] + live[rows]

        def hit(lo: int, hi: int) -> tuple[int, ...]:
            return tuple(int(r) for r in rows[(start < hi) & (stop > lo)])

        for field in STEP_FIELDS:
            name = block_array(b, field)
            if not backend.has(name):
                if len(rows):
                    out.append(ChunkDamage(name, 0, 0, "missing", tuple(int(r) for r in rows), "steps"))
                continue
            length, step_chunk = backend.shape(name)[0], backend.chunk_rows(name)
            bad = []
            for sl in iter_chunks(length, step_chunk):
                try:
                    backend.read(name, sl)
                except Exception:  # any codec/IO failure means the chunk is damaged
                    bad.append(ChunkDamage(name, sl.start, sl.stop, "unreadable", hit(sl.start, sl.stop), "steps"))
            if all_stored:
                broken = {d.start for d in bad}
                for sl in backend.missing_chunks(name):
                    if sl.start not in broken and hit(sl.start, sl.stop):
                        bad.append(ChunkDamage(name, sl.start, sl.stop, "missing", hit(sl.start, sl.stop), "steps"))
            past = tuple(int(r) for r in rows[stop > length])
            if past:
                bad.append(ChunkDamage(name, length, int(stop.max()), "missing", past, "steps"))
            out += bad
    return out
