"""``cli.py watch --config cameras.yml``: named cameras, their settings and the outputs in
one YAML file, checked whole before anything loads.

The file's shape is the pydantic models below (``ConfigFile``; ``--config-schema`` prints
their JSON Schema). Unknown keys are errors, so a typo never silently falls back to a
default. Every error of the file is reported at once, each with its line: the YAML is
composed with PyYAML (whose nodes keep their marks) and pydantic's error locations are
mapped back to the node they name.

Secrets never live in the file: ``{AVAR_NAME}`` anywhere in a string is replaced by the
environment variable ``AVAR_NAME``, else the contents of the file named by
``AVAR_NAME_FILE``, else of ``$CREDENTIALS_DIRECTORY/AVAR_NAME`` (systemd's
``LoadCredential=``), as Frigate's ``{FRIGATE_...}``. A literal password (a URL's user info
password or secret query parameter, ``outputs.mqtt.password``, ``outputs.serve.token``)
is refused, naming its line. What comes out is a :class:`DeployConfig` of frozen
dataclasses; ``secrets`` holds every substituted value, for the log filter
(``live.redact.SecretFilter``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from cache_schema import InvalidInput, MissingInput

from .alerts import AlertConfig
from .clips import ClipConfig
from .mqtt import MqttConfig
from .outputs import WatchOutputs
from .redact import SECRET_QUERY_KEYS, redact_text, url_secrets
from .sources import SourceSpec, parse_source

__all__ = ["CAMERA_NAME", "FILE_FLAGS", "CameraConfig", "ConfigFile", "DeployConfig", "config_schema", "flag_spelled",
           "load_config", "refuse_flags_beside", "schema_text"]

logger = logging.getLogger(__name__)

CAMERA_NAME = r"^[A-Za-z0-9_-]{1,64}$"   # safe in file names, MQTT topics, metric labels and URLs
SECRET = re.compile(r"\{(AVAR_[A-Z0-9_]+)\}")

# ``watch`` flags that the file also sets: given beside --config they are refused (the file
# is the one place a deployment's settings are read from), naming the key to edit instead.
FILE_FLAGS = {
    "realtime": "realtime", "window": "defaults.window (or a camera's window)",
    "threshold": "defaults.threshold (or a camera's threshold)",
    "min_duration": "defaults.min_duration (or a camera's min_duration)",
    "cooldown": "defaults.cooldown (or a camera's cooldown)", "snapshots": "outputs.snapshots",
    "webhook": "outputs.webhook.url", "out": "outputs.jsonl", "serve": "outputs.serve.address",
    "token": "outputs.serve.token", "token_file": "outputs.serve.token", "serve_names": "outputs.serve.names",
    "device": "device", "clips": "outputs.clips.dir", "clip_pre": "outputs.clips.pre_s",
    "clip_post": "outputs.clips.post_s", "clips_max_bytes": "outputs.clips.max_bytes",
    "clips_max_age": "outputs.clips.max_age_s", "metrics_address": "outputs.metrics.address",
    "mqtt": "outputs.mqtt.host", "mqtt_prefix": "outputs.mqtt.topic_prefix", "mqtt_user": "outputs.mqtt.username",
    "mqtt_password_file": "outputs.mqtt.password", "mqtt_client_id": "outputs.mqtt.client_id",
}
# The options whose flag is not their parameter's name with dashes (cli.py's spelling).
FLAG_SPELLING = {"metrics_address": "--metrics", "serve_names": "--serve-name"}


# -- the file's shape ------------------------------------------------------------------------

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Seconds = Annotated[float, Field(ge=0)]


class Defaults(_Section):
    """Per-camera settings; every camera may override any of them."""

    threshold: float = Field(0.5, gt=0, le=1, description="Anomaly score (1 - p(normal)) that counts as anomalous.")
    min_duration: Seconds = Field(1.0, description="Seconds at or above the threshold before an alert starts.")
    cooldown: Seconds = Field(5.0, description="Seconds below the threshold before an open alert ends.")
    window: float | None = Field(None, gt=0, description="Seconds the head sees; null: the run's default.")
    audio: bool = Field(True, description="false: the camera's audio is not used (masked) even if it has audio.")


class Camera(_Section):
    """One camera; its key in ``cameras`` is its name (events, file names, the page, MQTT)."""

    url: str = Field(min_length=1, description="rtsp/http(s)/udp/... URL, /dev/videoN, - or a file; credentials "
                                               "as {AVAR_...} secrets.")
    enabled: bool = Field(True, description="false: the camera is not opened.")
    threshold: float | None = Field(None, gt=0, le=1)
    min_duration: Seconds | None = None
    cooldown: Seconds | None = None
    window: float | None = Field(None, gt=0)
    audio: bool | None = None


class Clips(_Section):
    dir: str = Field(min_length=1)
    pre_s: Seconds = 5.0
    post_s: Seconds = 5.0
    max_bytes: int = Field(2_000_000_000, gt=0, description="The clips folder's size budget; oldest removed first.")
    max_age_s: float = Field(259200.0, gt=0, description="Clips older than this are removed.")
    buffer_s: float = Field(60.0, gt=0, description="Seconds of each camera kept in memory; > pre_s + post_s.")
    buffer_bytes: int = Field(64_000_000, gt=0, description="Bytes of each camera kept in memory, whatever the bitrate.")

    @model_validator(mode="after")
    def _buffer_holds_the_margins(self) -> "Clips":
        if self.buffer_s <= self.pre_s + self.post_s:
            raise ValueError(f"buffer_s ({self.buffer_s:g}) must be longer than pre_s + post_s "
                             f"({self.pre_s + self.post_s:g} s): the buffer holds the alert and both margins")
        return self


class Webhook(_Section):
    url: str
    timeout: float = Field(5.0, gt=0)
    retries: int = Field(3, ge=0)

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        from .sinks import check_webhook_url

        try:
            return check_webhook_url(url)
        except InvalidInput as exc:   # its "--webhook URL: " prefix: the file's line names the key
            raise ValueError(str(exc).partition(": ")[2]) from None


class Mqtt(_Section):
    host: str = Field(min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = Field(None, description="An {AVAR_...} secret, never the password itself.")
    topic_prefix: str = Field("avar", pattern=r"^[A-Za-z0-9_/-]+$")
    client_id: str = Field("avar-net", min_length=1)
    discovery: bool = True
    discovery_prefix: str = Field("homeassistant", pattern=r"^[A-Za-z0-9_/-]+$")
    queue: int = Field(1000, ge=1)
    alert_max_age_s: float = Field(600.0, gt=0, description="How old a held alert may be when the broker is back.")


class Serve(_Section):
    address: str = Field("127.0.0.1:8080", description="HOST:PORT of the browser view; beyond loopback needs a token.")
    token: str | None = Field(None, description="An {AVAR_...} secret, never the token itself.")
    names: list[str] = Field(default_factory=list, description="Host names the view answers to besides its address.")

    @field_validator("address")
    @classmethod
    def _address(cls, address: str) -> str:
        from .web import parse_serve

        try:
            parse_serve(address)
        except InvalidInput as exc:
            raise ValueError(str(exc).replace("--serve ", "")) from None
        return address


class Metrics(_Section):
    address: str | None = Field(None, description="null: /metrics on the serve port (same token rule); else "
                                                  "HOST:PORT of its own, with outputs.serve's token.")


class Outputs(_Section):
    jsonl: str | None = Field(None, description="JSON lines appended to this file; null: standard output.")
    snapshots: str | None = Field(None, description="Folder for each alert's peak frame (JPEG).")
    clips: Clips | None = None
    webhook: Webhook | None = None
    mqtt: Mqtt | None = None
    serve: Serve | None = None
    metrics: Metrics | None = None


CameraName = Annotated[str, StringConstraints(pattern=CAMERA_NAME)]


class ConfigFile(_Section):
    """``cli.py watch --config FILE``: the run, the cameras and the outputs."""

    run: str = Field(min_length=1, description="Run directory; relative paths resolve against the file's folder.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    realtime: bool = Field(False, description="Pace files by their timestamps, as a camera sends them.")
    defaults: Defaults = Field(default_factory=Defaults)
    cameras: dict[CameraName, Camera] = Field(min_length=1)
    outputs: Outputs = Field(default_factory=Outputs)

    @model_validator(mode="after")
    def _one_enabled(self) -> ConfigFile:
        if not any(c.enabled for c in self.cameras.values()):
            raise ValueError("every camera is disabled: enable at least one")
        return self


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the file (``cli.py watch --config-schema``)."""
    return ConfigFile.model_json_schema()


