"""The browser view: an aiohttp server on its own thread, fed as a hub sink.

Why this shape: ``EventHub.publish`` runs on the scoring thread, so ``handle`` only
appends the event to a bounded inbox and, when the server's loop is not already due to
look, wakes it (``call_soon_threadsafe``). Everything else happens on the server's own
event loop, in one thread: the view's state (``LiveState``) is updated there, every event
is encoded once there, and copied into each event-stream client's own bounded queue. A
browser that is slow, or connected and never reading, fills its queue and loses its
oldest events (counted, and told with an ``event: dropped`` message when it catches up);
nothing it does can reach ``handle``.

Access: with a token, every request must carry it (``Authorization: Bearer T``,
``?token=T`` or the cookie the page receives after ``?token=T``: the page's own scripts,
images and ``EventSource`` cannot set headers). A page without the token gets 401.
``/metrics`` (when the watch has metrics) is under the same rule: Prometheus sends the
bearer header (its ``authorization`` setting).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Sequence

from aiohttp import web

from cache_schema import InvalidInput, json_text
from live.events import Event

from .config import WebConfig, allowed_hosts, check_serve_access, connection_budget, host_allowed, token_given
from .state import AlertState, LiveState

logger = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
COOKIE = "avar_live_token"  # + "_<port>": browsers keep cookies per host, not per port
# The page loads only its own files: the browser refuses anything from elsewhere.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
DRAIN_BATCH = 64  # events per loop turn: less than a client queue, so each client writes between turns
WRITE_BATCH = 256 * 1024  # bytes written to one client at once


class _Client:
    """One event-stream subscriber: its own bounded queue of encoded messages."""

    def __init__(self, capacity: int, transport: asyncio.BaseTransport | None) -> None:
        self.queue: deque[bytes] = deque(maxlen=max(1, capacity))
        self.dropped = 0
        self.unreported = 0
        self.wake = asyncio.Event()
        self.closed = False
        self.transport = transport

    def put(self, message: bytes) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
            self.unreported += 1
        self.queue.append(message)
        self.wake.set()

    def buffered(self) -> int:
        """Bytes written to this client that its socket has not taken yet."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return 0
        return transport.get_write_buffer_size()  # type: ignore[attr-defined]

    def close(self) -> None:
        self.closed = True
        self.wake.set()
        if self.transport is not None:
            self.transport.abort()  # a client stuck in a write would otherwise hold shutdown


class _Refused(asyncio.Protocol):
    """A connection over the view's budget: closed as it arrives."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()


class _Counted(asyncio.Protocol):
    """aiohttp's handler of one connection, and ``lost()`` called once it is closed."""

    def __init__(self, inner: asyncio.Protocol, lost: Any) -> None:
        self._inner, self._lost = inner, lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self._lost()


def stop_serving(loop: asyncio.AbstractEventLoop | None, thread: threading.Thread | None, what: str) -> None:
    """Stop an aiohttp server's loop, run forever on its own ``thread``, from another
    thread, and join that thread (its ``finally`` cleans the app up); ``what`` names it in
    the warning when it does not stop within 10 s."""
    if loop is None or thread is None or not thread.is_alive():
        return
    try:
        loop.call_soon_threadsafe(loop.stop)
    except RuntimeError:   # the loop has just closed
        pass
    thread.join(timeout=10)
    if thread.is_alive():
        logger.warning("%s thread did not stop within 10 s", what)


