"""Graceful drain (SPEC section 10): SIGTERM to a real twistd in the middle of transfers."""

from __future__ import annotations

import ftplib
import hashlib
import os
import signal
import socket
import threading
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from hardening.clients import open_session
from hardening.server import DEFAULT_CLASSES, ServerProcess, free_port
from tests.e2e.balancer import reachable_root
from tests.e2e.harness import PASSWORD, random_file


class DrainTest(SynchronousTestCase):
    grace = 30

    def setUp(self) -> None:
        root = reachable_root(self)  # "nobody" must reach it
        self.metrics_port = free_port()
        metrics = f'\n[metrics]\naddress = "127.0.0.1"\nport = {self.metrics_port}\n'
        self.server = ServerProcess(
            root, extra_server=f"shutdown_grace = {self.grace}", classes=DEFAULT_CLASSES + metrics
        ).start()
        self.addCleanup(self.server.kill)

    def login(self) -> ftplib.FTP:
        return open_session(self.server.explicit_port, "alice", PASSWORD, mode="clear")

    def health(self) -> int:
        """The status of GET /health (the balancer's check)."""
        import urllib.error
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    def refused(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.server.explicit_port), timeout=5):
                return False
        except ConnectionRefusedError:
            return True

    def wait_exit(self, timeout: float) -> int | None:
        assert self.server.process is not None
        try:
            return self.server.process.wait(timeout=timeout)
        except Exception:  # noqa: BLE001 - a timeout is the failure we report
            return None


class SigtermLetsTransfersFinish(DrainTest):
    def test_download_in_progress_finishes_and_no_new_session_is_taken(self) -> None:
        path = self.server.home() / "big.bin"
        expected = random_file(path, 24 << 20)
        self.server.give(path)
        ftp = self.login()
        started = threading.Event()
        result: dict[str, Any] = {}

        def download() -> None:
            digest = hashlib.sha256()
            began = time.monotonic()
            received = 0

            def block(data: bytes) -> None:
                nonlocal received
                started.set()
                digest.update(data)
                received += len(data)
                # about 6 MiB/s: the transfer lasts about 4 s
                ahead = received / (6 << 20) - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)

            try:
                result["reply"] = ftp.retrbinary("RETR big.bin", block, blocksize=65536)
                result["sha256"] = digest.hexdigest()
                try:
                    result["after"] = ftp.sendcmd("NOOP")
                except (ftplib.Error, OSError, EOFError) as error:
                    result["after"] = str(error)
            except Exception as error:  # noqa: BLE001 - reported below
                result["error"] = repr(error)

        thread = threading.Thread(target=download)
        thread.start()
        self.assertTrue(started.wait(10))
        self.assertEqual(self.health(), 200)
        time.sleep(0.5)
        os.kill(self.server.pid, signal.SIGTERM)
        time.sleep(0.5)
        self.assertTrue(self.refused(), "the node still accepts connections while draining")
        self.assertEqual(self.health(), 503)  # the balancer sends new sessions elsewhere
        thread.join(60)
        self.assertNotIn("error", result, result)
        self.assertTrue(result["reply"].startswith("226"), result)
        self.assertEqual(result["sha256"], expected)
        self.assertFalse(result["after"].startswith("200"), result)  # 421 or closed
        self.assertIn(self.wait_exit(15), (0, -signal.SIGTERM), self.server.log_text()[-2000:])


class GraceEndsWhatIsLeft(DrainTest):
    grace = 1

    def test_stalled_transfers_are_ended_after_the_grace(self) -> None:
        (self.server.home() / "old.bin").write_bytes(b"old version")
        self.server.give(self.server.home() / "old.bin")
        path = self.server.home() / "big.bin"
        random_file(path, 64 << 20)
        self.server.give(path)
        reader = self.login()
        stalled_download = reader.transfercmd("RETR big.bin")  # never read
        writer = self.login()
        upload = writer.transfercmd("STOR old.bin")
        upload.sendall(os.urandom(1 << 20))  # and then nothing: it never completes
        time.sleep(0.5)
        began = time.monotonic()
        os.kill(self.server.pid, signal.SIGTERM)
        status = self.wait_exit(15)
        elapsed = time.monotonic() - began
        self.assertIn(status, (0, -signal.SIGTERM), self.server.log_text()[-2000:])
        self.assertGreater(elapsed, 0.9)  # the grace was given
        self.assertLess(elapsed, 10)
        # the interrupted upload was not published, and its temporary is gone
        self.assertEqual((self.server.home() / "old.bin").read_bytes(), b"old version")
        self.assertEqual(
            [p.name for p in self.server.home().iterdir() if p.name.startswith(".st-upload")], []
        )
        for sock in (stalled_download, upload):
            sock.close()
        for ftp in (reader, writer):
            ftp.close()