# -- what comes out --------------------------------------------------------------------------

@dataclass(frozen=True)
class CameraConfig:
    """A camera with its settings resolved (its own, else ``defaults``). ``url`` holds the
    substituted credentials: it is left out of ``repr`` and only opens the stream."""

    name: str
    url: str = field(repr=False)
    enabled: bool = True
    threshold: float = 0.5
    min_duration: float = 1.0
    cooldown: float = 5.0
    window: float | None = None
    audio: bool = True

    @property
    def alerts(self) -> AlertConfig:
        return AlertConfig(self.threshold, self.min_duration, self.cooldown)

    def spec(self, realtime: bool = False) -> SourceSpec:
        return parse_source(self.url, realtime=realtime, name=self.name, alerts=self.alerts, window=self.window,
                            audio=self.audio)


@dataclass(frozen=True)
class DeployConfig:
    """A config file, checked, its secrets substituted and its paths made absolute: the
    cameras, where events go (``outputs``, as the flags of a one-off run give them) and
    the snapshots and clips, which the watch itself writes."""

    path: Path
    run: Path
    device: str = "auto"
    realtime: bool = False
    cameras: tuple[CameraConfig, ...] = ()
    outputs: WatchOutputs = WatchOutputs()
    snapshots: str | None = None
    clips: ClipConfig | None = None
    secrets: frozenset[str] = field(default=frozenset(), repr=False)

    @property
    def enabled(self) -> tuple[CameraConfig, ...]:
        return tuple(c for c in self.cameras if c.enabled)


