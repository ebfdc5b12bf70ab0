"""Child processes die with their parent.

Why: a parent killed by ``kill -9`` or the OOM killer runs no cleanup, so its children
are re-parented to init and may live on for ever (a DataLoader worker whose result
queue's feeder thread blocks on a full pipe waits in ``join`` on a futex). A child that
outlives its job costs memory and, if it inherited a descriptor of the cache lock, keeps
the cache locked (``cache_schema.lock`` also closes its descriptors in forked children).

Every process the project starts calls :func:`die_with_parent` first (as, or inside, its
initializer). On Linux the kernel then kills the child with SIGKILL when its parent dies;
elsewhere a daemon thread polls the parent id. It lives here because every stage imports
``cache_schema`` and the stages start children of their own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_S = 1.0  # how often the portable fallback looks at the parent id


def die_with_parent(parent_pid: int | None = None) -> None:
    """Arrange for this process to be killed as soon as its parent dies.

    ``parent_pid`` is the parent's pid as the parent saw it before starting this process
    (``os.getpid()`` there, passed to the child). It closes the race in which the parent
    dies after the fork but before the kernel was asked to watch it: then this process
    is already an orphan and exits at once. Without it that race is not checked.

    On Linux the death signal fires when the *thread* that forked this process exits;
    the project forks from the thread that runs the job and waits for the children.
    """
    if not _set_pdeathsig():
        _watch_parent(parent_pid if parent_pid is not None else os.getppid())
    if parent_pid is not None and os.getppid() != parent_pid:
        logger.debug("parent %d died before this process (%d) started; exiting", parent_pid, os.getpid())
        os._exit(1)


def spawned_worker_init(parent_pid: int) -> None:
    """Initializer of the project's spawned worker pools (``compare --jobs``, ``bench
    extract``'s memory probe), given ``os.getpid()`` of the pool's creator: die with the
    parent, then the process-wide start-up every entry point does (denormal floats
    flushed, see ``cli.main``)."""
    die_with_parent(parent_pid)
    import torch  # here: cache_schema itself does not need torch

    torch.set_flush_denormal(True)


def _set_pdeathsig() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:
        logger.debug("prctl(PR_SET_PDEATHSIG) unavailable (%s); polling the parent instead", exc)
        return False
    return True


def _watch_parent(parent_pid: int) -> None:
    """The portable fallback: a daemon thread that ends the process when it is orphaned."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


__all__ = ["die_with_parent", "spawned_worker_init"]
