"""A real PostgreSQL for the tests: initdb in a fresh temporary folder, Unix socket only.

Run as the unprivileged `postgres` user (`runuser -u postgres --`); the data and socket
folders lie in a new folder owned by that user (the checkout may be in a 0700 folder).
One server per test process, started on first use and stopped by its pid at exit; each
test gets its own database. Missing binaries fail loudly: `.ci/run` installs them.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import subprocess
import time
import uuid

from hardening import unprivileged

PG_USER = "postgres"


def pg_binary(name: str) -> str:
    """`initdb`/`postgres` from PATH or Debian's /usr/lib/postgresql/N/bin; fail loudly."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if candidates:
        return candidates[-1]
    raise AssertionError(f"{name} is not installed: run .ci/run (apt-get install -y postgresql)")


def as_postgres(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    if os.geteuid() != 0:
        raise AssertionError("the PostgreSQL tests start their server as root with runuser")
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        ["runuser", "-u", PG_USER, "--", *args], check=True, capture_output=True, **kwargs
    )


class PostgresServer:
    """A throwaway cluster: `start()`, `url(database)`, `create_database()`, `stop()`."""

    def __init__(self) -> None:
        # a folder every user can reach (servers dropped to "nobody" use the socket)
        self.root = unprivileged.readable_folder("st-pg-")
        entry = pwd.getpwnam(PG_USER)
        os.chown(self.root, entry.pw_uid, entry.pw_gid)
        os.chmod(self.root, 0o711)  # servers dropped to "nobody" reach the socket, not the data
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.pid: int | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> PostgresServer:
        as_postgres(
            [pg_binary("initdb"), "-D", str(self.data), "-A", "trust", "-U", PG_USER,
             "--no-sync", "-E", "UTF8", "--locale=C"]
        )  # fmt: skip
        as_postgres(["mkdir", "-m", "0711", str(self.socket_dir)])
        return self._run(timeout)

    def restart(self, timeout: float = 60) -> PostgresServer:
        """Stop by pid and start again on the same data and socket (clients lose their
        connections)."""
        self._halt()
        return self._run(timeout)

    def _run(self, timeout: float) -> PostgresServer:
        self.process = subprocess.Popen(
            ["runuser", "-u", PG_USER, "--", pg_binary("postgres"), "-D", str(self.data),
             "-c", "listen_addresses=", "-k", str(self.socket_dir), "-c", "fsync=off",
             "-c", "full_page_writes=off", "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "ab"),
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        pidfile = self.data / "postmaster.pid"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"postgres exited: {self.log()[-2000:]}")
            try:
                lines = pidfile.read_text().splitlines()
            except OSError:
                lines = []
            if len(lines) >= 8 and lines[7].strip() == "ready" and int(lines[0]) != self.pid:
                self.pid = int(lines[0])
                atexit.register(self.stop)
                return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"postgres did not start within {timeout} s: {self.log()[-2000:]}")

    def log(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@/{database}?host={self.socket_dir}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown by pid (SIGINT), then remove the folder."""
        self._halt()
        shutil.rmtree(self.root, ignore_errors=True)

    def _halt(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            self.pid = None
        if self.process is not None:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


_shared: PostgresServer | None = None


def shared_postgres() -> PostgresServer:
    """The test process's PostgreSQL, started on first use."""
    global _shared
    if _shared is None:
        _shared = PostgresServer().start()
    return _shared
