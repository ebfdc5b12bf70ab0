"""The ragged layout of schema v2: caches on a time grid, whose clips have different
numbers of steps, store every clip's steps concatenated instead of padded to the longest.

Per-clip arrays (``key`` ... ``status``) are what they are in v1, chunked by clip rows,
plus ``step_offset`` and ``step_count``. The per-step arrays (``STEP_FIELDS``) live in
**step blocks**: block ``b`` holds the steps of the clips in rows
``[b * chunk_rows, (b + 1) * chunk_rows)``, one array per field
(``steps/b000003/video``: Zarr a nested group, HDF5 a group of resizable datasets),
chunked along the step axis (``step_chunk`` steps a chunk). A clip's steps are
``block[step_offset : step_offset + step_count]``.

Why one block per chunk of clip rows: a rank of a distributed job owns whole chunks of
clip rows, so it owns their blocks, and no two processes ever resize or write the same
array (one shared step axis would have every rank resizing one array's metadata at once).
It is the layout of webdataset shards: one concatenated shard per group of samples.

A clip's steps count only while its status is ``ok``: a pending clip may hold the
offset and count of a batch killed before its status was written, steps the next
:meth:`CacheWriter.open` trims from the block's tail (:func:`trim_unreferenced`).
"""

from __future__ import annotations

import logging
import re
from typing import Mapping

import numpy as np

from .schema import ARRAY_BY_NAME, STATUS_OK, STEP_FIELDS, CacheConfig
from .storage import Backend

logger = logging.getLogger(__name__)

STEP_GROUP = "steps"
STEP_CHUNK = 512
"""Steps per chunk of a block array (512 steps of 1,408 float16 dims: 1.4 MB)."""
_BLOCK_NAME = re.compile(r"b(\d{6,})$")


def block_group(block: int) -> str:
    return f"{STEP_GROUP}/b{block:06d}"


def block_array(block: int, field: str) -> str:
    """The name of one field's array in a step block (``steps/b000003/video``)."""
    return f"{block_group(block)}/{field}"


def is_block_array(name: str) -> bool:
    return name.startswith(STEP_GROUP + "/")


def n_blocks(n_rows: int, chunk_rows: int) -> int:
    """Blocks a cache of ``n_rows`` clip rows has: one per chunk of rows."""
    return -(-n_rows // max(1, chunk_rows))


def stored_blocks(backend: Backend) -> list[int]:
    """The blocks present in the store (including any past the last row)."""
    return sorted(int(m.group(1)) for g in backend.groups(STEP_GROUP) if (m := _BLOCK_NAME.match(g)))


def block_length(backend: Backend, block: int) -> int:
    """Steps every array of the block holds (0 when an array is absent)."""
    names = [block_array(block, f) for f in STEP_FIELDS]
    if not all(backend.has(n) for n in names):
        return 0
    return min(backend.shape(n)[0] for n in names)


def create_block(backend: Backend, config: CacheConfig, block: int, step_chunk: int, only_missing: bool = True) -> None:
    """Create the block's arrays, empty (``only_missing``: those it lacks)."""
    for field in STEP_FIELDS:
        name = block_array(block, field)
        if only_missing and backend.has(name):
            continue
        spec = ARRAY_BY_NAME[field]
        backend.create(name, spec.shape(0, config), spec.numpy_dtype(config), step_chunk, spec.fill)


def append_steps(backend: Backend, block: int, values: Mapping[str, np.ndarray]) -> int:
    """Append steps (``values[field]``, one row per step) to a block; returns where they
    start. They land past everything any array of the block holds, so that steps a killed
    batch left are never overwritten while a finished clip could still reference them."""
    names = {f: block_array(block, f) for f in STEP_FIELDS}
    start = max(backend.shape(n)[0] for n in names.values())
    k = len(values["step_time"])
    if k:
        for name in names.values():
            backend.resize(name, start + k)
        for f, name in names.items():
            backend.write_slice(name, slice(start, start + k), values[f])
    return start


def live_counts(status: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per row, the steps that count: ``step_count`` for ``ok`` clips, 0 for any other."""
    return np.where(np.asarray(status[: len(counts)]) == STATUS_OK, np.asarray(counts, np.int64), 0)


def referenced_ends(offsets: np.ndarray, counts: np.ndarray, chunk_rows: int) -> dict[int, int]:
    """Per block, the end of the last step an ``ok`` clip references (``counts`` from
    :func:`live_counts`); blocks without one are absent (end 0)."""
    rows = np.flatnonzero(counts > 0)
    ends: dict[int, int] = {}
    if len(rows):
        blocks = rows // chunk_rows
        stop = offsets[rows].astype(np.int64) + counts[rows]
        for b in np.unique(blocks):
            ends[int(b)] = int(stop[blocks == b].max())
    return ends


def trim_unreferenced(backend: Backend, offsets: np.ndarray, counts: np.ndarray, chunk_rows: int) -> int:
    """Shrink every block to the last step a finished clip references (steps of a killed
    batch, or of re-extracted clips at the tail); returns the steps removed. Only the
    process that opened the cache may call it (never an attached rank)."""
    ends = referenced_ends(offsets, counts, chunk_rows)
    removed = 0
    for b in stored_blocks(backend):
        end = ends.get(b, 0)
        lengths = {f: backend.shape(block_array(b, f))[0] for f in STEP_FIELDS if backend.has(block_array(b, f))}
        removed += max(0, max(lengths.values(), default=0) - end)
        for f, length in lengths.items():
            if length > end:
                backend.resize(block_array(b, f), end)
    if removed:
        logger.info("%s: removed %d steps that no finished clip references (a batch that was killed)",
                    backend.path, removed)
    return removed


def stored_steps(backend: Backend) -> int:
    """Steps stored over all blocks (referenced or not)."""
    return sum(block_length(backend, b) for b in stored_blocks(backend))


def concat_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])``, vectorised."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    out_start = np.cumsum(counts) - counts
    return np.repeat(np.asarray(starts, np.int64) - out_start, counts) + np.arange(total, dtype=np.int64)


def gather_steps(backend: Backend, field: str, rows: np.ndarray, offsets: np.ndarray, counts: np.ndarray,
                 chunk_rows: int, dtype: np.dtype, trailing: tuple[int, ...]) -> np.ndarray:
    """The steps of ``rows`` (their ``offsets`` and ``counts``) concatenated in row order,
    as ``dtype``. Each block's array is read once, over the span its clips use; the steps
    are gathered with one fancy index per block (no per-step Python loop)."""
    counts = np.asarray(counts, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    out_start = np.cumsum(counts) - counts
    out = np.empty((int(counts.sum()), *trailing), dtype=dtype)
    blocks = np.asarray(rows, dtype=np.int64) // chunk_rows
    has = counts > 0
    for b in np.unique(blocks[has]):
        sel = np.flatnonzero(has & (blocks == b))
        lo = int(offsets[sel].min())
        hi = int((offsets[sel] + counts[sel]).max())
        data = backend.read(block_array(int(b), field), slice(lo, hi))
        out[concat_ranges(out_start[sel], counts[sel])] = data[concat_ranges(offsets[sel] - lo, counts[sel])]
    return out


__all__ = ["STEP_CHUNK", "STEP_GROUP", "append_steps", "block_array", "block_group", "block_length",
           "concat_ranges", "create_block", "gather_steps", "is_block_array", "live_counts", "n_blocks",
           "referenced_ends", "stored_blocks", "stored_steps", "trim_unreferenced"]
