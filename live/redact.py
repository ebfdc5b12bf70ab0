"""Credentials never leave the process: the one place that takes them out of text.

A camera URL may carry a password (``rtsp://user:pass@host/...``) or a token in its query
(``http://cam/video.mjpg?user=admin&pwd=...``), and FFmpeg repeats the URL in its error
messages. Everything that can reach an output (events, logs, the page, webhook payloads,
file names) names a source by its name, never its URL; where a URL or an exception text
must still be shown, it goes through :func:`redact_url` / :func:`redact_text` first.

:class:`SecretFilter` is the last line of defence: ``cli.py watch`` installs it on the
log handlers, and it scrubs every known secret (the values substituted into the config
file, the passwords of the sources) from every record, message, arguments and traceback.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Iterable

__all__ = ["MASK", "SECRET_QUERY_KEYS", "SecretFilter", "install_secret_filter", "redact_text", "redact_url",
           "url_secrets"]

MASK = "***"
SHORT = 6   # secrets shorter than this are masked only where they stand alone

# Query parameters that cameras and hooks use for credentials (lower case).
SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "pass", "token", "access_token", "auth", "key",
                               "apikey", "api_key", "secret", "signature", "sig"})

# scheme://userinfo@ anywhere in a text (an FFmpeg message, an exception): the password part
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/@:?#]*):(?P<password>[^\s/?#]*)@")
# key=value of a secret-ish query parameter anywhere in a text
_QUERY = re.compile(r"(?P<key>[?&;](?:" + "|".join(sorted(SECRET_QUERY_KEYS, key=len, reverse=True))
                    + r")=)(?P<value>[^&#\s'\"]*)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with the password of its user info and the values of secret-ish query
    parameters replaced by ``***`` (the user name is kept: it tells two logins to one
    camera apart and is no secret). A text that is not a URL comes back unchanged."""
    return redact_text(url)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` (a message, an exception's text) with every URL password and secret query
    value masked, and every string of ``secrets`` replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _QUERY.sub(lambda m: f"{m['key']}{MASK}" if m["value"] else m[0], text)
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        if len(secret) >= SHORT:
            text = text.replace(secret, MASK)
        else:   # a short secret is masked where it stands alone (not every "t" of every word)
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", MASK, text)
    return text


def url_secrets(url: str) -> set[str]:
    """The secrets a URL carries (its password, percent-decoded and as written, and the
    values of its secret-ish query parameters): what :class:`SecretFilter` must scrub."""
    out: set[str] = set()
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return out
    if "://" not in url:
        return out
    m = _USERINFO.search(url)
    if m and m["password"]:
        out |= {m["password"], urllib.parse.unquote(m["password"])}
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=False):
        if key.lower() in SECRET_QUERY_KEYS:
            out |= {value, urllib.parse.quote(value, safe="")}
    return {s for s in out if s}


class SecretFilter(logging.Filter):
    """Scrubs ``secrets`` (and URL passwords of any kind) from every record it sees: its
    message with its arguments merged in, and its traceback. Install it on handlers (a
    filter on a logger does not see records that propagate to it)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = {s for s in secrets if s}
        self.handlers: list[logging.Handler] = []

    def uninstall(self) -> None:
        """Off the handlers ``install_secret_filter`` put it on."""
        for handler in self.handlers:
            handler.removeFilter(self)
        self.handlers = []

    def add(self, secrets: Iterable[str]) -> None:
        self.secrets |= {s for s in secrets if s}

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:   # a malformed record: let logging report it as it would
            return True
        scrubbed = redact_text(message, self.secrets)
        if scrubbed != message or record.args:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, self.secrets)
        return True


def install_secret_filter(secrets: Iterable[str] = (), logger: logging.Logger | None = None) -> SecretFilter:
    """A :class:`SecretFilter` on every handler of ``logger`` (the root logger): returned so
    that the caller can add secrets as it learns them, and take it off (``uninstall``)."""
    target = logger if logger is not None else logging.getLogger()
    scrubber = SecretFilter(secrets)
    scrubber.handlers = list(target.handlers)
    for handler in scrubber.handlers:
        handler.addFilter(scrubber)
    return scrubber
