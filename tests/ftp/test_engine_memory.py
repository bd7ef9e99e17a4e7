"""The FTP engine on the in-memory fakes: no thread pool, no SQLite, no disk, no waiting.

A session runs on a StringTransport with a MemoryReactorClock; its portal, user store and
filesystem are tests/fakes.py's, so every reply is written before `dataReceived` returns
and the tests are `SynchronousTestCase`s. A passive data connection is the factory the
session handed to `listenTCP`, connected to another StringTransport.

This is the core layer of issue #10 item 7; the same commands run over real sockets in
tests/e2e/test_functional.py.
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from securetransport.audit import AuditLog, XferLog
from securetransport.config import ClassConfig, Config, PassiveConfig, ServerConfig, TLSConfig
from securetransport.ftp.passive import PassivePortProvider
from securetransport.ftp.protocol import FTPFactory
from securetransport.runtime import ServerRuntime
from tests.fakes import (
    MemoryFilesystem,
    MemoryUserStore,
    SyncAsyncUserStore,
    memory_account,
    memory_portal,
)
from tests.ftp.test_protocol import BANNER, PEER, Client, Transport, address

PASSWORD = "correct horse"
EVERYONE = ClassConfig(
    name="everyone", ssl="optional", client_certificate="off", login=("password",)
)


class EngineOnFakesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock: Any = MemoryReactorClock()
        self.store = MemoryUserStore(
            (memory_account("alice", PASSWORD), memory_account("reader", PASSWORD, read_only=True))
        )
        self.users = SyncAsyncUserStore(self.store)
        self.portal = memory_portal(self.users)
        self.files: Any = self.portal.filesystems  # type: ignore[attr-defined]
        server = ServerConfig(banner=BANNER, home_root=cast(Any, "/nonexistent"), users="sqlite:/x")
        config = Config(
            server=server,
            passive=PassiveConfig(ports=(61000, 61009)),
            tls=TLSConfig(certificate_user="none"),  # type: ignore[arg-type]
            classes=(EVERYONE,),
        )
        self.runtime = ServerRuntime(
            config=config,
            reactor=self.clock,
            portal=self.portal,
            users=self.users,
            passive=PassivePortProvider(self.clock, 61000, 61009),
            audit=AuditLog(None),
            xferlog=XferLog(None),
        )

    def connect(self, user: str = "alice") -> Client:
        session = FTPFactory(self.runtime).buildProtocol(address(PEER, 50000))
        transport = Transport(PEER, "127.0.0.1")
        transport.protocol = cast(Any, session)
        session.makeConnection(transport)
        self.addCleanup(transport.loseConnection)
        client = Client(session, transport)
        self.assertEqual(client.replies(), [(220, BANNER)])
        client.send(f"USER {user}".encode(), f"PASS {PASSWORD}".encode())
        self.assertEqual(client.codes(), [331, 230])
        return client

    def fs(self, user: str = "alice") -> MemoryFilesystem:
        return cast(MemoryFilesystem, self.files[user])

    def command(self, client: Client, line: str) -> tuple[int, str]:
        client.send(line.encode("utf-8"))
        replies = client.replies()
        self.assertEqual(len(replies), 1, replies)
        return replies[0]

    def passive(self, client: Client) -> tuple[Any, StringTransportWithDisconnection]:
        """EPSV, then the client's data connection: (its protocol, its transport)."""
        code, _ = self.command(client, "EPSV")
        self.assertEqual(code, 229)
        port, factory, _, _ = self.clock.tcpServers[-1]
        self.assertIn(port, range(61000, 61010))
        protocol = factory.buildProtocol(IPv4Address("TCP", PEER, 40000))
        transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", PEER, 40000))
        transport.protocol = protocol  # loseConnection() reaches connectionLost
        protocol.makeConnection(transport)
        return protocol, transport

    def test_wrong_password_is_530_at_once(self) -> None:
        session = FTPFactory(self.runtime).buildProtocol(address(PEER, 50000))
        transport = Transport(PEER, "127.0.0.1")
        transport.protocol = cast(Any, session)
        session.makeConnection(transport)
        self.addCleanup(transport.loseConnection)
        client = Client(session, transport)
        client.replies()
        client.send(b"USER alice", b"PASS wrong")
        self.assertEqual(client.codes(), [331])
        self.clock.advance(5)  # the failure delay runs on the session's clock
        self.assertEqual(client.codes(), [530])

    def test_folders_and_names(self) -> None:
        client = self.connect()
        fs = self.fs()
        self.assertEqual(self.command(client, "MKD docs"), (257, '"/docs" created'))
        self.assertEqual(self.command(client, "CWD docs")[0], 250)
        self.assertEqual(self.command(client, "PWD"), (257, '"/docs" is the current folder'))
        fs.write_file("docs/a.txt", b"12345", mtime=1_000_000_000)
        self.assertEqual(self.command(client, "SIZE a.txt"), (213, "5"))
        self.assertEqual(self.command(client, "MDTM a.txt"), (213, "20010909014640"))
        self.assertEqual(self.command(client, "MFMT 20200102030405 a.txt")[0], 213)
        self.assertEqual(self.command(client, "MDTM /docs/a.txt"), (213, "20200102030405"))
        self.assertEqual(self.command(client, "RNFR a.txt")[0], 350)
        self.assertEqual(self.command(client, "RNTO ../b.txt")[0], 250)
        self.assertEqual(fs.read_file("b.txt"), b"12345")
        self.assertEqual(self.command(client, "CDUP")[0], 250)
        self.assertEqual(self.command(client, "RMD docs")[0], 250)
        self.assertEqual(self.command(client, "DELE b.txt")[0], 250)
        self.assertEqual(fs.raw_names(), [])
        self.assertEqual(self.command(client, "CWD ../../..")[0], 250)
        self.assertEqual(self.command(client, "PWD")[1], '"/" is the current folder')
        self.assertEqual(self.command(client, "SIZE nope")[0], 550)
        self.assertEqual(self.command(client, "MKD a\\b")[0], 553)

    def test_read_only_account(self) -> None:
        client = self.connect("reader")
        self.fs("reader").write_file("f.txt", b"x")
        for line in ("MKD d", "DELE f.txt", "RNFR f.txt", "STOR g", "APPE f.txt", "RMD d"):
            self.assertEqual(self.command(client, line)[0], 550, line)
        self.assertEqual(self.fs("reader").raw_names(), ["f.txt"])

    def test_retr_from_an_offset(self) -> None:
        client = self.connect()
        payload = bytes(range(256)) * 40
        self.fs().write_file("data.bin", payload)
        protocol, transport = self.passive(client)
        self.assertEqual(self.command(client, "REST 1000")[0], 350)
        client.send(b"RETR data.bin")
        self.assertEqual(client.codes(), [150, 226])
        self.assertEqual(transport.value(), payload[1000:])

    def test_stor_and_appe(self) -> None:
        client = self.connect()
        protocol, transport = self.passive(client)
        client.send(b"STOR up.bin")
        self.assertEqual(client.codes(), [150])
        protocol.dataReceived(b"first ")
        self.assertEqual(self.fs().raw_names()[0][:11], ".st-upload-")  # atomic temporary
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(client.codes(), [226])
        protocol, transport = self.passive(client)
        client.send(b"APPE up.bin")
        protocol.dataReceived(b"second")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(client.codes(), [150, 226])
        self.assertEqual(self.fs().read_file("up.bin"), b"first second")
        self.assertEqual(self.fs().raw_names(), ["up.bin"])
        digest = hashlib.sha256(b"first second").hexdigest()
        self.assertIn(digest, self.command(client, "HASH up.bin")[1].lower())

    def test_listings(self) -> None:
        client = self.connect()
        self.fs().write_file("a.txt", b"abc", mtime=1_000_000_000)
        self.fs().make_folders("sub")
        protocol, transport = self.passive(client)
        client.send(b"MLSD")
        self.assertEqual(client.codes(), [150, 226])
        lines = transport.value().decode().splitlines()
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("size=3;", lines[0])
        self.assertIn("modify=20010909014640;", lines[0])
        self.assertTrue(lines[0].endswith("; a.txt"), lines)
        self.assertIn("type=dir;", lines[1])
        self.assertTrue(lines[1].endswith("; sub"), lines)
        protocol, transport = self.passive(client)
        client.send(b"NLST")
        self.assertEqual(client.codes(), [150, 226])
        self.assertEqual(transport.value(), b"a.txt\r\nsub\r\n")
