"""A mosquitto MQTT broker of our own on a loopback port.

``cli.py bench soak`` runs one beside the watch it soaks, and the MQTT tests run one per
test (killed and restarted mid-stream, or with users and passwords). Both need the same
thing: Debian's ``mosquitto`` started on a free ``127.0.0.1`` port as a child process
that dies with this one (``cache_schema.die_with_parent``: a soak or a test killed with
``kill -9`` must not leave a broker behind), its log in its folder, and a start that
returns only once the port accepts connections.
"""

from __future__ import annotations

import functools
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from cache_schema import die_with_parent, write_text

__all__ = ["MOSQUITTO", "Mosquitto", "free_port"]

# Debian installs the broker in /usr/sbin, which a user's PATH often lacks.
MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.access(p, os.X_OK)), None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """``mosquitto`` on ``127.0.0.1:port`` with its configuration and log in ``folder``.

    ``users``: only these users, with these passwords (hashed by ``mosquitto_passwd``);
    None: anonymous clients. ``persistence``: sessions and retained messages saved every
    second into ``folder``, so that a broker stopped and started again keeps them (as a
    real deployment's does). ``start``/``kill``/``stop``, or use it as a context manager."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None, persistence: bool = True) -> None:
        if MOSQUITTO is None:
            raise RuntimeError("no mosquitto here (looked on PATH and in /usr/sbin): install Debian's mosquitto")
        self.folder, self.port = Path(folder), free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        access = "allow_anonymous true\n"
        if users:
            passwords = write_text(self.folder / "passwords", "")
            for user, password in users.items():
                subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b",
                                str(passwords), user, password], check=True, capture_output=True)
            access = f"allow_anonymous false\npassword_file {passwords}\n"
        saved = (f"persistence true\npersistence_location {self.folder}/\nautosave_interval 1\n" if persistence
                 else "persistence false\n")
        self.conf = write_text(self.folder / "mosquitto.conf", f"listener {self.port} 127.0.0.1\n{access}{saved}"
                                                               f"log_dest stderr\nuser {getpass.getuser()}\n")
        self.log = self.folder / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until its port accepts connections (RuntimeError with
        the end of its log if it exits or does not listen within ``timeout`` seconds)."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([str(MOSQUITTO), "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                         stderr=log, preexec_fn=functools.partial(die_with_parent, os.getpid()))
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = self.log.read_text(errors="replace")[-2000:]
                    self.stop()
                    raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{self.port} "
                                       f"(exit status {self.proc.poll()}); its log ends:\n{tail}") from None
                time.sleep(0.02)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL: a broker that crashes; SIGTERM: one that stops and saves)
        and wait for the process to end."""
        if self.proc is None:
            raise RuntimeError("the broker was never started")
        self.proc.send_signal(sig)
        self.proc.wait(10)

    def stop(self) -> None:
        """Stop it if it runs: SIGTERM, then SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
