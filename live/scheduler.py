"""Between the sources and the scorer: bounded, so that live mode never falls behind quietly.

Each source has a queue of at most ``depth`` complete units. A live source (a camera, a
stream, a file paced ``--realtime``) never waits: when its queue is full the *oldest*
unit is dropped, counted and reported (``dropped_steps``), so latency stays bounded by
about ``depth`` scoring rounds whatever the load. A file read as fast as it decodes
waits for room instead (nothing is lost; it is not live). The scorer takes the oldest
unit of every source that has one, round-robin, so one busy camera cannot starve the
others.
"""

from __future__ import annotations

import threading
from collections import deque

from .assembler import LiveUnit

__all__ = ["Scheduler"]


class Scheduler:
    def __init__(self, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.depth = depth
        self._queues: dict[str, deque[LiveUnit]] = {}
        self._cond = threading.Condition()
        self.dropped: dict[str, int] = {}
        self._unreported: dict[str, int] = {}
        self._closed = False

    def put(self, unit: LiveUnit, block: bool = False, stop: threading.Event | None = None) -> None:
        with self._cond:
            q = self._queues.setdefault(unit.source, deque())
            if block:
                while len(q) >= self.depth and not self._closed and not (stop is not None and stop.is_set()):
                    self._cond.wait(0.2)
            elif len(q) >= self.depth:
                q.popleft()
                self.dropped[unit.source] = self.dropped.get(unit.source, 0) + 1
                self._unreported[unit.source] = self._unreported.get(unit.source, 0) + 1
            q.append(unit)
            self._cond.notify_all()

    def take(self, timeout: float = 0.2) -> list[LiveUnit]:
        """The oldest unit of each source that has one (waits up to ``timeout`` for any)."""
        with self._cond:
            if not any(self._queues.values()):
                self._cond.wait(timeout)
            batch = [q.popleft() for q in self._queues.values() if q]
            if batch:
                self._cond.notify_all()
            return batch

    def pending(self, source: str | None = None) -> int:
        """Units waiting (of one source, or of all)."""
        with self._cond:
            if source is not None:
                return len(self._queues.get(source, ()))
            return sum(len(q) for q in self._queues.values())

    def take_drop_reports(self) -> dict[str, int]:
        """Units dropped per source since the last call."""
        with self._cond:
            out, self._unreported = {k: v for k, v in self._unreported.items() if v}, {}
            return out

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
