"""Two storage backends behind one small interface, so that the writer, the reader and
``validate`` never branch on the format.

Zarr v3 is the default: its local store replaces each chunk file atomically, so an
interrupted write leaves either the old or the new chunk, never a torn one. HDF5 is
offered for tools that want one file; it has no such guarantee (see the README).

Every Zarr chunk that is written is stored, even when it holds only fill values (zarr
skips those by default). That makes a missing chunk file mean something: a chunk that
should exist and does not was deleted, and ``cache_schema.integrity`` can say so instead
of silently reading zeros as features.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np

from .errors import InvalidInput, MissingInput
from .lock import CacheLock, CacheLocked, lock_path
from .schema import CacheSchemaError

FORMATS = ("zarr", "hdf5")
HDF5_SUFFIXES = (".h5", ".hdf5")
MODES = ("r", "r+", "a", "w")  # read; read/write an existing cache; read/write, create; new
_H5_ATTR = "avar_cache"  # HDF5 attributes hold one JSON document: nested dicts survive


class Backend(Protocol):
    path: Path
    format: str

    def get_attrs(self) -> dict[str, Any]: ...
    def set_attrs(self, attrs: dict[str, Any]) -> None: ...
    def names(self) -> list[str]: ...
    def groups(self, name: str) -> list[str]: ...
    def has(self, name: str) -> bool: ...
    def create(self, name: str, shape: tuple[int, ...], dtype: np.dtype, chunk_rows: int, fill: Any) -> None: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def dtype(self, name: str) -> str: ...
    def chunk_rows(self, name: str) -> int: ...
    def resize(self, name: str, n: int) -> None: ...
    def read(self, name: str, rows: slice | np.ndarray | None = None) -> np.ndarray: ...
    def write(self, name: str, rows: np.ndarray, values: np.ndarray) -> None: ...
    def write_slice(self, name: str, rows: slice, values: np.ndarray) -> None: ...
    def missing_chunks(self, name: str) -> list[slice]: ...
    def discard_interrupted_writes(self) -> int: ...
    def close(self) -> None: ...


def detect_format(path: Path) -> str:
    """Format of an existing cache, or the one its name asks for."""
    if path.is_dir():
        return "zarr"
    if path.is_file():
        with path.open("rb") as f:
            if f.read(8) == b"\x89HDF\r\n\x1a\n":
                return "hdf5"
        raise CacheSchemaError(f"{path} is neither a Zarr directory nor an HDF5 file")
    return "hdf5" if path.suffix.lower() in HDF5_SUFFIXES else "zarr"


def _as_text(a: np.ndarray) -> np.ndarray:
    """Strings come back as Python ``str`` objects whatever the backend stored."""
    return np.array([x.decode() if isinstance(x, bytes) else str(x) for x in a.ravel()], dtype=object).reshape(a.shape)


class ZarrBackend:
    format = "zarr"

    def __init__(self, path: Path, mode: str) -> None:
        import zarr

        from zarr.errors import NodeNotFoundError

        self.path = path
        try:
            self._g = zarr.open_group(str(path), mode=mode)
        except NodeNotFoundError:  # (a FileNotFoundError too) a folder, but no Zarr group in it
            raise CacheSchemaError(f"{path} is a folder but not a Zarr cache (no zarr.json in it); pass the path of "
                                   "a cache written by `cli.py extract`") from None
        except OSError:  # a folder that cannot be created or written: the caller says what to do
            raise
        except Exception as exc:  # zarr raises several types for "not a group"
            raise CacheSchemaError(f"cannot open {path} as a Zarr cache: {exc}") from exc

    def get_attrs(self) -> dict[str, Any]:
        return dict(self._g.attrs)

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        self._g.attrs.update(attrs)

    def names(self) -> list[str]:
        """The arrays at the top of the cache (nested ones, such as step blocks, excluded)."""
        return sorted(self._g.array_keys())

    def groups(self, name: str) -> list[str]:
        """The sub-groups of the group ``name`` (none when it does not exist)."""
        import zarr

        try:
            g = self._g[name]
        except KeyError:
            return []
        return sorted(g.group_keys()) if isinstance(g, zarr.Group) else []

    def has(self, name: str) -> bool:
        """Whether an array of this (possibly nested, ``a/b/c``) name exists."""
        import zarr

        try:
            return isinstance(self._g[name], zarr.Array)
        except KeyError:
            return False

    def create(self, name: str, shape: tuple[int, ...], dtype: np.dtype, chunk_rows: int, fill: Any) -> None:
        zdtype: Any = str if dtype == np.dtype(object) else dtype
        chunks = (max(1, chunk_rows),) + tuple(shape[1:])
        # overwrite: a creation that was interrupted before the attributes were written
        # left arrays but no cache; the writer recreates them (it checked they are ours)
        self._g.create_array(name, shape=shape, chunks=chunks, dtype=zdtype, fill_value=fill, overwrite=True)

    def _arr(self, name: str):
        return self._g[name]

    def _warr(self, name: str):
        """The array as written to: every chunk stored, fill-only ones included (module doc)."""
        return self._g[name].with_config({"write_empty_chunks": True})

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._arr(name).shape)

    def dtype(self, name: str) -> str:
        dt = self._arr(name).dtype
        return "str" if dt.kind in "OTU" else np.dtype(dt).name

    def chunk_rows(self, name: str) -> int:
        return int(self._arr(name).chunks[0])

    def resize(self, name: str, n: int) -> None:
        a = self._arr(name)
        a.resize((n,) + tuple(a.shape[1:]))

    def read(self, name: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        a = self._arr(name)
        if rows is None:
            out = a[...]
        elif isinstance(rows, slice):
            out = a[rows]
        else:
            out = a.oindex[np.asarray(rows, dtype=np.int64)]
        out = np.asarray(out)
        return _as_text(out) if out.dtype.kind in "OTU" else out

    def write(self, name: str, rows: np.ndarray, values: np.ndarray) -> None:
        self._warr(name).oindex[np.asarray(rows, dtype=np.int64)] = values

    def write_slice(self, name: str, rows: slice, values: np.ndarray) -> None:
        self._warr(name)[rows] = values

    def missing_chunks(self, name: str) -> list[slice]:
        """Row ranges whose chunk file does not exist."""
        a = self._arr(name)
        n, rows = a.shape[0], a.chunks[0]
        trailing = (0,) * (len(a.shape) - 1)
        out = []
        for i, sl in enumerate(iter_chunks(n, rows)):
            key = a.metadata.encode_chunk_key((i,) + trailing)
            if not (self.path / name / key).exists():
                out.append(sl)
        return out

    def discard_interrupted_writes(self) -> int:
        """Delete the temporary files of writes that a killed process never renamed into
        place (zarr writes ``<chunk>.<uuid>.partial`` first). Only the lock holder may
        call this: another live writer's temporary file would be deleted under it."""
        n = 0
        for p in self.path.rglob("*.partial"):
            p.unlink(missing_ok=True)
            n += 1
        return n

    def close(self) -> None:  # zarr keeps no handle open
        pass


