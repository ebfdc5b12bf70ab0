"""A released ``.npy`` feature file, read only after its header has been checked against
the file's size.

``np.load`` trusts the header: a file of 64 bytes whose header declares a
``[10**7, 10**6]`` float32 array makes it allocate 40 TB first, and the ``MemoryError``
stops the whole import. Here the header is read alone (numpy's own header readers), the
bytes it declares are compared with the bytes the file holds, and the array is read only
when they are there; a file that lies is a :class:`NpyError` (a ``ValueError``), which
the importer records as that video's error. Object arrays are refused, never unpickled.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format


class NpyError(ValueError):
    """The file is not a readable ``.npy`` array, or its header declares more than it holds."""


def npy_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes the array needs after the header) as the header declares them,
    checked against the file's size without reading the array."""
    path = Path(path)
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(f, max_header_size=2**16)
            elif version == (2, 0):
                shape, _, dtype = npy_format.read_array_header_2_0(f, max_header_size=2**16)
            else:
                raise NpyError(f"{path}: .npy format version {version[0]}.{version[1]} is not read here; "
                               "save it with numpy.save (version 1.0 or 2.0)")
        except NpyError:
            raise
        except (ValueError, EOFError, SyntaxError) as exc:
            raise NpyError(f"{path}: not a .npy file ({exc})") from None
        offset = f.tell()
    if dtype.hasobject:
        raise NpyError(f"{path}: holds Python objects (dtype {dtype}); feature files hold numbers")
    needed = math.prod(shape) * dtype.itemsize
    if needed > size - offset:
        raise NpyError(f"{path}: its header declares a {dtype} array of shape {tuple(shape)} ({needed:,} bytes), "
                       f"and the file holds {size - offset:,} bytes after the header; it is truncated or damaged: "
                       "download or write it again")
    return tuple(shape), dtype, needed


def read_npy(path: str | Path) -> np.ndarray:
    """The array of ``path`` once :func:`npy_header` has found its bytes there (module doc)."""
    npy_header(path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as exc:
        raise NpyError(f"{path}: not a readable .npy array ({exc})") from None


__all__ = ["NpyError", "npy_header", "read_npy"]