# -- reading ---------------------------------------------------------------------------------

Path_ = tuple[str | int, ...]


class _Lines:
    """Line numbers (1-based) of the composed YAML: of each value by its key path, and of
    the key itself; duplicate keys (which PyYAML would silently merge) are collected."""

    def __init__(self, root: yaml.Node) -> None:
        self.value: dict[Path_, int] = {}
        self.key: dict[Path_, int] = {}
        self.duplicates: list[tuple[int, Path_, int]] = []   # (line, path, first line)
        self._walk(root, ())

    def _walk(self, node: yaml.Node, path: Path_) -> None:
        self.value[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else str(key.start_mark)
                line = key.start_mark.line + 1
                if name in seen:   # PyYAML keeps the last: so do its lines
                    self.duplicates.append((line, (*path, name), seen[name]))
                seen.setdefault(name, line)
                self.key[(*path, name)] = line
                self._walk(value, (*path, name))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, (*path, i))

    def of(self, loc: Iterable[Any], key: bool = False) -> int:
        """The line of ``loc`` (a key path; pydantic's ``[key]`` marker names the key), or
        of its nearest ancestor that is in the file (a missing field: its section)."""
        parts: list[Any] = []
        for part in loc:
            if part == "[key]":
                key = True
                continue
            parts.append(part)
        path = tuple(parts)
        while path:
            if key and path in self.key:
                return self.key[path]
            if path in self.value:
                return self.value[path] if not key else self.key.get(path, self.value[path])
            path, key = path[:-1], False
        return self.value.get((), 1)


def _dotted(loc: Iterable[Any]) -> str:
    return ".".join(str(p) for p in loc if p != "[key]") or "(the file)"


def _walk_strings(data: Any, path: Path_ = ()) -> Iterable[tuple[Path_, str]]:
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _walk_strings(v, (*path, str(k)))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _walk_strings(v, (*path, i))
    elif isinstance(data, str):
        yield path, data


