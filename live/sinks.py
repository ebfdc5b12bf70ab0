"""Where live events go: JSON lines, a webhook, and alert snapshots.

* :class:`JsonLinesSink`: one JSON object per line (standard output, or a file opened
  for appending), flushed line by line so that a reader (``tail -f``, a log shipper)
  sees each event at once and nothing is lost when the process is stopped; a file is
  never left with a torn line, and a failed output stops the watch with an error.
* :class:`WebhookSink`: POSTs each alert event as JSON on a thread of its own, with a
  timeout and retries; its queue is bounded, so a slow or dead receiver never delays
  scoring: what it cannot take is dropped, logged and counted.
* :class:`SnapshotWriter`: the peak frame of each alert as a JPEG, written under a
  temporary name and renamed into place (called by the scorer before the alert event is
  published, so the event can name the file).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import queue
import re
import stat
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any, Callable

from PIL import Image

from cache_schema import AvarError, InvalidInput, replace_atomically

from .events import ALERT_END, ALERT_START, AlertEvent, Event, FrameEvent
from .redact import redact_text, redact_url, url_secrets

__all__ = ["JsonLinesSink", "OutputFailed", "SnapshotWriter", "WebhookSink", "check_webhook_url", "jpeg_bytes", "slug"]

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
        raise InvalidInput(f"--webhook {redact_url(url)}: not a valid URL ({e})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidInput(f"--webhook {redact_url(url)}: give an http:// or https:// URL")
    if not parts.hostname:
        raise InvalidInput(f"--webhook {redact_url(url)}: the URL names no host (e.g. http://127.0.0.1:8080/hook)")
    return url


def jpeg_bytes(image: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class OutputFailed(AvarError):
    """The JSON lines (``--out`` or standard output), the operator's only full record of a
    watch, could not be written: the watch stops and the command ends with this error."""


def _regular_fd(stream: Any) -> int | None:
    """The descriptor of ``stream`` when it is a regular file (``watch > log.jsonl``), else None."""
    try:
        fd = stream.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError):   # io.StringIO, a closed stream
        return None


class JsonLinesSink:
    """Every event but frames, one line each; ``stream`` stays open for the caller to close
    unless the sink opened it (``path``).

    Into a file (``path``, or standard output redirected to a file) each line is written
    with ``os.write`` and, when a write fails (a full disk, a file-size limit), the part of
    the line that got there is taken back (``ftruncate`` to where the line began): the
    file always ends with a whole line. A failed output is never silent: it is logged
    naming the output, ``failed`` says why, and ``on_failed`` is called (the watch stops:
    scoring on with its only record gone would be work for nobody)."""

    def __init__(self, stream: IO[str] | None = None, path: str | Path | None = None,
                 on_closed: Callable[[], None] | None = None, on_failed: Callable[[], None] | None = None) -> None:
        self._own = path is not None
        self._on_closed = on_closed  # the reader went away (``watch ... | head``): the caller stops
        self._on_failed = on_failed
        self.closed_by_reader = False
        self.failed: str | None = None
        self.name = f"--out {path}" if path is not None else "standard output"
        self._stream = stream
        self._fd: int | None = None
        if path is not None:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as e:
                raise InvalidInput(f"--out {path}: cannot append to it ({e.strerror or e})") from None
        elif stream is None:
            raise ValueError("give a stream or a path")
        else:
            self._fd = _regular_fd(stream)
            if self._fd is not None:
                stream.flush()        # what the stream holds goes first; every line after by os.write
        self.lines = 0

    def handle(self, event: Event) -> None:
        if isinstance(event, FrameEvent) or self.closed_by_reader or self.failed:
            return
        line = json.dumps(event.to_json(), ensure_ascii=False) + "\n"
        try:
            if self._fd is not None:
                self._write_whole(line.encode("utf-8"))
            else:
                assert self._stream is not None
                self._stream.write(line)
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
        except OSError as exc:
            self._fail(exc)
            return
        self.lines += 1

    def _write_whole(self, data: bytes) -> None:
        """``data`` appended whole, or nothing of it (class doc)."""
        assert self._fd is not None
        fd = self._fd
        start = os.fstat(fd).st_size if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND else os.lseek(fd, 0, os.SEEK_CUR)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            if len(view) < len(data):
                try:
                    os.ftruncate(fd, start)
                    if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
                        os.lseek(fd, start, os.SEEK_SET)
                except OSError as exc:
                    logger.error("%s: the torn last line could not be taken back (%s)", self.name,
                                 exc.strerror or exc)
            raise

    def _fail(self, exc: OSError) -> None:
        self.failed = (f"{self.name}: cannot be written ({exc.strerror or exc}): the watch stopped there; the JSON "
                       f"lines hold the {self.lines} whole line(s) written before (the line being written was taken "
                       "back). Free space or raise the limit, and watch again")
        logger.error("%s", self.failed)
        if self._on_failed is not None:
            self._on_failed()

    def close(self) -> None:
        try:
            if not self.closed_by_reader and not self.failed and self._fd is None and self._stream is not None:
                self._stream.flush()
        finally:
            if self._own and self._fd is not None:
                os.close(self._fd)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is the receiver's answer, not a new address: urllib would re-send the alert
    as a GET without its body, to wherever the receiver pointed, and call it delivered."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None   # urllib then raises HTTPError(code): a failed delivery


_NO_REDIRECTS = urllib.request.build_opener(_RefuseRedirects())


class WebhookSink:
    """Alert events POSTed to ``url`` as JSON (``Content-Type: application/json``). Only a
    2xx answer is a delivery: a redirect (not followed) or a refusal is a failed one,
    logged with the status; a 5xx, a timeout or a refused connection is retried."""

    def __init__(self, url: str, timeout: float = 5.0, retries: int = 3, backoff: float = 0.5,
                 max_queue: int = 1000) -> None:
        check_webhook_url(url)
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff
        self.shown = redact_url(url)          # what logs name: a hook's URL may carry a token
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
                           self.shown, self.dropped)

    def _post(self, event: AlertEvent) -> None:
        body = json.dumps(event.to_json()).encode()
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with _NO_REDIRECTS.open(request, timeout=self.timeout) as response:
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
                except urllib.error.HTTPError as exc:
                    # the receiver answered: a redirect or a refusal is its answer (retried: 5xx, 408, 429)
                    final = exc.code < 500 and exc.code not in (408, 429)
                    if final or attempt == self.retries or self._stop.wait(self.backoff * 2 ** attempt):
                        outcome = "failed"
                        where = exc.headers.get("Location") if 300 <= exc.code < 400 and exc.headers else None
                        logger.warning("webhook %s: %s of alert %d not delivered: the receiver answered %d %s%s",
                                       self.shown, event.type, event.alert_id, exc.code, exc.reason,
                                       f" (a redirect to {where}; redirects are not followed, the alert would "
                                       "lose its body: give --webhook the final URL)" if where is not None else "")
                        break
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    if attempt == self.retries or self._stop.wait(self.backoff * 2 ** attempt):
                        outcome = "failed"
                        logger.warning("webhook %s: %s of alert %d not delivered after %d attempt(s): %s",
                                       self.shown, event.type, event.alert_id, attempt + 1,
                                       redact_text(str(exc), url_secrets(self.url)))
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
                           "within %.1f s)", self.shown, left, wait)
        if self.failed or self.dropped:
            logger.warning("webhook %s: %d delivered, %d failed, %d dropped", self.shown, self.delivered, self.failed,
                           self.dropped)


class SnapshotWriter:
    """Alert snapshots in ``folder``. A snapshot that cannot be written (a full disk, a
    file-size limit, a name taken by a folder) is logged and counted (``failed``) and the
    alert goes out without it: an output that fails never stops scoring."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.failed = 0
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
        try:
            replace_atomically(path, lambda tmp: Path(tmp).write_bytes(data))
        except OSError as exc:
            self.failed += 1
            logger.error("--snapshots: the snapshot %s of %s's alert %d cannot be written (%s); the alert goes out "
                         "without it (%d snapshot(s) not written so far)", path, event.source, event.alert_id,
                         exc.strerror or exc, self.failed)
            return None
        return str(path)


