"""The browser live view (``cli.py watch ... --serve HOST:PORT``): one page with a tile
per source (latest frame, score timeline with the alert threshold, current class, state)
and the alert list; the same data as JSON (``/api/sources``, ``/api/alerts``), as a
server-sent-event stream (``/api/events``) and a health endpoint (``/healthz``).

``WebView`` is a ``live.events.Sink``: subscribe it to the watch's ``EventHub``.
``check_serve_access`` refuses a non-loopback address without a token (exit 2)."""

from .config import DEFAULT_HOST, WebConfig, check_serve_access, is_loopback, parse_serve, read_token_file, \
    token_given
from .server import COOKIE, STATIC, WebView, stop_serving
from .state import ENDED_STATE, LIVE, RECONNECTING, STALLED_STATE, WAITING, LiveState

__all__ = ["COOKIE", "DEFAULT_HOST", "ENDED_STATE", "LIVE", "RECONNECTING", "STALLED_STATE", "STATIC", "WAITING",
           "LiveState", "WebConfig", "WebView", "check_serve_access", "is_loopback", "parse_serve", "read_token_file",
           "stop_serving", "token_given"]
