"""What ``--serve`` and ``--token`` mean, checked before anything is bound.

The view shows camera frames and alerts: on a shared network that is private data, so a
server reachable from other machines must ask for a token. The rule is simple enough to
check up front (``check_serve_access``), before a run is loaded or a camera opened: a
loopback address needs nothing, anything else needs ``--token`` or ``--token-file``.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cache_schema import InvalidInput, MissingInput, optional_file

DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True)
class WebConfig:
    """The browser view's settings.

    ``threshold`` is the alert threshold drawn on every timeline (None: none drawn);
    ``timeline_s`` how much media time a tile's timeline keeps; ``alert_context_s`` how
    much timeline is kept before and after each alert for its own chart. The ``max_*``
    and queue sizes bound memory: a long watch never grows the view, and a slow or stuck
    browser (``client_queue`` events behind) loses its oldest events, counted, instead of
    holding them."""

    host: str = DEFAULT_HOST
    port: int = 8765
    token: str | None = None
    threshold: float | None = None
    timeline_s: float = 180.0
    alert_context_s: float = 30.0
    max_alerts: int = 200
    max_timeline_points: int = 4000
    max_alert_points: int = 4000
    frames_kept: int = 8
    max_snapshot_bytes: int = 16 * 2**20
    client_queue: int = 512
    max_clients: int = 32
    inbox: int = 20000
    heartbeat_s: float = 15.0
    # Host names (``--serve-name``) the view answers to besides its own address: any other
    # Host header is refused, so that a web page whose domain is rebound to this address
    # (DNS rebinding) cannot read the view from the operator's browser.
    names: tuple[str, ...] = ()
    # Connections: one that sends no request for ``idle_timeout_s`` is closed, and at most
    # ``max_connections`` are held (fewer when the descriptor limit is low: see
    # ``connection_budget``), so that idle sockets never take the descriptors that the
    # sources, snapshots and reconnects need.
    idle_timeout_s: float = 15.0
    max_connections: int = 64
    # A camera's own alert threshold (a config file's per-camera ``threshold``), drawn on
    # its tile instead of ``threshold``: (name, threshold) pairs.
    thresholds: tuple[tuple[str, float], ...] = ()

    def threshold_of(self, source: str) -> float | None:
        return dict(self.thresholds).get(source, self.threshold)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidInput(f"--serve port {self.port} is not in 0-65535")
        if self.token is not None and not self.token.strip():
            raise InvalidInput("--token is empty; give a non-empty token or leave it out (loopback only)")
        if self.timeline_s <= 0 or self.alert_context_s < 0:
            raise InvalidInput("the timeline lengths must be positive")
        for name in self.names:
            if not name or any(c in name for c in "/:@ \t\r\n[]"):
                raise InvalidInput(f"--serve-name {name!r}: give a bare host name (e.g. cams.example.org), without "
                                   "scheme, port or path")
        if self.idle_timeout_s <= 0 or self.max_connections < 1:
            raise InvalidInput("the idle timeout and the connection limit must be positive")


def host_of(header: str) -> str:
    """The host part of a Host header, lower-cased, without port, brackets or a final dot."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    host, sep, port = header.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        header = host
    return header.rstrip(".")


def allowed_hosts(config: WebConfig) -> frozenset[str] | None:
    """The Host names the view answers to: its bound address, ``localhost`` when that is a
    loopback address, and ``config.names``. None: bound to every interface, where any IP
    address of the machine is its address (names still need ``names``)."""
    bound = host_of(config.host)
    names = {host_of(n) for n in config.names}
    if bound in ("0.0.0.0", "::", ""):
        return None
    names.add(bound)
    if is_loopback(bound):
        names.add("localhost")
    return frozenset(names)


def host_allowed(header: str | None, allowed: frozenset[str] | None, names: tuple[str, ...]) -> bool:
    """Whether a request's Host header names this view (``allowed_hosts``); no header
    (HTTP/1.0) is the address the request came to."""
    if not header:
        return True
    host = host_of(header)
    if allowed is not None:
        return host in allowed
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host in {host_of(n) for n in names}


def connection_budget(config: WebConfig) -> int:
    """How many connections the view may hold: ``max_connections``, or fewer so that half
    of the descriptors left under the process's limit stay free for the sources, snapshot
    files and reconnects."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return config.max_connections
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = 64
    return max(1, min(config.max_connections, (soft - used) // 2))


def parse_serve(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` or ``PORT`` as (host, port); a missing host
    is loopback (``127.0.0.1``), never every interface: that has to be asked for."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise InvalidInput(f"--serve {text!r}: write an IPv6 address in brackets, e.g. [::1]:8765")
    try:
        port = int(port_text)
    except ValueError:
        raise InvalidInput(f"--serve {text!r} is not HOST:PORT (e.g. 127.0.0.1:8765)") from None
    if not 0 <= port <= 65535:
        raise InvalidInput(f"--serve {text!r}: the port must be in 0-65535")
    return host or DEFAULT_HOST, port


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address (a name is resolved:
    ``localhost`` is loopback, a name that also resolves elsewhere is not)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_serve_access(host: str, token: str | None) -> None:
    """Refuse (``InvalidInput``, exit 2) to serve on a non-loopback address without a
    token: the page shows camera frames to whoever can reach the port."""
    if token is None and not is_loopback(host):
        raise InvalidInput(f"--serve {host}: serving beyond this machine (not a loopback address) needs "
                           "--token TOKEN or --token-file FILE, required on every request; or serve on 127.0.0.1")


def read_token_file(path: str | Path) -> str:
    """The token in the first line of ``path`` (surrounding blanks stripped), so that it
    need not appear on the command line (where ``ps`` shows it to every user)."""
    path = Path(path)
    if optional_file(path, "the --token-file (the token on its first line)") is None:  # a FIFO is never opened
        raise MissingInput(f"--token-file {path}: no such file; write the token on its first line")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise MissingInput(f"--token-file {path}: no such file; write the token on its first line") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as e:
        raise InvalidInput(f"--token-file {path}: cannot read a token from it ({e.__class__.__name__})") from None
    token = text.splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise InvalidInput(f"--token-file {path}: its first line is empty; write the token there")
    return token


def token_given(token: str | None, authorization: str, *others: str) -> bool:
    """Whether the request carries ``token``: as ``Authorization: Bearer TOKEN`` or as any
    of ``others`` (the ``?token=`` query, the page's cookie), compared in constant time.
    No token configured: open (loopback only, see ``check_serve_access``)."""
    if token is None:
        return True
    bearer = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
    return any(g and hmac.compare_digest(g.encode(), token.encode()) for g in (bearer, *others))


__all__ = ["DEFAULT_HOST", "WebConfig", "allowed_hosts", "check_serve_access", "connection_budget", "host_allowed",
           "host_of", "is_loopback", "parse_serve", "read_token_file", "token_given"]