class H5Backend:
    format = "hdf5"

    def __init__(self, path: Path, mode: str) -> None:
        import h5py

        self.path = path
        h5mode = {"r": "r", "r+": "r+", "a": "a", "w": "w"}[mode]
        try:
            self._f = h5py.File(path, h5mode)
        except BlockingIOError:  # HDF5's file lock: another process has it open (for writing, if we only read)
            if h5mode == "r":
                raise CacheLocked(being_written_message(path)) from None
            raise CacheLocked(f"{path} is open in another process (HDF5 locks the file while it is read or "
                              "written); wait for that process to finish and rerun, or use another --out") from None
        except OSError as exc:
            raise CacheSchemaError(
                f"cannot open {path} as an HDF5 cache ({exc}); an HDF5 file interrupted while "
                "being written can be unreadable: delete it and rerun, or use --format zarr"
            ) from exc

    def get_attrs(self) -> dict[str, Any]:
        raw = self._f.attrs.get(_H5_ATTR)
        if raw is None:
            return {}
        try:
            attrs = json.loads(raw)
        except (TypeError, ValueError) as exc:
            raise CacheSchemaError(f"{self.path}: the cache attributes are not readable JSON ({exc}); "
                                   "extract it again into a new --out") from None
        if not isinstance(attrs, dict):
            raise CacheSchemaError(f"{self.path}: the cache attributes are not a JSON object; "
                                   "extract it again into a new --out")
        return attrs

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        merged = {**self.get_attrs(), **attrs}
        self._f.attrs[_H5_ATTR] = json.dumps(merged)
        self._f.flush()

    def names(self) -> list[str]:
        import h5py

        return sorted(k for k, v in self._f.items() if isinstance(v, h5py.Dataset))

    def groups(self, name: str) -> list[str]:
        import h5py

        g = self._f.get(name)
        return sorted(k for k, v in g.items() if isinstance(v, h5py.Group)) if isinstance(g, h5py.Group) else []

    def has(self, name: str) -> bool:
        import h5py

        return isinstance(self._f.get(name), h5py.Dataset)

    def create(self, name: str, shape: tuple[int, ...], dtype: np.dtype, chunk_rows: int, fill: Any) -> None:
        import h5py

        h5dtype = h5py.string_dtype("utf-8") if dtype == np.dtype(object) else dtype
        chunks = (max(1, chunk_rows),) + tuple(shape[1:])
        if name in self._f:  # left by an interrupted creation (see ZarrBackend.create)
            del self._f[name]
        self._f.create_dataset(
            name, shape=shape, maxshape=(None,) + tuple(shape[1:]), chunks=chunks, dtype=h5dtype, fillvalue=fill
        )

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._f[name].shape)

    def dtype(self, name: str) -> str:
        import h5py

        ds = self._f[name]
        return "str" if h5py.check_string_dtype(ds.dtype) else ds.dtype.name

    def chunk_rows(self, name: str) -> int:
        return int(self._f[name].chunks[0])

    def resize(self, name: str, n: int) -> None:
        self._f[name].resize(n, axis=0)

    def read(self, name: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        ds = self._f[name]
        if rows is None:
            out = ds[...]
        elif isinstance(rows, slice):
            out = ds[rows]
        else:
            idx = np.asarray(rows, dtype=np.int64)
            order = np.argsort(idx)  # h5py wants increasing indices
            tmp = ds[idx[order]] if len(idx) else ds[0:0]
            out = np.empty_like(tmp)
            out[order] = tmp
        out = np.asarray(out)
        return _as_text(out) if out.dtype.kind in "OSU" else out

    def write(self, name: str, rows: np.ndarray, values: np.ndarray) -> None:
        idx = np.asarray(rows, dtype=np.int64)
        order = np.argsort(idx)
        self._f[name][idx[order]] = np.asarray(values)[order]

    def write_slice(self, name: str, rows: slice, values: np.ndarray) -> None:
        self._f[name][rows] = values

    def missing_chunks(self, name: str) -> list[slice]:
        return []  # HDF5 allocates chunks inside its one file; damage shows as unreadable

    def discard_interrupted_writes(self) -> int:
        return 0

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()


def being_written_message(path: Path) -> str:
    """Why an HDF5 cache cannot be read now, honestly: another process holds it open for
    writing (HDF5 locks the file), so nothing about its content can be known until that
    process ends; the file is not known to be damaged, and must not be deleted."""
    owner = CacheLock(path).owner()  # reads the lock file's note only; takes no lock
    who = (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} since {owner.get('since', '?')}, "
           f"as {lock_path(path).name} records" if owner.get("pid") else "another process")
    return (f"{path} is being written by {who}: HDF5 keeps a file locked while it is written, so it cannot be "
            "read or checked until that process finishes (it is not known to be damaged; do not delete it). "
            "Wait for it and rerun, or extract to a Zarr cache (--out NAME.zarr), which can be read at any moment")


def open_backend(path: Path, mode: str, fmt: str | None = None) -> Backend:
    """Open ``path`` in mode ``r`` (read), ``r+`` (read/write, must exist), ``a``
    (read/write, create) or ``w`` (new)."""
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown cache format {fmt!r}; choose one of {FORMATS}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    if mode in ("r", "r+") and not path.exists():
        raise MissingInput(f"no cache at {path}; run `python cli.py extract ... --out {path}` first")
    if fmt == "hdf5":
        return H5Backend(path, mode)
    return ZarrBackend(path, mode)


def iter_chunks(n: int, chunk_rows: int) -> Iterator[slice]:
    for start in range(0, n, chunk_rows):
        yield slice(start, min(n, start + chunk_rows))
