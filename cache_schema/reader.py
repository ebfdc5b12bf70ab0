"""Read side of a cache: one API over Zarr and HDF5 that returns numpy arrays or torch
tensors. Stage 2 loads whole arrays once (a VAAR-sized cache is ~170 MB in fp32), so
reads are per array, never per clip. A ragged (v2) cache's per-step arrays have no
``[N, T]`` form: :meth:`CacheReader.load_steps` reads them (each step block once)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .identity import cache_identity
from .layout import StepLayout
from .ragged import gather_steps, live_counts, stored_steps
from .schema import (ARRAY_BY_NAME, STATUS_ERROR, STATUS_OK, STATUS_PENDING, STEP_FIELDS, CacheConfig,
                     CacheSchemaError)
from .storage import open_backend

FEATURE_FIELDS = ("video", "audio", "video_mask", "audio_mask", "label")


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

    @property
    def layout(self) -> StepLayout:
        """Where the cache's steps lie in time (fixed ``steps``, or a time grid)."""
        return self.config.layout

    @property
    def ragged(self) -> bool:
        """A ragged (schema v2) cache: per-step arrays only through :meth:`load_steps`."""
        return self.config.ragged

    def read(self, name: str, rows: np.ndarray | slice | None = None) -> np.ndarray:
        if name not in ARRAY_BY_NAME:
            raise KeyError(f"unknown cache array {name!r}; arrays are {sorted(ARRAY_BY_NAME)}")
        if self.ragged and name in STEP_FIELDS:
            raise CacheSchemaError(
                f"{self.path} is a ragged cache (schema v2, {self.layout.describe()}): its clips have different step "
                f"counts, so the per-step array {name!r} has no [clips, steps] form; read it with "
                "CacheReader.load_steps (every clip's steps concatenated, with offsets)")
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

    def step_counts(self) -> np.ndarray:
        """Steps per row (int64): the cache's ``steps`` for every row of a dense (v1) cache;
        a ragged (v2) cache's ``step_count`` of ``ok`` clips, 0 for any other row (a pending
        row may still hold the count of a batch that was killed)."""
        if not self.ragged:
            return np.full(self.n, self.config.steps, dtype=np.int64)
        return live_counts(self.status[: self.n], self.read("step_count")[: self.n])

    def stored_steps(self) -> int:
        """Steps stored in the cache: ``N * T`` (v1), or over every step block (v2,
        including steps no clip references any longer)."""
        return stored_steps(self.backend) if self.ragged else self.n * self.config.steps

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

        Dense (v1) caches read as ragged with ``T`` steps per clip. In a ragged (v2) cache a
        row that is not ``ok`` has no steps. Features stay in the cache's dtype unless
        ``float32``."""
        if rows is None:
            rows = self.ok_rows() if only_ok else np.arange(self.n)
        rows = np.asarray(rows, dtype=np.int64)
        step_fields = [f for f in fields if f in STEP_FIELDS]
        clip_fields = [f for f in fields if f not in STEP_FIELDS]
        out = self.load(fields=clip_fields, rows=rows, only_ok=only_ok, float32=float32)
        if self.ragged:
            counts = self.step_counts()[rows]
            offsets = self.read("step_offset")[rows]
            out["offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            chunk_rows = self.backend.chunk_rows("status")
            for name in step_fields:
                spec = ARRAY_BY_NAME[name]
                dtype = np.dtype(np.float32) if float32 and spec.feature else spec.numpy_dtype(self.config)
                out[name] = gather_steps(self.backend, name, rows, offsets, counts, chunk_rows, dtype,
                                         spec.shape(0, self.config)[1:])
            return out
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
        d = {n: self.read(n) for n in ("key", "status", "error", "duration")}
        if self.ragged:  # a clip has a modality when any of its steps does
            s = self.load_steps(fields=("video_mask", "audio_mask"), rows=np.arange(self.n))
            for m in ("video_mask", "audio_mask"):
                seen = np.concatenate([[0], np.cumsum(s[m])])
                d[m] = (seen[s["offsets"][1:]] - seen[s["offsets"][:-1]] > 0)[:, None]
        else:
            d.update({n: self.read(n) for n in ("video_mask", "audio_mask")})
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
