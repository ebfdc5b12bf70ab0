"""A webhook receiver for the tests: a real aiohttp server on 127.0.0.1 that keeps every
body POSTed to ``/hook`` (tests/test_live_redaction.py, tests/test_live_deploy.py)."""

from __future__ import annotations

import asyncio
import threading


class WebhookReceiver:
    """A webhook receiver on 127.0.0.1 (aiohttp, its own loop on a thread): keeps every body."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def _run(self) -> None:
        from aiohttp import web

        async def hook(request: web.Request) -> web.Response:
            self.bodies.append(await request.read())
            return web.Response(text="ok")

        async def start() -> web.AppRunner:
            app = web.Application()
            app.router.add_post("/hook", hook)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]   # noqa: SLF001 - aiohttp's bound port
            return runner

        asyncio.set_event_loop(self._loop)
        self.runner = self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.runner.cleanup())
        self._loop.close()

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
