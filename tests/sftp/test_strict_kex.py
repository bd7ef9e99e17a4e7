"""Strict key exchange (kex-strict-*-v00@openssh.com) against raw, hand-made packets:
a client that announces it must send KEXINIT first and nothing but key exchange
messages until NEWKEYS; a violation ends the connection with a DISCONNECT."""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.e2e.harness import in_thread
from tests.sftp.harness import SFTPServer


def name_list(*names: bytes) -> bytes:
    data = b",".join(names)
    return struct.pack("!L", len(data)) + data


def clear_packet(payload: bytes) -> bytes:
    padding = 8 - ((5 + len(payload)) % 8)
    if padding < 4:
        padding += 8
    return struct.pack("!LB", 1 + len(payload) + padding, padding) + payload + os.urandom(padding)


def kexinit(strict: bool) -> bytes:
    kexes = [b"curve25519-sha256"] + ([b"kex-strict-c-v00@openssh.com"] if strict else [])
    return (
        bytes((20,))
        + os.urandom(16)
        + name_list(*kexes)
        + name_list(b"ssh-ed25519")
        + name_list(b"aes128-ctr") * 2
        + name_list(b"hmac-sha2-256") * 2
        + name_list(b"none") * 2
        + name_list() * 2
        + b"\x00"
        + struct.pack("!L", 0)
    )


IGNORE = bytes((2,)) + struct.pack("!L", 0)


def exchange(port: int, packets: list[bytes]) -> bytes:
    """Send our version line and `packets`; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"SSH-2.0-strict-test\r\n" + b"".join(clear_packet(p) for p in packets))
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            received += chunk
    return received


class StrictKexTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.server = SFTPServer(self).start()

    @defer.inlineCallbacks
    def test_kexinit_must_come_first(self) -> Any:
        received = yield in_thread(exchange, self.server.port, [IGNORE, kexinit(strict=True)])
        self.assertIn(b"kex-strict-s-v00@openssh.com", received)
        self.assertIn(b"strict kex: KEXINIT was not the first packet", received)

    @defer.inlineCallbacks
    def test_no_other_message_during_the_key_exchange(self) -> Any:
        received = yield in_thread(exchange, self.server.port, [kexinit(strict=True), IGNORE])
        self.assertIn(b"strict kex: unexpected message during the key exchange", received)

    @defer.inlineCallbacks
    def test_without_strict_kex_ignore_is_allowed(self) -> Any:
        """The same IGNORE from a client that did not ask for strict kex is not refused
        (the connection then ends at the login timeout; here we stop reading at once)."""

        def run() -> bytes:
            with socket.create_connection(("127.0.0.1", self.server.port), timeout=3) as sock:
                packets = [kexinit(strict=False), IGNORE]
                sock.sendall(
                    b"SSH-2.0-strict-test\r\n" + b"".join(clear_packet(p) for p in packets)
                )
                received = b""
                try:
                    while chunk := sock.recv(65536):
                        received += chunk
                except TimeoutError:
                    pass
                return received

        received = yield in_thread(run)
        self.assertNotIn(b"strict kex", received)
        self.assertIn(b"kex-strict-s-v00@openssh.com", received)  # still announced
