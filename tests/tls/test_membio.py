"""tls/membio.py's renew_idle_bios: fresh memory BIOs after a handshake, in TLS 1.2 and
1.3, only when both are empty, and the connection goes on as if nothing happened."""

from __future__ import annotations

from OpenSSL import SSL
from twisted.trial.unittest import TestCase

from securetransport.tls import membio
from tests.tls.helpers import TLS12, TLS13, client_context, close, connect, exchange, make_pki


class RenewIdleBiosTests(TestCase):
    def setUp(self) -> None:
        self.pki = make_pki()

    def established(self, version: int) -> tuple[SSL.Connection, SSL.Connection]:
        server_ctx = self.pki.factory().new_session_context(request_client_certificate=False)
        client_ctx = client_context(max_version=version, min_version=version)
        return connect(client_ctx, server_ctx)

    def renewed_then_used(self, version: int) -> None:
        client, server = self.established(version)
        before = (server._into_ssl, server._from_ssl)
        self.assertTrue(membio.renew_idle_bios(server))
        self.assertNotIn(server._into_ssl, before)
        self.assertNotIn(server._from_ssl, before)
        self.assertEqual(membio.pending_in_memory_bios(server), 0)
        # Both ways, then a clean close: keys and sequence numbers were kept.
        self.assertEqual(exchange(client, server, b"USER alice\r\n"), b"USER alice\r\n")
        self.assertEqual(exchange(server, client, b"331 Password\r\n"), b"331 Password\r\n")
        self.assertTrue(membio.renew_idle_bios(server))
        self.assertEqual(exchange(client, server, b"NOOP\r\n"), b"NOOP\r\n")
        close(client, server)
        self.assertEqual(server.get_shutdown(), SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)

    def test_tls12(self) -> None:
        self.renewed_then_used(TLS12)

    def test_tls13(self) -> None:
        self.renewed_then_used(TLS13)

    def test_bytes_waiting_either_way_keep_the_bios(self) -> None:
        client, server = self.established(TLS13)
        server.sendall(b"unsent reply")  # in the outgoing BIO, not yet sent
        kept = (server._into_ssl, server._from_ssl)
        self.assertFalse(membio.renew_idle_bios(server))
        self.assertEqual((server._into_ssl, server._from_ssl), kept)
        self.assertGreater(client.bio_write(server.bio_read(1 << 16)), 0)
        self.assertEqual(client.recv(100), b"unsent reply")
        client.sendall(b"unread command")
        server.bio_write(client.bio_read(1 << 16))  # in the incoming BIO, not yet read
        self.assertFalse(membio.renew_idle_bios(server))
        self.assertEqual((server._into_ssl, server._from_ssl), kept)
        self.assertEqual(server.recv(100), b"unread command")

    def test_not_on_memory_bios(self) -> None:
        self.assertFalse(membio.renew_idle_bios(object()))
        client, server = self.established(TLS12)
        server._into_ssl = None  # as after bind_to_socket
        self.assertFalse(membio.renew_idle_bios(server))
