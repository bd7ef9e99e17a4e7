"""A real server in a subprocess (`twistd -n securetransport`), with a PKI and accounts.

Used by `make fuzz`, `make soak` and the fault tests that need to kill the server,
limit its resources or run it as another user. Everything listens on loopback.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hardening import unprivileged
from securetransport.config import load_config
from securetransport.passwords import hash_password
from securetransport.pki import init_pki
from securetransport.stores import open_user_store
from securetransport.userstore import Account

PASSWORD = "correct-horse-battery-9"
DEFAULT_CLASSES = """
[[class]]
name = "everyone"
ssl = "optional"
client_certificate = "verify"
login = ["certificate", "password"]
session_reuse = "required"
"""
LOOPBACK = ("127.0.0.1", "::1")


# Below Linux's ephemeral range (32768-60999 by default): no outgoing connection and no
# bind to port 0 gets one of these between our probe and the server's own bind.
_PORTS_FROM, _PORTS_TO = 20000, 32767
_handed_out: set[int] = set()


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on `address` right now, never handed out before in this process,
    outside the kernel's ephemeral range (so that nothing takes it before the server
    binds it)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for _ in range(200):
        port = random.randint(_PORTS_FROM, _PORTS_TO)
        if port in _handed_out:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((address, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port on {address} in {_PORTS_FROM}-{_PORTS_TO}")


def twistd_path() -> str:
    """The twistd next to the running interpreter (the project's venv)."""
    candidate = Path(sys.executable).parent / "twistd"
    if candidate.exists():
        return str(candidate)
    return "twistd"


def rss_kib(pid: int) -> int | None:
    """Resident set size of a process in KiB, from /proc; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class ServerError(Exception):
    """The server subprocess did not start, or died."""


class ServerProcess:
    """Builds a config, PKI and accounts under `root`, then runs twistd on it.

    `run_as`: (uid, gid) for twistd's --uid/--gid (the folder is handed to that user);
    "auto" (the default): "nobody" when started as root, as a real deployment would,
    else the current user. `file_size_limit`: RLIMIT_FSIZE in bytes for the server.
    `extra_server` and `extra_tls`: TOML lines added to `[server]` and `[tls]`.
    """

    run_as: tuple[int, int] | None

    def __init__(
        self,
        root: Path,
        *,
        users: tuple[str, ...] = ("alice", "bob"),
        extra_server: str = "",
        extra_tls: str = "",
        classes: str = DEFAULT_CLASSES,
        upload_mode: str = "atomic",
        listen_address: str = "127.0.0.1",
        run_as: tuple[int, int] | None | str = "auto",
        file_size_limit: int | None = None,
        password: str = PASSWORD,
    ) -> None:
        if listen_address not in LOOPBACK:
            raise ValueError(f"listen_address must be loopback, got {listen_address!r}")
        self.root = root.absolute()
        self.users = users
        self.extra_server = extra_server
        self.extra_tls = extra_tls
        self.classes = classes
        self.upload_mode = upload_mode
        self.listen_address = listen_address
        self.run_as = default_user() if isinstance(run_as, str) else run_as
        self.file_size_limit = file_size_limit
        self.password = password
        self.pki = self.root / "pki"
        self.home_root = self.root / "home"
        self.config_path = self.root / "securetransport.toml"
        self.log_path = self.root / "twistd.log"
        self.explicit_port = 0
        self.implicit_port = 0
        self.passive = (0, 0)
        self.process: subprocess.Popen[bytes] | None = None
        self._prepared = False
        self._log_offset = 0

    # ----------------------------------------------------------------------------- set-up
    def prepare(self) -> None:
        """PKI, user store and home folders (once)."""
        if self._prepared:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        init_pki(self.pki, list(self.users))
        self._write_config()
        config = load_config(self.config_path)
        store = open_user_store(config.server.users)
        try:
            hashed = hash_password(self.password)
            for name in self.users:
                store.add(Account(name=name, password_hash=hashed))
                (self.home_root / name).mkdir(parents=True, exist_ok=True)
        finally:
            store.close()
        self._prepared = True

    def _write_config(self) -> None:
        address = self.listen_address
        self.explicit_port = free_port(address)
        self.implicit_port = free_port(address)
        first = random.randrange(61000, 64800)
        self.passive = (first, first + 199)
        self.config_path.write_text(
            f"""
[server]
allow_root = true
home_root = "home"
users = "sqlite:users.sqlite3"
upload_mode = "{self.upload_mode}"
audit_log = "log/audit.jsonl"
xferlog = "log/xferlog"
{self.extra_server}

[[listen]]
address = "{address}"
port = {self.explicit_port}
tls = "explicit"

[[listen]]
address = "{address}"
port = {self.implicit_port}
tls = "implicit"

[passive]
ports = "{self.passive[0]}-{self.passive[1]}"

[tls]
certificate = "pki/server.crt"
private_key = "pki/server.key"
client_ca = "pki/ca.crt"
certificate_user = "common-name"
{self.extra_tls}

{self.classes}
"""
        )

    def home(self, user: str = "alice") -> Path:
        return self.home_root / user

    def give(self, *paths: Path) -> None:
        """Hand files made by the caller to the server's user (when it runs as another)."""
        if self.run_as is None:
            return
        uid, gid = self.run_as
        for path in paths:
            os.chown(path, uid, gid, follow_symlinks=False)

    # ----------------------------------------------------------------------------- life
    def start(self, timeout: float = 30) -> ServerProcess:
        """Start twistd (new ports each time) and wait for its greeting."""
        self.prepare()
        if self.process is not None and self.process.poll() is None:
            raise ServerError("already running")
        self._write_config()
        args = [twistd_path(), "-n", "--pidfile="]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.run_as is not None:
            uid, gid = self.run_as
            for parent in self.root.parents:
                if not parent.stat().st_mode & 0o001:
                    raise ServerError(f"{parent} is not searchable by uid {uid}: use another root")
            _chown_tree(self.root, uid, gid)
            # After the drop it still imports: from copies it can read, not the checkout.
            python = unprivileged.runtime()
            args = [*python.twistd_command(), "-n", "--pidfile="]
            args += ["--uid", str(uid), "--gid", str(gid)]
            env = python.env(env)
        args += ["securetransport", "--config", str(self.config_path)]
        limit = self.file_size_limit
        preexec: Callable[[], None] | None = None
        if limit is not None:

            def preexec() -> None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        log = open(self.log_path, "ab")
        self._log_offset = log.tell()
        try:
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(self.root),
                preexec_fn=preexec,
                env=env,
            )
        finally:
            log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(f"twistd exited at start-up:\n{self.log_text()[-3000:]}")
            try:
                with socket.create_connection(
                    (self.listen_address, self.explicit_port), timeout=2
                ) as probe:
                    if probe.recv(64).startswith(b"220"):
                        probe.sendall(b"QUIT\r\n")
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.kill()
        raise ServerError(f"twistd did not greet within {timeout} s:\n{self.log_text()[-3000:]}")

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ServerError("not started")
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_kib(self) -> int | None:
        return rss_kib(self.pid) if self.alive() else None

    def kill(self, sig: int = signal.SIGKILL, wait: float = 10) -> int | None:
        """Send `sig` and wait for the exit; the exit status (None if it would not die)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            try:
                process.send_signal(sig)
            except ProcessLookupError:
                pass
        try:
            return process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout=wait)

    def stop(self) -> int | None:
        """SIGTERM (twistd stops cleanly), SIGKILL after 10 s."""
        return self.kill(signal.SIGTERM)

    # ----------------------------------------------------------------------------- logs
    def log_text(self, since_start: bool = False) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        if since_start:
            data = data[self._log_offset :]
        return data.decode("utf-8", "replace")

    def log_problems(self) -> list[str]:
        """Log lines that show an unhandled error (tracebacks, 'Unhandled Error')."""
        markers = ("Traceback", "Unhandled Error", "Unhandled error", "internal error")
        return [
            line for line in self.log_text().splitlines() if any(mark in line for mark in markers)
        ]


def default_user() -> tuple[int, int] | None:
    """(uid, gid) of "nobody" when running as root; None otherwise (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return (65534, 65534)
    return entry.pw_uid, entry.pw_gid


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for folder, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)
