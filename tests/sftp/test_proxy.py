"""SFTP behind a PROXY protocol sender ([proxy], SPEC section 10): the header's address is
the client's for classes, bans and the audit, as for FTP."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.e2e.harness import in_thread
from tests.sftp.harness import SFTPServer, banner_after


class ProxiedSFTPTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.server = SFTPServer(
            self,
            extra_server="max_login_failures = 2",
            extra_sections='[proxy]\nfrom = ["127.0.0.1/32"]\n',
        ).start()

    @defer.inlineCallbacks
    def test_header_address_is_the_client(self) -> Any:
        header = b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 22\r\n"
        banner = yield in_thread(banner_after, self.server.port, header)
        self.assertTrue(banner.startswith(b"SSH-2.0-securetransport"), banner)
        starts = [e for e in self.server.audit_events() if e["event"] == "session-start"]
        self.assertEqual([(e["client"], e["protocol"]) for e in starts], [("192.0.2.9", "sftp")])

    @defer.inlineCallbacks
    def test_a_banned_proxied_address_is_closed_before_the_banner(self) -> Any:
        guard = self.server.runtime.guard
        now = self.server.runtime.reactor.seconds()
        for _ in range(2):
            guard.record_failure("192.0.2.9", "x", now)
        header = b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 22\r\n"
        banner = yield in_thread(banner_after, self.server.port, header)
        self.assertEqual(banner, b"")
        other = b"PROXY TCP4 192.0.2.10 127.0.0.1 40000 22\r\n"
        banner = yield in_thread(banner_after, self.server.port, other)
        self.assertTrue(banner.startswith(b"SSH-2.0-"), banner)
