"""A clip's key is its path relative to the dataset root, and any name a file system can
hold must make one.

POSIX names are bytes; the cache stores keys as UTF-8 text. A name that is not valid
UTF-8 (``caf\\xe9.mp4`` written by a Latin-1 tool) has no text form, so its undecodable
bytes are written as ``\\xHH``. To keep that reversible, a backslash of the name that
would otherwise read as the start of an escape (one followed by ``x`` or by another
backslash, or by an escaped byte) is doubled. A control character (a line break, a tab,
an escape; Unicode categories Cc, Zl, Zp) is escaped the same way, byte by byte of its
UTF-8 form: a key is one line in every output that lists keys (``cache info``, the logs,
TSV split files), and a file name on disk is not the user's mistake to be refused. Every
other name, which is nearly every name, is its own key, so caches made before these
rules keep their keys.

:func:`media_path` turns a key back into the file's path under a root.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

_HEX = re.compile(r"[0-9a-fA-F]{2}")


def _escaped_byte(c: str) -> bool:
    return "\udc80" <= c <= "\udcff"  # how os.fsdecode (surrogateescape) keeps an undecodable byte


def _control(c: str) -> bool:
    """A character that breaks or hides a line (module doc)."""
    return unicodedata.category(c) in ("Cc", "Zl", "Zp")


def _escaped(c: str) -> bool:
    return _escaped_byte(c) or _control(c)


def key_from_relpath(rel: str | bytes) -> str:
    """The key of the relative path ``rel`` (posix form, as ``os.fsdecode`` or bytes)."""
    s = os.fsdecode(rel) if isinstance(rel, bytes) else rel
    out = []
    for i, c in enumerate(s):
        if _escaped_byte(c):
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif _control(c):
            out.append("".join(f"\\x{b:02x}" for b in c.encode("utf-8")))
        elif c == "\\":
            nxt = s[i + 1] if i + 1 < len(s) else ""
            out.append("\\\\" if nxt in ("x", "\\") or (nxt and _escaped(nxt)) else "\\")
        else:
            out.append(c)
    return "".join(out)


def relpath_from_key(key: str) -> str:
    """The relative path a key was made from (a str for ``os`` calls: undecodable bytes
    come back as ``os.fsdecode`` writes them). Inverse of :func:`key_from_relpath`."""
    raw = bytearray()
    i = 0
    while i < len(key):
        if key.startswith("\\\\", i):
            raw += b"\\"
            i += 2
        elif key.startswith("\\x", i) and _HEX.fullmatch(key[i + 2:i + 4]):
            raw.append(int(key[i + 2:i + 4], 16))
            i += 4
        else:
            raw += key[i].encode("utf-8", "surrogateescape")
            i += 1
    return os.fsdecode(bytes(raw))


def media_path(root: str | Path, key: str) -> Path:
    """The file a clip's key names under the dataset ``root``."""
    return Path(root) / relpath_from_key(key)


def storable_text(text: str) -> str:
    """``text`` as the cache can store it (valid UTF-8): an undecodable byte that reached
    a message through a file name becomes ``\\xHH``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name made
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


__all__ = ["key_from_relpath", "media_path", "relpath_from_key", "storable_text"]
