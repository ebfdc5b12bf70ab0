"""docs/avar-watch.service, the systemd unit docs/deploy.md installs: what it promises
(restart on failure but not on a config error, secrets by ``LoadCredential=`` under the
names the config's ``{AVAR_NAME}`` reads from ``$CREDENTIALS_DIRECTORY``, a user of its
own, hardening), and ``systemd-analyze verify`` on it where systemd is installed (the unit's
python and cli.py paths pointed at this checkout, since /opt/avar-net is not here)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "docs" / "avar-watch.service"
DEPLOY = ROOT / "docs" / "deploy.md"


def _entries(text: str) -> dict[str, list[tuple[str, str]]]:
    """Section -> (key, value) in order; keys repeat (LoadCredential=, Environment=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
            continue
        key, _, value = line.partition("=")
        assert current is not None and _, f"{UNIT.name}: {line!r} outside a section or not KEY=VALUE"
        sections[current].append((key.strip(), value.strip()))
    return sections


def _one(entries: list[tuple[str, str]], key: str) -> str:
    values = [v for k, v in entries if k == key]
    assert len(values) == 1, (key, values)
    return values[0]


def test_the_unit_restarts_on_failure_reads_secrets_as_credentials_and_is_hardened() -> None:
    unit = _entries(UNIT.read_text())
    service = unit["Service"]
    assert _one(service, "ExecStart").endswith("cli.py watch --config /etc/avar/cameras.yml")
    assert _one(service, "Restart") == "on-failure"
    assert _one(service, "RestartPreventExitStatus") == "2"          # a bad config: exit 2, no restart loop
    assert _one(service, "KillSignal") == "SIGTERM"                  # watch flushes its outputs on SIGTERM
    assert _one(service, "DynamicUser") == "yes" and _one(service, "StateDirectory") == "avar"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "RestrictNamespaces", "RestrictSUIDSGID",
                "LockPersonality", "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups"):
        assert _one(service, key) == "yes", key
    assert _one(service, "ProtectSystem") == "strict" and _one(service, "CapabilityBoundingSet") == ""
    # every credential is named as the variable the config's {AVAR_NAME} reads from $CREDENTIALS_DIRECTORY
    credentials = [v.split(":", 1) for k, v in service if k == "LoadCredential"]
    assert credentials
    for name, path in credentials:
        assert re.fullmatch(r"AVAR_[A-Z0-9_]+", name), name
        assert path.startswith("/etc/avar/credentials/"), path
    # ... and every secret the deploy guide's config names has its credential line
    guide = DEPLOY.read_text()
    config = next(b for b in re.findall(r"```yaml\n(.*?)```", guide, re.S) if "cameras:" in b)
    named = set(re.findall(r"\{(AVAR_[A-Z0-9_]+)\}", config))
    assert named and named <= {name for name, _ in credentials}, named
    assert "LoadCredential=" in guide and "avar-watch.service" in guide


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (Debian: apt-get install systemd); "
                    "the unit's content is checked by the test above")
    text = UNIT.read_text().replace("/opt/avar-net/.venv/bin/python", sys.executable) \
                           .replace("/opt/avar-net/cli.py", str(ROOT / "cli.py"))
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on warnings (an unknown key, a key in the wrong section): none are allowed
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), (done.stdout, done.stderr)
