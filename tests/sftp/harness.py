"""A live SFTP server in the test's reactor, with real keys and accounts, and real clients.

OpenSSH's `sftp` runs as a process in batch mode (`-b`), with a known_hosts file made
from the server's host key (StrictHostKeyChecking=yes) and the user's key (`-i`);
paramiko runs in a thread. Every byte crosses loopback sockets.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from hardening.server import PASSWORD
from securetransport.config import load_config
from securetransport.passwords import hash_password
from securetransport.service import SecureTransportService
from securetransport.sftp.keys import HOST_KEY_NAME, write_ssh_keys
from securetransport.stores import open_user_store
from securetransport.userstore import Account
from tests.e2e.harness import audit_events_in, require_tool, run_tool

SSH_CLASSES = """
[[class]]
name = "keys"
users = ["alice", "ghost*"]
ssl = "optional"
login = ["publickey", "password"]

[[class]]
name = "two-factor"
users = ["carol"]
ssl = "optional"
login = ["publickey+password"]

[[class]]
name = "no-keys"
ssl = "optional"
login = ["password"]
"""


class SFTPServer:
    """Config, host key, accounts (password + key) under a temporary folder; FTP and SFTP."""

    def __init__(
        self,
        case: TestCase,
        *,
        classes: str = SSH_CLASSES,
        users: tuple[str, ...] = ("alice", "bob", "carol"),
        upload_mode: str = "atomic",
        extra_server: str = "",
        extra_sections: str = "",
    ) -> None:
        self.case = case
        self.root = Path(case.mktemp()).absolute()
        self.root.mkdir(parents=True)
        self.keys = self.root / "keys"
        self.public_keys = write_ssh_keys(self.keys, list(users))
        self.home_root = self.root / "home"
        text = f"""
[server]
home_root = "home"
users = "sqlite:users.sqlite3"
upload_mode = "{upload_mode}"
audit_log = "log/audit.jsonl"
xferlog = "log/xferlog"
{extra_server}

[[listen]]
address = "127.0.0.1"
port = 0
protocol = "sftp"

[[listen]]
address = "127.0.0.1"
port = 0

[ssh]
host_keys = ["keys/{HOST_KEY_NAME}"]
{extra_sections}
{classes}
"""
        self.config_path = self.root / "securetransport.toml"
        self.config_path.write_text(text)
        self.config = load_config(self.config_path)
        store = open_user_store(self.config.server.users)
        hashed = hash_password(PASSWORD)
        for name in users:
            key = self.public_keys[f"{name}_ed25519"]
            store.add(Account(name=name, password_hash=hashed, ssh_keys=(key,)))
            (self.home_root / name).mkdir(parents=True, exist_ok=True)
        store.close()
        self.known_hosts = self.root / "known_hosts"
        self.service = SecureTransportService(self.config, reactor)

    def start(self) -> SFTPServer:
        self.service.startService()
        self.case.addCleanup(self.service.stopService)
        host = self.public_keys[HOST_KEY_NAME].rsplit(" ", 1)[0]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host}\n")
        return self

    @property
    def runtime(self) -> Any:
        return self.service.runtime

    @property
    def port(self) -> int:
        return int(self.service.ports[0].getHost().port)

    @property
    def ftp_port(self) -> int:
        return int(self.service.ports[1].getHost().port)

    def home(self, user: str = "alice") -> Path:
        return self.home_root / user

    def key(self, user: str = "alice") -> Path:
        return self.keys / f"{user}_ed25519"

    def store(self) -> Any:
        store = open_user_store(self.config.server.users)
        self.case.addCleanup(store.close)
        return store

    def audit_events(self) -> list[dict[str, Any]]:
        return audit_events_in(self.root / "log" / "audit.jsonl")


def banner_after(port: int, header: bytes = b"") -> bytes:
    """Connect, send `header`, and return what the server says first (b"" when it closes).

    A server that aborts a refused connection can reset it before our connect() returns
    on a loaded machine; that too is a close before any banner.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            if header:
                sock.sendall(header)
            return sock.recv(200)
    except ConnectionResetError:
        return b""


def ssh_options(server: SFTPServer) -> list[str]:
    return [
        "-o",
        f"UserKnownHostsFile={server.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=20",
        "-o",
        "ServerAliveInterval=0",
        "-P",
        str(server.port),
    ]


def openssh_sftp(
    server: SFTPServer,
    commands: str,
    *,
    user: str = "alice",
    key: Path | None = None,
    password: str | None = None,
    work: Path,
    extra: tuple[str, ...] = (),
) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """Run OpenSSH `sftp -b` with `commands` in `work`; by key (`-i`) or by password
    (through sshpass). Fires with (stdout, stderr, exit code)."""
    require_tool("sftp")
    batch = work / "batch.txt"
    batch.write_text(commands + "\n")
    options = ssh_options(server) + list(extra)
    if key is not None:
        options += [
            "-i",
            str(key),
            "-o",
            "IdentitiesOnly=yes",
        ]
        if password is None:
            options += ["-o", "PreferredAuthentications=publickey", "-o", "BatchMode=yes"]
    if password is not None:
        options += [
            "-o",
            "PreferredAuthentications=" + ("publickey,password" if key else "password"),
            "-o",
            "PubkeyAuthentication=" + ("yes" if key else "no"),
            "-o",
            "BatchMode=no",
            "-o",
            "NumberOfPasswordPrompts=1",
        ]
        # sftp -b adds BatchMode=yes: ours must come first to win (ssh keeps the first).
        options += ["-b", str(batch)]
        sftp = require_tool("sftp")
        return run_tool(
            "sshpass",
            ["-e", sftp, *options, f"{user}@127.0.0.1"],
            path=work,
            env={"SSHPASS": password},
        )
    return run_tool("sftp", [*options, "-b", str(batch), f"{user}@127.0.0.1"], path=work)


def environment() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
