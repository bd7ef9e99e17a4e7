"""Faults: killed clients, a killed server, unreadable files, a removed home, a full disk.

Tests that kill the server, limit its file size or need it to run as an ordinary user
(root reads every file) run it as a subprocess (`hardening.server.ServerProcess`, as
"nobody" when the tests run as root); the others use the in-reactor `LiveServer`.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from hardening.clients import open_session
from hardening.server import ServerProcess
from hardening.unprivileged import readable_folder
from tests.e2e.harness import PASSWORD, LiveServer, in_thread, sha256_file
from tests.hardening.helpers import Session, code, temporaries, wait_for

PROJECT = Path(__file__).resolve().parents[2]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def reply_of(call: Any, *args: Any) -> str:
    """An ftplib call's reply text, whether it succeeds or raises."""
    try:
        return str(call(*args))
    except ftplib.Error as error:
        return str(error)


def store_reply(ftp: ftplib.FTP, command: str, data: bytes) -> str:
    """STOR/APPE `data`; the reply text. When the server cuts the data connection while
    the client still sends (an upload it refuses midway), the client reads the reply on
    the control connection, as real clients do."""
    try:
        return reply_of(ftp.storbinary, command, io.BytesIO(data))
    except OSError:  # reset or broken pipe on the data connection
        return reply_of(ftp.getresp)


class KilledClientTests(TestCase):
    """A client killed (SIGKILL) mid-upload: the previous file stays, no temporary is left."""

    timeout = 60

    def setUp(self) -> None:
        self.server = LiveServer(self).start()

    def kill_during_upload(self, mode: str) -> dict[str, Any]:
        port = self.server.implicit_port if mode == "implicit" else self.server.explicit_port
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.hardening.killed_client",
                str(port),
                mode,
                str(self.server.pki),
            ],
            cwd=PROJECT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out: dict[str, Any] = {}
        try:
            assert child.stdout is not None
            out["started"] = child.stdout.readline().strip()
            out["temporary_seen"] = wait_for(lambda: bool(temporaries(self.server.home())), 5)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            out["stderr"] = child.stderr.read() if child.stderr else b""
        counter = self.server.runtime.sessions
        out["swept"] = wait_for(lambda: not temporaries(self.server.home()), 5)
        out["sessions_closed"] = wait_for(lambda: counter.total == 0, 5)
        return out

    @defer.inlineCallbacks
    def test_killed_clear_and_tls_clients(self) -> Any:
        target = self.server.home() / "keep.bin"
        for mode in ("explicit", "implicit", "clear"):
            target.write_bytes(b"previous version")
            out = yield in_thread(self.kill_during_upload, mode)
            self.assertEqual(out["started"], b"sending", (mode, out))
            self.assertTrue(out["temporary_seen"], (mode, out))
            self.assertTrue(out["swept"], (mode, out))
            self.assertTrue(out["sessions_closed"], (mode, out))
            self.assertEqual(sorted(p.name for p in self.server.home().iterdir()), ["keep.bin"])
            content = target.read_bytes()
            if mode != "clear":
                # No TLS close_notify: the upload failed (426) and the old file stays.
                self.assertEqual(content, b"previous version", mode)
                continue
            # In clear FTP the kernel ends a killed client's data connection with a FIN,
            # which is also how a complete upload ends: the server may store what came.
            # Either outcome is whole: the old version, or exactly the bytes that were sent.
            kept = content == b"previous version"
            self.assertTrue(kept or content == b"n" * len(content), content[:32])
            outcome = "kept the old version" if kept else f"stored the {len(content)} bytes sent"
            print(f"\nclear client killed mid-upload: {outcome}")
        failed = [
            e
            for e in self.server.audit_events()
            if e.get("event") == "transfer" and e.get("result") == "failed"
        ]
        self.assertGreaterEqual(len(failed), 2, failed)


