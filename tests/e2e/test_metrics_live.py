"""`[metrics]` on a live twistd: one endpoint, also with `server.workers`."""

from __future__ import annotations

import ftplib
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hardening.clients import open_session
from hardening.server import DEFAULT_CLASSES, ServerProcess, free_port
from tests.e2e.balancer import reachable_root
from tests.e2e.harness import PASSWORD, LiveServer, in_thread


def scrape(port: int) -> dict[str, float]:
    """Samples summed over their labels but `method` and `result` kept for logins."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name
            if key == "securetransport_logins_total":
                key += f"{{{sample.labels['method']},{sample.labels['result']}}}"
            found[key] = found.get(key, 0.0) + sample.value
    return found


class LiveMetrics(SynchronousTestCase):
    workers = 1
    run_as: str | None = "auto"

    def setUp(self) -> None:
        root = reachable_root(self)  # "nobody" must reach it
        self.port = free_port()
        metrics = f'\n[metrics]\naddress = "127.0.0.1"\nport = {self.port}\n'
        self.server = ServerProcess(
            root,
            extra_server=f"workers = {self.workers}",
            classes=DEFAULT_CLASSES + metrics,
            run_as=self.run_as,
        ).start()
        self.addCleanup(self.server.kill)

    def test_sessions_logins_and_transfers_are_counted(self) -> None:
        (self.server.home() / "f.txt").write_bytes(b"x" * 1234)
        self.server.give(self.server.home() / "f.txt")
        sessions = [
            open_session(
                self.server.explicit_port, "alice", PASSWORD, mode="explicit", pki=self.server.pki
            )
            for _ in range(4)
        ]
        for ftp in sessions:
            ftp.retrbinary("RETR f.txt", lambda data: None)
        deadline = time.monotonic() + 10
        while True:  # workers refresh their gauges every second
            found = scrape(self.port)
            if found.get("securetransport_sessions_open") == 4 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(found.get("securetransport_sessions_open"), 4, found)
        self.assertEqual(found.get("securetransport_logins_total{password,success}"), 4, found)
        self.assertEqual(found.get("securetransport_transfers_total"), 4, found)
        self.assertEqual(found.get("securetransport_transfer_bytes_total"), 4 * 1234, found)
        self.assertGreaterEqual(found.get("securetransport_tls_handshakes_total", 0), 8, found)
        for ftp in sessions:
            ftp.quit()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as response:
            self.assertEqual(response.status, 200)


class LiveMetricsWithWorkers(LiveMetrics):
    """Two workers, one endpoint served by the supervisor (multiprocess files)."""

    workers = 2
    run_as = None  # the workers run the venv's interpreter (as tests/e2e/test_workers.py)


class InProcessRefusals(TestCase):
    """521 and a login, counted on a live in-process server's /metrics."""

    @defer.inlineCallbacks
    def test_521_refusal_is_counted(self) -> Any:
        port = free_port()
        classes = (
            '[[class]]\nname = "strict"\nssl = "mandatory"\nlogin = ["password"]\n'
            'client_certificate = "off"\n'
            f'\n[metrics]\naddress = "127.0.0.1"\nport = {port}\n'
        )
        server = LiveServer(self, classes=classes).start()

        def client() -> str:
            ftp = ftplib.FTP_TLS(timeout=10)
            ftp.context.load_verify_locations(str(server.pki / "ca.crt"))
            ftp.context.check_hostname = False
            ftp.connect("127.0.0.1", server.explicit_port)
            ftp.login("alice", PASSWORD)  # AUTH TLS first; no PROT P
            try:
                ftp.nlst()
                reply = "no refusal"
            except ftplib.error_perm as error:
                reply = str(error)
            ftp.quit()
            return reply

        reply = yield in_thread(client)
        self.assertTrue(reply.startswith("521"), reply)
        found = yield in_thread(scrape, port)
        self.assertEqual(found.get("securetransport_refusals_total"), 1, found)
        self.assertEqual(found.get("securetransport_logins_total{password,success}"), 1, found)
        self.assertEqual(found.get("securetransport_sessions_open", 0.0), 0, found)  # QUIT done
