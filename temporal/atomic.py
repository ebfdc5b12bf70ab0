"""Writing a file whole or not at all.

Every file of a run directory (and every figure) is written to a temporary name in the
same folder and then renamed over the target with ``os.replace``, which is atomic on one
file system. A full disk or a killed process then leaves the previous file (or none),
never a torn or empty one: a 0-byte ``config.json`` would break every later command on
the run, where a missing one says plainly "train first".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


def replace_atomically(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``.

    The temporary name keeps the folder (so the rename stays on one file system) and adds
    the process id (so two processes writing the same file never share a temporary). If
    ``write`` fails, the temporary is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
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


def write_json(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    """``obj`` as JSON (``indent=1``, the run files' layout), atomically."""
    return write_text(path, json.dumps(obj, indent=indent))


__all__ = ["replace_atomically", "write_json", "write_text"]