class HomeRemovedTests(TestCase):
    """A user's home removed while logged in: clean 550s, the session goes on."""

    timeout = 30

    def setUp(self) -> None:
        self.server = LiveServer(self).start()

    @defer.inlineCallbacks
    def test_home_removed_while_logged_in(self) -> Any:
        home = self.server.home()
        (home / "sub").mkdir()
        (home / "a.txt").write_text("a")

        def run() -> dict[str, Any]:
            session = Session(self.server.explicit_port)
            session.command("CWD sub")
            shutil.rmtree(home)
            out: dict[str, Any] = {}
            for line in (
                "SIZE /a.txt",
                "MDTM /a.txt",
                "MLST /",
                "CWD /",
                "CDUP",
                "MKD /d",
                "RMD /d",
                "DELE /a.txt",
                "RNFR /a.txt",
                "HASH /a.txt",
                "STAT /",
            ):
                out[line] = session.command(line)
            out["PWD"] = session.command("PWD")
            out["RETR"] = session.retr("RETR /a.txt")[1]
            out["LIST"] = session.retr("LIST /")[1]
            out["STOR"] = session.stor("STOR /new.txt", b"new")
            out["NOOP"] = session.command("NOOP")
            home.mkdir()
            out["STOR again"] = session.stor("STOR /new.txt", b"new")
            out["NLST again"] = session.retr("NLST /")
            session.command("QUIT")
            session.close()
            return out

        out = yield in_thread(run)
        for line in (
            "SIZE /a.txt",
            "MDTM /a.txt",
            "MLST /",
            "CWD /",
            "CDUP",
            "MKD /d",
            "RMD /d",
            "DELE /a.txt",
            "RNFR /a.txt",
            "HASH /a.txt",
            "STAT /",
        ):
            self.assertEqual(code(out[line]), "550", (line, out[line]))
        self.assertEqual(code(out["PWD"]), "257", out)
        self.assertEqual([code(r) for r in out["RETR"]], ["550"], out)
        self.assertEqual([code(r) for r in out["LIST"]], ["550"], out)
        self.assertEqual([code(r) for r in out["STOR"]], ["550"], out)
        self.assertEqual(code(out["NOOP"]), "200", out)
        self.assertEqual([code(r) for r in out["STOR again"]], ["150", "226"], out)
        self.assertEqual(out["NLST again"][0], b"new.txt\r\n", out)
        self.assertEqual(self.server.runtime.sessions.total, 0)


class SubprocessServerTest(SynchronousTestCase):
    """A server in a subprocess, stopped (and its log checked) after each test."""

    file_size_limit: int | None = None

    def setUp(self) -> None:
        # Not below the checkout, which may lie where "nobody" cannot go (issue #9.12).
        root = readable_folder("st-faults-") / "server"
        self.addCleanup(shutil.rmtree, root.parent, True)
        self.server = ServerProcess(root, file_size_limit=self.file_size_limit).start()
        self.addCleanup(self.server.kill)

    def assert_healthy(self) -> None:
        self.assertTrue(self.server.alive(), self.server.log_text()[-3000:])
        self.assertEqual(self.server.log_problems(), [])

    def login(self, mode: str = "clear") -> ftplib.FTP:
        port = self.server.implicit_port if mode == "implicit" else self.server.explicit_port
        return open_session(port, "alice", PASSWORD, mode=mode, pki=self.server.pki)

    def put(self, name: str, data: bytes, mode: int = 0o640) -> Path:
        path = self.server.home() / name
        path.write_bytes(data)
        path.chmod(mode)
        self.server.give(path)
        return path


class UnreadableTests(SubprocessServerTest):
    """Files the server cannot open -> 550, and the session goes on."""

    def test_unreadable_file_folder_and_fifo(self) -> None:
        if self.server.run_as is None and os.geteuid() == 0:
            raise SkipTest("the server runs as root, which reads every file")
        home = self.server.home()
        self.put("secret.bin", b"secret", 0o000)
        locked = home / "locked"
        locked.mkdir()
        (locked / "inside.txt").write_text("inside")
        self.server.give(locked, locked / "inside.txt")
        locked.chmod(0o000)
        os.mkfifo(home / "pipe")
        self.server.give(home / "pipe")
        self.put("fine.txt", b"fine")
        ftp = self.login()
        replies = {
            "RETR secret.bin": reply_of(ftp.retrbinary, "RETR secret.bin", lambda _: None),
            "HASH secret.bin": reply_of(ftp.sendcmd, "HASH secret.bin"),
            "APPE secret.bin": reply_of(ftp.storbinary, "APPE secret.bin", io.BytesIO(b"x")),
            "LIST locked": reply_of(ftp.retrlines, "LIST locked", lambda _: None),
            "RETR locked/inside.txt": reply_of(
                ftp.retrbinary, "RETR locked/inside.txt", lambda _: None
            ),
            "STOR locked/new.txt": reply_of(
                ftp.storbinary, "STOR locked/new.txt", io.BytesIO(b"x")
            ),
            "RETR pipe": reply_of(ftp.retrbinary, "RETR pipe", lambda _: None),
            "HASH pipe": reply_of(ftp.sendcmd, "HASH pipe"),
        }
        received = io.BytesIO()
        replies["RETR fine.txt"] = reply_of(ftp.retrbinary, "RETR fine.txt", received.write)
        replies["NOOP"] = reply_of(ftp.sendcmd, "NOOP")
        ftp.quit()
        locked.chmod(0o750)
        for line, reply in replies.items():
            expected = "226" if line == "RETR fine.txt" else "200" if line == "NOOP" else "550"
            self.assertEqual(code(reply), expected, (line, reply))
        self.assertEqual(received.getvalue(), b"fine")
        self.assertEqual((home / "secret.bin").read_bytes(), b"secret")
        self.assertEqual(temporaries(home), [])
        self.assert_healthy()


