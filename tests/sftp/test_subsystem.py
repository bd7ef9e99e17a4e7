"""The sftp subsystem without sockets: a fake filesystem whose Deferreds the test fires,
so back-pressure (window credit only for finished requests), bounded framing and
aborted uploads on a lost connection can be seen exactly."""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from securetransport.sftp.subsystem import (
    CHANNEL_WINDOW,
    SFTPServerProtocol,
    SFTPSessionChannel,
)
from securetransport.vfs import FileStat, resolve_path


def packet(kind: int, request: int, body: bytes = b"") -> bytes:
    data = struct.pack("!BL", kind, request) + body
    return struct.pack("!L", len(data)) + data


def string(data: bytes) -> bytes:
    return struct.pack("!L", len(data)) + data


class FakeUpload:
    def __init__(self) -> None:
        self.data = b""
        self.committed = False
        self.aborted = False

    def write(self, data: bytes) -> Deferred[None]:
        self.data += data
        return succeed(None)

    def commit(self) -> Deferred[int]:
        self.committed = True
        return succeed(len(self.data))

    def abort(self) -> Deferred[None]:
        self.aborted = True
        return succeed(None)


class FakeFilesystem:
    """stat() answers only when the test fires it; uploads are recorded."""

    read_only = False

    def __init__(self) -> None:
        self.pending: list[Deferred[FileStat]] = []
        self.uploads: list[FakeUpload] = []

    def resolve(self, cwd: str, path: str) -> str:
        return resolve_path(cwd, path)

    def stat(self, path: str) -> Deferred[FileStat]:
        d: Deferred[FileStat] = Deferred()
        self.pending.append(d)
        return d

    def open_upload(self, path: str, offset: int = 0, append: bool = False) -> Deferred[Any]:
        upload = FakeUpload()
        self.uploads.append(upload)
        return succeed(upload)


class FakeAvatar:
    def __init__(self) -> None:
        self.filesystem = FakeFilesystem()
        self.session = None


class FakeConnection:
    def __init__(self) -> None:
        self.adjusted: list[int] = []
        self.sent = b""

    def adjustWindow(self, channel: Any, amount: int) -> None:  # noqa: N802
        self.adjusted.append(amount)
        channel.localWindowLeft += amount

    def sendData(self, channel: Any, data: bytes) -> None:  # noqa: N802
        self.sent += data

    def sendClose(self, channel: Any) -> None:  # noqa: N802
        pass


def _file(size: int = 0) -> FileStat:
    return FileStat(name="f", is_dir=False, size=size, mtime=0.0, mode=0o100640)


class ChannelWindowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.avatar = FakeAvatar()
        self.conn = FakeConnection()
        self.channel = SFTPSessionChannel(
            remoteWindow=1 << 30, remoteMaxPacket=1 << 20, avatar=self.avatar, conn=self.conn
        )
        self.assertEqual(self.channel.request_subsystem(string(b"sftp")), 1)
        self.feed(struct.pack("!LBL", 5, 1, 3))  # INIT

    def feed(self, data: bytes) -> None:
        """As SFTPConnection.ssh_CHANNEL_DATA does: take the window, no automatic adjust."""
        self.channel.localWindowLeft -= len(data)
        self.channel.dataReceived(data)

    def test_window_reopens_only_as_requests_finish(self) -> None:
        stat = packet(17, 0, string(b"/" + b"x" * 20000))
        count = 60
        for request in range(count):
            self.feed(packet(17, request, string(b"/" + b"x" * 20000)))
        used = count * len(stat)
        self.assertEqual(self.conn.adjusted, [])
        self.assertEqual(self.channel.localWindowLeft, CHANNEL_WINDOW - used - 9)
        for d in self.avatar.filesystem.pending:
            d.callback(_file())
        # Every finished byte is credited: given back, or held until a batch is worth it
        # while the client still has at least half the window.
        self.assertEqual(sum(self.conn.adjusted) + self.channel._returned, used + 9)
        self.assertGreater(self.conn.adjusted[0], 0)
        self.assertGreaterEqual(self.channel.localWindowLeft, CHANNEL_WINDOW // 2)

    def test_oversized_packet_is_skipped_not_buffered(self) -> None:
        sftp = self.channel.sftp
        assert sftp is not None
        header = struct.pack("!LBL", 10 * 1024 * 1024, 6, 42)
        self.feed(header)
        for _ in range(40):
            self.feed(b"z" * 256 * 1024)
            self.assertLess(len(sftp._inbox), 1024)
        self.assertIn(struct.pack("!BLL", 101, 42, 5), self.conn.sent)  # BAD_MESSAGE


class UploadAbortTests(SynchronousTestCase):
    def test_lost_connection_aborts_instead_of_publishing(self) -> None:
        avatar = FakeAvatar()
        sent: list[bytes] = []

        class Transport:
            def write(self, data: bytes) -> None:
                sent.append(data)

        server = SFTPServerProtocol(avatar)
        server.makeConnection(Transport())  # type: ignore[arg-type]
        server.dataReceived(struct.pack("!LBL", 5, 1, 3))
        flags = 0x02 | 0x08 | 0x10  # WRITE | CREAT | TRUNC
        server.dataReceived(packet(3, 1, string(b"/new") + struct.pack("!LL", flags, 0)))
        avatar.filesystem.pending.pop().callback(_file(10))
        self.assertEqual(len(avatar.filesystem.uploads), 1)
        handle = [h for h in server.openFiles][0]
        server.dataReceived(
            packet(6, 2, string(handle) + struct.pack("!Q", 0) + string(b"partial"))
        )
        server.connectionLost(None)
        upload = avatar.filesystem.uploads[0]
        self.assertEqual((upload.data, upload.aborted, upload.committed), (b"partial", True, False))


class MalformedInputTests(SynchronousTestCase):
    """Malformed requests get SSH_FX_BAD_MESSAGE (or FAILURE) and the session goes on."""

    def test_malformed_requests_answered(self) -> None:
        avatar = FakeAvatar()
        sent: list[bytes] = []

        class Transport:
            def write(self, data: bytes) -> None:
                sent.append(data)

        server = SFTPServerProtocol(avatar)
        server.makeConnection(Transport())  # type: ignore[arg-type]
        server.dataReceived(packet(17, 0, string(b"/")))  # before INIT: refused
        sent.clear()
        server = SFTPServerProtocol(avatar)
        server.makeConnection(Transport())  # type: ignore[arg-type]
        server.dataReceived(struct.pack("!LBL", 5, 1, 3))
        sent.clear()
        cases = [
            packet(3, 1, b"\x00\x00\x00\x09/x"),  # OPEN, truncated name
            packet(6, 2, string(b"nohandle") + b"\x00"),  # WRITE, truncated
            packet(6, 3, string(b"nohandle") + struct.pack("!QL", 0, 3) + b"abc"),
            packet(150, 4),  # unknown type
            packet(5, 5, string(b"h") + struct.pack("!QL", 0, 10)),  # READ, no such handle
        ]
        for case in cases:
            server.dataReceived(case)
        replies = [struct.unpack("!BLL", reply[4:13]) for reply in sent]
        self.assertEqual(
            replies,
            [(101, 1, 5), (101, 2, 5), (101, 3, 4), (101, 4, 8), (101, 5, 4)],
        )
        self.assertEqual(server.outstanding, 0)
