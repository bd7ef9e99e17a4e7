"""Our server as a twistd subprocess on loopback, with a throw-away config and PKI."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from scan.venv import REPO

START_TIMEOUT: Final = 60.0
STOP_TIMEOUT: Final = 10.0
PKI_TIMEOUT: Final = 120.0
SCAN_USER: Final = "scan"

# The service logs one line per listener: "serving FTP (explicit TLS) on 127.0.0.1 port 40123".
_LISTENING = re.compile(r"serving FTP \((explicit|implicit) TLS\) on (\S+) port (\d+)")
_LISTENING_SFTP = re.compile(r"serving SFTP on (\S+) port (\d+)")


class ServerError(Exception):
    """The server could not be prepared or started; the message is one line."""


@dataclass(frozen=True)
class Ports:
    explicit: int
    implicit: int
    sftp: int


def write_config(root: Path, address: str = "127.0.0.1") -> Path:
    """A config with one explicit and one implicit listener on ports the kernel picks."""
    path = root / "securetransport.toml"
    # Run as root (as here), twistd refuses to serve without --uid/--gid unless told so.
    root_line = "allow_root = true" if os.geteuid() == 0 else ""
    path.write_text(
        f"""\
# Written by `python -m scan` (scan/server.py).
[server]
banner = "securetransport TLS scan"
home_root = "home"
users = "sqlite:users.sqlite3"
login_timeout = 30
max_sessions = 1000
max_sessions_per_address = 1000
{root_line}

[[listen]]
address = "{address}"
port = 0
tls = "explicit"

[[listen]]
address = "{address}"
port = 0
tls = "implicit"

[[listen]]
address = "{address}"
port = 0
protocol = "sftp"

[ssh]
host_keys = ["pki/ssh_host_ed25519_key"]

[passive]
ports = "64000-64099"

[tls]
certificate = "pki/server.crt"
private_key = "pki/server.key"
client_ca = "pki/ca.crt"

[[class]]
name = "everyone"
ssl = "optional"
"""
    )
    (root / "home").mkdir(exist_ok=True)
    return path


def make_pki(root: Path, bin_dir: Path) -> Path:
    """`securetransport pki init ROOT/pki --user scan`; returns the folder."""
    pki = root / "pki"
    argv = [
        str(bin_dir.absolute() / "securetransport"),
        "pki",
        "init",
        str(pki),
        "--user",
        SCAN_USER,
    ]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=PKI_TIMEOUT, check=False, cwd=root
        )
    except subprocess.TimeoutExpired:
        raise ServerError(f"pki init: no result within {PKI_TIMEOUT:.0f} s") from None
    except OSError as error:
        raise ServerError(f"pki init: cannot run {argv[0]}: {error}") from None
    if done.returncode != 0:
        why = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise ServerError(f"pki init: exit {done.returncode}: {why[-1] if why else 'no message'}")
    return pki


def parse_ports(log_text: str) -> Ports | None:
    """The explicit and implicit ports from the server's log, once both are listening."""
    found: dict[str, int] = {}
    for mode, _address, port in _LISTENING.findall(log_text):
        found[mode] = int(port)
    sftp = _LISTENING_SFTP.findall(log_text)
    if "explicit" in found and "implicit" in found and sftp:
        return Ports(explicit=found["explicit"], implicit=found["implicit"], sftp=int(sftp[0][1]))
    return None


class ServerProcess:
    """`twistd -n securetransport --config CONFIG` in its own process group; always `stop()` it."""

    def __init__(self, config: Path, log: Path, bin_dir: Path) -> None:
        self.config = config
        self.log = log
        self.bin_dir = bin_dir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Ports:
        """Start the server and wait until both listeners are up; returns their ports."""
        environ = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "HOME") if k in os.environ}
        # twistd's sys.path lacks the repo root, where twisted/plugins/ lives in a checkout.
        environ["PYTHONPATH"] = str(REPO)
        argv = [
            str(self.bin_dir / "twistd"),
            "-n",
            "--pidfile=",
            "securetransport",
            "--config",
            str(self.config),
        ]
        with self.log.open("wb") as sink:
            try:
                self.process = subprocess.Popen(
                    argv,
                    cwd=self.config.parent,
                    env=environ,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as error:
                raise ServerError(f"cannot run {argv[0]}: {error}") from None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            ports = parse_ports(self.log_text())
            if ports is not None:
                return ports
            if self.process.poll() is not None:
                raise ServerError(
                    f"the server exited with status {self.process.returncode}: {self.log_tail()}"
                )
            time.sleep(0.1)
        raise ServerError(
            f"the server did not listen within {START_TIMEOUT:.0f} s: {self.log_tail()}"
        )

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self) -> str:
        lines = [line for line in self.log_text().splitlines() if line.strip()]
        return " | ".join(lines[-3:]) if lines else "(empty log)"

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL if it lingers; idempotent."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=STOP_TIMEOUT)
                return
            except subprocess.TimeoutExpired:
                continue