class FileSizeLimitTests(SubprocessServerTest):
    """A full disk, made by RLIMIT_FSIZE on the server process: 552, previous file intact."""

    file_size_limit = 2 * 1024 * 1024

    def test_uploads_past_the_limit(self) -> None:
        previous = os.urandom(1024 * 1024)
        self.put("keep.bin", previous)
        big = os.urandom(3 * 1024 * 1024)
        ftp = self.login()
        replies = {
            "STOR keep.bin": store_reply(ftp, "STOR keep.bin", big),
            "STOR new.bin": store_reply(ftp, "STOR new.bin", big),
            "APPE keep.bin": store_reply(ftp, "APPE keep.bin", os.urandom(1536 * 1024)),
            "STOR small.txt": store_reply(ftp, "STOR small.txt", b"small"),
        }
        ftp.quit()
        tls = self.login("implicit")
        replies["STOR tls.bin (implicit)"] = store_reply(tls, "STOR keep.bin", big)
        replies["NOOP"] = reply_of(tls.sendcmd, "NOOP")
        tls.quit()
        for line, reply in replies.items():
            if line in ("STOR small.txt",):
                self.assertEqual(code(reply), "226", (line, reply))
            elif line == "NOOP":
                self.assertEqual(code(reply), "200", (line, reply))
            else:
                self.assertIn(code(reply), ("452", "552"), (line, reply))
        home = self.server.home()
        self.assertEqual(digest((home / "keep.bin").read_bytes()), digest(previous))
        self.assertFalse((home / "new.bin").exists())
        self.assertEqual((home / "small.txt").read_bytes(), b"small")
        self.assertEqual(temporaries(home), [])
        self.assert_healthy()


class FullTmpfsTests(TestCase):
    """A really full file system (a 1 MiB tmpfs as the home): 452, previous file intact."""

    timeout = 30

    def setUp(self) -> None:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            raise SkipTest("mounting a tmpfs needs root")
        self.server = LiveServer(self)
        home = self.server.home()
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0750", "tmpfs", str(home)],
            capture_output=True,
        )
        if mounted.returncode != 0:
            raise SkipTest(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
        self.addCleanup(subprocess.run, ["umount", "-l", str(home)], capture_output=True)
        self.server.start()

    @defer.inlineCallbacks
    def test_upload_past_a_full_disk(self) -> Any:
        previous = os.urandom(300 * 1024)
        target = self.server.home() / "keep.bin"
        target.write_bytes(previous)
        port = self.server.explicit_port

        def run() -> dict[str, Any]:
            session = Session(port)
            out = {
                "overwrite": session.stor("STOR keep.bin", os.urandom(2 * 1024 * 1024)),
                "new": session.stor("STOR new.bin", os.urandom(2 * 1024 * 1024)),
                "small": session.stor("STOR small.txt", b"small"),
                "noop": session.command("NOOP"),
            }
            session.close()
            return out

        out = yield in_thread(run)
        self.assertIn(code(out["overwrite"][-1]), ("452", "552"), out)
        self.assertIn(code(out["new"][-1]), ("452", "552"), out)
        self.assertEqual(code(out["small"][-1]), "226", out)
        self.assertEqual(code(out["noop"]), "200", out)
        self.assertEqual(digest(target.read_bytes()), digest(previous))
        self.assertFalse((self.server.home() / "new.bin").exists())
        self.assertEqual(temporaries(self.server.home()), [])


class KilledServerTests(SubprocessServerTest):
    """The server killed with SIGKILL mid-upload, then restarted: temporaries swept."""

    def test_sigkill_mid_upload_then_restart(self) -> None:
        home = self.server.home()
        previous = os.urandom(1024 * 1024)
        self.put("keep.bin", previous)
        sub = home / "sub"
        sub.mkdir()
        stale = sub / ".st-upload-0123456789abcdef"
        stale.write_bytes(b"left by an earlier crash")
        self.server.give(sub, stale)
        ftp = self.login()
        data = ftp.transfercmd("STOR keep.bin")
        data.sendall(os.urandom(3 * 1024 * 1024))  # the server writes 1 MiB pieces

        def partial() -> bool:
            return any(
                (home / name).stat().st_size > 0
                for name in temporaries(home)
                if (home / name).exists()
            )

        written = wait_for(partial, 5)
        status = self.server.kill(signal.SIGKILL)
        left = temporaries(home)
        data.close()
        ftp.close()
        self.assertTrue(written, "the upload never reached the disk")
        self.assertEqual(status, -signal.SIGKILL)
        self.assertEqual(len(left), 2, left)  # the interrupted upload and the stale one
        self.assertEqual(sha256_file(home / "keep.bin"), digest(previous))

        self.server.start()
        self.assertEqual(temporaries(home), [])
        self.assertEqual(sha256_file(home / "keep.bin"), digest(previous))
        ftp = self.login("explicit")
        received = io.BytesIO()
        ftp.retrbinary("RETR keep.bin", received.write)
        ftp.quit()
        self.assertEqual(digest(received.getvalue()), digest(previous))
        self.assertIn("removed 2 interrupted uploads", self.server.log_text(since_start=True))
        self.assert_healthy()
