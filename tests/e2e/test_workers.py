"""`server.workers = 2` end to end: twistd as a subprocess, a supervisor and two workers.

Which worker served a session is read from the audit log (`session-start` carries the
worker's index and pid); which worker refused a connection, from the twistd log (the
supervisor relays each worker's lines with its index and pid).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from hardening.server import free_port
from hardening.unprivileged import runtime
from securetransport.passwords import hash_password
from securetransport.pki import init_pki
from securetransport.stores import open_user_store
from securetransport.userstore import Account
from tests.e2e.ftps_clients import RawControl, ReusingFTP_TLS
from tests.e2e.harness import PASSWORD, random_file

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
SIZE = 20 * 1024 * 1024


def greeting(port: int, source: str | None = None) -> tuple[socket.socket, str]:
    """Connect and read the first reply line; the socket is left open."""
    sock = socket.create_connection(
        (HOST, port), timeout=10, source_address=(source, 0) if source else None
    )
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        line += chunk
    return sock, line.decode("ascii", "replace").strip()


def python_path() -> str:
    return os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text().split()
        found.update(int(child) for child in text)
    return found


class WorkersServer:
    """A folder with a PKI, an account and a config, and twistd serving it with 2 workers."""

    def __init__(
        self, case: SynchronousTestCase, server: str = "", user: pwd.struct_passwd | None = None
    ) -> None:
        """`user`: twistd gets --uid/--gid of that user (then it must run as root)."""
        self.case = case
        self.user = user
        self.root = Path(tempfile.mkdtemp(prefix="st-workers-"))
        case.addCleanup(shutil.rmtree, self.root, True)
        self.root.chmod(0o755)  # for the user twistd drops to
        init_pki(self.root / "pki", [])  # the key is mode 0600, owned by whoever runs this
        self.data = self.root / "data"
        self.home = self.data / "home" / "alice"
        self.home.mkdir(parents=True)
        store = open_user_store(f"sqlite:{self.data / 'users.sqlite3'}")
        store.add(Account(name="alice", password_hash=hash_password(PASSWORD)))
        store.close()
        if user is not None:
            for path in [self.data, *self.data.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)
        self.port = free_port()
        first = 62000 + os.getpid() % 2000
        allow_root = "allow_root = true\n" if os.geteuid() == 0 and user is None else ""
        self.config = self.root / "st.toml"
        self.config.write_text(
            f'[server]\nhome_root = "data/home"\nusers = "sqlite:data/users.sqlite3"\n'
            f'audit_log = "data/log/audit.jsonl"\nworkers = 2\n{allow_root}{server}\n'
            f'[[listen]]\naddress = "{HOST}"\nport = {self.port}\ntls = "explicit"\n'
            f'[passive]\nports = "{first}-{first + 39}"\n'
            f'[tls]\ncertificate = "pki/server.crt"\nprivate_key = "pki/server.key"\n'
            f'[[class]]\nname = "all"\nssl = "mandatory"\nlogin = ["password"]\n'
            f'client_certificate = "off"\nsession_reuse = "required"\n'
        )
        self.log = self.root / "twistd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkersServer:
        command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        env = {**os.environ, "PYTHONPATH": python_path()}
        drop: list[str] = []
        if self.user is not None:
            drop = [f"--uid={self.user.pw_uid}", f"--gid={self.user.pw_gid}"]
            # The workers start the interpreter as that user: one it can run, with copies
            # of the packages it can read, wherever the checkout lies (issue #9.12).
            command, env = runtime().twistd_command(), runtime().env()
        with open(self.log, "wb") as output:
            self.process = subprocess.Popen(
                [*command, "-n", "--pidfile=", *drop, "securetransport", "--config",
                 str(self.config)],
                cwd=self.root, stdout=output, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        self.case.addCleanup(self.stop)
        self.wait_for(lambda: len(self.serving()) == 2, "both workers listening")
        return self

    def wait_for(self, condition: Any, what: str, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if condition():
                return
            assert self.process is not None
            if self.process.poll() is not None:
                self.case.fail(f"twistd ended while waiting for {what}:\n{self.text()[-3000:]}")
            time.sleep(0.1)
        self.case.fail(f"timed out waiting for {what}:\n{self.text()[-3000:]}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def serving(self) -> set[int]:
        """Pids of the workers that said they serve the listener."""
        found = re.findall(r"worker \d+ \(pid (\d+)\): .*serving FTP", self.text())
        return {int(pid) for pid in found} & self.workers()

    def workers(self) -> set[int]:
        assert self.process is not None
        return children(self.process.pid) if self.process.poll() is None else set()

    def refusals(self, text: str) -> list[int]:
        """Pids of the workers that logged `refused ...: TEXT`, in order."""
        pattern = rf"worker \d+ \(pid (\d+)\): .*refused [0-9.]+: {re.escape(text)}"
        return [int(pid) for pid in re.findall(pattern, self.text())]

    def audit(self) -> list[dict[str, Any]]:
        path = self.data / "log" / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def session_pids(self) -> list[int]:
        return [e["pid"] for e in self.audit() if e["event"] == "session-start"]

    def session_ends(self) -> int:
        return sum(1 for e in self.audit() if e["event"] == "session-end")

    def ftps(self) -> ReusingFTP_TLS:
        context = ssl.create_default_context(cafile=str(self.root / "pki" / "ca.crt"))
        ftp = ReusingFTP_TLS(context=context, timeout=30)
        ftp.connect(HOST, self.port)
        ftp.login("alice", PASSWORD)
        ftp.prot_p()
        return ftp

    def stop(self) -> tuple[int, set[int]]:
        """SIGTERM to twistd; (its exit code, the worker pids it had)."""
        process = self.process
        if process is None:
            return 0, set()
        self.process = None
        workers = children(process.pid) if process.poll() is None else set()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return process.returncode, workers


class WorkersTests(SynchronousTestCase):
    def test_sessions_spread_and_max_sessions_holds_across_workers(self) -> None:
        server = WorkersServer(self, "max_sessions = 3\n").start()
        workers = server.workers()
        self.assertEqual(len(workers), 2)
        # Sessions one after the other take turns: between workers holding as many
        # sessions, the one that accepted fewer connections goes first (a worker that
        # just closed one may still count it open: the other one takes the next anyway).
        for _ in range(4):
            sock, line = greeting(server.port)
            self.assertTrue(line.startswith("220 "), line)
            sock.sendall(b"QUIT\r\n")
            sock.recv(100)
            sock.close()
            server.wait_for(lambda: len(server.audit()) > 0, "the audit log")
            if set(server.session_pids()) == workers:
                break
        self.assertEqual(set(server.session_pids()), workers)

        # Hold 3 sessions spread over both workers (new sessions go to the one with fewer):
        # each worker holds fewer than 3, yet every 4th connection gets 421.
        held: list[socket.socket] = []
        for _ in range(40):
            while len(held) < 3:
                sock, line = greeting(server.port)
                self.assertTrue(line.startswith("220 "), line)
                held.append(sock)
            time.sleep(0.2)
            if len(set(server.session_pids()[-3:])) == 2:
                break
            ended = server.session_ends()
            held.pop(0).close()
            # Its worker has let the slot go once it logs the end (the count comes first).
            server.wait_for(lambda: server.session_ends() > ended, "the session's end")  # noqa: B023
        self.assertEqual(len(set(server.session_pids()[-3:])), 2, "3 sessions on both workers")
        for _ in range(6):
            sock, line = greeting(server.port)
            sock.close()
            self.assertTrue(line.startswith("421 "), line)
        server.wait_for(lambda: len(server.refusals("too many sessions")) == 6, "6 refusals")
        self.assertLessEqual(set(server.refusals("too many sessions")), workers)
        # A closed session makes room again.
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:
            sock, line = greeting(server.port)
            sock.close()
            if line.startswith("220 ") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertTrue(line.startswith("220 "), line)
        for sock in held:
            sock.close()

    def test_a_ban_made_through_one_worker_holds_on_the_other(self) -> None:
        server = WorkersServer(self, "max_login_failures = 2\nban_time = 120\n").start()
        workers = server.workers()
        context = ssl.create_default_context(cafile=str(server.root / "pki" / "ca.crt"))
        # Two wrong passwords in one session (served by one worker) ban 127.0.0.2.
        control = RawControl(server.port, source="127.0.0.2")
        self.assertTrue(control.command("AUTH TLS").startswith("234"))
        control.start_tls(context)
        replies = []
        for name in ("alice", "bob"):
            replies.append(control.command(f"USER {name}"))
            replies.append(control.command("PASS wrong-password"))
        replies.append(control.read_reply())
        control.close()
        self.assertEqual([reply[:3] for reply in replies], ["331", "530", "331", "530", "421"])
        self.assertEqual(len(server.session_pids()), 1)
        # New connections from 127.0.0.2 get 421 from both workers; 127.0.0.1 is served.
        for _ in range(40):
            sock, line = greeting(server.port, source="127.0.0.2")
            sock.close()
            self.assertTrue(line.startswith("421 "), line)
            if set(server.refusals("banned")) == workers:
                break
        self.assertEqual(set(server.refusals("banned")), workers)
        sock, line = greeting(server.port)
        sock.close()
        self.assertTrue(line.startswith("220 "), line)

    def test_20_mib_ftps_download_sha256(self) -> None:
        server = WorkersServer(self).start()
        digest = random_file(server.home / "big.bin", SIZE)
        for _ in range(2):  # two sessions, likely on both workers: each has its passive slice
            ftp = server.ftps()
            received = hashlib.sha256()
            ftp.retrbinary("RETR big.bin", received.update, blocksize=1 << 16)
            ftp.quit()
            self.assertEqual(received.hexdigest(), digest)
            self.assertEqual(ftp.data_resumed, [True])

    def test_restart_reload_and_sigterm(self) -> None:
        """A killed worker is replaced and its sessions forgotten; SIGHUP reaches the
        workers; SIGTERM ends twistd and every worker, and removes the limits file."""
        server = WorkersServer(self, "max_sessions = 2\n").start()
        first_workers = server.workers()
        held = [greeting(server.port) for _ in range(2)]
        self.assertEqual([line[:4] for _, line in held], ["220 ", "220 "])
        server.wait_for(lambda: len(server.session_pids()) == 2, "2 session-start events")
        holders = set(server.session_pids())
        for pid in holders:
            os.kill(pid, signal.SIGKILL)
        for sock, _ in held:
            sock.close()
        server.wait_for(
            lambda: len(server.workers()) == 2 and not server.workers() & holders,
            "the killed workers to be replaced",
        )
        server.wait_for(lambda: len(server.serving()) == 2, "the new workers to listen")
        # The killed workers' 2 sessions no longer count: 2 new ones are served.
        again = [greeting(server.port) for _ in range(2)]
        self.assertEqual([line[:4] for _, line in again], ["220 ", "220 "])
        for sock, _ in again:
            sock.close()

        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        server.wait_for(
            lambda: (
                len(re.findall(r"worker \d+ \(pid \d+\): .*reopened the logs", server.text())) == 2
            ),
            "both workers to reload",
        )

        limits_files = re.findall(r"--limits (\S+)", " ".join(
            Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
            for pid in server.workers()
        ))  # fmt: skip
        self.assertEqual(len(set(limits_files)), 1)
        self.assertTrue(Path(limits_files[0]).exists())
        code, workers = server.stop()
        self.assertIn(code, (0, -signal.SIGTERM))
        self.assertEqual(len(workers), 2)
        self.assertFalse(workers & holders)
        self.assertNotEqual(workers, first_workers)
        for pid in workers:
            self.assertFalse(Path(f"/proc/{pid}").exists(), f"worker {pid} outlived twistd")
        self.assertFalse(Path(limits_files[0]).exists())
        text = server.text()
        self.assertIn("Server Shut Down.", text)
        self.assertNotIn("Traceback", text)

    def test_workers_serve_as_the_user_twistd_drops_to(self) -> None:
        """As root with --uid: the key (0600, root's) reaches the workers through the
        supervisor; workers and supervisor run as that user and serve FTPS."""
        if os.geteuid() != 0:
            raise SkipTest("dropping privileges needs root (CI runs as root)")
        nobody = pwd.getpwnam("nobody")
        python = runtime().python
        try:
            subprocess.run(
                [python, "-c", "pass"], user=nobody.pw_uid, group=nobody.pw_gid,
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip
        except (OSError, subprocess.CalledProcessError) as error:
            raise SkipTest(
                f"nobody cannot run {python} (the base interpreter "
                f"{os.path.realpath(python)}): {error}"
            ) from None
        server = WorkersServer(self, user=nobody)
        self.assertEqual(os.stat(server.root / "pki" / "server.key").st_mode & 0o777, 0o600)
        server.start()
        assert server.process is not None
        for pid in {server.process.pid, *server.workers()}:
            status = Path(f"/proc/{pid}/status").read_text()
            uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            self.assertEqual(set(uid_line.split()[1:]), {str(nobody.pw_uid)}, uid_line)
        (server.home / "note.txt").write_bytes(b"served by nobody\n")
        ftp = server.ftps()
        received: list[bytes] = []
        ftp.retrbinary("RETR note.txt", received.append)
        ftp.quit()
        self.assertEqual(b"".join(received), b"served by nobody\n")