def _set(data: Any, path: Path_, value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def _only_secrets(text: str) -> bool:
    """Whether ``text`` is nothing but ``{AVAR_...}`` placeholders (or empty)."""
    return not SECRET.sub("", text)


def _literal_secret(path: Path_, text: str) -> str | None:
    """Why ``text`` at ``path`` is a literal credential, or None (it is none, or it is
    written as ``{AVAR_...}`` secrets)."""
    if path in (("outputs", "mqtt", "password"), ("outputs", "serve", "token")):
        return None if _only_secrets(text) else (
            "a literal secret; write it as {AVAR_NAME} and set the environment variable AVAR_NAME (or AVAR_NAME_FILE, "
            "or a systemd credential)")
    if path[-1:] != ("url",) or "://" not in text:
        return None
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:
        return None
    _, at, host = parts.netloc.rpartition("@")
    userinfo = parts.netloc.rpartition("@")[0] if at else ""
    password = userinfo.partition(":")[2]
    if password and not _only_secrets(password):
        return ("a literal password in the URL; write the user info as {AVAR_CAM_USER}:{AVAR_CAM_PASSWORD} and set "
                "the environment variables (or AVAR_NAME_FILE, or a systemd credential)")
    for key, value in urllib.parse.parse_qsl(parts.query):
        if key.lower() in SECRET_QUERY_KEYS and value and not _only_secrets(value):
            return (f"a literal secret in the URL's {key}= parameter; write it as {{AVAR_NAME}} and set the "
                    "environment variable AVAR_NAME (or AVAR_NAME_FILE, or a systemd credential)")
    return None


def _secret(name: str, env: Mapping[str, str]) -> str | None:
    """The value of secret ``name``: its variable, its ``_FILE``, or its systemd credential."""
    if name in env:
        return env[name]
    for where in (env.get(f"{name}_FILE"),
                  os.path.join(env["CREDENTIALS_DIRECTORY"], name) if env.get("CREDENTIALS_DIRECTORY") else None):
        if where:
            try:
                return Path(where).read_text().rstrip("\r\n")
            except (OSError, UnicodeDecodeError):
                if where == env.get(f"{name}_FILE"):
                    raise InvalidInput(f"{name}_FILE={where}: cannot be read") from None
    return None


def _resolve(base: Path, text: str | None) -> str | None:
    if text is None:
        return None
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else base / path)


