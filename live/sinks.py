"""Where live events go: JSON lines, a webhook, and alert snapshots.

* :class:`JsonLinesSink`: one JSON object per line (standard output, or a file opened
  for appending), flushed line by line so that a reader (``tail -f``, a log shipper)
  sees each event at once and nothing is lost when the process is stopped.
* :class:`WebhookSink`: POSTs each alert event as JSON on a thread of its own, with a
  timeout and retries; its queue is bounded, so a slow or dead receiver never delays
  scoring: what it cannot take is dropped, logged and counted.
* :class:`SnapshotWriter`: the peak frame of each alert as a JPEG, written under a
  temporary name and renamed into place (called by the scorer before the alert event is
  published, so the event can name the file).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import queue
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any, Callable

from PIL import Image

from cache_schema import InvalidInput, replace_atomically

from .events import ALERT_END, ALERT_START, AlertEvent, Event, FrameEvent

__all__ = ["JsonLinesSink", "SnapshotWriter", "WebhookSink", "check_webhook_url", "jpeg_bytes", "slug"]

logger = logging.getLogger(__name__)


def slug(name: str) -> str:
    """A source name as a file-name part (URLs hold ``/`` and ``:``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:80] or "source"


def check_webhook_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host (and a valid port), else ``InvalidInput``:
    checked when the command starts, because a URL that cannot work would otherwise only
    show up as failed deliveries, one log line per alert, long after the operator left."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError as e:
        raise InvalidInput(f"--webhook {url}: not a valid URL ({e})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidInput(f"--webhook {url}: give an http:// or https:// URL")
    if not parts.hostname:
        raise InvalidInput(f"--webhook {url}: the URL names no host (e.g. http://127.0.0.1:8080/hook)")
    return url


def jpeg_bytes(image: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class JsonLinesSink:
    """Every event but frames, one line each; ``stream`` stays open for the caller to close
    unless the sink opened it (``path``)."""

    def __init__(self, stream: IO[str] | None = None, path: str | Path | None = None,
                 on_closed: Callable[[], None] | None = None) -> None:
        self._own = path is not None
        self._on_closed = on_closed  # the reader went away (``watch ... | head``): the caller stops
        self.closed_by_reader = False
        try:
            self._stream = open(path, "a", encoding="utf-8") if path is not None else stream  # noqa: SIM115
        except OSError as e:
            raise InvalidInput(f"--out {path}: cannot append to it ({e.strerror or e})") from None
        if self._stream is None:
            raise ValueError("give a stream or a path")
        self.lines = 0

    def handle(self, event: Event) -> None:
        if isinstance(event, FrameEvent) or self.closed_by_reader:
            return
        try:
            self._stream.write(json.dumps(event.to_json(), ensure_ascii=False) + "\n")
            self._stream.flush()
        except BrokenPipeError:
            self.closed_by_reader = True
            logger.info("the reader of the JSON lines went away: stopping")
            if self._stream is sys.stdout:  # so that Python's own flush at exit does not fail on it
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            if self._on_closed is not None:
                self._on_closed()
            return
        self.lines += 1

    def close(self) -> None:
        try:
            if not self.closed_by_reader:
                self._stream.flush()
        finally:
            if self._own:
                self._stream.close()


class WebhookSink:
    """Alert events POSTed to ``url`` as JSON (``Content-Type: application/json``)."""

    def __init__(self, url: str, timeout: float = 5.0, retries: int = 3, backoff: float = 0.5,
                 max_queue: int = 1000) -> None:
        check_webhook_url(url)
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff
        self._queue: queue.Queue[AlertEvent | None] = queue.Queue(maxsize=max_queue)
        self.delivered = self.failed = self.dropped = 0
        self._counting = threading.Lock()     # the counts, against close() giving up at the same time
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    def handle(self, event: Event) -> None:
        if not isinstance(event, AlertEvent) or event.type not in (ALERT_START, ALERT_END):
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            logger.warning("webhook %s: %d alert event(s) dropped, the receiver is not keeping up",
                           self.url, self.dropped)

    def _post(self, event: AlertEvent) -> None:
        body = json.dumps(event.to_json()).encode()
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (the user's URL)
            response.read()

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            if self._stop.is_set():               # closing: not sent; close() counts the rest
                with self._counting:
                    if not self._closed:          # (once closed, close() counted this one as in flight)
                        self.dropped += 1
                return
            for attempt in range(self.retries + 1):
                try:
                    self._post(event)
                    outcome = "delivered"
                    break
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    if attempt == self.retries or self._stop.wait(self.backoff * 2 ** attempt):
                        outcome = "failed"
                        logger.warning("webhook %s: %s of alert %d not delivered after %d attempt(s): %s",
                                       self.url, event.type, event.alert_id, attempt + 1, exc)
                        break
            with self._counting:
                if self._closed:                 # close() gave up on this one and counted it
                    return
                setattr(self, outcome, getattr(self, outcome) + 1)

    def close(self, wait: float = 2.0) -> None:
        """Deliver what is queued for up to ``wait`` seconds, then give up on the rest: a
        receiver that does not answer must not hold up the end of the watch by its timeout.
        What was not delivered by then is counted as dropped, once."""
        ended = time.monotonic() + wait
        try:
            self._queue.put(None, timeout=wait)
        except queue.Full:
            pass
        self._thread.join(max(0.0, ended - time.monotonic()))
        self._stop.set()                      # a retry's backoff wakes now and gives up
        self._thread.join(0.5)
        with self._counting:
            self._closed = True
            left = 1 if self._thread.is_alive() else 0   # a POST still waiting on the receiver (daemon thread)
            while True:
                try:
                    left += self._queue.get_nowait() is not None
                except queue.Empty:
                    break
            self.dropped += left
        self._queue.put_nowait(None)          # a thread still blocked on the queue ends
        if left:
            logger.warning("webhook %s: %d alert event(s) not delivered by the end (the receiver did not answer "
                           "within %.1f s)", self.url, left, wait)
        if self.failed or self.dropped:
            logger.warning("webhook %s: %d delivered, %d failed, %d dropped", self.url, self.delivered, self.failed,
                           self.dropped)


class SnapshotWriter:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.started = time.strftime("%Y%m%dT%H%M%S")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InvalidInput(f"--snapshots {folder}: cannot make the folder ({e.strerror or e})") from None

    def write(self, event: AlertEvent, image: Any) -> str | None:
        """The JPEG of ``image`` for ``event``'s alert (rewritten at its end with the whole
        alert's peak); returns its path, or None without an image (an audio-only source)."""
        if image is None:
            return None
        # alert ids restart with every watch, and two names may make one slug: the run's
        # start and a hash of the source's full name keep every snapshot apart
        digest = hashlib.sha256(event.source.encode()).hexdigest()[:6]
        path = self.folder / f"{slug(event.source)}-{digest}-{self.started}-alert{event.alert_id:04d}.jpg"
        data = jpeg_bytes(image)
        replace_atomically(path, lambda tmp: Path(tmp).write_bytes(data))
        return str(path)


