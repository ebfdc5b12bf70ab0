"""A webhook receiver on a loopback port: ``cli.py bench soak`` points the watch's
``--webhook`` at one and counts what arrives, and the tests that search every output
for secrets read the bodies it kept."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

__all__ = ["WebhookReceiver"]


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that takes POSTs (on any path; the URL given out is
    ``/hook``) and counts them (``received``); with ``keep``, their bodies too
    (``bodies``). One thread, one request at a time: it adds no threads of its own to a
    soak's samples. Use it as a context manager."""

    def __init__(self, keep: bool = False) -> None:
        receiver = self
        self.received = 0
        self.bodies: list[bytes] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                if keep:
                    receiver.bodies.append(body)
                receiver.received += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="webhook-receiver", daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)
        self.server.server_close()