class WebView:
    """A ``live.events.Sink`` that serves the live view (see the module docstring).

    ``start()`` binds (port 0: a free port) and returns the URL; ``handle(event)``
    returns at once; ``close()`` stops the server and joins its thread. ``sources``
    names the sources to show before their first event."""

    def __init__(self, config: WebConfig, sources: Sequence[str] = (), metrics: Any = None) -> None:
        self.config = config
        self._metrics = metrics   # a live.metrics.WatchMetrics: served as /metrics, under the same token rule
        self._state = LiveState(config, tuple(sources))
        self._inbox: deque[Event] = deque(maxlen=max(1, config.inbox))
        self._inbox_dropped = 0
        self._scheduled = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._clients: set[_Client] = set()
        self._client_dropped = 0
        self._seq = 0
        self._started_at = time.time()
        self._cookie = COOKIE
        self._hosts = allowed_hosts(config)
        self._budget = connection_budget(config)
        self._refused_connections = 0
        self._refused_hosts = 0
        self._server: asyncio.AbstractServer | None = None
        self._open = 0                       # connections held (counted by ``_limited``'s factory)
        self._accepted = 0
        self.url: str | None = None

    # -- the sink (scoring thread) -----------------------------------------------------
    def handle(self, event: Event) -> None:
        """Queue ``event`` for the server's loop and return: never waits on a client."""
        if self._closed:
            return
        if len(self._inbox) == self._inbox.maxlen:
            self._inbox_dropped += 1  # the server's thread is starved: the oldest event goes
        self._inbox.append(event)
        loop = self._loop
        if loop is not None and not self._scheduled:
            self._scheduled = True
            try:
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop has just closed
                pass

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> str:
        """Bind ``host:port`` and serve on a daemon thread; the URL of the page."""
        if self._thread is not None:
            raise RuntimeError("WebView.start() called twice")
        check_serve_access(self.config.host, self.config.token)
        sock = self._bind()
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}/"
        self._cookie = f"{COOKIE}_{port}"
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, args=(sock, ready), name="live-web", daemon=True)
        self._thread.start()
        ready.result(timeout=60)
        logger.info("live view on %s", self.url)
        return self.url

    def close(self) -> None:
        """Stop serving (event-stream clients are disconnected) and join the thread."""
        self._closed = True
        stop_serving(self._loop, self._thread, "the live view's server")

    def stats(self) -> dict[str, Any]:
        """Counters (the same as ``/healthz``), read on the server's loop."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return self._stats()

        async def read() -> dict[str, Any]:
            return self._stats()
        return asyncio.run_coroutine_threadsafe(read(), loop).result(timeout=10)

    def _bind(self) -> socket.socket:
        host, port = self.config.host, self.config.port
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family = infos[0][0]
            return socket.create_server((host, port), family=family, reuse_port=False)
        except (OSError, UnicodeError) as e:
            raise InvalidInput(f"--serve {host}:{port}: cannot listen there ({e.strerror or e}); "
                               "choose another address or port (port 0: any free port)") from None

    def _run(self, sock: socket.socket, ready: Future[None]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            # keepalive_timeout: aiohttp closes a connection idle that long, one that never sent a request included
            runner = web.AppRunner(self._app(), handle_signals=False, access_log=None, shutdown_timeout=1.0,
                                   keepalive_timeout=self.config.idle_timeout_s)
            loop.run_until_complete(runner.setup())
            self._server = loop.run_until_complete(loop.create_server(self._limited(runner.server), sock=sock))
        except BaseException as e:  # noqa: BLE001 - handed to start(), which raises it
            sock.close()
            loop.close()
            ready.set_exception(e)
            return
        self._loop = loop
        loop.call_soon(self._drain)  # the events handed before the loop existed
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            for client in list(self._clients):
                client.close()
            if self._server is not None:
                self._server.close()
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def _limited(self, server: web.Server) -> Any:
        """aiohttp's protocol factory, refusing a connection beyond the budget at once
        (closed on arrival: its descriptor is freed, nothing is read from it)."""
        def lost() -> None:
            self._open -= 1

        def factory() -> asyncio.Protocol:
            # counted here, not by aiohttp's list: a burst of accepts calls this factory many
            # times before the first of those connections is registered there
            if self._open >= self._budget:
                self._refused_connections += 1
                if self._refused_connections in (1, 10, 100) or self._refused_connections % 1000 == 0:
                    logger.warning("live view: %d connection(s) refused so far, %d are open (the limit)",
                                   self._refused_connections, self._open)
                return _Refused()
            self._open += 1
            self._accepted += 1
            return _Counted(server(), lost)
        return factory

    # -- the server's loop ---------------------------------------------------------------
    def _drain(self) -> None:
        self._scheduled = False
        for _ in range(DRAIN_BATCH):
            try:
                event = self._inbox.popleft()
            except IndexError:
                return
            self._state.apply(event)
            if self._clients:
                self._seq += 1
                message = f"id: {self._seq}\ndata: {_encode(event.to_json())}\n\n".encode()
                for client in self._clients:
                    client.put(message)
        if self._inbox and not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _stats(self) -> dict[str, Any]:
        state = self._state
        return {"status": "ok", "uptime_s": round(time.time() - self._started_at, 3), "events": state.events,
                "last_event_age_s": None if state.last_wall_time is None else round(time.time() - state.last_wall_time, 3),
                "sources": {s.name: s.state for s in state.by_id}, "alerts": len(state.alerts),
                "clients": len(self._clients),
                "client_queues": [{"queued": len(c.queue), "dropped": c.dropped, "buffered_bytes": c.buffered()}
                                  for c in self._clients],
                "connections": {"open": self._open, "accepted": self._accepted,
                                "limit": self._budget,
                                "refused": self._refused_connections, "refused_hosts": self._refused_hosts},
                "dropped": {"inbox": self._inbox_dropped,
                            "clients": self._client_dropped + sum(c.dropped for c in self._clients)}}

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.on_response_prepare.append(self._headers)
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/api/sources", self._sources)
        app.router.add_get(r"/api/sources/{id:\d+}/frame.jpg", self._frame)
        app.router.add_get("/api/alerts", self._alerts)
        app.router.add_get(r"/api/alerts/{key:\d+-\d+}/snapshot.jpg", self._snapshot)
        app.router.add_get(r"/api/alerts/{key:\d+-\d+}/timeline", self._alert_timeline)
        app.router.add_get(r"/api/alerts/{key:\d+-\d+}/clip", self._clip)
        app.router.add_get("/api/events", self._events)
        if self._metrics is not None:
            app.router.add_get("/metrics", self._metrics_page)
        return app

    async def _metrics_page(self, request: web.Request) -> web.Response:
        from live.metrics import metrics_response

        return metrics_response(self._metrics)

    def _authorised(self, request: web.Request) -> bool:
        return token_given(self.config.token, request.headers.get("Authorization", ""), request.query.get("token", ""),
                           request.cookies.get(self._cookie, ""))

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not host_allowed(request.headers.get("Host"), self._hosts, self.config.names):
            self._refused_hosts += 1   # a page whose name was rebound to this address (DNS rebinding)
            return web.Response(status=421, text=f"421: this live view answers to {self.url} (Host "
                                f"{request.headers.get('Host')!r} is not its address); a name that points here must "
                                "be given to watch with --serve-name NAME\n")
        if not self._authorised(request):
            return web.Response(status=401, text="401: this live view needs its token: open the page as "
                                "/?token=TOKEN, or send the header 'Authorization: Bearer TOKEN'\n",
                                headers={"WWW-Authenticate": 'Bearer realm="avar live"'})
        response = await handler(request)
        token = self.config.token
        if (token is not None and not response.prepared and request.query.get("token") == token
                and request.cookies.get(self._cookie) != token):
            # the page's own scripts and styles are loaded without ?token=: they carry this cookie
            response.set_cookie(self._cookie, token, httponly=True, samesite="Strict", path="/")
        return response

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Referrer-Policy"] = "no-referrer"

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=(STATIC / "index.html").read_bytes(), content_type="text/html", charset="utf-8")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response(text=json_text(self._stats(), indent=None))

    async def _sources(self, request: web.Request) -> web.Response:
        timeline = request.query.get("timeline", "1") not in ("0", "false", "no")
        return web.json_response(text=json_text(self._state.sources_json(timeline=timeline), indent=None))

    async def _alerts(self, request: web.Request) -> web.Response:
        return web.json_response(text=json_text(self._state.alerts_json(), indent=None))

    async def _frame(self, request: web.Request) -> web.Response:
        frame = self._state.frame(int(request.match_info["id"]))
        if frame is None:
            raise web.HTTPNotFound(text="no frame from this source yet\n")
        return web.Response(body=frame.jpeg, content_type="image/jpeg")

    def _alert(self, request: web.Request) -> AlertState:
        alert = self._state.alerts.get(request.match_info["key"])
        if alert is None:
            raise web.HTTPNotFound(text="no such alert (or no longer kept)\n")
        return alert

    async def _alert_timeline(self, request: web.Request) -> web.Response:
        return web.json_response(text=json_text(self._state.alert_timeline_json(self._alert(request)), indent=None))

    async def _snapshot(self, request: web.Request) -> web.Response:
        """The JPEG the alert's own event named (the snapshot writer's file), else the
        source's frame nearest the peak; never a path taken from the request."""
        alert = self._alert(request)
        path = self._state.snapshot_path(alert)
        if path is not None:
            limit = self.config.max_snapshot_bytes
            data = await asyncio.get_running_loop().run_in_executor(None, _read_small_file, path, limit)
            if data is not None:
                return web.Response(body=data, content_type="image/jpeg")
        if alert.frame is not None:
            return web.Response(body=alert.frame, content_type="image/jpeg")
        raise web.HTTPNotFound(text="this alert's snapshot is not written yet\n")

    async def _clip(self, request: web.Request) -> web.StreamResponse:
        """The video clip the alert's ``alert_end`` named (``--clips``), read-only, with
        range requests (a ``<video>`` seeks); never a path taken from the request. A clip
        removed by retention is gone (404)."""
        path = self._state.clip_path(self._alert(request))
        if path is None or not await asyncio.get_running_loop().run_in_executor(None, path.is_file):
            raise web.HTTPNotFound(text="this alert has no clip (not written, or removed by retention)\n")
        kind = {".mp4": "video/mp4", ".mov": "video/quicktime"}.get(path.suffix, "video/x-matroska")
        return web.FileResponse(path, headers={"Content-Type": kind})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if len(self._clients) >= self.config.max_clients:
            raise web.HTTPServiceUnavailable(text=f"already {len(self._clients)} event-stream clients\n")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        client = _Client(self.config.client_queue, request.transport)
        self._clients.add(client)
        try:
            await response.write(b"retry: 2000\n: connected\n\n")
            while not client.closed:
                if not client.queue:
                    client.wake.clear()
                    try:
                        await asyncio.wait_for(client.wake.wait(), self.config.heartbeat_s)
                    except TimeoutError:
                        await response.write(b": keep-alive\n\n")
                    continue
                chunk = bytearray()
                if client.unreported:
                    chunk += f"event: dropped\ndata: {{\"dropped\": {client.unreported}, \"total\": {client.dropped}}}\n\n".encode()
                    client.unreported = 0
                while client.queue and len(chunk) < WRITE_BATCH:
                    chunk += client.queue.popleft()
                await response.write(bytes(chunk))
        except (ConnectionError, OSError, RuntimeError):  # the browser went away (or the server closes)
            pass
        finally:
            self._clients.discard(client)
            self._client_dropped += client.dropped
        return response


def _encode(obj: dict[str, Any]) -> str:
    """Strict JSON, as the JSON lines write it; the walk that replaces non-finite floats
    only when there is one (it would double the cost of every event)."""
    try:
        return json.dumps(obj, allow_nan=False)
    except ValueError:
        return json_text(obj, indent=None)


def _read_small_file(path: Path, limit: int) -> bytes | None:
    try:
        if not path.is_file() or path.stat().st_size > limit:
            return None
        return path.read_bytes()
    except OSError:
        return None


__all__ = ["COOKIE", "STATIC", "WebView", "stop_serving"]
