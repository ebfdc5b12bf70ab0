"""Writing a file whole or not at all, for every stage.

Every file the project writes (run files, split files, reports, figures, checkpoints,
synthetic media and their metadata) is written to a temporary name in the same folder and
then renamed over the target with ``os.replace``, which is atomic on one file system. A
full disk or a killed process then leaves the previous file (or none), never a torn or
empty one: a 0-byte ``config.json`` or ``<cache>.split.json`` would break every later
command that reads it, where a missing one says plainly what to run first. The cache's
own chunks are written by the storage backend (Zarr writes each chunk the same way).

It lives in ``cache_schema`` because that is the one package every stage imports. JSON
goes through :func:`write_json` only, which writes strict JSON: a non-finite float (the
loss of a diverged run, a metric undefined on one class) becomes ``null``, never the bare
``NaN`` that no strict JSON reader accepts.

No ``fsync``: the rename protects against a killed process and a full disk (the write of
the temporary fails, the target is untouched); surviving a power cut is not promised.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from .errors import InvalidInput


def temporary_path(path: str | Path) -> Path:
    """Where :func:`replace_atomically` writes before the rename: the same folder (so the
    rename stays on one file system), a hidden name carrying the process id (so two
    processes writing the same file never share a temporary)."""
    path = Path(path)
    name = f".{path.name}.{os.getpid()}.tmp"
    if len(os.fsencode(name)) > 255:  # a target name near the file system's limit: a short, unique temporary
        name = f".{hashlib.sha1(os.fsencode(path.name)).hexdigest()[:16]}.{os.getpid()}.tmp"
    return path.with_name(name)


def replace_atomically(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``.

    ``write`` must write ``tmp`` only (whatever format it needs: text, safetensors, a PNG
    with an explicit format). If it fails, the temporary is removed and ``path`` is left
    as it was."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``Path.write_text``, atomically."""
    return replace_atomically(path, lambda p: p.write_text(text))


def write_bytes(path: str | Path, data: bytes) -> Path:
    """``Path.write_bytes``, atomically."""
    return replace_atomically(path, lambda p: p.write_bytes(data))


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf, numpy's too) replaced by ``None``,
    through dicts, lists and tuples: what strict JSON can hold."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = 1) -> str:
    """Strict JSON text of ``obj`` (non-finite floats as ``null``; see :func:`finite_json`)."""
    return json.dumps(finite_json(obj), indent=indent, allow_nan=False)


def write_json(path: str | Path, obj: Any, indent: int | None = 1, newline: bool = False) -> Path:
    """``obj`` as strict JSON (``indent=1``, the run files' layout), atomically;
    ``newline`` ends the file with one."""
    return write_text(path, json_text(obj, indent) + ("\n" if newline else ""))


def check_output_file(path: str | Path, option: str = "--out", example: str = "out.json") -> Path:
    """``path`` as a place a file can be written, or ``InvalidInput`` saying why not (a
    folder in its place, a file where a folder should be, a folder that is not writable).
    Called before a command's work starts, so that it never computes everything and then
    fails on its output option."""
    path = Path(path)
    if path.is_dir():
        raise InvalidInput(f"{option} {path} is a folder; give a file name inside it, e.g. {path / example}")
    folder = path.parent if str(path.parent) else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InvalidInput(f"{option} {path}: {folder} is not a folder; choose another output path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidInput(f"{option} {path}: the folder {folder} is not writable; choose another output path")
    return path


__all__ = ["check_output_file", "finite_json", "json_text", "replace_atomically", "temporary_path", "write_bytes", "write_json",
           "write_text"]
