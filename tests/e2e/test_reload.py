"""Reloading the [tls] files (SIGHUP, or a changed file) reaches explicit and implicit ports."""

from __future__ import annotations

import hashlib
import shutil
import socket
import ssl
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from securetransport.pki import init_pki
from tests.e2e.harness import LiveServer, in_thread


def served_certificate(port: int, *, implicit: bool) -> str:
    """SHA-256 of the certificate the server presents on `port`."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        if not implicit:
            raw.recv(1024)
            raw.sendall(b"AUTH TLS\r\n")
            raw.recv(1024)
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return hashlib.sha256(der).hexdigest()


class ReloadTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.server = LiveServer(self).start()

    def replace_server_certificate(self) -> None:
        fresh = Path(self.mktemp()).absolute()
        init_pki(fresh, [])
        for name in ("server.crt", "server.key"):
            shutil.copy(fresh / name, self.server.pki / name)

    @defer.inlineCallbacks
    def test_reload_reaches_both_kinds_of_port(self) -> Any:
        ports = ((self.server.explicit_port, False), (self.server.implicit_port, True))

        def certificates() -> list[str]:
            return [served_certificate(port, implicit=implicit) for port, implicit in ports]

        before = yield in_thread(certificates)
        self.assertEqual(before[0], before[1])
        self.replace_server_certificate()
        self.server.service.reload()
        after = yield in_thread(certificates)
        self.assertEqual(after[0], after[1])
        self.assertNotEqual(after[0], before[0])

    @defer.inlineCallbacks
    def test_a_broken_file_keeps_the_last_good_one(self) -> Any:
        port = self.server.implicit_port
        before = yield in_thread(served_certificate, port, implicit=True)
        (self.server.pki / "server.crt").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
        self.server.service.reload()
        after = yield in_thread(served_certificate, port, implicit=True)
        self.assertEqual(after, before)
        self.flushLoggedErrors()


class CRLWarningTests(TestCase):
    timeout = 60

    def test_a_crl_near_its_next_update_is_warned_about_on_a_timer(self) -> None:
        from datetime import UTC, datetime, timedelta

        from tests.e2e.access_helpers import CertFactory

        server = LiveServer(self, crl=("ca.crl",))
        certs = CertFactory(server, Path(self.mktemp()).absolute())
        certs.crl(server.root / "ca.crl", [], next_update=datetime.now(UTC) + timedelta(days=3))
        server.start()
        warnings = server.service.warn_about_crls()
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("ca.crl", warnings[0])
        # A fresh CRL (next update in 8 days) gives none.
        certs.crl(server.root / "ca.crl", [], number=2)
        server.service.reload()
        self.assertEqual(server.service.warn_about_crls(), [])
