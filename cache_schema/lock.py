"""One writing job per cache: an advisory ``flock`` on ``<cache>.lock`` beside the cache.

Why flock and not a PID file: the kernel releases the lock when the holding process dies,
even by ``kill -9`` or an OOM kill, so a crashed run never leaves a stale lock that blocks
the next one, and no PID has to be checked for liveness (which is impossible across the
nodes of a cluster). The file itself stays after a run: deleting it while another process
has it open would let two processes lock two different inodes of the same name.

A forked child inherits the descriptor, and an flock belongs to the open file
description, not to a process: a child that outlived a killed parent would keep the
cache locked. So every forked child closes its copies at once (an ``os.register_at_fork``
hook; :meth:`FileLock.release_in_child` is the same for one lock), without unlocking,
which would release the parent's lock too. Descriptors are also close-on-exec.

The file's content (pid, host, start time) is only there to make the refusal message
useful; the lock is the ``flock``. On a shared filesystem, flock must be supported there
(NFS emulates it with POSIX locks; Lustre needs the ``flock`` mount option).
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import socket
import weakref
from pathlib import Path
from typing import Any

from .errors import InvalidInput
from .schema import CacheError

logger = logging.getLogger(__name__)


class CacheLocked(CacheError):
    """Another process is writing this cache."""


class CacheWriteError(CacheError):
    """The cache (or the folder that should hold it) cannot be written."""


def lock_path(cache: Path) -> Path:
    """Beside the cache, not inside it: the lock must exist before the cache does, and a
    Zarr store should hold nothing but the store."""
    return cache.with_name(cache.name + ".lock")


_HELD: "weakref.WeakSet[FileLock]" = weakref.WeakSet()  # locks this process holds now


def _close_held_in_child() -> None:
    for lock in list(_HELD):
        lock.release_in_child()


os.register_at_fork(after_in_child=_close_held_in_child)


class FileLock:
    """Exclusive, non-blocking ``flock`` of one lock file for the life of a job (module doc):
    released by the kernel when the holder dies, never held by a forked child.

    Subclasses say what is locked through two public hooks: :meth:`busy` (the error when
    another process holds it) and :meth:`unavailable` (the error when the lock file cannot
    be made or locked). Use as a context manager, or :meth:`acquire` / :meth:`release`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def busy(self, holder: str) -> Exception:
        """The error raised when ``holder`` (pid, host, start time) has the lock."""
        return InvalidInput(f"{self.path} is locked by {holder}; wait for it to finish")

    def unavailable(self, exc: OSError, opening: bool) -> Exception:
        """The error raised when the lock file cannot be created (``opening``) or locked."""
        return InvalidInput(f"cannot lock {self.path} ({exc.strerror or exc})")

    def acquire(self) -> "FileLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise self.unavailable(exc, opening=True) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise self.busy(self.holder()) from None
            raise self.unavailable(exc, opening=False) from exc
        self._fd = fd
        _HELD.add(self)
        self._write_owner()
        return self

    def _write_owner(self) -> None:
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, (json.dumps(owner) + "\n").encode(), 0)
        except OSError as exc:  # the lock holds; only the message of a refused peer suffers
            logger.warning("could not record the lock owner in %s: %s", self.path, exc)

    def owner(self) -> dict[str, Any]:
        """What the holder wrote (plain JSON; empty when unreadable)."""
        try:
            data = json.loads(self.path.read_text() or "{}")
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def holder(self) -> str:
        """``pid N (host H) since T`` of the process that holds (or last held) the lock."""
        o = self.owner()
        return f"pid {o.get('pid', '?')} (host {o.get('host', '?')}) since {o.get('since', '?')}"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        _HELD.discard(self)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def release_in_child(self) -> None:
        """Drop a forked child's copy of the descriptor, leaving the parent's lock held
        (``flock(LOCK_UN)`` here would unlock the shared file description for both)."""
        if self._fd is None:
            return
        _HELD.discard(self)
        try:
            os.close(self._fd)
        except OSError:  # already closed by whoever forked us
            pass
        self._fd = None

    def __enter__(self) -> "FileLock":
        return self if self.held else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class CacheLock(FileLock):
    """One writing job per cache: the lock file ``<cache>.lock`` beside it."""

    def __init__(self, cache: str | Path) -> None:
        self.cache = Path(cache)
        super().__init__(lock_path(self.cache))

    def busy(self, holder: str) -> Exception:
        return CacheLocked(
            f"cache {self.cache} is being written by {holder}; wait for it to finish or use another --out. "
            f"(The lock is {self.path}; the kernel releases it when that process exits, so it never goes stale.)"
        )

    def unavailable(self, exc: OSError, opening: bool) -> Exception:
        if not opening:
            return CacheWriteError(f"cannot lock {self.path} ({exc.strerror or exc}); the filesystem may not support "
                                   "flock (Lustre: mount with -o flock)")
        why = exc.strerror or str(exc)
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            why = f"a part of {self.path.parent} is a file, not a folder"
        return CacheWriteError(f"cannot write the cache at {self.cache}: {why}; choose an --out inside a folder you "
                               "can write to")


__all__ = ["CacheLock", "CacheLocked", "CacheWriteError", "FileLock", "lock_path"]
