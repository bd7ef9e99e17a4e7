"""The private OpenSSL calls of tls/membio.py and ftp/tls_pump.py: an established
memory-BIO TLS connection moved onto a socket and back, in TLS 1.2 and 1.3, with no byte
lost or reordered."""

from __future__ import annotations

import os
import socket
import threading

from OpenSSL import SSL
from twisted.trial.unittest import TestCase

from securetransport.ftp import tls_pump
from securetransport.tls import membio
from tests.tls.helpers import TLS12, TLS13, client_context, close, connect, make_pki, move

PAYLOAD = os.urandom(3 * 1024 * 1024 + 11)


def _send_all(conn: SSL.Connection, data: bytes, fd: int) -> None:
    """What TLSFileSender does: SSL_write on the socket, waiting when it would block."""
    sent = 0
    while sent < len(data):
        moved = tls_pump._ssl_io(conn, True, data, sent, len(data) - sent)
        if moved > 0:
            sent += moved
        else:
            import select

            select.select([fd] if moved < 0 else [], [fd] if moved == 0 else [], [], 1)


def _receive(conn: SSL.Connection, size: int, fd: int) -> bytes:
    buffer = bytearray(1 << 20)
    out = bytearray()
    while len(out) < size:
        moved = tls_pump._ssl_io(conn, False, buffer, 0, len(buffer))
        if moved > 0:
            out += buffer[:moved]
        else:
            import select

            select.select([fd], [], [], 1)
    return bytes(out)


class BindTests(TestCase):
    def setUp(self) -> None:
        self.pki = make_pki()

    def moved_both_ways(self, version: int) -> None:
        server_ctx = self.pki.factory().new_session_context(request_client_certificate=False)
        client_ctx = client_context(max_version=version, min_version=version)
        client, server = connect(client_ctx, server_ctx)
        self.assertEqual(membio.pending_in_memory_bios(server), 0)
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        ours.setblocking(False)
        theirs.setblocking(False)
        membio.bind_to_socket(server, ours.fileno())
        membio.bind_to_socket(client, theirs.fileno())
        self.assertIsNone(server._into_ssl)
        with self.assertRaises(TypeError):  # a stray memory-BIO call fails, never crashes
            server.bio_read(10)

        got: list[bytes] = []
        reader = threading.Thread(
            target=lambda: got.append(_receive(client, len(PAYLOAD), theirs.fileno()))
        )
        reader.start()
        _send_all(server, PAYLOAD, ours.fileno())
        reader.join(30)
        self.assertEqual(got, [PAYLOAD])

        # The other way (an upload), then the client's close_notify.
        sender = threading.Thread(target=_send_all, args=(client, PAYLOAD, theirs.fileno()))
        sender.start()
        self.assertEqual(_receive(server, len(PAYLOAD), ours.fileno()), PAYLOAD)
        sender.join(30)
        client.shutdown()
        closed = False
        for _ in range(100):
            try:
                tls_pump._ssl_io(server, False, bytearray(16), 0, 16)
            except tls_pump._Closed:
                closed = True
                break
            import select

            select.select([ours], [], [], 0.1)
        self.assertTrue(closed)

        # Back on fresh memory BIOs: the server's close_notify goes through them.
        membio.unbind_from_socket(server)
        self.assertEqual(membio.pending_in_memory_bios(server), 0)
        server.shutdown()
        self.assertGreater(membio.pending_in_memory_bios(server), 0)
        membio.unbind_from_socket(client)
        move(server, client)
        with self.assertRaises(SSL.ZeroReturnError):
            client.recv(1)

    def test_tls12(self) -> None:
        self.moved_both_ways(TLS12)

    def test_tls13(self) -> None:
        self.moved_both_ways(TLS13)

    def test_pending_bytes_refuse_the_move(self) -> None:
        server_ctx = self.pki.factory().new_session_context(request_client_certificate=False)
        client, server = connect(client_context(), server_ctx)
        client.sendall(b"not yet read")
        move(client, server)  # in the server's receive BIO, not yet read by OpenSSL
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        with self.assertRaises(ValueError):
            membio.bind_to_socket(server, ours.fileno())
        self.assertEqual(server.recv(100), b"not yet read")  # still on its memory BIOs
        close(client, server)