def _resolve_source(base: Path, url: str) -> str:
    """A camera's file path resolved against the config's folder; URLs, devices and ``-`` as given."""
    if url == "-" or "://" in url or url.startswith("/dev/"):
        return url
    return _resolve(base, url) or url


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> DeployConfig:
    """The checked config file at ``path`` (``env``: where secrets come from, default the
    process's environment). Every error of the file is collected and raised as one
    ``InvalidInput`` naming the file and each error's line."""
    path = Path(path)
    env = os.environ if env is None else env
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingInput(f"--config {path}: no such file (`cli.py watch --config-schema` prints what it holds; "
                           "docs/cameras.example.yml is an example)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"--config {path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise InvalidInput(f"--config {path}: not valid YAML:\n  {line}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise InvalidInput(f"--config {path}: not valid YAML ({e})") from None
    if root is None or not isinstance(data, dict):
        raise InvalidInput(f"--config {path}: the file must be a mapping with run, cameras and outputs "
                           "(`cli.py watch --config-schema` prints the schema)")
    lines = _Lines(root)
    errors: list[tuple[int, str, str]] = [(line, _dotted(p), f"duplicate key (first at line {first})")
                                          for line, p, first in lines.duplicates]
    secrets: set[str] = set()
    for where, value in list(_walk_strings(data)):
        why = _literal_secret(where, value)
        if why is not None:
            errors.append((lines.of(where), _dotted(where), why))
            continue
        names = SECRET.findall(value)
        if not names:
            continue
        found = {}
        for name in dict.fromkeys(names):
            secret = _secret(name, env)
            if secret is None:
                errors.append((lines.of(where), _dotted(where),
                               f"{{{name}}} is not set: set the environment variable {name}, or {name}_FILE to a file "
                               f"holding it, or give it as a systemd credential (LoadCredential={name}:...)"))
            elif not secret:
                errors.append((lines.of(where), _dotted(where), f"{{{name}}} is empty"))
            else:
                found[name] = secret
        if found:
            _set(data, where, SECRET.sub(lambda m: found.get(m[1], m[0]), value))
            secrets |= set(found.values())
            if where[-1:] == ("url",) and len(found) == len(set(names)):
                secrets |= url_secrets(SECRET.sub(lambda m: found[m[1]], value))
    model: ConfigFile | None = None
    try:
        model = ConfigFile.model_validate(data)
    except ValidationError as e:
        for err in e.errors(include_url=False, include_input=False):
            loc = err["loc"]
            msg = err["msg"].removeprefix("Value error, ")
            errors.append((lines.of(loc), _dotted(loc), msg))
    if model is not None:
        errors += _missing_paths(path, model, lines)
    if errors:
        errors.sort(key=lambda e: e[0])
        listed = "\n".join(f"  {path}:{line}: {where}: {redact_text(msg, secrets)}" for line, where, msg in errors)
        raise InvalidInput(f"--config {path}: {len(errors)} error(s) (`cli.py watch --config-schema` prints the "
                           f"schema):\n{listed}")
    assert model is not None
    return _deploy(path, model, frozenset(secrets))


def _missing_paths(path: Path, m: ConfigFile, lines: _Lines) -> list[tuple[int, str, str]]:
    """What would only fail once the watch starts, checked now with its line: the run
    folder, the enabled cameras' files, a view served beyond loopback without a token."""
    from .web import is_loopback, parse_serve

    base = path.resolve().parent
    errors = []
    run = Path(_resolve(base, m.run) or m.run)
    if not run.is_dir():
        errors.append((lines.of(("run",)), "run", f"{run}: no such run folder"))
    for name, c in m.cameras.items():
        url = _resolve_source(base, c.url)
        if c.enabled and url != "-" and "://" not in url and not url.startswith("/dev/") and not Path(url).exists():
            errors.append((lines.of(("cameras", name, "url")), f"cameras.{name}.url",
                           f"{url}: no such file (or set enabled: false)"))
    serve = m.outputs.serve
    if serve is not None and serve.token is None and not is_loopback(parse_serve(serve.address)[0]):
        errors.append((lines.of(("outputs", "serve")), "outputs.serve",
                       "serving beyond this machine (not a loopback address) needs a token: "
                       'token: "{AVAR_SERVE_TOKEN}"'))
    metrics = m.outputs.metrics
    if (metrics is not None and metrics.address is not None and not is_loopback(parse_serve(metrics.address)[0])
            and (serve is None or serve.token is None)):   # /metrics on its own port takes outputs.serve's token
        errors.append((lines.of(("outputs", "metrics", "address")), "outputs.metrics.address",
                       "/metrics beyond this machine (not a loopback address) needs a token, which is "
                       "outputs.serve's: give outputs.serve a token: \"{AVAR_SERVE_TOKEN}\""))
    return errors


def _deploy(path: Path, m: ConfigFile, secrets: frozenset[str]) -> DeployConfig:
    base = path.resolve().parent
    d = m.defaults
    cameras = []
    for name, c in m.cameras.items():
        given = c.model_fields_set
        cameras.append(CameraConfig(
            name=name, url=_resolve_source(base, c.url), enabled=c.enabled,
            threshold=c.threshold if c.threshold is not None else d.threshold,
            min_duration=c.min_duration if c.min_duration is not None else d.min_duration,
            cooldown=c.cooldown if c.cooldown is not None else d.cooldown,
            window=c.window if "window" in given else d.window,
            audio=c.audio if c.audio is not None else d.audio))
    o = m.outputs
    if o.metrics is not None and o.metrics.address is None and o.serve is None:
        logger.warning("%s: outputs.metrics has no address and there is no outputs.serve: /metrics is off", path)
    webhook = {} if o.webhook is None else {"webhook": o.webhook.url, "webhook_timeout": o.webhook.timeout,
                                            "webhook_retries": o.webhook.retries}
    serve = {} if o.serve is None else {"serve": o.serve.address, "token": o.serve.token,
                                        "serve_names": tuple(o.serve.names)}
    outputs = WatchOutputs(out=_resolve(base, o.jsonl), mqtt=None if o.mqtt is None else MqttConfig(**o.mqtt.model_dump()),
                           metrics=o.metrics.address if o.metrics is not None else None, **webhook, **serve)
    return DeployConfig(
        path=path, run=Path(_resolve(base, m.run) or m.run), device=m.device, realtime=m.realtime,
        cameras=tuple(cameras), outputs=outputs, snapshots=_resolve(base, o.snapshots),
        clips=None if o.clips is None else ClipConfig(**{**o.clips.model_dump(), "dir": _resolve(base, o.clips.dir)}),
        secrets=secrets)


def flag_spelled(name: str) -> str:
    """A ``watch`` option as the user types it, from its parameter name."""
    return FLAG_SPELLING.get(name, "--" + name.replace("_", "-"))


def refuse_flags_beside(config: str | Path, given: Iterable[str]) -> None:
    """``watch`` flags given beside ``--config`` that the file also sets are refused
    (``InvalidInput``): one place for a deployment's settings, never two that disagree."""
    clash = [name for name in given if name in FILE_FLAGS]
    if clash:
        listed = ", ".join(f"{flag_spelled(n)} (the file's {FILE_FLAGS[n]})"
                           for n in clash)
        raise InvalidInput(f"--config {config}: {listed} given beside it; the file sets these: edit it, or "
                           "watch without --config for a one-off run")


def schema_text() -> str:
    return json.dumps(config_schema(), indent=2)
