"""Read side of a cache: one API over Zarr and HDF5 that returns numpy arrays or torch
tensors. Stage 2 loads whole arrays once (a VAAR-sized cache is ~170 MB in fp32), so
reads are per array, never per clip."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .identity import cache_identity
from .schema import ARRAY_BY_NAME, STATUS_ERROR, STATUS_OK, STATUS_PENDING, CacheConfig, CacheSchemaError
from .storage import open_backend

FEATURE_FIELDS = ("video", "audio", "video_mask", "audio_mask", "label")
STEP_FIELDS = ("video", "audio", "video_mask", "audio_mask", "step_time")
"""The per-step arrays: one row per step (dense caches: ``[N, T, ...]``; ragged: every
clip's steps concatenated)."""


class CacheReader:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.backend = open_backend(self.path, "r")
        try:
            self.attrs: dict[str, Any] = self.backend.get_attrs()
        except BaseException:
            self.backend.close()
            raise
        if not self.attrs:
            self.backend.close()
            raise CacheSchemaError(f"{self.path} has no cache attributes; is it an AVAR feature cache?")
        try:
            self.config = CacheConfig.from_attrs(self.attrs)
        except CacheSchemaError as exc:
            self.backend.close()
            raise CacheSchemaError(f"{self.path}: {exc}") from None
        self.format = self.backend.format
        self._names = frozenset(self.backend.names())

    @property
    def identity(self) -> dict[str, Any]:
        """The cache's identity attributes, preprocessing in today's form (a cache written
        before preprocessing had named fields reads as if written today, see
        ``cache_schema.legacy``); what a run records as its ``cache_identity``."""
        return cache_identity(self.attrs)

    @property
    def n(self) -> int:
        return self.backend.shape("key")[0]

    def read(self, name: str, rows: np.ndarray | slice | None = None) -> np.ndarray:
        if name not in ARRAY_BY_NAME:
            raise KeyError(f"unknown cache array {name!r}; arrays are {sorted(ARRAY_BY_NAME)}")
        spec = ARRAY_BY_NAME[name]
        if spec.optional and name not in self._names:  # a cache from before the array existed
            n = len(np.arange(self.n)[rows]) if rows is not None else self.n
            return np.full(spec.shape(n, self.config), spec.fill, dtype=spec.numpy_dtype(self.config))
        return self.backend.read(name, rows)

    @property
    def keys(self) -> np.ndarray:
        return self.read("key")

    @property
    def status(self) -> np.ndarray:
        return self.read("status")

    def ok_rows(self) -> np.ndarray:
        return np.flatnonzero(self.status == STATUS_OK)

    def load(
        self,
        fields: Sequence[str] = FEATURE_FIELDS,
        rows: np.ndarray | None = None,
        only_ok: bool = True,
        as_torch: bool = False,
        float32: bool = True,
    ) -> dict[str, Any]:
        """Arrays for ``rows`` (default: every clip, or every ``ok`` clip), plus ``row``
        and ``key``. Features come back as float32 unless ``float32`` is false."""
        if rows is None:
            rows = self.ok_rows() if only_ok else np.arange(self.n)
        rows = np.asarray(rows, dtype=np.int64)
        out: dict[str, Any] = {"row": rows}
        for name in dict.fromkeys(("key", *fields)):
            full = self.read(name)
            a = full[rows]
            if float32 and ARRAY_BY_NAME[name].feature:
                a = a.astype(np.float32)
            out[name] = a
        if as_torch:
            import torch

            for name, a in out.items():
                if isinstance(a, np.ndarray) and a.dtype != object:
                    out[name] = torch.from_numpy(np.ascontiguousarray(a))
        return out

    def load_steps(
        self,
        fields: Sequence[str] = ("label", "video", "audio", "video_mask", "audio_mask"),
        rows: np.ndarray | None = None,
        only_ok: bool = True,
        float32: bool = True,
    ) -> dict[str, Any]:
        """Arrays for ``rows`` in the ragged form that serves both layouts: per-clip fields
        ``[N, ...]``, per-step fields (``STEP_FIELDS``) with every clip's steps concatenated
        in row order ``[S, ...]``, and ``offsets`` ``[N + 1]`` (clip ``i``'s steps are
        ``offsets[i]:offsets[i + 1]``), plus ``row`` and ``key``. Nothing is padded: this is
        how stage 2 holds a cache whose clips have different step counts in memory.

        Dense (v1) caches read as ragged with ``T`` steps per clip."""
        if rows is None:
            rows = self.ok_rows() if only_ok else np.arange(self.n)
        rows = np.asarray(rows, dtype=np.int64)
        step_fields = [f for f in fields if f in STEP_FIELDS]
        clip_fields = [f for f in fields if f not in STEP_FIELDS]
        out = self.load(fields=clip_fields, rows=rows, only_ok=only_ok, float32=float32)
        t = self.config.steps
        out["offsets"] = np.arange(len(rows) + 1, dtype=np.int64) * t
        for name in step_fields:
            a = self.read(name)[rows]
            if float32 and ARRAY_BY_NAME[name].feature:
                a = a.astype(np.float32)
            out[name] = a.reshape(len(rows) * t, *a.shape[2:])
        return out

    def clips(self) -> list[dict[str, Any]]:
        """One summary dict per clip, as ``cache info --json`` lists them."""
        d = {n: self.read(n) for n in ("key", "status", "error", "video_mask", "audio_mask", "duration")}
        return [  # rows without a key hold no clip (free rows)
            {
                "key": str(d["key"][i]),
                "status": "pending" if d["status"][i] == STATUS_PENDING else str(d["status"][i]),
                "error": str(d["error"][i]),
                "has_video": bool(d["video_mask"][i].any()),
                "has_audio": bool(d["audio_mask"][i].any()),
                "duration": float(d["duration"][i]),
            }
            for i in range(self.n) if d["key"][i]
        ]

    def counts(self) -> dict[str, int]:
        """Status counts over the clips; rows without a key (free rows: an interrupted
        extension) hold no clip, are not pending and are counted apart, as the writer
        counts them when it records ``complete``."""
        s = self.status[: self.n]
        free = self.keys == ""
        out = {
            "total": int(np.sum(~free)),
            "ok": int(np.sum(s == STATUS_OK)),
            "error": int(np.sum(s == STATUS_ERROR)),
            "pending": int(np.sum((s == STATUS_PENDING) & ~free)),
        }
        if free.any():
            out["free_rows"] = int(free.sum())
        return out

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "CacheReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_cache(path: str | Path) -> CacheReader:
    return CacheReader(path)
