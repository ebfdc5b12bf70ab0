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

The missing-chunk check needs every written chunk to be stored, fill-only ones included
(``storage`` does so, and the writer marks such caches with :data:`ALL_CHUNKS_STORED`).
Caches without the mark are only checked for unreadable chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .schema import ARRAYS, IDENTITY_ARRAYS, STATUS_PENDING
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

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)

    def describe(self) -> str:
        verb = "is unreadable" if self.kind == "unreadable" else "is missing (its file was deleted)"
        return f"array {self.array}: chunk of rows {self.start}-{self.stop - 1} {verb}"


def unreadable_chunks(backend: Backend) -> dict[str, list[slice]]:
    """Row ranges of every chunk that fails to read, per array (missing arrays excluded)."""
    broken: dict[str, list[slice]] = {}
    names = set(backend.names())
    for spec in ARRAYS:
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
    if not backend.get_attrs().get(ALL_CHUNKS_STORED) or not set(ALWAYS_STORED) <= names:
        return out
    # Rows exist up to the key array's length (the writer resizes it last); longer arrays
    # are a run killed while adding rows, and their extra rows hold nothing yet.
    n = backend.shape("key")[0]
    missing = {
        spec.name: [slice(sl.start, min(sl.stop, n)) for sl in backend.missing_chunks(spec.name) if sl.start < n]
        for spec in ARRAYS if spec.name in names
    }
    finished = _finished_evidence(backend, n, unreadable, missing)
    for name, slices in missing.items():
        for sl in slices:
            rows = tuple(int(r) for r in np.flatnonzero(finished[sl]) + sl.start)
            if rows:
                out.append(ChunkDamage(name, sl.start, sl.stop, "missing", rows))
    return sorted(out, key=lambda d: (d.start, d.array))


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
        for spec in ARRAYS:
            if spec.name in ALWAYS_STORED or spec.name not in missing:
                continue
            present = ~_rows_mask(n, missing[spec.name])
            present[backend.shape(spec.name)[0]:] = False
            written |= present
        finished |= status_lost & written
    return finished
