"""Two storage backends behind one small interface, so that the writer, the reader and
``validate`` never branch on the format.

Zarr v3 is the default: its local store replaces each chunk file atomically, so an
interrupted write leaves either the old or the new chunk, never a torn one. HDF5 is
offered for tools that want one file; it has no such guarantee (see the README).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np

from .schema import CacheSchemaError

FORMATS = ("zarr", "hdf5")
HDF5_SUFFIXES = (".h5", ".hdf5")
_H5_ATTR = "avar_cache"  # HDF5 attributes hold one JSON document: nested dicts survive


class Backend(Protocol):
    path: Path
    format: str

    def get_attrs(self) -> dict[str, Any]: ...
    def set_attrs(self, attrs: dict[str, Any]) -> None: ...
    def names(self) -> list[str]: ...
    def create(self, name: str, shape: tuple[int, ...], dtype: np.dtype, chunk_rows: int, fill: Any) -> None: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def dtype(self, name: str) -> str: ...
    def chunk_rows(self, name: str) -> int: ...
    def resize(self, name: str, n: int) -> None: ...
    def read(self, name: str, rows: slice | np.ndarray | None = None) -> np.ndarray: ...
    def write(self, name: str, rows: np.ndarray, values: np.ndarray) -> None: ...
    def write_slice(self, name: str, rows: slice, values: np.ndarray) -> None: ...
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

        self.path = path
        try:
            self._g = zarr.open_group(str(path), mode=mode)
        except Exception as exc:  # zarr raises several types for "not a group"
            raise CacheSchemaError(f"cannot open {path} as a Zarr cache: {exc}") from exc

    def get_attrs(self) -> dict[str, Any]:
        return dict(self._g.attrs)

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        self._g.attrs.update(attrs)

    def names(self) -> list[str]:
        return sorted(self._g.array_keys())

    def create(self, name: str, shape: tuple[int, ...], dtype: np.dtype, chunk_rows: int, fill: Any) -> None:
        zdtype: Any = str if dtype == np.dtype(object) else dtype
        chunks = (max(1, chunk_rows),) + tuple(shape[1:])
        self._g.create_array(name, shape=shape, chunks=chunks, dtype=zdtype, fill_value=fill)

    def _arr(self, name: str):
        return self._g[name]

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
        self._arr(name).oindex[np.asarray(rows, dtype=np.int64)] = values

    def write_slice(self, name: str, rows: slice, values: np.ndarray) -> None:
        self._arr(name)[rows] = values

    def close(self) -> None:  # zarr keeps no handle open
        pass


class H5Backend:
    format = "hdf5"

    def __init__(self, path: Path, mode: str) -> None:
        import h5py

        self.path = path
        h5mode = {"r": "r", "a": "a", "w": "w"}[mode]
        try:
            self._f = h5py.File(path, h5mode)
        except OSError as exc:
            raise CacheSchemaError(
                f"cannot open {path} as an HDF5 cache ({exc}); an HDF5 file interrupted while "
                "being written can be unreadable: delete it and rerun, or use --format zarr"
            ) from exc

    def get_attrs(self) -> dict[str, Any]:
        raw = self._f.attrs.get(_H5_ATTR)
        return {} if raw is None else json.loads(raw)

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        merged = {**self.get_attrs(), **attrs}
        self._f.attrs[_H5_ATTR] = json.dumps(merged)
        self._f.flush()

    def names(self) -> list[str]:
        return sorted(self._f.keys())

    def create(self, name: str, shape: tuple[int, ...], dtype: np.dtype, chunk_rows: int, fill: Any) -> None:
        import h5py

        h5dtype = h5py.string_dtype("utf-8") if dtype == np.dtype(object) else dtype
        chunks = (max(1, chunk_rows),) + tuple(shape[1:])
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

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()


def open_backend(path: Path, mode: str, fmt: str | None = None) -> Backend:
    """Open ``path`` in mode ``r`` (read), ``a`` (read/write, create) or ``w`` (new)."""
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown cache format {fmt!r}; choose one of {FORMATS}")
    if mode == "r" and not path.exists():
        raise FileNotFoundError(f"no cache at {path}; run `python cli.py extract ... --out {path}` first")
    if fmt == "hdf5":
        return H5Backend(path, mode)
    return ZarrBackend(path, mode)


def iter_chunks(n: int, chunk_rows: int) -> Iterator[slice]:
    for start in range(0, n, chunk_rows):
        yield slice(start, min(n, start + chunk_rows))
